from ctxaware import likelihood_ratio, scoring
from ctxaware.methods import ATTENTION
from ctxaware.smk import job

with job(snakemake):
    p = snakemake.params
    item, n_shards = map(int, p.shard.split("-of-"))
    settings = dict(p.score)
    # the scorer's module: Eq. 2 (ctxaware.scoring) or the likelihood ratio, with its own settings
    module = scoring if settings.pop("method") == ATTENTION else likelihood_ratio
    module.score_file(
        p.seed_model,
        snakemake.input.data,
        snakemake.output.shard,
        **settings,
        max_length=p.max_length,
        batch_tokens=p.batch_tokens,
        shard=item - 1,
        n_shards=n_shards,
    )
