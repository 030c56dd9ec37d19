from ctxaware.evaluation import evaluate
from ctxaware.smk import job

with job(snakemake):
    p = snakemake.params
    evaluate(
        snakemake.wildcards.task,
        snakemake.input.model,
        p.settings,
        p.with_indicator,
        snakemake.output.result,
        snakemake.output.generations,
        cache_path=p.cache,
    )
