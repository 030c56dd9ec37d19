rule finetune:
    """SFT of a base model on one dataset branch: full, LoRA or QLoRA per the model's recipe (TRL). Eligible for
    the between-workflow cache (--cache; no benchmark file, which Snakemake forbids on cached rules).
    """
    input:
        sft=sft_input,
        base=base_input,
    output:
        model=directory(MODEL),
    log:
        "results/logs/finetune/{model}/{dataset}/{method}.log",
    cache: True
    # the seed model's fine-tune first (every scoring, so every tagged branch, waits for it), then the full ones
    priority: finetune_priority
    conda:
        ENV
    threads: res("finetune", "cpus_per_task")
    resources:
        **stage_resources("finetune"),
    params:
        base=lambda wc: PLAN.base_source(wc.model),
        recipe=recipe_for,
        with_indicator=with_indicator,
        seed=config["seed"],
        # outside the output so a killed or preempted job resumes instead of restarting
        checkpoint_dir=CHECKPOINTS,
        code=code_digest("ctxaware.training"),
    script:
        "../scripts/finetune.py"
