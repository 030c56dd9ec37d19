from ctxaware.figures import threshold_ablation
from ctxaware.smk import job

with job(snakemake):  # noqa: F821
    threshold_ablation(snakemake.input.table, snakemake.output.png)  # noqa: F821
