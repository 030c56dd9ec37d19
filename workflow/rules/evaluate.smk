rule evaluate:
    """One benchmark on one fine-tuned model; indicator models get [IND] appended to every query."""
    input:
        model=rules.finetune.output.model,
        files=local_file_inputs,
    output:
        result="results/eval/{model}/{dataset}/{method}/{task}.json",
        generations="results/eval/{model}/{dataset}/{method}/{task}.generations.jsonl",
    log:
        "results/logs/evaluate/{model}/{dataset}/{method}/{task}.log",
    benchmark:
        "results/benchmarks/evaluate/{model}/{dataset}/{method}/{task}.tsv"
    conda:
        ENV
    threads: res("evaluate", "cpus_per_task")
    resources:
        mem_mb=res("evaluate", "mem_mb"),
        runtime=res("evaluate", "runtime"),
        gpu=res("evaluate", "gpu"),
    params:
        settings=task_settings,
        with_indicator=lambda wc: wc.method.startswith("indicator-"),
        # generation cache outside the outputs: a killed evaluation resumes at the missing prompts
        cache="results/cache/generations/{model}/{dataset}/{method}/{task}.jsonl",
    script:
        "../scripts/evaluate.py"
