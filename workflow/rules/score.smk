rule score_turns:
    """Context-dependency score (paper Eq. 2) of every assistant turn with the seed model, one shard of the
    dataset per job (scoring.shards, or --set-scatter score=N) so a cluster scores on N GPUs at once.
    """
    input:
        data=rules.prepare_dataset.output.parquet,
        seed_model=seed_input,
    output:
        shard="results/scores/{dataset}/{seed}/shard-{scatteritem}.parquet",
    log:
        "results/logs/score_turns/{dataset}/{seed}/shard-{scatteritem}.log",
    benchmark:
        "results/benchmarks/score_turns/{dataset}/{seed}/shard-{scatteritem}.tsv"
    conda:
        ENV
    threads: res("score", "cpus_per_task")
    resources:
        mem_mb=res("score", "mem_mb"),
        runtime=res("score", "runtime"),
        gpu=res("score", "gpu"),
    params:
        seed_model=seed_model_path(),
        layer=SCORING["layer"],
        max_length=SCORING["max_length"],
        compat=SCORING["compat"],
        batch_tokens=SCORING["batch_tokens"],
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
    script:
        "../scripts/gather_scores.py"


rule score_layers:
    """Scores of a sample of turns on several layers in one forward (paper Appendix B.4, Figure 5)."""
    input:
        data=expand(
            rules.prepare_dataset.output.parquet, dataset=LAYER_STUDY["dataset"]
        ),
        seed_model=seed_input,
    output:
        scores=f"results/scores/layers/{LAYER_STUDY['dataset']}/{{seed}}.parquet",
    log:
        "results/logs/score_layers/{seed}.log",
    conda:
        ENV
    threads: res("score", "cpus_per_task")
    resources:
        mem_mb=res("score", "mem_mb"),
        runtime=res("score", "runtime"),
        gpu=res("score", "gpu"),
    params:
        seed_model=seed_model_path(),
        layers=LAYER_STUDY["layers"],
        sample=LAYER_STUDY["sample"],
        max_length=SCORING["max_length"],
        compat=SCORING["compat"],
        batch_tokens=SCORING["batch_tokens"],
    script:
        "../scripts/score_layers.py"
