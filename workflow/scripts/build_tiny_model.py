import json
from pathlib import Path

from ctxaware.smk import job
from ctxaware.tiny import build_tiny_model

with job(snakemake):
    files = [str(f) for entry in snakemake.input.corpus for f in sorted(Path(entry).rglob("*")) if f.is_file()]
    info = build_tiny_model(snakemake.output.model, files, **snakemake.params.settings)
    print(json.dumps(info, indent=2, default=str))
