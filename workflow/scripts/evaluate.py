from ctxaware.evaluation import evaluate
from ctxaware.smk import job

with job(snakemake):  # noqa: F821
    p = snakemake.params  # noqa: F821
    evaluate(
        snakemake.wildcards.task,  # noqa: F821
        snakemake.input.model,  # noqa: F821
        p.settings,
        p.with_indicator,
        snakemake.output.result,  # noqa: F821
        snakemake.output.generations,  # noqa: F821
        cache_path=p.cache,
    )
