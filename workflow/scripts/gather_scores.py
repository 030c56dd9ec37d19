from ctxaware.scoring import gather_scores
from ctxaware.smk import job

with job(snakemake):
    gather_scores(snakemake.input.shards, snakemake.output.scores)
