from ctxaware.smk import job
from ctxaware.tables import write_table4

with job(snakemake):
    write_table4(
        snakemake.params.rows,
        snakemake.output.csv,
        snakemake.output.md,
        snakemake.output.tex,
        paper_csv=snakemake.input.paper[0] if snakemake.input.paper else None,
    )
