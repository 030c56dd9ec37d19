# Config is read and validated here, once; every other rule file uses these names and helpers.
import itertools
import re
import sys
from pathlib import Path

from snakemake.utils import validate

# the method axis, NIH templates and code digests come from the package (no ML libraries are imported here);
# the checkout's src/ comes first, so this works where only the jobs have the package installed (--sdm conda)
sys.path.insert(0, str(Path(workflow.basedir) / "src"))
from ctxaware.methods import METHOD_PATTERN, parse_method, training_recipe
from ctxaware.provenance import code_digest
from ctxaware.tasks.nih import resolve_template

validate(config, workflow.source_path("../schemas/config.schema.yaml"))

DATASETS = config["datasets"]
MODELS = config["models"]
RECIPES = config["recipes"]
METHODS = config["methods"]
SCORING = config["scoring"]
EVALUATION = config["evaluation"]
TASKS = EVALUATION["tasks"]
RESOURCES = config["resources"]
SEED = SCORING["seed_model"]
SEED_NAME = SEED["name"]
TINY_DIR = "results/models/base/tiny"
EVAL_RESULT = "results/eval/{model}/{dataset}/{method}/{task}.json"
EVAL_GENERATIONS = "results/eval/{model}/{dataset}/{method}/{task}.generations.jsonl"
ENV = "../../envs/ctxaware.yaml"
DIAGNOSIS = config["diagnosis"]
PAIRS = DIAGNOSIS["pairs"]
LAYER_STUDY = dict(config["report"]["layer_agreement"])
LAYER_STUDY["dataset"] = LAYER_STUDY["dataset"] or next(iter(DATASETS))


scattergather:
    score=SCORING["shards"],


def _check_references():
    """Cross-references the schema cannot express; each message names the config key."""
    for task in ("squad", "quac"):
        if EVALUATION[task]["metric"] == "drop_original":
            raise ValueError(
                f"config key evaluation.{task}.metric: drop_original scores DROP answers only"
            )
    for name, model in MODELS.items():
        if model["recipe"] not in RECIPES:
            raise ValueError(
                f"config key models.{name}.recipe: unknown recipe {model['recipe']!r} "
                f"(recipes: {sorted(RECIPES)})"
            )
        for dataset in model["datasets"] or []:
            if dataset not in DATASETS:
                raise ValueError(
                    f"config key models.{name}.datasets: unknown dataset {dataset!r} "
                    f"(datasets: {sorted(DATASETS)})"
                )
    if "path" in SEED:
        return
    for key, table in (("model", MODELS), ("dataset", DATASETS)):
        if SEED.get(key) not in table:
            raise ValueError(
                f"config key scoring.seed_model.{key}: {SEED.get(key)!r} is not in {key}s "
                f"({sorted(table)}); give a {key} of the grid, or scoring.seed_model.path"
            )


_check_references()


wildcard_constraints:
    dataset="|".join(map(re.escape, DATASETS)),
    model="|".join(map(re.escape, MODELS)),
    method=METHOD_PATTERN,
    beta="[0-9.]+",
    task="|".join(["nih", "squad", "quac", "drop", "mtbench"]),
    seed=re.escape(SEED_NAME),
    pair="|".join(map(re.escape, PAIRS)) or "(?!)",


def canonical(value):
    """Dicts with sorted keys, recursively: params compare by value, so reordering keys in a config file
    must not look like a change and rerun jobs."""
    if isinstance(value, dict):
        return {key: canonical(value[key]) for key in sorted(value)}
    if isinstance(value, list):
        return [canonical(item) for item in value]
    return value


def corpus_files():
    """The tiny model's corpus as files (directories expanded, sorted): inputs the output cache can checksum."""
    files = []
    for entry in config["tiny"]["corpus"]:
        path = Path(entry)
        if path.is_dir():
            files.extend(str(f) for f in sorted(path.rglob("*")) if f.is_file())
        else:
            files.append(entry)
    return files


def haystack_input():
    """The NIH haystack directory as an input (editing an essay reruns NIH); a package's files are not inputs."""
    haystack = EVALUATION["nih"]["haystack"]
    return [] if haystack.startswith("package:") else [haystack]


def base_source(model):
    """Where a base model's weights come from: the tiny model the workflow builds, a local path or a hub id."""
    source = MODELS[model]["source"]
    return TINY_DIR if source == "tiny" else source


def base_input(wildcards):
    """Base model directories that are workflow artifacts become inputs; hub ids are fetched by the job."""
    source = base_source(wildcards.model)
    return [source] if source == TINY_DIR else []


def dataset_source_input(wildcards):
    """A local raw file is an input (editing it reruns preparation); a hub id is fetched by the job."""
    source = DATASETS[wildcards.dataset]["source"]
    return [source] if Path(source).exists() else []


def model_dir(model, dataset, method):
    return f"results/models/{model}/{dataset}/{method}"


def seed_model_path():
    if "path" in SEED:
        return SEED["path"]
    return model_dir(SEED["model"], SEED["dataset"], "vanilla")


def seed_input(wildcards):
    """The seed model is an input when the workflow trains it; a directory outside results/ is named in params
    (like a hub id): the output cache can only checksum files, not directories."""
    path = seed_model_path()
    return [path] if path.startswith("results/") else []


def recipe_for(wildcards):
    """The model's recipe with the dataset's epoch override (the paper: 2 epochs on WizardLM), as the method
    trains it (qk-lora: LoRA on query and key projections only)."""
    recipe = dict(RECIPES[MODELS[wildcards.model]["recipe"]])
    epochs = DATASETS[wildcards.dataset]["epochs"]
    if epochs is not None:
        recipe["epochs"] = epochs
    return canonical(training_recipe(recipe, wildcards.method))


def with_indicator(wildcards):
    return parse_method(wildcards.method).with_indicator


def task_settings(task, max_context=None, qa_prompt_style="default"):
    """Everything one task's evaluation needs, as plain builtins so --rerun-triggers params sees changes."""
    settings = dict(EVALUATION[task]) if task in EVALUATION else {}
    settings["batch_tokens"] = EVALUATION["batch_tokens"]
    if task == "nih":
        settings["max_context"] = max_context
        settings["prompt_template"] = resolve_template(settings["prompt_template"])
    elif task in ("squad", "quac", "drop"):
        settings["prompt_template"] = EVALUATION["qa_prompts"][qa_prompt_style][task]
    return settings


def model_task_settings(task, model, dataset):
    """A task as one fine-tune is evaluated: NIH up to the model's and the dataset's context cap, QA with the
    dataset's prompt style (paper Tables 5/6)."""
    caps = [MODELS[model]["nih_max_context"], DATASETS[dataset]["nih_max_context"]]
    max_context = min(c for c in caps if c is not None)
    return task_settings(task, max_context, DATASETS[dataset]["qa_prompt_style"])


def evaluation_settings(wildcards):
    return {
        t: canonical(model_task_settings(t, wildcards.model, wildcards.dataset))
        for t in TASKS
    }


def evaluation_engine():
    """The generation backend; vLLM settings only when vLLM is chosen, so they never rerun other backends."""
    if EVALUATION["backend"] == "vllm":
        return canonical({"backend": "vllm", "vllm": EVALUATION["vllm"]})
    return {"backend": EVALUATION["backend"]}


def evaluation_files(wildcards):
    """Local files the evaluations read (editing one reruns them); hub ids are not files."""
    paths = []
    for task, settings in evaluation_settings(wildcards).items():
        if task == "nih":
            paths.append(settings["haystack"])
        elif task == "mtbench":
            paths.append(settings["questions"])
            if settings["references"]:
                paths.append(settings["references"])
            if settings["judge"]["backend"] == "local":
                paths.append(settings["judge"]["model"])
        else:
            paths.append(settings["source"])
    return [p for p in paths if p.startswith("results/") or Path(p).exists()]


def grid():
    """(dataset, model, method) of every fine-tune: Table 4's rows, in the paper's order."""
    return [
        (dataset, model, method)
        for dataset, model, method in itertools.product(DATASETS, MODELS, METHODS)
        if MODELS[model]["datasets"] is None or dataset in MODELS[model]["datasets"]
    ]


def res(stage, key):
    return RESOURCES[stage][key]


def stage_resources(stage):
    """Job resources of a stage from config resources.<stage>, the one place they are set for every executor.
    The Slurm executor turns them into sbatch options: mem_mb -> --mem, runtime (minutes) -> -t,
    cpus_per_task -> --cpus-per-task, gpu N -> --gpus=N (with gpu_model M: --gpus=M:N); gpu=0 asks for none.
    """
    settings = RESOURCES[stage]
    resources = {
        key: settings[key] for key in ("mem_mb", "runtime", "cpus_per_task", "gpu")
    }
    if settings["gpu"] and settings["gpu_model"]:
        resources["gpu_model"] = settings["gpu_model"]
    return resources


# Functions below refer to rules defined in the other rule files; they run only after all are included.
def sft_input(wildcards):
    """The branch's training data: the vanilla copy or the tagged set of its beta."""
    beta = parse_method(wildcards.method).beta
    if beta is None:
        return rules.vanilla_sft.output.sft.format(dataset=wildcards.dataset)
    return rules.tag_indicator.output.sft.format(dataset=wildcards.dataset, beta=beta)


def eval_results():
    return [
        EVAL_RESULT.format(model=m, dataset=d, method=x, task=t)
        for d, m, x in grid()
        for t in TASKS
    ]


def nih_heatmaps():
    if "nih" not in TASKS:
        return []
    return [
        rules.nih_heatmap.output.png.format(model=m, dataset=d, method=x)
        for d, m, x in grid()
    ]


def pair_model(pair, role):
    return PAIRS[pair][role]


def pair_inputs(roles):
    """A pair's models that are workflow artifacts or local directories become inputs; hub ids are not."""

    def inputs(wildcards):
        paths = [pair_model(wildcards.pair, role) for role in roles]
        return [p for p in paths if p.startswith("results/") or Path(p).exists()]

    return inputs


def diagnosis_nih(wildcards):
    """The evaluation's NIH settings at the pair's context cap (templates and prefixes are set per variant)."""
    return canonical(task_settings("nih", PAIRS[wildcards.pair]["nih_max_context"]))


def steering_tasks(wildcards):
    """Table 1's tasks, each with the chat template; QuAC and DROP use the default QA prompts."""
    steering = DIAGNOSIS["steering"]
    settings = {}
    for task in steering["tasks"]:
        if task == "nih":
            settings[task] = diagnosis_nih(wildcards)
            continue
        qa = task_settings(task)
        qa["limit"] = steering["limit"] or qa["limit"]
        settings[task] = canonical(qa)
    return settings


def steering_files(wildcards):
    paths = [
        s["haystack"] if t == "nih" else s["source"]
        for t, s in steering_tasks(wildcards).items()
    ]
    return [p for p in paths if Path(p).exists()]


def diagnosis_targets():
    """Section 2's tables and figures when pairs are configured."""
    if not PAIRS:
        return []
    return [
        rules.nih_template_table.output,
        rules.attention_allocation_table.output,
        rules.attention_steering_table.output,
    ]
