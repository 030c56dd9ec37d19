"""Real Snakemake runs of the DAG on the embedded default (in a copy of the workflow, so results/ stays clean).
The complete run is the session fixture `embedded_run` (conftest.py)."""

import base64
import json
import math
import re

import pandas as pd
import pytest
import yaml
from smk_helpers import configured_plan, copy_workflow, indicator_methods, planned_jobs, snakemake

from ctxaware.tables import TASK_COLUMN

pytestmark = pytest.mark.workflow


def test_table4_has_every_configured_row_with_scores_in_range(embedded_run):
    config = config_of(embedded_run)
    table = pd.read_csv(embedded_run / "results/tables/table4.csv")
    assert list(table.columns) == ["sft_dataset", "model", "method", "nih", "squad", "quac", "drop", "avg", "mt_bench"]
    expected = set(configured_plan(embedded_run / "config/config.yaml").grid())
    assert set(map(tuple, table[["sft_dataset", "model", "method"]].to_numpy())) == expected
    assert len(table) == len(expected)
    assert {"vanilla", "qk-lora", *indicator_methods(config)} <= set(table["method"])  # every kind of method
    for column in ["nih", "squad", "quac", "drop", "avg"]:
        assert table[column].between(0, 1).all(), column
    assert table["mt_bench"].between(1, 10).all()
    # the csv's cells are rounded to 4 decimals: their mean is the rounded avg within 1e-4
    context = table[["nih", "squad", "quac", "drop"]].mean(axis=1).to_numpy()
    assert table["avg"].to_numpy() == pytest.approx(context, abs=1e-4)
    for suffix in ("md", "tex"):
        assert (embedded_run / f"results/tables/table4.{suffix}").stat().st_size > 0
    for row in table.itertuples(index=False):
        for task, column in TASK_COLUMN.items():
            assert getattr(row, column) == pytest.approx(eval_score(embedded_run, row, task), abs=5e-5), (row, task)


def eval_score(workdir, row, task) -> float:
    """An evaluation's `score`, checked against the mean of its generations' per-record scores (MT-Bench: of the
    judge's ratings that did not fail)."""
    stem = workdir / f"results/eval/{row.model}/{row.sft_dataset}/{row.method}/{task}"
    score = json.loads(stem.with_suffix(".json").read_text())["score"]
    records = pd.read_json(f"{stem}.generations.jsonl", lines=True)
    per_record = records.loc[~records["failed"], "rating"] if task == "mtbench" else records["score"]
    assert len(per_record) > 0 and score == pytest.approx(per_record.mean(), abs=1e-9), stem
    return score


def config_of(workdir) -> dict:
    return yaml.safe_load((workdir / "config/config.yaml").read_text())


def test_scores_tagging_and_table3_select_a_real_subset(embedded_run):
    scores = pd.read_parquet(embedded_run / "results/scores/sharegpt/tiny-sharegpt.parquet")
    assert list(scores.columns[:5]) == ["conversation_id", "turn", "score", "n_response_tokens", "truncated"]
    valid = scores["score"].dropna()
    assert valid.between(0, 1).all() and len(valid) > 40
    table3 = pd.read_csv(embedded_run / "results/tables/table3.csv")
    config = config_of(embedded_run)
    assert set(table3["beta"]) == set(config["report"]["table3_betas"])
    seed = config["scoring"]["seed_model"]["name"]
    for row in table3.itertuples(index=False):  # the share of assistant turns scored above beta (NaN: untagged)
        dataset_scores = pd.read_parquet(embedded_run / f"results/scores/{row.dataset}/{seed}.parquet")["score"]
        assert row.ratio == pytest.approx((dataset_scores > row.beta).sum() / len(dataset_scores), abs=5e-5), row
    at_06 = table3[table3["beta"] == 0.6]["ratio"]
    assert ((at_06 > 0) & (at_06 < 1)).any()  # thresholds select a real subset, not all or nothing
    method = indicator_methods(yaml.safe_load((embedded_run / "config/config.yaml").read_text()))[0]
    tagged = pd.read_parquet(embedded_run / f"results/sft/sharegpt/{method}.parquet")
    n_tagged = sum(m["content"].endswith(" [IND]") for ms in tagged["messages"] for m in ms if m["role"] == "user")
    assert n_tagged == round((scores["score"] > float(method.removeprefix("indicator-"))).sum())


def test_figures_and_eval_files_exist(embedded_run):
    config = config_of(embedded_run)
    figures = list((embedded_run / "results/figures/nih").rglob("*.png"))
    assert len(figures) == len(configured_plan(embedded_run / "config/config.yaml").grid())
    for figure in ("threshold_ablation", "layer_agreement", "instruction_lengths"):
        assert (embedded_run / f"results/figures/{figure}.png").stat().st_size > 0
    agreement = pd.read_csv(embedded_run / "results/tables/layer_agreement.csv")
    layers = configured_plan(embedded_run / "config/config.yaml").config["organism"]["pretraining"]["num_layers"]
    assert set(agreement["layer_a"]) == set(range(layers))  # every layer of the seed model
    assert len(agreement) == layers * layers  # its values are checked on a hand-made table in test_layers.py
    method = indicator_methods(config)[0]
    nih = pd.read_json(embedded_run / f"results/eval/tiny/sharegpt/{method}/nih.generations.jsonl", lines=True)
    assert len(nih) == 9 and nih["prompt_tokens"].gt(0).all()


def test_adding_a_beta_schedules_only_that_branch(embedded_run):
    config = yaml.safe_load((embedded_run / "config/config.yaml").read_text())
    config["methods"] = [*config["methods"], "indicator-0.7"]
    config["models"]["tiny"]["methods"] = [*config["models"]["tiny"]["methods"], "indicator-0.7"]
    (embedded_run / "config/more-betas.yaml").write_text(yaml.safe_dump(config))
    output = snakemake(embedded_run, "-n", "--cores", "2", "--configfile", "config/more-betas.yaml").stdout
    jobs = planned_jobs(output)
    rules = {rule for rule, _ in jobs}
    assert not rules & {"score_turns", "gather_scores", "score_layers", "prepare_dataset", "pretrain_organism"}
    branch_rules = {"tag_indicator", "finetune", "evaluate", "judge", "nih_heatmap"}
    for rule, path in jobs:
        if rule in branch_rules:
            assert "indicator-0.7" in path, (rule, path)
    assert {rule for rule, _ in jobs} >= branch_rules
    counts = {rule: sum(r == rule for r, _ in jobs) for rule in rules}
    grid = configured_plan(embedded_run / "config/more-betas.yaml").grid()
    pairs = {(run.dataset, run.model) for run in grid if run.method == "indicator-0.7"}
    assert counts["tag_indicator"] == len(config["datasets"]) == len(pairs)
    assert counts["finetune"] == counts["evaluate"] == counts["judge"] == counts["nih_heatmap"] == len(pairs)
    assert rules - branch_rules <= {"table4", "threshold_ablation", "all"}


def test_the_both_scores_config_adds_only_its_branches_and_the_likelihood_ratio(embedded_run):
    """config/organism-scores.yaml (the README's extra run of issue 15) on top of a finished embedded default:
    the likelihood ratio's scoring, the two new tagged branches per dataset and their fine-tunes, nothing else
    upstream; the score validity table is redone with the likelihood ratio's rows."""
    args = ("-n", "--cores", "2", "--configfile", "config/config.yaml", "config/organism-scores.yaml")
    jobs = planned_jobs(snakemake(embedded_run, *args).stdout)
    counts = {rule: sum(r == rule for r, _ in jobs) for rule, _ in jobs}
    n_datasets = len(config_of(embedded_run)["datasets"])
    assert counts["score_turns"] == counts["gather_scores"] == n_datasets
    seed = config_of(embedded_run)["scoring"]["seed_model"]["name"]
    assert all(f"/{seed}-lr" in path for rule, path in jobs if rule in {"score_turns", "gather_scores"})
    assert counts["tag_indicator"] == counts["finetune"] == counts["evaluate"] == counts["judge"] == 2 * n_datasets
    for rule, path in jobs:
        if rule in {"tag_indicator", "finetune", "evaluate", "judge", "nih_heatmap"}:
            assert "indicator-q0.3" in path or "indicator-lr-q0.3" in path, (rule, path)
    assert set(counts) == {
        *("score_turns", "gather_scores", "tag_indicator", "finetune", "evaluate", "judge", "nih_heatmap"),
        *("score_validity", "table3", "table4", "threshold_ablation"),
    }


def plan_with(workdir, name: str, change) -> list[tuple[str, str]]:
    """The jobs a dry run schedules after `change(config)` edits a copy of the embedded default."""
    config = yaml.safe_load((workdir / "config/config.yaml").read_text())
    change(config)
    (workdir / f"config/{name}.yaml").write_text(yaml.safe_dump(config))
    return planned_jobs(snakemake(workdir, "-n", "--cores", "2", "--configfile", f"config/{name}.yaml").stdout)


def test_changing_an_evaluation_setting_reruns_only_evaluations_and_tables(embedded_run):
    def change(config):
        config["evaluation"]["squad"]["max_new_tokens"] += 1

    jobs = plan_with(embedded_run, "squad-tokens", change)
    counts = {rule: sum(r == rule for r, _ in jobs) for rule, _ in jobs}
    assert counts["evaluate"] == len(configured_plan(embedded_run / "config/config.yaml").grid())  # all on SQuAD
    # MT-Bench's answers are rewritten, so its judge reruns too (with a judgment cache: no new requests)
    assert set(counts) <= {"evaluate", "judge", "nih_heatmap", "table4", "threshold_ablation", "all"}
    assert "table4" in counts


def _indicator_branches_only(jobs):
    for rule, path in jobs:
        if rule in {"finetune", "evaluate", "judge", "nih_heatmap"}:
            assert "indicator-" in path, (rule, path)  # vanilla and qk-lora fine-tunes never depend on the scores
    rules = {rule for rule, _ in jobs}
    assert {"score_turns", "gather_scores", "tag_indicator", "finetune", "evaluate", "table3", "table4"} <= rules
    assert not rules & {"organism_world", "pretrain_organism", "prepare_dataset", "vanilla_sft"}
    return rules


def test_changing_the_scoring_layer_reruns_scoring_and_indicator_branches(embedded_run):
    def change(config):
        config["scoring"]["layer"] = config["scoring"]["layer"] - 1

    rules = _indicator_branches_only(plan_with(embedded_run, "layer", change))
    assert not rules & {"score_layers", "layer_agreement"}  # the layer study scores every layer anyway


def test_changing_the_seed_model_reruns_scoring_and_indicator_branches(embedded_run):
    def change(config):
        config["scoring"]["seed_model"] = {"name": "tiny-ultrachat", "model": "tiny", "dataset": "ultrachat"}

    jobs = plan_with(embedded_run, "seed", change)
    _indicator_branches_only(jobs)
    assert all("tiny-ultrachat" in path for rule, path in jobs if rule in {"score_turns", "score_layers"})


def test_changing_the_score_method_reruns_scoring_and_indicator_branches(embedded_run):
    """The indicator branches tagged by the likelihood ratio instead of the attention score: new scores (beside the
    attention score's, which stay), tagging and the indicator fine-tunes; the vanilla and qk-lora fine-tunes and
    the attention score's reports (layer study, instruction lengths) are not rerun."""

    def change(config):
        def by_likelihood_ratio(methods):
            return [method.replace("indicator-0.9", "indicator-lr-q0.3") for method in methods]

        config["methods"] = by_likelihood_ratio(config["methods"])
        for model in config["models"].values():
            model["methods"] = by_likelihood_ratio(model["methods"])

    jobs = plan_with(embedded_run, "likelihood-ratio", change)
    rules = _indicator_branches_only(jobs)
    assert not rules & {"score_layers", "layer_agreement", "instruction_lengths"}
    assert "score_validity" in rules  # with the likelihood ratio's rows
    seed = config_of(embedded_run)["scoring"]["seed_model"]["name"]
    scored = {path for rule, path in jobs if rule in {"score_turns", "gather_scores"}}
    assert len(scored) == 2 * len(config_of(embedded_run)["datasets"])
    assert all(f"/{seed}-lr" in path for path in scored), scored  # the attention scores are not recomputed
    for rule, path in jobs:
        if rule in {"tag_indicator", "finetune", "evaluate", "judge", "nih_heatmap"}:
            assert "indicator-lr-q0.3" in path, (rule, path)


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
    assert counts["judge"] == counts["evaluate"]  # and one CPU job judges its MT-Bench answers
    assert counts["score_turns"] == 3 and counts["tag_indicator"] == 3 and counts["prepare_dataset"] == 3
    assert not {"organism_world", "pretrain_organism"} & set(counts)


def test_paper_config_plans_both_scores_when_asked(tmp_path):
    """config/paper.yaml's documented change: the likelihood ratio's top 30% beside the paper's indicator-0.6."""
    workdir = copy_workflow(tmp_path / "paper")
    config = yaml.safe_load((workdir / "config/paper.yaml").read_text())
    config["methods"] = [*config["methods"], "indicator-lr-q0.3"]
    (workdir / "config/both.yaml").write_text(yaml.safe_dump(config))
    jobs = planned_jobs(snakemake(workdir, "-n", "--cores", "2", "--configfile", "config/both.yaml").stdout)
    counts = {rule: sum(r == rule for r, _ in jobs) for rule, _ in jobs}
    assert counts["finetune"] == counts["evaluate"] == 3 * 3 * 3
    assert counts["score_turns"] == counts["gather_scores"] == counts["tag_indicator"] == 2 * 3
    assert counts["score_layers"] == 1 and counts["table3"] == 1 and counts["prepare_dataset"] == 3
    scores = sorted(path for rule, path in jobs if rule == "gather_scores")
    assert scores == sorted(
        f"results/scores/{dataset}/tinyllama-sharegpt{suffix}.parquet"
        for dataset in ("sharegpt", "ultrachat", "wizardlm")
        for suffix in ("", "-lr")
    )
    tagged = sorted(path for rule, path in jobs if rule == "tag_indicator")
    assert tagged == sorted(
        f"results/sft/{dataset}/{branch}.parquet"
        for dataset in ("sharegpt", "ultrachat", "wizardlm")
        for branch in ("indicator-0.6", "indicator-lr-q0.3")
    )


def test_misspelled_config_key_is_named(tmp_path):
    workdir = copy_workflow(tmp_path / "bad")
    config = (workdir / "config/config.yaml").read_text().replace("learning_rate:", "learning_rat:", 1)
    assert "learning_rat:" in config
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
    for path in (embedded_run / "results/eval").rglob("*.json"):
        score = json.loads(path.read_text())["score"]
        assert isinstance(score, float | int) and not math.isnan(score), path


def test_indicator_models_get_ind_on_every_query_and_vanilla_never(embedded_run):
    for task in ("nih", "squad", "quac", "drop", "mtbench"):
        indicator, qk_indicator = indicator_methods(yaml.safe_load((embedded_run / "config/config.yaml").read_text()))
        runs = [("tiny", indicator, True), ("tiny", "vanilla", False), ("tiny-qlora", qk_indicator, True)]
        for model, method, expected in runs + [("tiny-qlora", "qk-lora", False)]:
            path = embedded_run / f"results/eval/{model}/sharegpt/{method}/{task}.generations.jsonl"
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


def test_report_embeds_table4_and_every_figure_with_captions_offline(embedded_run):
    snakemake(embedded_run, "--report", "report.html")
    html = (embedded_run / "report.html").read_text()
    assert not re.search(r"<(?:script|link|img)[^>]+(?:src|href)=\"https?://", html)  # self-contained
    results = json.loads(re.search(r"var results = (\{.*?\});\n", html, re.DOTALL).group(1))
    config = yaml.safe_load((embedded_run / "config/config.yaml").read_text())
    figures = configured_plan(embedded_run / "config/config.yaml").nih_heatmaps()
    figures += [f"results/figures/{n}.png" for n in ("threshold_ablation", "layer_agreement", "instruction_lengths")]
    figures += ["results/figures/nih_template_study.png", "results/figures/attention_allocation.png"]
    figures += ["results/figures/score_validity.png"]
    tables = [f"results/tables/{n}.csv" for n in ("table4", "table3", "nih_template_study", "attention_steering")]
    tables += ["results/tables/score_validity.csv"]
    assert set(results) == {*tables, *figures}
    for path, entry in results.items():
        data = base64.b64decode(entry["data_uri"].split("base64,", 1)[1])
        assert data == (embedded_run / path).read_bytes(), path
        assert "How it was made" in entry["caption"], path
    table4 = results["results/tables/table4.csv"]
    assert table4["job_properties"]["rule"] == "table4"
    seed = config["scoring"]["seed_model"]["name"]
    assert seed in table4["caption"] and re.search(rf"layer\s+{config['scoring']['layer']}\b", table4["caption"])


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
    # template tokens exist only with the chat template (the masses are checked against eager attention in
    # test_diagnosis.py)
    assert (allocation.loc[~allocation["chat_template"], "template_raw"] == 0).all()
    assert (allocation.loc[allocation["chat_template"], "template_raw"] > 0).all()
    layers = configured_plan(embedded_run / "config/config.yaml").config["organism"]["pretraining"]["num_layers"]
    assert set(allocation["layer"]) == set(range(layers))
    steering = pd.read_csv(embedded_run / "results/tables/attention_steering.csv")
    assert set(steering["compat"]) == {"none"}
    assert sorted(set(steering.loc[steering["steered"], "alpha"])) == [0.01, 0.1, 0.3, 0.5, 0.7, 0.9]
    assert set(steering["task"]) == {"nih", "quac", "drop"}
    assert len(steering) == len(pairs) * 3 * 7  # baseline and six alphas per task
    assert steering["score"].between(0, 1).all()
    for name in ("nih_template_study", "attention_allocation"):
        assert (embedded_run / f"results/figures/{name}.png").stat().st_size > 0
