rule score_turns:
    """Context-dependency score of every assistant turn with the seed model, one shard of the dataset per job
    (scoring.shards, or --set-scatter score=N) so a cluster scores on N GPUs at once: the attention score (paper
    Eq. 2) for the scorer named after the seed model, the likelihood ratio for `<name>-lr`.
    Eligible for the between-workflow cache (--cache): the key covers the data, the seed model's provenance,
    the params (the shard among them) and the scorer's code; no benchmark file, as Snakemake forbids it on
    cached rules (the log records the wall time and peak memory instead).
    """
    input:
        data=rules.prepare_dataset.output.parquet,
        seed_model=seed_input,
    output:
        shard=SCORE_SHARD,
    log:
        "results/logs/score_turns/{dataset}/{scorer}/shard-{scatteritem}.log",
    cache: True
    # scoring feeds tagging and the tagged fine-tunes (above the full fine-tunes, priority 1); the Section 2 jobs
    # feed only their own tables
    priority: 2
    conda:
        ENV
    threads: res("score", "cpus_per_task")
    resources:
        **stage_resources("score"),
    params:
        seed_model=PLAN.scorer_model(),
        score=score_settings,
        max_length=scorer_max_length,
        batch_tokens=config["scoring"]["batch_tokens"],
        shard="{scatteritem}",
        code=score_code,
    script:
        "../scripts/score_turns.py"


rule gather_scores:
    """The shards in the conversations' order: identical to scoring the dataset in one job."""
    input:
        shards=gather.score(
            fill(SCORE_SHARD, dataset="{{dataset}}", scorer="{{scorer}}")
        ),
    output:
        scores=SCORES,
    log:
        "results/logs/gather_scores/{dataset}/{scorer}.log",
    # a second's work between the scoring and the tagged fine-tunes (priority as score_turns)
    priority: 2
    conda:
        ENV
    resources:
        **stage_resources("light"),
    script:
        "../scripts/gather_scores.py"


rule score_layers:
    """Scores of a sample of turns on several layers in one forward (paper Appendix B.4, Figure 5); cached
    between workflows like score_turns."""
    input:
        data=expand(
            rules.prepare_dataset.output.parquet, dataset=LAYER_STUDY["dataset"]
        ),
        seed_model=seed_input,
    output:
        scores=fill(LAYER_SCORES, dataset=LAYER_STUDY["dataset"]),
    log:
        "results/logs/score_layers/{scorer}.log",
    cache: True
    # the layer study feeds its own figure only: below the scorings of the tagged branches
    priority: 1
    conda:
        ENV
    threads: res("score", "cpus_per_task")
    resources:
        **stage_resources("score"),
    params:
        seed_model=PLAN.scorer_model(),
        layers=LAYER_STUDY["layers"],
        sample=LAYER_STUDY["sample"],
        max_length=config["scoring"]["max_length"],
        compat=config["scoring"]["compat"],
        truncation=config["scoring"]["truncation"],
        batch_tokens=config["scoring"]["batch_tokens"],
        code=code_digest("ctxaware.layers"),
    script:
        "../scripts/score_layers.py"
