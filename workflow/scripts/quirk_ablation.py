from ctxaware.smk import job
from ctxaware.tables import quirk_ablation

with job(snakemake):
    quirk_ablation(
        snakemake.input.table4,
        snakemake.output.csv,
        snakemake.output.md,
        snakemake.params.corrections,
    )
