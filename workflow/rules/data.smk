rule prepare_dataset:
    """Raw SFT data (hub id or local file) -> one schema (id, messages) with the paper's filters (the refusal filter
    per datasets.<d>.refusal_filter)."""
    input:
        raw=dataset_source_input,
    output:
        parquet=DATA,
        stats=DATA_STATS,
    log:
        "results/logs/prepare_dataset/{dataset}.log",
    # ahead of jobs of equal readiness: everything downstream of the data waits for it
    priority: 1
    conda:
        ENV
    resources:
        **stage_resources("light"),
    params:
        source=lambda wc: DATASETS[wc.dataset]["source"],
        format=lambda wc: DATASETS[wc.dataset]["format"],
        split=lambda wc: DATASETS[wc.dataset]["split"],
        hub_config=lambda wc: DATASETS[wc.dataset]["hub_config"],
        max_conversations=lambda wc: DATASETS[wc.dataset]["max_conversations"],
        revision=lambda wc: DATASETS[wc.dataset]["revision"],
        data_files=lambda wc: DATASETS[wc.dataset]["data_files"],
        refusal_filter=lambda wc: DATASETS[wc.dataset]["refusal_filter"],
    script:
        "../scripts/prepare_dataset.py"
