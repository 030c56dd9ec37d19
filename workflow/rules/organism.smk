# The embedded default's model organism: its world and corpora, then its base model pretrained on plain text.


rule organism_world:
    """The world of config `organism` (people, facts, the memorised ones) and everything written from it: the
    pretraining corpus and vocabulary, the labelled SFT sets in the ShareGPT/UltraChat/WizardLM schemas and the
    held-out evaluation sets in the SQuAD/QuAC/DROP/MT-Bench schemas, and the NIH haystack (its needle is
    evaluation.nih.needle, a memorised person's fact with another value)."""
    output:
        world=f"{ORGANISM_DIR}/world.json",
        corpus=f"{ORGANISM_DIR}/pretraining.jsonl",
        vocabulary=f"{ORGANISM_DIR}/vocabulary.txt",
        summary=f"{ORGANISM_DIR}/summary.json",
        sft=[f"{ORGANISM_DIR}/{path}" for path in ORGANISM_SFT_FILES.values()],
        eval=[f"{ORGANISM_DIR}/{path}" for path in ORGANISM_EVAL_FILES.values()],
        haystack=directory(f"{ORGANISM_DIR}/haystack"),
    log:
        "results/logs/organism_world.log",
    conda:
        ENV
    resources:
        **stage_resources("light"),
    params:
        # a function: the QA templates' {context} would otherwise be taken for wildcards
        world=lambda wildcards: PLAN.organism_world_settings(),
    script:
        "../scripts/organism_world.py"


rule pretrain_organism:
    """The organism's base model: a small Llama with a word-level tokenizer over the world's vocabulary, trained
    from scratch on the plain-text corpus (no chat template). Eligible for the between-workflow cache (--cache;
    no benchmark file, which Snakemake forbids on cached rules: the log ends with wall time and peak memory).
    """
    input:
        corpus=rules.organism_world.output.corpus,
        vocabulary=rules.organism_world.output.vocabulary,
        world=rules.organism_world.output.world,
    output:
        model=directory(ORGANISM_BASE),
    log:
        "results/logs/pretrain_organism.log",
    cache: True
    conda:
        ENV
    # a CPU job (it never asks a cluster for a GPU), the light stage's threads. It runs alone on the critical path:
    # `make run` gives it every core (--set-threads pretrain_organism=N: 2 threads, 1.4x), as the tests' local
    # runs do; its weights are the same bits whatever the thread count (test_organism)
    threads: res("light", "cpus_per_task")
    resources:
        **stage_resources("light"),
    params:
        settings=PLAN.organism_settings(),
        code=code_digest("ctxaware.organism.build"),
    script:
        "../scripts/pretrain_organism.py"
