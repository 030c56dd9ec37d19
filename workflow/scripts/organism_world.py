import json

from ctxaware.organism.build import write_world
from ctxaware.smk import job
from ctxaware.tasks.nih import NIH_TEMPLATES

with job(snakemake):
    world = snakemake.params.world
    summary = write_world(
        snakemake.output.world.removesuffix("/world.json"),
        world["settings"],
        world["needle"],
        world["qa_templates"],
        list(NIH_TEMPLATES.values()),
        world["response_prefix"],
    )
    print(json.dumps(summary, indent=1))
