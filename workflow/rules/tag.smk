rule vanilla_sft:
    """The vanilla branch trains on the prepared data as it is."""
    input:
        data=rules.prepare_dataset.output.parquet,
    output:
        sft=fill(SFT, branch="vanilla"),
    log:
        "results/logs/sft/{dataset}/vanilla.log",
    # ahead of the pretraining (a file copy): the seed model's fine-tune, which every scoring waits for, can then
    # start the moment the pretraining ends (Snakemake's MILP scheduler would otherwise start the pretraining first)
    priority: 1
    conda:
        ENV
    shell:
        "cp {input.data} {output.sft} 2> {log}"


rule tag_indicator:
    """[IND] appended to each user turn whose response the branch's threshold selects on its score (and the
    original's "." under tagging.append_period)."""
    input:
        data=rules.prepare_dataset.output.parquet,
        scores=tagging_scores,
    output:
        sft=fill(SFT, branch=TAGGED_BRANCH),
        stats=fill(SFT_STATS, branch=TAGGED_BRANCH),
    log:
        "results/logs/sft/{dataset}/indicator-{tagging}.log",
    # a second's work that unlocks a full fine-tune: run at once, not after the evaluations queued beside it
    priority: 2
    conda:
        ENV
    resources:
        **stage_resources("light"),
    params:
        append_period=lambda wc: tagging_settings(wc)["append_period"],
    script:
        "../scripts/tag_indicator.py"


use rule tag_indicator as tag_indicator_at_window with:
    """As tag_indicator, from the scores of a model's own scoring window (models.<m>.scoring_max_length: the
    original's *_4k sets for the Llama rows)."""
    input:
        data=rules.prepare_dataset.output.parquet,
        scores=tagging_scores_at_window,
    output:
        sft=fill(SFT, branch=TAGGED_WINDOW_BRANCH),
        stats=fill(SFT_STATS, branch=TAGGED_WINDOW_BRANCH),
    log:
        "results/logs/sft/{dataset}/indicator-{tagging}-window{window}.log",
