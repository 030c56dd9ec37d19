rule score_turns:
    """Context-dependency score (paper Eq. 2) of every assistant turn with the seed model, one shard of the
    dataset per job (scoring.shards, or --set-scatter score=N) so a cluster scores on N GPUs at once.
    Eligible for the between-workflow cache (--cache): the key covers the data, the seed model's provenance,
    the params (the shard among them) and the scorer's code; no benchmark file, as Snakemake forbids it on
    cached rules (the log records the wall time and peak memory instead).
    """
    input:
        data=rules.prepare_dataset.output.parquet,
        seed_model=seed_input,
    output:
        shard="results/scores/{dataset}/{seed}/shard-{scatteritem}.parquet",
    log:
        "results/logs/score_turns/{dataset}/{seed}/shard-{scatteritem}.log",
    cache: True
    conda:
        ENV
    threads: res("score", "cpus_per_task")
    resources:
        **stage_resources("score"),
    params:
        seed_model=seed_model_path(),
        layer=SCORING["layer"],
        max_length=SCORING["max_length"],
        compat=SCORING["compat"],
        batch_tokens=SCORING["batch_tokens"],
        shard="{scatteritem}",
        code=code_digest("ctxaware.scoring"),
    script:
        "../scripts/score_turns.py"


rule gather_scores:
    """The shards in the conversations' order: identical to scoring the dataset in one job."""
    input:
        shards=gather.score(
            "results/scores/{{dataset}}/{{seed}}/shard-{scatteritem}.parquet"
        ),
    output:
        scores="results/scores/{dataset}/{seed}.parquet",
    log:
        "results/logs/gather_scores/{dataset}/{seed}.log",
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
        scores=f"results/scores/layers/{LAYER_STUDY['dataset']}/{{seed}}.parquet",
    log:
        "results/logs/score_layers/{seed}.log",
    cache: True
    conda:
        ENV
    threads: res("score", "cpus_per_task")
    resources:
        **stage_resources("score"),
    params:
        seed_model=seed_model_path(),
        layers=LAYER_STUDY["layers"],
        sample=LAYER_STUDY["sample"],
        max_length=SCORING["max_length"],
        compat=SCORING["compat"],
        batch_tokens=SCORING["batch_tokens"],
        code=code_digest("ctxaware.layers"),
    script:
        "../scripts/score_layers.py"
