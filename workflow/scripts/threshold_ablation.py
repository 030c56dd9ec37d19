from ctxaware.figures import threshold_ablation
from ctxaware.smk import job

with job(snakemake):
    threshold_ablation(snakemake.input.table, snakemake.output.png)
