from ctxaware.diagnosis.allocation import run_allocation
from ctxaware.smk import job

with job(snakemake):
    run_allocation(
        snakemake.wildcards.pair,
        snakemake.params.model,
        snakemake.params.settings,
        snakemake.params.prefix,
        snakemake.output.csv,
    )
