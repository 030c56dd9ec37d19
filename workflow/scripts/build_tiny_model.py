import json

from ctxaware.smk import job
from ctxaware.tiny import build_tiny_model

with job(snakemake):
    info = build_tiny_model(snakemake.output.model, list(snakemake.input.corpus), **snakemake.params.settings)
    print(json.dumps(info, indent=2, default=str))
