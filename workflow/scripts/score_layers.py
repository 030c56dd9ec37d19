from ctxaware.layers import score_layer_sample
from ctxaware.smk import job

with job(snakemake):
    p = snakemake.params
    score_layer_sample(
        p.seed_model,
        snakemake.input.data[0],
        snakemake.output.scores,
        layers=p.layers,
        sample=p.sample,
        max_length=p.max_length,
        compat=p.compat,
        truncation=p.truncation,
        batch_tokens=p.batch_tokens,
    )
