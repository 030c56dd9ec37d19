rule finetune:
    """SFT of a base model on one dataset branch: full, LoRA or QLoRA per the model's recipe (TRL)."""
    input:
        sft=sft_input,
        base=base_input,
    output:
        model=directory("results/models/{model}/{dataset}/{method}"),
    log:
        "results/logs/finetune/{model}/{dataset}/{method}.log",
    benchmark:
        "results/benchmarks/finetune/{model}/{dataset}/{method}.tsv"
    conda:
        ENV
    threads: res("finetune", "cpus_per_task")
    resources:
        mem_mb=res("finetune", "mem_mb"),
        runtime=res("finetune", "runtime"),
        gpu=res("finetune", "gpu"),
    params:
        base=lambda wc: base_source(wc.model),
        recipe=recipe_for,
        with_indicator=with_indicator,
        seed=config["seed"],
        # outside the output so a killed or preempted job resumes instead of restarting
        checkpoint_dir="results/checkpoints/{model}/{dataset}/{method}",
    script:
        "../scripts/finetune.py"
