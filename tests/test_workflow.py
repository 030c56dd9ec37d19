"""Real Snakemake runs of the DAG on the embedded default (in a copy of the workflow, so results/ stays clean)."""

import itertools
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW_FILES = ["Snakefile", "workflow", "config", "resources", "envs"]
pytestmark = pytest.mark.workflow


def copy_workflow(destination: Path) -> Path:
    destination.mkdir(parents=True, exist_ok=True)
    for name in WORKFLOW_FILES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, destination / name)
        else:
            shutil.copy(source, destination / name)
    return destination


def snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", *args], cwd=workdir, env=env, capture_output=True, text=True
    )
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-8000:]}")
    return result


def configured_grid(config: dict) -> list[tuple[str, str, str]]:
    """(dataset, model, method) of every fine-tune the config asks for."""
    return [
        (d, m, x)
        for d, m, x in itertools.product(config["datasets"], config["models"], config["methods"])
        if config["models"][m].get("datasets") is None or d in config["models"][m]["datasets"]
    ]


def planned_jobs(dry_run_output: str) -> list[tuple[str, str]]:
    """(rule, first output) of every job a dry run lists."""
    jobs = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", dry_run_output):
        match = re.match(r"(?:local)?rule (\w+):", block.strip())
        output = re.search(r"^\s+output: ([^,\s]+)", block, re.MULTILINE)
        if match and output:
            jobs.append((match.group(1), output.group(1)))
    return jobs


@pytest.fixture(scope="module")
def embedded_run(tmp_path_factory):
    workdir = copy_workflow(tmp_path_factory.mktemp("embedded"))
    snakemake(workdir, "--cores", "2")
    return workdir


def test_table4_has_every_configured_row_with_scores_in_range(embedded_run):
    config = yaml.safe_load((embedded_run / "config/config.yaml").read_text())
    table = pd.read_csv(embedded_run / "results/tables/table4.csv")
    assert list(table.columns) == ["sft_dataset", "model", "method", "nih", "squad", "quac", "drop", "avg", "mt_bench"]
    expected = set(configured_grid(config))
    assert set(map(tuple, table[["sft_dataset", "model", "method"]].to_numpy())) == expected
    assert len(table) == len(expected)
    assert {"qk-lora", "qk-lora-indicator-0.6"} <= set(table["method"])  # the embedded default trains every method
    for column in ["nih", "squad", "quac", "drop", "avg"]:
        assert table[column].between(0, 1).all(), column
    assert table["mt_bench"].between(1, 10).all()
    assert table["avg"].to_numpy() == pytest.approx(table[["nih", "squad", "quac", "drop"]].mean(axis=1).to_numpy())
    for suffix in ("md", "tex"):
        assert (embedded_run / f"results/tables/table4.{suffix}").stat().st_size > 0


def test_scores_tagging_and_table3_select_a_real_subset(embedded_run):
    scores = pd.read_parquet(embedded_run / "results/scores/sharegpt/tiny-sharegpt.parquet")
    assert list(scores.columns[:5]) == ["conversation_id", "turn", "score", "n_response_tokens", "truncated"]
    valid = scores["score"].dropna()
    assert valid.between(0, 1).all() and len(valid) > 40
    table3 = pd.read_csv(embedded_run / "results/tables/table3.csv")
    assert set(table3["beta"]) == {0.5, 0.6, 0.7, 0.8}
    for _, group in table3.groupby("dataset"):
        assert group.sort_values("beta")["ratio"].is_monotonic_decreasing
    at_06 = table3[table3["beta"] == 0.6]["ratio"]
    assert ((at_06 > 0) & (at_06 < 1)).any()  # thresholds select a real subset, not all or nothing
    tagged = pd.read_parquet(embedded_run / "results/sft/sharegpt/indicator-0.6.parquet")
    n_tagged = sum(m["content"].endswith(" [IND]") for ms in tagged["messages"] for m in ms if m["role"] == "user")
    assert n_tagged == round((scores["score"] > 0.6).sum())


def test_figures_and_eval_files_exist(embedded_run):
    figures = list((embedded_run / "results/figures/nih").rglob("*.png"))
    config = yaml.safe_load((embedded_run / "config/config.yaml").read_text())
    assert len(figures) == len(configured_grid(config))
    for figure in ("threshold_ablation", "layer_agreement", "instruction_lengths"):
        assert (embedded_run / f"results/figures/{figure}.png").stat().st_size > 0
    agreement = pd.read_csv(embedded_run / "results/tables/layer_agreement.csv")
    assert set(agreement["layer_a"]) == set(range(4))  # every layer of the tiny seed model
    assert agreement["disagreement"].between(0, 1).all() and (agreement["rmse"] >= 0).all()
    diagonal = agreement[agreement["layer_a"] == agreement["layer_b"]]
    assert (diagonal["disagreement"] == 0).all() and (diagonal["rmse"] == 0).all()
    nih = pd.read_json(embedded_run / "results/eval/tiny/sharegpt/indicator-0.6/nih.generations.jsonl", lines=True)
    assert len(nih) == 9 and nih["prompt_tokens"].gt(0).all()


def test_adding_a_beta_schedules_only_that_branch(embedded_run):
    config = yaml.safe_load((embedded_run / "config/config.yaml").read_text())
    config["methods"] = [*config["methods"], "indicator-0.7"]
    (embedded_run / "config/more-betas.yaml").write_text(yaml.safe_dump(config))
    output = snakemake(embedded_run, "-n", "--cores", "2", "--configfile", "config/more-betas.yaml").stdout
    jobs = planned_jobs(output)
    rules = {rule for rule, _ in jobs}
    assert not rules & {"score_turns", "gather_scores", "score_layers", "prepare_dataset", "build_tiny_model"}
    branch_rules = {"tag_indicator", "finetune", "evaluate", "nih_heatmap"}
    for rule, path in jobs:
        if rule in branch_rules:
            assert "indicator-0.7" in path, (rule, path)
    assert {rule for rule, _ in jobs} >= branch_rules
    counts = {rule: sum(r == rule for r, _ in jobs) for rule in rules}
    pairs = {(d, m) for d, m, _ in configured_grid(config)}
    assert counts["tag_indicator"] == len(config["datasets"])
    assert counts["finetune"] == counts["evaluate"] == counts["nih_heatmap"] == len(pairs)
    assert rules - branch_rules <= {"table4", "threshold_ablation", "all"}


def test_nothing_to_do_after_a_complete_run(embedded_run):
    output = snakemake(embedded_run, "-n", "--cores", "2").stdout
    assert "Nothing to be done" in output, output[-2000:]


def test_paper_config_plans_the_full_grid_offline(tmp_path):
    workdir = copy_workflow(tmp_path / "paper")
    output = snakemake(workdir, "-n", "--cores", "2", "--configfile", "config/paper.yaml").stdout
    counts = {}
    for rule, _ in planned_jobs(output):
        counts[rule] = counts.get(rule, 0) + 1
    methods = len(yaml.safe_load((workdir / "config/paper.yaml").read_text())["methods"])
    assert counts["finetune"] == 3 * 3 * methods
    assert counts["gather_scores"] == 3 and counts["score_layers"] == 1
    assert counts["evaluate"] == 3 * 3 * methods  # one job per model runs its five benchmarks
    assert counts["score_turns"] == 3 and counts["tag_indicator"] == 3 and counts["prepare_dataset"] == 3
    assert "build_tiny_model" not in counts


def test_misspelled_config_key_is_named(tmp_path):
    workdir = copy_workflow(tmp_path / "bad")
    config = (workdir / "config/config.yaml").read_text().replace("learning_rate: 0.001", "learning_rat: 0.001")
    (workdir / "config/config.yaml").write_text(config)
    result = snakemake(workdir, "-n", "--cores", "1", check=False)
    assert result.returncode != 0
    assert "learning_rat" in result.stdout + result.stderr


def test_bad_dataset_row_is_named_and_nothing_computed_is_lost(tmp_path):
    workdir = copy_workflow(tmp_path / "badrow")
    bad = workdir / "resources/sft/bad.jsonl"
    bad.write_text('{"prompt": "x", "prompt_id": "p1"}\n')  # an UltraChat row without its messages
    config = yaml.safe_load((workdir / "config/config.yaml").read_text())
    config["datasets"]["ultrachat"]["source"] = "resources/sft/bad.jsonl"
    (workdir / "config/bad.yaml").write_text(yaml.safe_dump(config))
    snakemake(workdir, "--cores", "1", "results/data/sharegpt.parquet")
    result = snakemake(
        workdir,
        "--cores",
        "1",
        "--configfile",
        "config/bad.yaml",
        "--keep-going",
        "results/data/ultrachat.parquet",
        "results/data/sharegpt.parquet",
        check=False,
    )
    assert result.returncode != 0
    log = (workdir / "results/logs/prepare_dataset/ultrachat.log").read_text()
    assert "bad.jsonl" in log and "row 0" in log and "messages" in log
    assert (workdir / "results/data/sharegpt.parquet").exists()


def test_json_outputs_are_finite_numbers(embedded_run):
    import json

    for path in (embedded_run / "results/eval").rglob("*.json"):
        score = json.loads(path.read_text())["score"]
        assert isinstance(score, float | int) and not math.isnan(score), path


def test_indicator_models_get_ind_on_every_query_and_vanilla_never(embedded_run):
    for task in ("nih", "squad", "quac", "drop", "mtbench"):
        methods = [("indicator-0.6", True), ("vanilla", False), ("qk-lora-indicator-0.6", True), ("qk-lora", False)]
        for method, expected in methods:
            path = embedded_run / f"results/eval/tiny/sharegpt/{method}/{task}.generations.jsonl"
            records = pd.read_json(path, lines=True)
            assert len(records) > 0
            assert records["prompt"].str.endswith(" [IND]").all() == expected, (task, method)
            assert records["prompt"].str.contains(r"\[IND\]").any() == expected, (task, method)


def test_scoring_scatters_into_the_requested_number_of_shards(tmp_path):
    workdir = copy_workflow(tmp_path / "shards")
    output = snakemake(workdir, "-n", "--cores", "2", "--configfile", "config/paper.yaml", "--set-scatter", "score=4")
    jobs = planned_jobs(output.stdout)
    shards = sorted(path for rule, path in jobs if rule == "score_turns")
    assert len(shards) == 12 and shards[0].endswith("shard-1-of-4.parquet")
    assert sum(rule == "gather_scores" for rule, _ in jobs) == 3


def test_diagnosis_targets_cover_section_2(embedded_run):
    """Table 7 / Figure 2, Figures 3 and 4, Table 1 on the embedded tiny pair."""
    config = yaml.safe_load((embedded_run / "config/config.yaml").read_text())
    pairs = list(config["diagnosis"]["pairs"])
    study = pd.read_csv(embedded_run / "results/tables/nih_template_study.csv")
    variants = ["base", "no_template", "template_prefix", "template_no_prefix"]
    assert sorted(study["variant"]) == sorted(variants * len(pairs))
    assert (study["n_templates"] == 4).all()
    assert study["recall_mean"].between(0, 1).all() and (study["recall_std"] >= 0).all()
    allocation = pd.read_csv(embedded_run / "results/tables/attention_allocation.csv")
    assert set(allocation["chat_template"]) == {True, False}
    assert ((allocation["user"] + allocation["assistant"] + allocation["bos"]) - 1).abs().max() < 1e-4
    assert set(allocation["layer"]) == set(range(config["tiny"]["num_layers"]))
    steering = pd.read_csv(embedded_run / "results/tables/attention_steering.csv")
    assert set(steering["compat"]) == {"none"}
    assert sorted(set(steering.loc[steering["steered"], "alpha"])) == [0.01, 0.1, 0.3, 0.5, 0.7, 0.9]
    assert set(steering["task"]) == {"nih", "quac", "drop"}
    assert len(steering) == len(pairs) * 3 * 7  # baseline and six alphas per task
    assert steering["score"].between(0, 1).all()
    for name in ("nih_template_study", "attention_allocation"):
        assert (embedded_run / f"results/figures/{name}.png").stat().st_size > 0
