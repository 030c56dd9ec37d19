rule evaluate:
    """Every benchmark of the config on one fine-tuned model, loaded once; indicator models get [IND]
    appended to every query. One output pair per task keeps the per-task artifact paths; MT-Bench's answers go
    to the `judge` job instead, so a judge that cannot be reached never fails this (GPU) job.
    """
    input:
        model=rules.finetune.output.model,
        files=evaluation_files,
    output:
        results=expand(EVAL_RESULT, task=GENERATED_TASKS, allow_missing=True),
        generations=expand(EVAL_GENERATIONS, task=GENERATED_TASKS, allow_missing=True),
        answers=expand(EVAL_ANSWERS, task=JUDGED, allow_missing=True),
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
        generated=GENERATED_TASKS,
        judged=JUDGED,
        # generation caches outside the outputs: a killed evaluation resumes at the missing prompts
        cache_dir=GENERATION_CACHE,
    script:
        "../scripts/evaluate.py"


rule judge:
    """MT-Bench's judge on the answers `evaluate` generated: a light (CPU) job, the only one that needs the
    judge's network and key. Without them it fails alone, before any request (no key) or within the retry budget
    (evaluation.mtbench.judge), naming what to set; the answers and the other tasks' results stay.
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
        task=_choice(JUDGED_TASKS),
    conda:
        ENV
    resources:
        **stage_resources("light"),
    params:
        judge=PLAN.judge_settings(),
    script:
        "../scripts/judge.py"
