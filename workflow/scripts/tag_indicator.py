from ctxaware.methods import parse_tagging
from ctxaware.smk import job
from ctxaware.tagging import tag_file

with job(snakemake):
    tag_file(
        snakemake.input.data,
        snakemake.input.scores,
        parse_tagging(snakemake.wildcards.tagging).threshold,
        snakemake.output.sft,
        snakemake.output.stats,
        append_period=snakemake.params.append_period,
    )
