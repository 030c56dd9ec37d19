import json
from pathlib import Path

from ctxaware.organism.build import pretrain_base
from ctxaware.smk import job

with job(snakemake):
    log = pretrain_base(str(Path(snakemake.input.world).parent), snakemake.output.model, snakemake.params.settings)
    print(json.dumps(log, indent=1, default=str))
