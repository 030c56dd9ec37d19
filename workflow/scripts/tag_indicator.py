from ctxaware.smk import job
from ctxaware.tagging import tag_file

with job(snakemake):  # noqa: F821
    tag_file(
        snakemake.input.data,  # noqa: F821
        snakemake.input.scores[0],  # noqa: F821
        float(snakemake.wildcards.beta),  # noqa: F821
        snakemake.output.sft,  # noqa: F821
        snakemake.output.stats,  # noqa: F821
    )
