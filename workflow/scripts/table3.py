from ctxaware.smk import job
from ctxaware.tables import write_table3

with job(snakemake):  # noqa: F821
    write_table3(
        dict(zip(snakemake.params.datasets, snakemake.input.scores, strict=True)),  # noqa: F821
        snakemake.params.betas,  # noqa: F821
        snakemake.output.csv,  # noqa: F821
    )
