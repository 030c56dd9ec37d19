from ctxaware.judge import judge_answers
from ctxaware.smk import job

with job(snakemake):
    judge_answers(
        snakemake.input.answers,
        snakemake.params.judge,
        snakemake.output.result,
        snakemake.output.generations,
    )
