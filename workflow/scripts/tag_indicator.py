from ctxaware.smk import job
from ctxaware.tagging import tag_file

with job(snakemake):
    tag_file(
        snakemake.input.data,
        snakemake.input.scores[0],
        float(snakemake.wildcards.beta),
        snakemake.output.sft,
        snakemake.output.stats,
    )
