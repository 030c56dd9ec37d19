from ctxaware.diagnosis.steering import run_steering
from ctxaware.smk import job

with job(snakemake):
    run_steering(
        snakemake.wildcards.pair,
        snakemake.params.model,
        snakemake.params.tasks,
        snakemake.params.steering,
        snakemake.params.prefix,
        snakemake.output.csv,
    )
