from ctxaware.diagnosis.gather import write_steering
from ctxaware.smk import job

with job(snakemake):
    write_steering(list(snakemake.input.csvs), snakemake.output.csv)
