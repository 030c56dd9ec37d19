rule build_tiny_model:
    """The embedded default's base model: a small Llama and a BPE tokenizer trained on the shipped text."""
    input:
        corpus=config["tiny"]["corpus"],
    output:
        model=directory(TINY_DIR),
    params:
        settings={k: v for k, v in config["tiny"].items() if k != "corpus"},
    log:
        "results/logs/build_tiny_model.log",
    resources:
        mem_mb=res("light", "mem_mb"),
        runtime=res("light", "runtime"),
    conda:
        ENV
    script:
        "../scripts/build_tiny_model.py"


rule prepare_dataset:
    """Raw SFT data (hub id or local file) -> one schema (id, messages) with the paper's filters."""
    input:
        lambda wc: [DATASETS[wc.dataset]["source"]] if Path(DATASETS[wc.dataset]["source"]).exists() else [],
    output:
        parquet="results/data/{dataset}.parquet",
        stats="results/data/{dataset}.stats.json",
    params:
        source=lambda wc: DATASETS[wc.dataset]["source"],
        format=lambda wc: DATASETS[wc.dataset]["format"],
        split=lambda wc: DATASETS[wc.dataset]["split"],
        hub_config=lambda wc: DATASETS[wc.dataset]["hub_config"],
        max_conversations=lambda wc: DATASETS[wc.dataset]["max_conversations"],
    log:
        "results/logs/prepare_dataset/{dataset}.log",
    resources:
        mem_mb=res("light", "mem_mb"),
        runtime=res("light", "runtime"),
    conda:
        ENV
    script:
        "../scripts/prepare_dataset.py"
