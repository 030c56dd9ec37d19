# Models and data the run takes from installed packages: a package's model file imported once, and the labelled
# real-language set a real model answers (config/real.yaml).


rule import_model:
    """A model file inside an installed package (package:<module>/<file>.gguf) as a plain transformers model:
    dequantized weights in safetensors, the tokenizer with its chat template, and how conversations without a
    system message are rendered (imported_models.system_message). Every job loads the import. Eligible for the
    between-workflow cache (--cache), keyed on the reference and its settings.
    """
    output:
        model=directory(IMPORTED_MODEL),
    log:
        "results/logs/import_model/{name}.log",
    cache: True
    conda:
        ENV
    threads: res("light", "cpus_per_task")
    resources:
        **stage_resources("light"),
    params:
        settings=import_settings,
        code=code_digest("ctxaware.imports"),
    script:
        "../scripts/import_model.py"


rule real_language_set:
    """The labelled set of real-language turns (ctxaware.real_language): essay passages with questions about them,
    MT-Bench questions, and the same questions after an unrelated passage, each answered greedily by the model in
    its own template."""
    input:
        model=real_language_input,
    output:
        json=REAL_LANGUAGE_SET,
    log:
        "results/logs/real_language_set.log",
    benchmark:
        "results/benchmarks/real_language_set.tsv"
    # on the critical path of config/real.yaml: before the Section 2 jobs, which nothing waits for
    priority: 1
    conda:
        ENV
    threads: res("evaluate", "cpus_per_task")
    resources:
        **stage_resources("evaluate"),
    params:
        settings=PLAN.real_language(),
        batch_tokens=config["evaluation"]["batch_tokens"],
        code=code_digest("ctxaware.real_language"),
    script:
        "../scripts/real_language_set.py"
