from ctxaware.scoring import score_file
from ctxaware.smk import job

with job(snakemake):
    p = snakemake.params
    item, n_shards = map(int, p.shard.split("-of-"))
    score_file(
        p.seed_model,
        snakemake.input.data,
        snakemake.output.shard,
        layer=p.layer,
        max_length=p.max_length,
        compat=p.compat,
        batch_tokens=p.batch_tokens,
        shard=item - 1,
        n_shards=n_shards,
    )
