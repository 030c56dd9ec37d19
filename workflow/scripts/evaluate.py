from ctxaware.evaluation import evaluate_all
from ctxaware.smk import job

with job(snakemake):
    evaluate_all(
        snakemake.input.model,
        snakemake.params.settings,
        snakemake.params.with_indicator,
        dict(zip(snakemake.params.settings, snakemake.output.results, strict=True)),
        dict(zip(snakemake.params.settings, snakemake.output.generations, strict=True)),
        cache_dir=snakemake.params.cache_dir,
        engine=snakemake.params.engine,
    )
