from ctxaware.diagnosis.gather import write_allocation
from ctxaware.smk import job

with job(snakemake):
    write_allocation(list(snakemake.input.csvs), snakemake.params.layer, snakemake.output.csv, snakemake.output.png)
