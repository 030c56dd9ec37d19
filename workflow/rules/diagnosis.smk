# The paper's Section 2 on (base, instruct) model pairs: one job per pair and experiment, one gather job per
# table/figure.


rule nih_template_study:
    """NIH recall of the base model and of the instruct model without the template, with the template and a
    response prefix, and with the template alone, over the Table 8 templates (paper Figure 2, Table 7); the
    variants of diagnosis.variants, the base model's where the pair has one.
    """
    input:
        models=pair_inputs(["base", "instruct"]),
        haystack=haystack_input(),
    output:
        csv=fill(DIAGNOSIS_CSV, experiment="nih_template_study"),
    log:
        "results/logs/diagnosis/{pair}/nih_template_study.log",
    benchmark:
        "results/benchmarks/diagnosis/{pair}/nih_template_study.tsv"
    # the longest Section 2 job: started first, so the scoring jobs fill the other cores (config/real.yaml)
    priority: 2
    conda:
        ENV
    threads: res("evaluate", "cpus_per_task")
    resources:
        **stage_resources("evaluate"),
    params:
        models=lambda wc: {r: pair_model(wc.pair, r) for r in ("base", "instruct")},
        settings=diagnosis_nih,
        templates=DIAGNOSIS["templates"],
        prefix=DIAGNOSIS["response_prefix"],
        variants=pair_variants,
    script:
        "../scripts/nih_template_study.py"


rule attention_allocation:
    """Attention of the first answer token on user, assistant and BOS tokens on each layer's retrieval head,
    without and with the chat template, averaged over the NIH grid (paper Figures 3 and 4, Eq. 3).
    """
    input:
        models=pair_inputs(["instruct"]),
        haystack=haystack_input(),
    output:
        csv=fill(DIAGNOSIS_CSV, experiment="attention_allocation"),
    log:
        "results/logs/diagnosis/{pair}/attention_allocation.log",
    benchmark:
        "results/benchmarks/diagnosis/{pair}/attention_allocation.tsv"
    conda:
        ENV
    threads: res("evaluate", "cpus_per_task")
    resources:
        **stage_resources("evaluate"),
    params:
        model=lambda wc: pair_model(wc.pair, "instruct"),
        settings=allocation_nih,
        prefix=DIAGNOSIS["response_prefix"],
    script:
        "../scripts/attention_allocation.py"


rule attention_steering:
    """Post-hoc steering of user tokens (Eq. 1) at every alpha on NIH, QuAC and DROP with the chat template
    (paper Table 1); the compat mode is a column of every row."""
    input:
        models=pair_inputs(["instruct"]),
        files=steering_files,
    output:
        csv=fill(DIAGNOSIS_CSV, experiment="attention_steering"),
    log:
        "results/logs/diagnosis/{pair}/attention_steering.log",
    benchmark:
        "results/benchmarks/diagnosis/{pair}/attention_steering.tsv"
    conda:
        ENV
    threads: res("evaluate", "cpus_per_task")
    resources:
        **stage_resources("evaluate"),
    params:
        model=lambda wc: pair_model(wc.pair, "instruct"),
        tasks=steering_tasks,
        steering=PLAN.steering(),
        prefix=DIAGNOSIS["response_prefix"],
    script:
        "../scripts/attention_steering.py"


rule nih_template_table:
    """Table 7 and Figure 2 over all pairs."""
    input:
        csvs=expand(rules.nih_template_study.output.csv, pair=PAIRS),
    output:
        csv=report(
            "results/tables/nih_template_study.csv",
            caption="../report/nih_template_study.rst",
            category="Diagnosis",
        ),
        png=report(
            "results/figures/nih_template_study.png",
            caption="../report/nih_template_study.rst",
            category="Diagnosis",
        ),
    log:
        "results/logs/nih_template_table.log",
    conda:
        ENV
    threads: res("light", "cpus_per_task")
    resources:
        **stage_resources("light"),
    script:
        "../scripts/nih_template_table.py"


rule attention_allocation_table:
    """Figures 3 and 4 over all pairs (the csv holds every layer)."""
    input:
        csvs=expand(rules.attention_allocation.output.csv, pair=PAIRS),
    output:
        csv="results/tables/attention_allocation.csv",
        png=report(
            "results/figures/attention_allocation.png",
            caption="../report/attention_allocation.rst",
            category="Diagnosis",
        ),
    log:
        "results/logs/attention_allocation_table.log",
    conda:
        ENV
    threads: res("light", "cpus_per_task")
    resources:
        **stage_resources("light"),
    params:
        layer=DIAGNOSIS["allocation"]["layer"],
    script:
        "../scripts/attention_allocation_table.py"


rule attention_steering_table:
    """Table 1 over all pairs."""
    input:
        csvs=expand(rules.attention_steering.output.csv, pair=PAIRS),
    output:
        csv=report(
            "results/tables/attention_steering.csv",
            caption="../report/attention_steering.rst",
            category="Diagnosis",
        ),
    log:
        "results/logs/attention_steering_table.log",
    conda:
        ENV
    threads: res("light", "cpus_per_task")
    resources:
        **stage_resources("light"),
    script:
        "../scripts/attention_steering_table.py"
