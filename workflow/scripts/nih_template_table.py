from ctxaware.diagnosis.gather import write_template_study
from ctxaware.smk import job

with job(snakemake):
    write_template_study(list(snakemake.input.csvs), snakemake.output.csv, snakemake.output.png)
