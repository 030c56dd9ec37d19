from ctxaware.smk import job
from ctxaware.tables import write_table4

with job(snakemake):  # noqa: F821
    write_table4(
        snakemake.params.rows,  # noqa: F821
        snakemake.params.tasks,  # noqa: F821
        snakemake.input.results,  # noqa: F821
        snakemake.output.csv,  # noqa: F821
        snakemake.output.md,  # noqa: F821
        snakemake.output.tex,  # noqa: F821
        paper_csv=snakemake.input.paper[0] if snakemake.input.paper else None,  # noqa: F821
    )
