"""The experiment plan of a validated config: what the workflow runs, without Snakemake or torch.

The grid of fine-tunes (Table 4's rows), each job's settings (recipe, evaluation tasks, the Section 2
experiments), the seed model that scores (the scorer), which paths are job inputs, and every artifact's path.
`workflow/rules/common.smk` builds one Plan from the config and wraps its methods in one-line input functions;
the tests build it from a config file. Settings are plain builtins with sorted keys, so Snakemake's params
compare by value. A rule that needs the config gets one method here (docs/architecture.md).
"""

from __future__ import annotations

import copy
import itertools
import json
import re
from pathlib import Path
from typing import NamedTuple

from ctxaware.chat import DEFAULT_INDICATOR_TOKEN
from ctxaware.judge import JUDGED_TASKS
from ctxaware.methods import (
    ATTENTION,
    BETA,
    INDICATOR,
    LIKELIHOOD_RATIO,
    METHOD_PATTERN,
    REFERENCE,
    SCORE_METHODS,
    TAGGING_PATTERN,
    VARIANT_MARK,
    check_methods,
    parse_method,
    parse_tagging,
    split_variant,
    training_recipe,
    variant_pattern,
    with_variant,
)
from ctxaware.tasks import PROCEDURE_DEFAULTS, QA_TASKS, TASKS
from ctxaware.tasks.nih import resolve_template

# recipe options added after the finetune job's params were first recorded: left out of a recipe at their default
# (the training code reads the same default), so a fine-tune of the default keeps its params and is not rerun
RECIPE_DEFAULTS = {"indicator_token": DEFAULT_INDICATOR_TOKEN}

# Artifact paths with wildcards: the rules' outputs and the inputs the plan hands their consumers.
ORGANISM_DIR = "results/organism"
ORGANISM_BASE = "results/models/base/organism"
DATA = "results/data/{dataset}.parquet"
DATA_STATS = "results/data/{dataset}.stats.json"
SCORE_SHARD = "results/scores/{dataset}/{scorer}/shard-{scatteritem}.parquet"
SCORES = "results/scores/{dataset}/{scorer}.parquet"
LAYER_SCORES = "results/scores/layers/{dataset}/{scorer}.parquet"
SFT = "results/sft/{dataset}/{branch}.parquet"
SFT_STATS = "results/sft/{dataset}/{branch}.stats.json"
TAGGED_BRANCH = INDICATOR + "{tagging}"
# the suffix of a scorer's name and a tagged branch's at a model's own scoring window (models.<m>.scoring_max_length,
# the original's *_4k sets); at scoring.max_length, none: the paths of a run without one stay as they were
SCORING_WINDOW = "-window{window}"
TAGGED_WINDOW_BRANCH = TAGGED_BRANCH + SCORING_WINDOW
MODEL = "results/models/{model}/{dataset}/{method}"
CHECKPOINTS = "results/checkpoints/{model}/{dataset}/{method}"
EVAL_RESULT = "results/eval/{model}/{dataset}/{method}/{task}.json"
# an evaluate-only row (config reference_models): {model} its name, {dataset} NO_DATASET, {method} REFERENCE
NO_DATASET = "none"
NO_SFT_DATASET = "-"  # its sft_dataset in Table 4
EVAL_GENERATIONS = "results/eval/{model}/{dataset}/{method}/{task}.generations.jsonl"
EVAL_ANSWERS = "results/eval/{model}/{dataset}/{method}/{task}.answers.json"  # a judged task's, before the judge
GENERATION_CACHE = "results/cache/generations/{model}/{dataset}/{method}"
NIH_HEATMAP = "results/figures/nih/{model}/{dataset}/{method}.png"
DIAGNOSIS_CSV = "results/diagnosis/{pair}/{experiment}.csv"
# a model file inside an installed package (package:<module>/<file>.gguf), imported once by rule import_model
IMPORTED_MODEL = "results/models/import/{name}"
IMPORTABLE = re.compile(r"package:[A-Za-z0-9_]+/(?:.*/)?([^/]+)\.gguf")
# the labelled real-language set rule real_language_set writes (config real_language)
REAL_LANGUAGE_SET = "results/real_language/labelled.json"
# a fine-tune of a grid model, as a path: it has its base's shape
FINE_TUNE = re.compile(r"results/models/([^/]+)/[^/]+/[^/]+/?")


class _Keep(dict):
    def __missing__(self, key):
        return "{" + key + "}"


def fill(template: str, **values) -> str:
    """The template with these wildcards filled in and the others left as `{name}`."""
    return template.format_map(_Keep(values))


def canonical(value):
    """Dicts with sorted keys, recursively: params compare by value, so reordering keys in a config file
    must not look like a change and rerun jobs."""
    if isinstance(value, dict):
        return {key: canonical(value[key]) for key in sorted(value)}
    if isinstance(value, list):
        return [canonical(item) for item in value]
    return value


def is_artifact(path: str) -> bool:
    """A workflow output: an input the DAG builds, and one the output cache can checksum."""
    return path.startswith("results/")


def is_local(path: str) -> bool:
    """A workflow output or an existing local file or directory: an input (editing it reruns its consumers),
    unlike a hub id or a `package:` path, which the job itself resolves."""
    return is_artifact(path) or Path(path).exists()


def local_inputs(paths: list[str]) -> list[str]:
    return [path for path in paths if is_local(path)]


# a hub repository id: a name, with its owner's namespace before a slash or (legacy models) without one
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(?:/[A-Za-z0-9][\w.-]*)?")
LOCAL_FILE_SUFFIXES = (".json", ".jsonl", ".parquet", ".csv", ".gguf")


def is_hub_id(source: str | None) -> bool:
    """A source that jobs fetch from the Hugging Face hub: none of the organism, a `package:` path, a workflow
    output, an existing local path, nor a local file's name (a data file suffix), and of the hub's id grammar."""
    return (
        isinstance(source, str)
        and source != "organism"
        and not is_local(source)
        and HUB_ID.fullmatch(source) is not None
        and not source.endswith(LOCAL_FILE_SUFFIXES)
    )


def drop_defaults(settings: dict, defaults: dict) -> None:
    """Remove each option of the original's procedure that is at its default: it is in a job's params only when
    chosen, so the params of a default run stay as they were before the option existed (nothing reruns)."""
    for option, default in defaults.items():
        if settings.get(option) == default:
            del settings[option]


class Shape(NamedTuple):
    """What the plan checks of a model before any job runs: its layers and its position window (None: unknown),
    and where they were read (named in errors)."""

    layers: int | None
    window: int | None
    source: str


def read_model_config(source: str) -> dict | None:
    """A model's config.json, read without torch: a local directory's, or for a hub id the copy in the local hub
    cache (huggingface_hub's try_to_load_from_cache, no network). None when it is in neither: a workflow output not
    made yet, a hub model never downloaded here; the job that loads the model then checks it."""
    path = Path(source)
    if path.is_dir():
        config = path / "config.json"
        return json.loads(config.read_text()) if config.is_file() else None
    if is_local(source):
        return None
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(source, "config.json")
    except Exception:  # no huggingface_hub where Snakemake runs (--sdm conda), or not a hub id
        return None
    return json.loads(Path(cached).read_text()) if isinstance(cached, str) else None


def shape_of(config: dict, source: str) -> Shape:
    return Shape(config.get("num_hidden_layers"), config.get("max_position_embeddings"), source)


def longest_nih_context(settings: dict, max_context: int) -> int:
    """Needle and haystack tokens of the NIH grid's longest context (`nih.grid` from min_context to the cap, each
    length less the buffer, a length at or below the buffer whole: `nih.context_budget`)."""
    longest = max(settings["min_context"], max_context) if settings["n_lengths"] > 1 else settings["min_context"]
    buffer = settings["context_buffer"]
    return longest if longest <= buffer else longest - buffer


# The quirk ablation (config `ablation`): a correction of these sections adds entries of the grid (a dataset; models,
# for a recipe's models), one of the others adds methods `<method>+<correction>`
ENTRY_SECTIONS = ("datasets", "models", "recipes")
METHOD_SECTIONS = ("scoring", "tagging", "evaluation")
TRAINING_SECTIONS = ("scoring", "tagging")  # what an indicator branch trains on: its scores and its tags
# recipe options that act only where [IND] is trained: a correction of them alone adds only tagged branches
INDICATOR_RECIPE_OPTIONS = {"indicator_token", "indicator_embedding"}
# settings a correction may not change, and why
FIXED_IN_ABLATION = {
    ("scoring", "seed_model"): "sets the run's coordinates or shared jobs, not one branch's procedure",
    ("scoring", "scores"): "sets the run's coordinates or shared jobs, not one branch's procedure",
    ("scoring", "shards"): "sets the run's coordinates or shared jobs, not one branch's procedure",
    ("evaluation", "tasks"): "sets the run's coordinates or shared jobs, not one branch's procedure",
    ("evaluation", "mtbench"): "MT-Bench is judged (a paid judge): its corrections are not among the ablation's",
}


def merged(base: dict, change: dict) -> dict:
    """A copy of `base` with `change` merged in, dict into dict, as Snakemake merges a second --configfile."""
    result = copy.deepcopy(base)
    for key, value in change.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = merged(result[key], value)
        else:
            result[key] = copy.deepcopy(value)
    return result


def _has_path(tree: dict, path: tuple) -> bool:
    for key in path:
        if not isinstance(tree, dict) or key not in tree:
            return False
        tree = tree[key]
    return True


def expand_ablation(config: dict) -> tuple[dict, dict[str, dict]]:
    """The config with the quirk ablation's entries added, and {correction: its fragment} of the corrections that
    add methods. A dataset correction adds `<dataset>+<correction>` (to every model that trains the dataset); a
    model correction `<model>+<correction>`; a recipe correction the recipe `<recipe>+<correction>` and a model
    `<model>+<correction>` for each model of that recipe. Errors name the config key."""
    expanded, variants = copy.deepcopy(config), {}
    for name, fragment in config["ablation"].items():
        key = f"config key ablation.{name}"
        entries = [section for section in ENTRY_SECTIONS if section in fragment]
        if (entries and len(fragment) > 1) or ("evaluation" in fragment and len(fragment) > 1):
            raise ValueError(
                f"{key}: a correction changes one stage: one of {', '.join(ENTRY_SECTIONS)}, scoring and tagging, "
                f"or evaluation (it has {sorted(fragment)}); split it in two"
            )
        for path, reason in FIXED_IN_ABLATION.items():
            if _has_path(fragment, path):
                raise ValueError(f"{key}.{'.'.join(path)}: {reason}; change it in the configuration itself")
        for section, change in fragment.items():
            if section in METHOD_SECTIONS:
                continue
            for entry in change:
                if entry not in config[section]:
                    raise ValueError(f"{key}.{section}.{entry}: not in {section} ({sorted(config[section])})")
                expanded[section][with_variant(entry, name)] = merged(config[section][entry], change[entry])
            if section == "datasets":
                for model in expanded["models"].values():
                    trained = model["datasets"]
                    if trained is not None:
                        trained += [with_variant(d, name) for d in change if d in trained]
            if section == "recipes":
                for model, settings in config["models"].items():
                    if settings["recipe"] in change:
                        variant = {**copy.deepcopy(settings), "recipe": with_variant(settings["recipe"], name)}
                        if set(change[settings["recipe"]]) <= INDICATOR_RECIPE_OPTIONS:
                            # options of [IND] alone: the vanilla branch trains as published, so only tagged ones
                            methods = variant["methods"] or config["methods"]
                            variant["methods"] = [m for m in methods if parse_method(m).with_indicator]
                        expanded["models"][with_variant(model, name)] = variant
        if not entries:
            variants[name] = fragment
    return expanded, variants


class Run(NamedTuple):
    """One fine-tune: a row of Table 4."""

    dataset: str
    model: str
    method: str


def check_references(config: dict) -> None:
    """Cross-references the schema cannot express; each message names the config key."""
    models, datasets, recipes = config["models"], config["datasets"], config["recipes"]
    check_methods(config["methods"])
    for task in ("squad", "quac"):
        if config["evaluation"][task]["metric"] == "drop_original":
            raise ValueError(f"config key evaluation.{task}.metric: drop_original scores DROP answers only")
    for name, model in models.items():
        if model["recipe"] not in recipes:
            raise ValueError(
                f"config key models.{name}.recipe: unknown recipe {model['recipe']!r} (recipes: {sorted(recipes)})"
            )
        for dataset in model["datasets"] or []:
            if dataset not in datasets:
                raise ValueError(
                    f"config key models.{name}.datasets: unknown dataset {dataset!r} (datasets: {sorted(datasets)})"
                )
        for method in model["methods"] or []:
            if method not in config["methods"]:
                raise ValueError(
                    f"config key models.{name}.methods: {method!r} is not in methods ({config['methods']})"
                )
    for name in config["reference_models"]:
        if name in models:
            raise ValueError(
                f"config key reference_models.{name}: also a key of models; an evaluate-only row needs a name of "
                "its own (its evaluations share the fine-tunes' results/eval/<model>/ folders)"
            )
    check_likelihood_ratio(config["scoring"]["likelihood_ratio"])
    scorer = config["scoring"]["seed_model"]
    if "path" in scorer:
        return
    for key, table in (("model", models), ("dataset", datasets)):
        if scorer.get(key) not in table:
            raise ValueError(
                f"config key scoring.seed_model.{key}: {scorer.get(key)!r} is not in {key}s "
                f"({sorted(table)}); give a {key} of the grid, or scoring.seed_model.path"
            )


def check_likelihood_ratio(settings: dict) -> None:
    """`split` is the regular expression of `instruction: split`, and only of it."""
    key = "config key scoring.likelihood_ratio"
    split = settings["split"]
    if settings["instruction"] == "split" and not split:
        raise ValueError(f"{key}.split: instruction split cuts the user message at a regular expression; give it")
    if settings["instruction"] != "split" and split is not None:
        raise ValueError(f"{key}.split: read only with instruction: split (instruction is {settings['instruction']})")
    if split:
        try:
            re.compile(split)
        except re.error as error:
            raise ValueError(f"{key}.split: {split!r} is not a regular expression ({error})") from None


class Plan:
    """Everything config-dependent the rules need, from a config validated against the schema (defaults in)."""

    def __init__(self, config: dict):
        check_references(config)
        self.published = config  # the configuration as given, without the ablation's entries
        config, self.variants = expand_ablation(config)
        # every correction's configuration, whole: each is validated as the configuration is (ablation_configs)
        self.corrected = {name: merged(self.published, fragment) for name, fragment in config["ablation"].items()}
        self.config = config
        self.datasets, self.models = config["datasets"], config["models"]
        self.references = config["reference_models"]
        self.methods = config["methods"]
        self.evaluation = config["evaluation"]
        self.tasks = self.evaluation["tasks"]
        self.scoring = config["scoring"]
        self.scorer = self.scoring["seed_model"]["name"]
        self.diagnosis = config["diagnosis"]
        self.pairs = self.diagnosis["pairs"]
        self.layer_study = dict(config["report"]["layer_agreement"])
        self.layer_study["dataset"] = self.layer_study["dataset"] or next(iter(self.datasets))
        self.check_methods_trained()

    # the grid

    def grid(self) -> list[Run]:
        """Every row of a fine-tune, in the paper's order: datasets, then models, then methods (the ablation's
        datasets and models after the published ones); then each row again under each method correction that
        applies to it (`applies`)."""
        runs = [
            Run(dataset, model, method)
            for dataset, model, method in itertools.product(self.datasets, self.models, self.methods)
            if self.models[model]["datasets"] is None or dataset in self.models[model]["datasets"]
            if self.models[model]["methods"] is None or method in self.models[model]["methods"]
            # one correction at a time: a corrected dataset is trained by the published models only
            if dataset in self.published["datasets"] or model in self.published["models"]
        ]
        published = [run for run in runs if not self.is_ablation_entry(run)]
        return runs + [
            run._replace(method=with_variant(run.method, variant))
            for variant in self.variants
            for run in published
            if self.applies(variant, run.method)
        ]

    def reference_runs(self) -> list[Run]:
        """The evaluate-only rows (config reference_models): named existing models, evaluated as they are; again
        under each correction of the evaluation."""
        methods = [REFERENCE] + [
            with_variant(REFERENCE, variant) for variant in self.variants if "evaluation" in self.variants[variant]
        ]
        return [Run(NO_DATASET, name, method) for method in methods for name in self.references]

    # the quirk ablation (config ablation)

    def is_ablation_entry(self, run: Run) -> bool:
        """A row of a dataset or model the ablation added (`sharegpt+<correction>`)."""
        return run.dataset not in self.published["datasets"] or run.model not in self.published["models"]

    def applies(self, variant: str, method: str) -> bool:
        """Whether a method correction makes a branch of its own from `method`: one of the evaluation always, one of
        the scores or tags only for a method that trains on tagged data (the vanilla branch has none)."""
        return variant in self.evaluation_variants() or parse_method(method).with_indicator

    def evaluation_variants(self) -> list[str]:
        """The corrections of the evaluation: they re-evaluate the published fine-tunes (rule evaluate_correction)."""
        return [name for name, fragment in self.variants.items() if "evaluation" in fragment]

    def training_variants(self) -> list[str]:
        """The corrections of the scores or the tags: they train branches of their own."""
        return [name for name in self.variants if name not in self.evaluation_variants()]

    def corrected_tasks(self, variant: str) -> list[str]:
        """The tasks a correction of the evaluation evaluates again: those it names, the QA tasks for qa_prompts,
        every generated task for a setting they share (batch_tokens, the backend); its row takes the others'
        results from the published row."""
        changed = self.variants[variant]["evaluation"]
        shared = [key for key in changed if key not in TASKS and key != "qa_prompts"]
        return [
            task
            for task in self.generated_tasks()
            if task in changed or shared or (task in QA_TASKS and "qa_prompts" in changed)
        ]

    def result_path(self, run: Run, task: str) -> str:
        """A row's result of a task: its own, or for a task its correction of the evaluation leaves alone, the
        published row's."""
        base, variant = split_variant(run.method)
        if variant in self.evaluation_variants() and task not in self.corrected_tasks(variant):
            run = run._replace(method=base)
        return fill(EVAL_RESULT, **run._asdict(), task=task)

    def trains_on_own_data(self, method: str) -> str | None:
        """The correction a method's training data carry (its tagged set, its scores): the method's own when it
        changes them, None when the method trains as the published branch does."""
        variant = parse_method(method).variant
        return variant if variant in self.training_variants() else None

    def settings(self, variant: str | None) -> dict:
        """The configuration a branch runs under: a method correction's, or the run's own (None)."""
        return self.config if variant is None else self.corrected[variant]

    def ablation_configs(self) -> dict[str, dict]:
        """{correction: the configuration with that correction alone}: start-up validates each against the schema,
        so a correction's values are checked as the configuration's are."""
        return self.corrected

    def method_pattern(self) -> str:
        """The {method} wildcard's constraint: the grammar's methods, and each under a method correction."""
        return variant_pattern(METHOD_PATTERN, self.variants)

    def trained_method_pattern(self) -> str:
        """The methods of a fine-tune evaluated whole (rule evaluate) and judged: under no correction of the
        evaluation."""
        return variant_pattern(METHOD_PATTERN, self.training_variants())

    def corrected_evaluation_pattern(self) -> str:
        """The methods of rule evaluate_correction: a fine-tune's or an evaluate-only row's under a correction of
        the evaluation."""
        names = "|".join(map(re.escape, self.evaluation_variants())) or "(?!)"
        return f"(?:{METHOD_PATTERN}|{re.escape(REFERENCE)})\\{VARIANT_MARK}(?:{names})"

    def tagging_pattern(self) -> str:
        return variant_pattern(TAGGING_PATTERN, self.training_variants())

    def corrected_model(self, model: str, dataset: str, method: str) -> str:
        """The model a correction of the evaluation evaluates: the published fine-tune, or the evaluate-only row's
        model."""
        if split_variant(method)[0] == REFERENCE:
            return self.reference_source(model)
        return self.model_path(model, dataset, method)

    def corrected_settings(self, model: str, dataset: str, method: str, task: str) -> dict[str, dict]:
        """{task: settings} of one task under a correction of the evaluation (rule evaluate_correction)."""
        if split_variant(method)[0] == REFERENCE:
            return {task: self.reference_evaluation_settings(model, method)[task]}
        return {task: self.evaluation_settings(model, dataset, method)[task]}

    def trained_method(self, method: str) -> str:
        """The fine-tune a row evaluates: its own, or for a correction of the evaluation the published branch's."""
        base, variant = split_variant(method)
        if variant is None or self.trains_on_own_data(method):
            return method
        return base

    def with_indicator(self, method: str) -> bool:
        """Whether a row's queries get [IND]: a tagged method's, never an evaluate-only row's."""
        return split_variant(method)[0] != REFERENCE and parse_method(method).with_indicator

    def model_path(self, model: str, dataset: str, method: str) -> str:
        return fill(MODEL, model=model, dataset=dataset, method=self.trained_method(method))

    def check_methods_trained(self) -> None:
        """Every method of `methods` is trained by some model: a model's own `methods` list (or `datasets`) can
        leave one untrained, and a setting that plans nothing would otherwise pass in silence."""
        trained = {run.method for run in self.grid()}
        untrained = [method for method in self.methods if method not in trained]
        if untrained:
            lists = ", ".join(f"models.{name}.methods: {model['methods']}" for name, model in self.models.items())
            raise ValueError(
                f"config key methods: no model trains {untrained} ({lists}); add each to the methods of a model "
                "that should train it, or remove it from methods"
            )

    def table4_rows(self) -> list[dict]:
        """Table 4's rows: the evaluate-only references first (sft_dataset `-`, method `reference`), then each
        fine-tune's coordinates; each with its evaluation json per task."""
        return [
            {
                "sft_dataset": NO_SFT_DATASET if run.dataset == NO_DATASET else run.dataset,
                "model": run.model,
                "method": run.method,
                "results": {task: self.result_path(run, task) for task in self.tasks},
            }
            for run in [*self.reference_runs(), *self.grid()]
        ]

    def paper_table4(self) -> list[str]:
        """The published Table 4 the rows are shown beside (report.paper_table4), as a list of none or one file: a
        bare string input would reach the script as a string, and its first character would be read as the file."""
        return [path] if (path := self.config["report"].get("paper_table4")) else []

    def eval_results(self) -> list[str]:
        return list(dict.fromkeys(path for row in self.table4_rows() for path in row["results"].values()))

    def nih_heatmaps(self) -> list[str]:
        """A heatmap of each row's own NIH evaluation (not of a row that takes the published row's)."""
        if "nih" not in self.tasks:
            return []
        own = [
            run for run in self.grid() if self.result_path(run, "nih") == fill(EVAL_RESULT, **run._asdict(), task="nih")
        ]
        return [fill(NIH_HEATMAP, **run._asdict()) for run in own]

    # data and base models

    def organism_settings(self) -> dict:
        return canonical(self.config["organism"])

    def organism_world_settings(self) -> dict:
        """What the organism's world is written from: its settings and the texts it must teach the base (the NIH
        needle, every QA prompt template, the diagnosis' response prefix)."""
        prompts = self.evaluation["qa_prompts"]
        return {
            "needle": self.evaluation["nih"]["needle"],
            "qa_templates": sorted({template for style in prompts.values() for template in style.values()}),
            "response_prefix": self.diagnosis["response_prefix"],
            "settings": self.organism_settings(),
        }

    def dataset_inputs(self, dataset: str) -> list[str]:
        """A local raw file is an input (editing it reruns preparation); a hub id is fetched by the job."""
        return local_inputs([self.datasets[dataset]["source"]])

    def base_source(self, model: str) -> str:
        """Where a base model's weights come from: the organism the workflow pretrains, a local path or a hub id."""
        return _model_source(self.models[model]["source"])

    def base_inputs(self, model: str) -> list[str]:
        """Base models the workflow builds are inputs; the job loads a directory or hub id itself."""
        source = self.base_source(model)
        return [source] if is_artifact(source) else []

    def reference_source(self, reference: str) -> str:
        """The model an evaluate-only row evaluates: the organism's base, a local path or a hub id."""
        return _model_source(self.references[reference]["source"])

    def reference_inputs(self, reference: str) -> list[str]:
        """A reference the workflow builds (the organism's base) is an input; the job loads others itself."""
        source = self.reference_source(reference)
        return [source] if is_artifact(source) else []

    # scoring and tagging

    def scorer_model(self) -> str:
        """The seed model that scores: the grid's vanilla fine-tune it names, or a path or hub id as given."""
        seed = self.scoring["seed_model"]
        if "path" in seed:
            return imported_path(seed["path"])
        return fill(MODEL, model=seed["model"], dataset=seed["dataset"], method="vanilla")

    def is_scorer_fine_tune(self, model: str, dataset: str, method: str) -> bool:
        """Whether a fine-tune is the seed model that scores (the scheduler runs it ahead of the others)."""
        return fill(MODEL, model=model, dataset=dataset, method=method) == self.scorer_model()

    def fine_tune_priority(self, model: str, dataset: str, method: str) -> int:
        """Rule finetune's scheduling priority: the seed model's fine-tune first (every scoring waits for it), then
        the full fine-tunes, the longest jobs, ahead of the adapters' (LoRA, QLoRA, qk-lora) and of the
        evaluations: a long job started last would run alone at the end of a run on few cores."""
        if self.is_scorer_fine_tune(model, dataset, method):
            return 2
        return int(self.recipe(model, dataset, method)["finetuning"] == "full")

    def scorer_inputs(self) -> list[str]:
        """The seed model is an input when the workflow trains it; a directory outside results/ is named in params
        (like a hub id): the output cache can only checksum files, not directories."""
        path = self.scorer_model()
        return [path] if is_artifact(path) else []

    def score_methods(self) -> list[str]:
        """The scores the run computes: the attention score (the paper's; Table 3, the instruction-length figure
        and the layer study report it) and every score an indicator method tags with, in SCORE_METHODS' order."""
        used = {ATTENTION, *self.scoring["scores"]}
        used |= {method.score for method in check_methods(self.methods) if method.score}
        return [score for score in SCORE_METHODS if score in used]

    def scorer_name(self, score: str = ATTENTION, window: int | None = None, variant: str | None = None) -> str:
        """The `{scorer}` of a score's paths: the seed model's name, then the score's short name (`-lr`), then a
        correction of the scoring (`+eq2-tokens`), then a model's own window (`-window4096`); the attention score's
        at scoring.max_length is the seed model's name alone, as in the paper's runs."""
        short = SCORE_METHODS[score]
        name = with_variant(f"{self.scorer}-{short}" if short else self.scorer, variant)
        return name + fill(SCORING_WINDOW, window=window) if window else name

    def scoring_variant(self, variant: str | None) -> str | None:
        """The correction a branch's scores carry: `variant` when it corrects the scoring, else None (the published
        scores serve it)."""
        return variant if variant is not None and "scoring" in self.variants[variant] else None

    def own_window(self, model: str | None) -> int | None:
        """A model's scoring window when it is not scoring.max_length (its indicator branches then have scorings
        and tagged sets of their own); None at the run's window."""
        window = self.models[model]["scoring_max_length"] if model else None
        return None if window in (None, self.scoring["max_length"]) else window

    def score_sets(self) -> dict[str, tuple[str, int | None, str | None]]:
        """{scorer name: (score, own window or None, correction or None)}: every score the run computes in
        scoring.max_length, and in each model's own window the scores its indicator branches tag by (only those:
        Table 3, the figures and the validity table read the run's window); under a correction of the scoring,
        the scores its branches tag by."""
        sets = {self.scorer_name(score): (score, None, None) for score in self.score_methods()}
        for run in self.grid():
            method = parse_method(run.method)
            score, window, variant = method.score, self.own_window(run.model), self.scoring_variant(method.variant)
            if score and (window or variant):
                sets.setdefault(self.scorer_name(score, window, variant), (score, window, variant))
        return sets

    def scorers(self) -> dict[str, str]:
        """{scorer name: score} of every score the run computes."""
        return {name: score for name, (score, *_) in self.score_sets().items()}

    def own_windows(self) -> list[int]:
        """The models' own scoring windows the run scores in (the `{window}` of their scorers and tagged sets)."""
        return sorted({window for _, window, _ in self.score_sets().values() if window})

    def scorer_max_length(self, scorer: str) -> int:
        """The window a scorer's jobs score in."""
        _, window, variant = self.score_sets()[scorer]
        return window or self.settings(variant)["scoring"]["max_length"]

    def score_settings(self, scorer: str) -> dict:
        """What one scorer's jobs compute, and nothing of another's (changing the layer never reruns the
        likelihood ratio): `method` and its settings, the keyword arguments of its module's `score_file`; a
        correction's scorer computes with the corrected settings."""
        score, _, variant = self.score_sets()[scorer]
        scoring = self.settings(variant)["scoring"]
        if score == ATTENTION:
            return {
                "compat": scoring["compat"],
                "layer": scoring["layer"],
                "method": ATTENTION,
                "truncation": scoring["truncation"],
            }
        return canonical({"method": LIKELIHOOD_RATIO, **scoring["likelihood_ratio"]})

    def score_module(self, scorer: str) -> str:
        """The module that computes a scorer's scores (its code digest reruns them when it changes)."""
        return "ctxaware.scoring" if self.scorers()[scorer] == ATTENTION else "ctxaware.likelihood_ratio"

    def scores_path(
        self, dataset: str, score: str = ATTENTION, window: int | None = None, variant: str | None = None
    ) -> str:
        return fill(SCORES, dataset=dataset, scorer=self.scorer_name(score, window, variant))

    def tagging_scores(self, dataset: str, tagging: str, window: int | None = None) -> str:
        """The scores a tagged branch (`{tagging}`: `0.6`, `lr-q0.3`, `0.6+<correction>`; at a model's own
        `window`) selects its turns by: its correction's when that corrects the scoring."""
        base, variant = split_variant(tagging)
        return self.scores_path(dataset, parse_tagging(base).score, window, self.scoring_variant(variant))

    def tagging_settings(self, tagging: str) -> dict:
        """config tagging as a tagged branch is tagged: its correction's when it has one."""
        return canonical(self.settings(split_variant(tagging)[1])["tagging"])

    def table3_taggings(self) -> list[dict]:
        """Table 3's rows beyond the paper's betas on the attention score: every tagging of the methods with a
        quantile or another score, per dataset, with the scores it reads."""
        taggings = [m.tagging for m in check_methods(self.methods) if m.tagging]
        extra = [t for t in dict.fromkeys(taggings) if t.score != ATTENTION or t.threshold.kind != BETA]
        return [
            {"dataset": dataset, "tagging": t.text, "scores": self.scores_path(dataset, t.score)}
            for dataset in self.datasets
            for t in extra
        ]

    def validity_scores(self) -> list[dict]:
        """The score files the validity table rates against the labels: every score the run computes, per dataset
        (the attention score at the scoring layer; the likelihood ratio has no layer)."""
        return [
            {
                "dataset": dataset,
                "method": score,
                "layer": self.scoring["layer"] if score == ATTENTION else None,
                "path": self.scores_path(dataset, score),
            }
            for score in self.score_methods()
            for dataset in self.datasets
        ]

    def sft_path(self, dataset: str, method: str, model: str | None = None) -> str:
        """The training data of a method: its dataset's vanilla copy or tagged set, the latter tagged from the
        model's own scoring window when it has one (`indicator-0.6-window4096`)."""
        parsed = parse_method(method)
        window = self.own_window(model) if parsed.with_indicator else None
        branch = with_variant(parsed.data_branch, self.trains_on_own_data(method))
        branch += fill(SCORING_WINDOW, window=window) if window else ""
        return fill(SFT, dataset=dataset, branch=branch)

    # fine-tuning

    def recipe(self, model: str, dataset: str, method: str) -> dict:
        """The model's recipe with the dataset's epoch override (the paper: 2 epochs on WizardLM), as the method
        trains it (qk-lora: LoRA on query and key projections only)."""
        recipe = dict(self.config["recipes"][self.models[model]["recipe"]])
        epochs = self.datasets[dataset]["epochs"]
        if epochs is not None:
            recipe["epochs"] = epochs
        drop_defaults(recipe, RECIPE_DEFAULTS)
        return canonical(training_recipe(recipe, method))

    # evaluation

    def task_settings(
        self,
        task: str,
        max_context: int | None = None,
        qa_prompt_style: str = "default",
        nih_dtype: str | None = None,
        variant: str | None = None,
    ) -> dict:
        """Everything one task's evaluation needs, as plain builtins so --rerun-triggers params sees changes; the
        MT-Bench judge's settings are the `judge` job's (`judge_settings`), so changing the judge never reruns an
        evaluation. `nih_dtype`: a model's own NIH precision (None: evaluation.nih.dtype); `variant`: a method
        correction, whose evaluation settings then apply."""
        evaluation = self.settings(variant)["evaluation"]
        settings = dict(evaluation[task])
        settings.pop("judge", None)
        settings["batch_tokens"] = evaluation["batch_tokens"]
        if task == "nih":
            settings["max_context"] = max_context
            settings["prompt_template"] = resolve_template(settings["prompt_template"])
            settings["dtype"] = nih_dtype or settings["dtype"]
        elif task in QA_TASKS:
            settings["prompt_template"] = evaluation["qa_prompts"][qa_prompt_style][task]
        drop_defaults(settings, PROCEDURE_DEFAULTS)
        return canonical(settings)

    def evaluation_settings(self, model: str, dataset: str, method: str | None = None) -> dict[str, dict]:
        """Every task as one fine-tune is evaluated: NIH up to the model's and the dataset's context cap, in the
        model's NIH precision, QA with the dataset's prompt style (paper Tables 5/6); under the method's
        correction when it has one."""
        caps = [self.models[model]["nih_max_context"], self.datasets[dataset]["nih_max_context"]]
        max_context = min(cap for cap in caps if cap is not None)
        style, nih_dtype = self.datasets[dataset]["qa_prompt_style"], self.models[model]["nih_dtype"]
        variant = split_variant(method)[1] if method else None
        return {task: self.task_settings(task, max_context, style, nih_dtype, variant) for task in self.tasks}

    def reference_evaluation_settings(self, reference: str, method: str = REFERENCE) -> dict[str, dict]:
        """Every task as an evaluate-only row is evaluated: NIH up to its own context cap, QA in its prompt style;
        under a correction of the evaluation for `reference+<correction>`."""
        settings = self.references[reference]
        cap, style, variant = settings["nih_max_context"], settings["qa_prompt_style"], split_variant(method)[1]
        return {task: self.task_settings(task, cap, style, variant=variant) for task in self.tasks}

    def evaluation_engine(self) -> dict:
        """The generation backend; vLLM settings only when vLLM is chosen, so they never rerun other backends."""
        if self.evaluation["backend"] == "vllm":
            return canonical({"backend": "vllm", "vllm": self.evaluation["vllm"]})
        return {"backend": self.evaluation["backend"]}

    def generated_tasks(self) -> list[str]:
        """The tasks `evaluate` scores itself (json and generations)."""
        return [task for task in self.tasks if task not in JUDGED_TASKS]

    def judged_tasks(self) -> list[str]:
        """The tasks `evaluate` answers and the `judge` job scores (MT-Bench)."""
        return [task for task in self.tasks if task in JUDGED_TASKS]

    def judge_settings(self) -> dict:
        """evaluation.mtbench.judge: the `judge` job's params (changing them reruns only the judge jobs)."""
        return canonical(self.evaluation["mtbench"]["judge"])

    def judge_files(self) -> list[str]:
        """A local judge's model directory, when local (editing it reruns the judge jobs)."""
        judge = self.evaluation["mtbench"]["judge"]
        return local_inputs([judge["model"]] if judge["backend"] == "local" else [])

    def evaluation_files(self, model: str, dataset: str, method: str | None = None) -> list[str]:
        """Local files the evaluations read (editing one reruns them); hub ids are not files."""
        return settings_files(self.evaluation_settings(model, dataset, method))

    def reference_evaluation_files(self, reference: str, method: str = REFERENCE) -> list[str]:
        return settings_files(self.reference_evaluation_settings(reference, method))

    # Section 2 on (base, instruct) pairs

    def haystack_inputs(self) -> list[str]:
        """The NIH haystack directory when it is local (editing an essay reruns NIH); a package's is not an input."""
        return local_inputs([self.evaluation["nih"]["haystack"]])

    def pair_model(self, pair: str, role: str) -> str | None:
        """A pair member's model as jobs load it (a package's model file: its import); None for a missing base."""
        return imported_path(self.pairs[pair][role])

    def pair_models(self, pair: str, roles: list[str]) -> list[str]:
        return [path for role in roles if (path := self.pair_model(pair, role)) is not None]

    def diagnosis_variants(self, pair: str) -> list[str]:
        """Table 7's variants the pair runs: the configured ones, the base model's only where the pair has one."""
        return [v for v in self.diagnosis["variants"] if v != "base" or self.pairs[pair]["base"] is not None]

    def diagnosis_nih(self, pair: str) -> dict:
        """The evaluation's NIH settings at the pair's context cap (templates and prefixes are set per variant);
        the Section 2 jobs load the pair's models themselves, in the default precision."""
        settings = self.task_settings("nih", self.pairs[pair]["nih_max_context"])
        settings.pop("dtype", None)
        return settings

    def capped_nih(self, pair: str, cap: int | None) -> dict:
        """The pair's NIH settings with its grid's longest context lowered to `cap` (None: as they are)."""
        settings = self.diagnosis_nih(pair)
        if cap is not None:
            settings["max_context"] = min(cap, settings["max_context"])
        return settings

    def allocation_nih(self, pair: str) -> dict:
        """The NIH grid whose attention allocation is read (diagnosis.allocation.nih_max_context)."""
        return self.capped_nih(pair, self.diagnosis["allocation"]["nih_max_context"])

    def steering_tasks(self, pair: str) -> dict[str, dict]:
        """Table 1's tasks, each with the chat template; QuAC and DROP use the default QA prompts."""
        steering = self.diagnosis["steering"]
        settings = {}
        for task in steering["tasks"]:
            if task == "nih":
                settings[task] = self.capped_nih(pair, steering["nih_max_context"])
                continue
            qa = self.task_settings(task)
            qa["limit"] = steering["limit"] or qa["limit"]
            qa.pop("dtype", None)  # steering loads the pair's models itself, in the default precision
            settings[task] = qa
        return settings

    def steering_files(self, pair: str) -> list[str]:
        settings = self.steering_tasks(pair)
        return local_inputs([path for task in settings for path in task_files(task, settings[task])])

    def steering(self) -> dict:
        return canonical({key: self.diagnosis["steering"][key] for key in ("alphas", "heads", "compat")})

    # models imported from packages, and the real-language set

    def imports(self) -> dict[str, str]:
        """{name: package reference} of every model file the run imports (rule import_model)."""
        sources = [model["source"] for model in (*self.models.values(), *self.references.values())]
        sources += [self.scoring["seed_model"].get("path")]
        sources += [pair[role] for pair in self.pairs.values() for role in ("base", "instruct")]
        sources += [self.config.get("real_language", {}).get("model")]
        found = {}
        for source in sources:
            match = IMPORTABLE.fullmatch(source or "")
            if match:
                found[match.group(1)] = source
        return found

    def import_settings(self, name: str) -> dict:
        return {"source": self.imports()[name], **canonical(self.config["imported_models"])}

    def real_language(self) -> dict | None:
        """The labelled real-language set's settings (config real_language), its model as jobs load it."""
        settings = self.config.get("real_language")
        if settings is None:
            return None
        return canonical({**settings, "model": imported_path(settings["model"])})

    def real_language_inputs(self) -> list[str]:
        return local_inputs([self.real_language()["model"]])

    # start-up checks: what a job would only find once it runs, checked before any job starts

    def organism_shape(self) -> Shape:
        pretraining = self.config["organism"]["pretraining"]
        return Shape(pretraining["num_layers"], pretraining["max_position_embeddings"], "organism.pretraining")

    def model_shape(self, source: str) -> Shape | None:
        """The shape of a model as the config names it: the organism (`organism`, its base directory) from its
        settings; a fine-tune of a grid model (results/models/{model}/...) from its base, whose layers and window
        fine-tuning keeps; a local directory or a cached hub id from its config.json. None when unknown here."""
        if source in ("organism", ORGANISM_BASE):
            return self.organism_shape()
        fine_tune = FINE_TUNE.fullmatch(source)
        if fine_tune and fine_tune.group(1) in self.models:
            return self.model_shape(self.models[fine_tune.group(1)]["source"])
        config = read_model_config(source)
        return None if config is None else shape_of(config, source)

    def check_layers(self) -> None:
        """`scoring.layer` and the layer study's layers exist in the seed model."""
        shape = self.model_shape(self.scorer_model())
        if shape is None or shape.layers is None:
            return
        for key, layers in (
            ("scoring.layer", [self.scoring["layer"]]),
            ("report.layer_agreement.layers", self.layer_study["layers"] or []),
        ):
            bad = [layer for layer in layers if layer >= shape.layers]
            if bad:
                raise ValueError(
                    f"config key {key}: layer(s) {bad} out of range: the seed model ({shape.source}) has "
                    f"{shape.layers} layers, 0 to {shape.layers - 1}"
                )

    def nih_caps(self) -> list[tuple[str, int, str]]:
        """(key, context cap, model source) of every NIH grid the run generates: each fine-tune's (the smaller of
        its model's and its dataset's nih_max_context) and each diagnosis pair's, for both its models."""
        caps = []
        if "nih" in self.tasks:
            for dataset_name, model_name in dict.fromkeys((run.dataset, run.model) for run in self.grid()):
                model, dataset = self.models[model_name], self.datasets[dataset_name]
                cap_of_dataset = dataset["nih_max_context"]
                if cap_of_dataset is not None and cap_of_dataset < model["nih_max_context"]:
                    caps.append((f"datasets.{dataset_name}.nih_max_context", cap_of_dataset, model["source"]))
                else:
                    caps.append((f"models.{model_name}.nih_max_context", model["nih_max_context"], model["source"]))
        for name, pair in self.pairs.items():
            caps += [
                (f"diagnosis.pairs.{name}.nih_max_context", pair["nih_max_context"], imported_path(pair[r]))
                for r in ("base", "instruct")
                if pair[r] is not None
            ]
        return caps

    def scoring_windows(self) -> list[tuple[str, int]]:
        """(key, window) of every window the run scores in: scoring.max_length, and each model's own window its
        indicator branches are scored in."""
        windows = [("scoring.max_length", self.scoring["max_length"])]
        planned = self.own_windows()
        for name in self.models:
            window = self.own_window(name)
            if window in planned:
                windows.append((f"models.{name}.scoring_max_length", window))
        return windows

    def check_scoring_windows(self) -> None:
        """Each scoring window fits the seed model's max_position_embeddings, unless scoring.beyond_seed_positions
        is extrapolate (the original's *_4k sets, presumably scored by its TinyLlama probe in 4096 tokens)."""
        if self.scoring["beyond_seed_positions"] == "extrapolate":
            return
        shape = self.model_shape(self.scorer_model())
        if shape is None or shape.window is None:
            return
        for key, window in self.scoring_windows():
            if window > shape.window:
                raise ValueError(
                    f"config key {key}: the scoring window {window} is longer than the max_position_embeddings "
                    f"{shape.window} of the seed model ({shape.source}), which never saw positions beyond it. Lower "
                    f"{key}, or set scoring.beyond_seed_positions: extrapolate to score there all the same"
                )

    def check_nih_windows(self) -> None:
        """The longest NIH context's needle and haystack, with the new tokens, fit each model's window (the job
        checks the whole prompt, its template's tokens too, before generating)."""
        settings = self.evaluation["nih"]
        for key, cap, source in self.nih_caps():
            shape = self.model_shape(source)
            if shape is None or shape.window is None:
                continue
            context = longest_nih_context(settings, cap)
            if context + settings["max_new_tokens"] > shape.window:
                raise ValueError(
                    f"config key {key}: the longest NIH context ({cap}) holds {context} tokens of needle and haystack "
                    f"after evaluation.nih.context_buffer {settings['context_buffer']}; with "
                    f"evaluation.nih.max_new_tokens {settings['max_new_tokens']} that is "
                    f"{context + settings['max_new_tokens']}, over the max_position_embeddings {shape.window} of "
                    f"{shape.source}. Lower {key}, or raise evaluation.nih.context_buffer"
                )

    def check_haystack(self) -> None:
        """A haystack the run reads is a directory with text (.txt files); one the workflow writes (the
        organism's) is never empty. Shorter than a context is no error: it is cycled, as the original did."""
        source = self.evaluation["nih"]["haystack"]
        if ("nih" not in self.tasks and not self.pairs) or is_artifact(source):
            return
        from ctxaware.sources import resolve

        directory = Path(resolve(source, "evaluation.nih.haystack"))
        if not any(path.stat().st_size for path in directory.glob("*.txt")):
            raise FileNotFoundError(
                f"config key evaluation.nih.haystack: {source} is no directory of .txt files with text"
            )

    def check_mtbench_files(self) -> None:
        """MT-Bench's question and reference files exist, unless a job writes them (results/) or the questions
        are a hub dataset (no file suffix)."""
        if "mtbench" not in self.tasks:
            return
        from ctxaware.sources import is_package_ref, resolve

        settings = self.evaluation["mtbench"]
        for name in ("questions", "references"):
            source, key = settings[name], f"evaluation.mtbench.{name}"
            if source is None or is_artifact(source):
                continue
            if is_package_ref(source):
                resolve(source, key)
            elif (name == "references" or Path(source).suffix in (".json", ".jsonl")) and not Path(source).is_file():
                raise FileNotFoundError(f"config key {key}: no file {source}")

    def check_startup(self) -> None:
        """Everything a job would find wrong that is known before it runs, each error naming its config key:
        nothing is deleted nor recomputed for a setting that cannot work (README: Start-up checks)."""
        self.check_layers()
        self.check_scoring_windows()
        self.check_nih_windows()
        self.check_haystack()
        self.check_mtbench_files()

    def judge_key_missing(self, environ) -> str | None:
        """The error when the run grades MT-Bench with the openai judge and the variable that holds its key is
        unset or empty, as the judge job's own check (`OpenAIJudge.check_key`; api_key_env null: no key is sent)."""
        judge = self.evaluation["mtbench"]["judge"]
        if "mtbench" not in self.tasks or judge["backend"] != "openai" or judge["api_key_env"] is None:
            return None
        if environ.get(judge["api_key_env"]):
            return None
        return (
            f"config key evaluation.mtbench.judge.api_key_env: the environment variable {judge['api_key_env']} is "
            f"not set (or empty); the openai judge ({judge['base_url']}) grades MT-Bench with the key it holds. Set "
            "it where the judge jobs run, set api_key_env to null for a server without authentication, or choose "
            "evaluation.mtbench.judge.backend reference or local"
        )

    # jobs

    def stage_resources(self, stage: str) -> dict:
        """Job resources of a stage from config resources.<stage>, the one place they are set for every executor.
        The Slurm executor turns them into sbatch options: mem_mb -> --mem, runtime (minutes) -> -t,
        cpus_per_task -> --cpus-per-task, gpu N -> --gpus=N (with gpu_model M: --gpus=M:N); gpu=0 asks for none.
        """
        settings = self.config["resources"][stage]
        resources = {key: settings[key] for key in ("mem_mb", "runtime", "cpus_per_task", "gpu")}
        if settings["gpu"] and settings["gpu_model"]:
            resources["gpu_model"] = settings["gpu_model"]
        return resources

    def threads(self, stage: str) -> int:
        return self.config["resources"][stage]["cpus_per_task"]


def _model_source(source: str) -> str:
    return ORGANISM_BASE if source == "organism" else imported_path(source)


def imported_path(source: str | None) -> str | None:
    """Where the workflow imports a package's model file to (`import_model`); any other source as it is."""
    match = IMPORTABLE.fullmatch(source or "")
    return fill(IMPORTED_MODEL, name=match.group(1)) if match else source


def settings_files(settings: dict[str, dict]) -> list[str]:
    """The local files the tasks of `settings` read."""
    return local_inputs([path for task in settings for path in task_files(task, settings[task])])


def task_files(task: str, settings: dict) -> list[str]:
    """The paths a task's settings name: the NIH haystack, MT-Bench's questions and references, a QA source (a local
    judge's model is the judge job's, `Plan.judge_files`). Which are files is for `local_inputs` to say."""
    if task == "nih":
        return [settings["haystack"]]
    if task == "mtbench":
        references = [settings["references"]] if settings["references"] else []
        return [settings["questions"], *references]
    return [settings["source"]]
