rule vanilla_sft:
    """The vanilla branch trains on the prepared data as it is."""
    input:
        data=rules.prepare_dataset.output.parquet,
    output:
        sft="results/sft/{dataset}/vanilla.parquet",
    log:
        "results/logs/sft/{dataset}/vanilla.log",
    conda:
        ENV
    shell:
        "cp {input.data} {output.sft} 2> {log}"


rule tag_indicator:
    """[IND] appended to each user turn whose response scored strictly above beta."""
    input:
        data=rules.prepare_dataset.output.parquet,
        scores=expand(
            rules.gather_scores.output.scores, seed=SEED_NAME, allow_missing=True
        ),
    output:
        sft="results/sft/{dataset}/indicator-{beta}.parquet",
        stats="results/sft/{dataset}/indicator-{beta}.stats.json",
    log:
        "results/logs/sft/{dataset}/indicator-{beta}.log",
    conda:
        ENV
    resources:
        **stage_resources("light"),
    script:
        "../scripts/tag_indicator.py"
