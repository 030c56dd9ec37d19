from ctxaware.methods import parse_threshold
from ctxaware.smk import job
from ctxaware.tagging import tag_file

with job(snakemake):
    tag_file(
        snakemake.input.data,
        snakemake.input.scores[0],
        parse_threshold(snakemake.wildcards.threshold).value,
        snakemake.output.sft,
        snakemake.output.stats,
    )
