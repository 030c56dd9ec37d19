from ctxaware.data import prepare
from ctxaware.smk import job

with job(snakemake):
    p = snakemake.params
    prepare(
        p.source,
        p.format,
        snakemake.output.parquet,
        snakemake.output.stats,
        split=p.split,
        hub_config=p.hub_config,
        max_conversations=p.max_conversations,
        revision=p.revision,
        data_files=p.data_files,
        key=f"datasets.{snakemake.wildcards.dataset}.source",
        refusal_filter=p.refusal_filter,
    )
