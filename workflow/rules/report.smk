rule table4:
    """The paper's Table 4: one row per (SFT dataset, model, method)."""
    input:
        results=PLAN.eval_results(),
        paper=PLAN.paper_table4(),
    output:
        csv=report(
            "results/tables/table4.csv",
            caption="../report/table4.rst",
            category="Table 4",
        ),
        md="results/tables/table4.md",
        tex="results/tables/table4.tex",
    log:
        "results/logs/table4.log",
    conda:
        ENV
    resources:
        **stage_resources("light"),
    params:
        rows=PLAN.table4_rows(),
    script:
        "../scripts/table4.py"


rule quirk_ablation:
    """How much each correction of the quirk ablation (config ablation) moves Table 4: each added row's change
    against its published row, and the mean change per correction."""
    input:
        table4=rules.table4.output.csv,
    output:
        csv=report(
            "results/tables/quirk_ablation.csv",
            caption="../report/quirk_ablation.rst",
            category="Table 4",
        ),
        md="results/tables/quirk_ablation.md",
    log:
        "results/logs/quirk_ablation.log",
    conda:
        ENV
    resources:
        **stage_resources("light"),
    params:
        corrections=list(config["ablation"]),
    script:
        "../scripts/quirk_ablation.py"


rule table3:
    """Share of assistant turns tagged per dataset at each beta (paper Table 3), and at each quantile or
    likelihood-ratio tagging of the methods."""
    input:
        scores=expand(
            rules.gather_scores.output.scores, dataset=DATASETS, scorer=SCORER
        ),
        taggings=list(dict.fromkeys(row["scores"] for row in PLAN.table3_taggings())),
    output:
        csv=report(
            "results/tables/table3.csv",
            caption="../report/table3.rst",
            category="Table 3",
        ),
    log:
        "results/logs/table3.log",
    conda:
        ENV
    resources:
        **stage_resources("light"),
    params:
        datasets=list(DATASETS),
        betas=config["report"]["table3_betas"],
        taggings=PLAN.table3_taggings(),
    script:
        "../scripts/table3.py"


rule nih_heatmap:
    """Recall heatmap over the NIH grid (context length x needle depth), like the original repository's."""
    input:
        generations=expand(EVAL_GENERATIONS, task="nih", allow_missing=True),
    output:
        png=report(
            NIH_HEATMAP,
            caption="../report/nih_heatmap.rst",
            category="NIH",
        ),
    log:
        "results/logs/nih_heatmap/{model}/{dataset}/{method}.log",
    conda:
        ENV
    resources:
        **stage_resources("light"),
    script:
        "../scripts/nih_heatmap.py"


rule threshold_ablation:
    """Scores against beta per dataset and model (paper Table 9), vanilla as the reference."""
    input:
        table=rules.table4.output.csv,
    output:
        png=report(
            "results/figures/threshold_ablation.png",
            caption="../report/threshold_ablation.rst",
            category="Ablations",
        ),
    log:
        "results/logs/threshold_ablation.log",
    conda:
        ENV
    resources:
        **stage_resources("light"),
    script:
        "../scripts/threshold_ablation.py"


rule layer_agreement:
    """Disagreement of the top-scored subsets and score RMSE between every pair of layers (paper Figure 5)."""
    input:
        scores=expand(rules.score_layers.output.scores, scorer=SCORER),
    output:
        csv="results/tables/layer_agreement.csv",
        png=report(
            "results/figures/layer_agreement.png",
            caption="../report/layer_agreement.rst",
            category="Scoring",
        ),
    log:
        "results/logs/layer_agreement.log",
    conda:
        ENV
    resources:
        **stage_resources("light"),
    params:
        top_fraction=LAYER_STUDY["top_fraction"],
    script:
        "../scripts/layer_agreement.py"


rule instruction_lengths:
    """Instruction lengths of all turns vs the turns tagged at beta, per dataset (paper Figures 6-8)."""
    input:
        scores=expand(
            rules.gather_scores.output.scores, dataset=DATASETS, scorer=SCORER
        ),
    output:
        png=report(
            "results/figures/instruction_lengths.png",
            caption="../report/instruction_lengths.rst",
            category="Scoring",
        ),
    log:
        "results/logs/instruction_lengths.log",
    conda:
        ENV
    resources:
        **stage_resources("light"),
    params:
        datasets=list(DATASETS),
        beta=config["report"]["length_beta"],
    script:
        "../scripts/instruction_lengths.py"


rule score_validity:
    """AUROC of each score against the datasets' ground-truth labels (the organism's sets carry them; a dataset
    without labels gets n = 0): every score the run computes, and each layer of the attention layer study.
    """
    input:
        data=expand(rules.prepare_dataset.output.parquet, dataset=DATASETS),
        scores=[row["path"] for row in PLAN.validity_scores()],
        layer_study=expand(rules.score_layers.output.scores, scorer=SCORER),
    output:
        csv=report(
            "results/tables/score_validity.csv",
            caption="../report/score_validity.rst",
            category="Scoring",
        ),
        png=report(
            "results/figures/score_validity.png",
            caption="../report/score_validity.rst",
            category="Scoring",
        ),
    log:
        "results/logs/score_validity.log",
    conda:
        ENV
    resources:
        **stage_resources("light"),
    params:
        datasets=list(DATASETS),
        scores=PLAN.validity_scores(),
        layer_dataset=LAYER_STUDY["dataset"],
    script:
        "../scripts/score_validity.py"
