from ctxaware.scoring import score_file
from ctxaware.smk import job

with job(snakemake):  # noqa: F821
    p = snakemake.params  # noqa: F821
    score_file(
        p.seed_model,
        snakemake.input.data,  # noqa: F821
        snakemake.output.scores,  # noqa: F821
        layer=p.layer,
        max_length=p.max_length,
        compat=p.compat,
        batch_tokens=p.batch_tokens,
    )
