from ctxaware.smk import job
from ctxaware.tables import write_table3

with job(snakemake):
    write_table3(
        dict(zip(snakemake.params.datasets, snakemake.input.scores, strict=True)),
        snakemake.params.betas,
        snakemake.output.csv,
        snakemake.params.taggings,
    )
