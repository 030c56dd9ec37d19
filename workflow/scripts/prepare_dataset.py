from ctxaware.data import prepare
from ctxaware.smk import job

with job(snakemake):  # noqa: F821
    p = snakemake.params  # noqa: F821
    prepare(
        p.source,
        p.format,
        snakemake.output.parquet,  # noqa: F821
        snakemake.output.stats,  # noqa: F821
        split=p.split,
        hub_config=p.hub_config,
        max_conversations=p.max_conversations,
    )
