rule score_turns:
    """Context-dependency score (paper Eq. 2) of every assistant turn, computed with the seed model."""
    input:
        data=rules.prepare_dataset.output.parquet,
        seed_model=seed_input,
    output:
        scores="results/scores/{dataset}/{seed}.parquet",
    log:
        "results/logs/score_turns/{dataset}/{seed}.log",
    benchmark:
        "results/benchmarks/score_turns/{dataset}/{seed}.tsv"
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
