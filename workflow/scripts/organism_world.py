import json

from ctxaware.organism.build import write_world
from ctxaware.smk import job
from ctxaware.tasks.nih import NIH_TEMPLATES

with job(snakemake):
    p = snakemake.params
    summary = write_world(
        snakemake.output.world.removesuffix("/world.json"),
        p.settings,
        p.needle,
        p.qa_templates,
        list(NIH_TEMPLATES.values()),
        p.response_prefix,
    )
    print(json.dumps(summary, indent=1))
