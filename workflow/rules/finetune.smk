def sft_input(wildcards):
    """The branch's training data: the vanilla copy or the tagged set of its beta."""
    if wildcards.method == "vanilla":
        return rules.vanilla_sft.output.sft.format(dataset=wildcards.dataset)
    beta = wildcards.method.removeprefix("indicator-")
    return rules.tag_indicator.output.sft.format(dataset=wildcards.dataset, beta=beta)


rule finetune:
    """SFT of a base model on one dataset branch: full, LoRA or QLoRA per the model's recipe (TRL)."""
    input:
        sft=sft_input,
        base=base_input,
    output:
        model=directory("results/models/{model}/{dataset}/{method}"),
    params:
        base=lambda wc: base_source(wc.model),
        recipe=recipe_for,
        with_indicator=lambda wc: wc.method.startswith("indicator-"),
        seed=config["seed"],
        # outside the output so a killed or preempted job resumes instead of restarting
        checkpoint_dir="results/checkpoints/{model}/{dataset}/{method}",
    log:
        "results/logs/finetune/{model}/{dataset}/{method}.log",
    benchmark:
        "results/benchmarks/finetune/{model}/{dataset}/{method}.tsv"
    threads: res("finetune", "cpus_per_task")
    resources:
        mem_mb=res("finetune", "mem_mb"),
        runtime=res("finetune", "runtime"),
        gpu=res("finetune", "gpu"),
    conda:
        ENV
    script:
        "../scripts/finetune.py"
