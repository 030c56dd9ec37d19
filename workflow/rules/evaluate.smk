rule evaluate:
    """Every benchmark of the config on one fine-tuned model, loaded once; indicator models get [IND]
    appended to every query. One output pair per task keeps the per-task artifact paths; MT-Bench's answers go
    to the `judge` job instead, so a judge that cannot be reached never fails this (GPU) job.
    """
    input:
        # the row's fine-tune; a correction of the evaluation reads the published branch's (PLAN.trained_method)
        model=fine_tuned_input,
        files=evaluation_files,
    output:
        results=expand(EVAL_RESULT, task=GENERATED_TASKS, allow_missing=True),
        generations=expand(EVAL_GENERATIONS, task=GENERATED_TASKS, allow_missing=True),
        answers=expand(EVAL_ANSWERS, task=JUDGED, allow_missing=True),
    log:
        "results/logs/evaluate/{model}/{dataset}/{method}.log",
    benchmark:
        "results/benchmarks/evaluate/{model}/{dataset}/{method}.tsv"
    wildcard_constraints:
        # a correction of the evaluation evaluates only the tasks it changes (rule evaluate_correction)
        method=PLAN.trained_method_pattern(),
    conda:
        ENV
    threads: res("evaluate", "cpus_per_task")
    resources:
        **stage_resources("evaluate"),
    params:
        settings=evaluation_settings,
        with_indicator=with_indicator,
        engine=PLAN.evaluation_engine(),
        generated=GENERATED_TASKS,
        judged=JUDGED,
        # generation caches outside the outputs: a killed evaluation resumes at the missing prompts
        cache_dir=GENERATION_CACHE,
    script:
        "../scripts/evaluate.py"


rule evaluate_reference:
    """Every benchmark on a named existing model as it is: Table 4's evaluate-only rows (config reference_models;
    the paper's Llama-2-7b-chat and Llama-3-8B-Instruct, the organism's base on the embedded default). The model
    is read directly (the organism's base, an input; or a local directory or hub id the job loads), never a
    fine-tune, and gets no [IND]. MT-Bench's answers go to the `judge` job, as `evaluate`'s do.
    """
    input:
        model=reference_input,
        files=reference_files,
    output:
        results=expand(EVAL_RESULT, task=GENERATED_TASKS, allow_missing=True),
        generations=expand(EVAL_GENERATIONS, task=GENERATED_TASKS, allow_missing=True),
        answers=expand(EVAL_ANSWERS, task=JUDGED, allow_missing=True),
    log:
        "results/logs/evaluate/{model}/{dataset}/{method}.log",
    benchmark:
        "results/benchmarks/evaluate/{model}/{dataset}/{method}.tsv"
    wildcard_constraints:
        model=_choice(REFERENCES),
        dataset=NO_DATASET,
        method=REFERENCE,
    conda:
        ENV
    threads: res("evaluate", "cpus_per_task")
    resources:
        **stage_resources("evaluate"),
    params:
        model=reference_source,
        settings=reference_settings,
        with_indicator=False,
        engine=PLAN.evaluation_engine(),
        generated=GENERATED_TASKS,
        judged=JUDGED,
        cache_dir=GENERATION_CACHE,
    script:
        "../scripts/evaluate.py"


rule evaluate_correction:
    """One task of a row of the quirk ablation that corrects the evaluation (config ablation; `<method>+<correction>`,
    `reference+<correction>`): the published fine-tune (or the evaluate-only row's model) evaluated again under the
    corrected settings, only on the tasks the correction changes (PLAN.corrected_tasks); Table 4 takes the row's
    other tasks from the published row.
    """
    input:
        model=corrected_model_input,
        files=corrected_files,
    output:
        results=[EVAL_RESULT],
        generations=[EVAL_GENERATIONS],
    log:
        "results/logs/evaluate/{model}/{dataset}/{method}/{task}.log",
    benchmark:
        "results/benchmarks/evaluate/{model}/{dataset}/{method}/{task}.tsv"
    wildcard_constraints:
        model=_choice([*MODELS, *REFERENCES]),
        dataset=_choice([*DATASETS, NO_DATASET]),
        method=PLAN.corrected_evaluation_pattern(),
        task=_choice(GENERATED_TASKS),
    conda:
        ENV
    threads: res("evaluate", "cpus_per_task")
    resources:
        **stage_resources("evaluate"),
    params:
        model=corrected_model,
        settings=corrected_settings,
        with_indicator=with_indicator,
        engine=PLAN.evaluation_engine(),
        generated=lambda wc: [wc.task],
        judged=[],
        cache_dir=GENERATION_CACHE,
    script:
        "../scripts/evaluate.py"


rule judge:
    """MT-Bench's judge on the answers `evaluate` (a fine-tune) or `evaluate_reference` (an evaluate-only row)
    generated: a light (CPU) job, the only one that needs the judge's network and key. Without them it fails
    alone, before any request (no key) or within the retry budget (evaluation.mtbench.judge), naming what to set;
    the answers and the other tasks' results stay.
    """
    input:
        answers=EVAL_ANSWERS,
        files=judge_files(),
    output:
        result=EVAL_RESULT,
        generations=EVAL_GENERATIONS,
    log:
        "results/logs/judge/{model}/{dataset}/{method}/{task}.log",
    wildcard_constraints:
        # a fine-tune's answers and an evaluate-only row's (results/eval/{reference}/none/reference/)
        model=_choice([*MODELS, *REFERENCES]),
        dataset=_choice([*DATASETS, NO_DATASET]),
        method=f"{PLAN.trained_method_pattern()}|{REFERENCE}",
        task=_choice(JUDGED_TASKS),
    conda:
        ENV
    resources:
        **stage_resources("light"),
    params:
        judge=PLAN.judge_settings(),
    script:
        "../scripts/judge.py"
