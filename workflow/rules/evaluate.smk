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
