from ctxaware.real_language import build_set
from ctxaware.smk import job

with job(snakemake):
    s = snakemake.params.settings
    counts = build_set(
        s["model"],
        s["haystack"],
        s["questions"],
        snakemake.output.json,
        n_context_dependent=s["n_context_dependent"],
        words=s["passage_words"],
        max_new_tokens=s["max_new_tokens"],
        batch_tokens=snakemake.params.batch_tokens,
        seed=s["seed"],
    )
    print(f"turns per group: {counts}")
