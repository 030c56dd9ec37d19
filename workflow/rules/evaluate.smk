rule evaluate:
    """Every benchmark of the config on one fine-tuned model, loaded once; indicator models get [IND]
    appended to every query. One output pair per task keeps the per-task artifact paths.
    """
    input:
        model=rules.finetune.output.model,
        files=evaluation_files,
    output:
        results=expand(EVAL_RESULT, task=TASKS, allow_missing=True),
        generations=expand(EVAL_GENERATIONS, task=TASKS, allow_missing=True),
    log:
        "results/logs/evaluate/{model}/{dataset}/{method}.log",
    benchmark:
        "results/benchmarks/evaluate/{model}/{dataset}/{method}.tsv"
    conda:
        ENV
    threads: res("evaluate", "cpus_per_task")
    resources:
        **stage_resources("evaluate"),
    params:
        settings=evaluation_settings,
        with_indicator=with_indicator,
        engine=PLAN.evaluation_engine(),
        # generation caches outside the outputs: a killed evaluation resumes at the missing prompts
        cache_dir=GENERATION_CACHE,
    script:
        "../scripts/evaluate.py"


rule evaluate_reference:
    """Every benchmark on a named existing model as it is: Table 4's evaluate-only rows (config reference_models;
    the paper's Llama-2-7b-chat and Llama-3-8B-Instruct, the organism's base on the embedded default). The model
    is read directly (the organism's base, an input; or a local directory or hub id the job loads), never a
    fine-tune, and gets no [IND].
    """
    input:
        model=reference_input,
        files=reference_files,
    output:
        results=expand(EVAL_RESULT, task=TASKS, allow_missing=True),
        generations=expand(EVAL_GENERATIONS, task=TASKS, allow_missing=True),
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
        cache_dir=GENERATION_CACHE,
    script:
        "../scripts/evaluate.py"
