from ctxaware.diagnosis.template_study import run_template_study
from ctxaware.smk import job

with job(snakemake):
    run_template_study(
        snakemake.wildcards.pair,
        snakemake.params.models,
        snakemake.params.settings,
        snakemake.params.templates,
        snakemake.params.prefix,
        snakemake.params.variants,
        snakemake.output.csv,
    )
