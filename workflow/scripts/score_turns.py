from ctxaware.scoring import score_file
from ctxaware.smk import job

with job(snakemake):
    p = snakemake.params
    score_file(
        p.seed_model,
        snakemake.input.data,
        snakemake.output.scores,
        layer=p.layer,
        max_length=p.max_length,
        compat=p.compat,
        batch_tokens=p.batch_tokens,
    )
