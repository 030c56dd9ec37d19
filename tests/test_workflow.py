"""Real Snakemake runs of the DAG on the embedded default (in a copy of the workflow, so results/ stays clean).
The complete run is the session fixture `embedded_run` (conftest.py)."""

import base64
import hashlib
import json
import math
import os
import re
import shutil

import pandas as pd
import pytest
import yaml
from smk_helpers import (
    LOCAL_RUN,
    configured_plan,
    copy_workflow,
    indicator_methods,
    planned_inputs,
    planned_jobs,
    snakemake,
)

from ctxaware.methods import REFERENCE
from ctxaware.plan import NO_DATASET
from ctxaware.tables import TASK_COLUMN

pytestmark = pytest.mark.workflow


def test_table4_has_every_configured_row_with_scores_in_range(embedded_run):
    config = config_of(embedded_run)
    table = pd.read_csv(embedded_run / "results/tables/table4.csv")
    assert list(table.columns) == ["sft_dataset", "model", "method", "nih", "squad", "quac", "drop", "avg", "mt_bench"]
    rows = configured_plan(embedded_run / "config/config.yaml").table4_rows()
    expected = [(row["sft_dataset"], row["model"], row["method"]) for row in rows]
    assert list(map(tuple, table[["sft_dataset", "model", "method"]].to_numpy())) == expected
    assert expected[0] == ("-", "organism-base", "reference")  # the organism's base, evaluated as it is
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
    dataset = NO_DATASET if row.method == REFERENCE else row.sft_dataset
    stem = workdir / f"results/eval/{row.model}/{dataset}/{row.method}/{task}"
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
    plan = configured_plan(embedded_run / "config/config.yaml")
    assert counts["evaluate"] == len(plan.grid()) and counts["evaluate_reference"] == len(plan.references)
    # MT-Bench's answers are rewritten, so its judge reruns too, the reference rows' included (with a judgment
    # cache: no new requests)
    assert counts["judge"] == counts["evaluate"] + counts["evaluate_reference"]
    tables = {"nih_heatmap", "table4", "threshold_ablation", "all"}
    assert set(counts) <= {"evaluate", "evaluate_reference", "judge", *tables}
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


LLAMA_REFERENCES = ("llama2-7b-chat", "llama3-8b-instruct")


def results_digest(workdir) -> dict[str, str]:
    """Every file under results/ (links as their targets) with the sha256 of its bytes."""
    return {
        str(path.relative_to(workdir)): (
            f"-> {os.readlink(path)}" if path.is_symlink() else hashlib.sha256(path.read_bytes()).hexdigest()
        )
        for path in sorted((workdir / "results").rglob("*"))
        if path.is_file() or path.is_symlink()
    }


def test_a_bad_layer_fails_at_start_up_and_keeps_every_result(embedded_run, tmp_path):
    """Issue 23: after a complete run, `scoring.layer` beyond the seed model's layers stops a real run before any
    job starts, naming the key, and leaves every file under results/ byte-identical; the setting reverted plans
    what it planned before (nothing, on this code's own complete run): no scoring shard was deleted."""
    workdir = tmp_path / "run"
    shutil.copytree(embedded_run, workdir, symlinks=True)  # a copy (mtimes kept): the other tests' run stays as is
    config_file = workdir / "config/config.yaml"
    good = config_file.read_text()
    config = yaml.safe_load(good)
    layers = configured_plan(config_file).config["organism"]["pretraining"]["num_layers"]
    before = snakemake(workdir, "-n", "--cores", "2")
    if not os.environ.get("CTXAWARE_EMBEDDED_RUN"):  # the fixture is this code's complete run
        assert "Nothing to be done" in before.stdout + before.stderr, before.stdout[-2000:]
    digest = results_digest(workdir)
    assert any(path.startswith("results/scores/") for path in digest)

    config["scoring"]["layer"] = layers + 5
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    failed = snakemake(workdir, "--cores", "2", check=False, timeout=900)
    assert failed.returncode != 0
    assert f"config key scoring.layer: layer(s) [{layers + 5}] out of range" in failed.stdout + failed.stderr, (
        failed.stdout[-3000:]
    )
    assert "rule score_turns" not in failed.stdout + failed.stderr  # no job started
    assert results_digest(workdir) == digest

    config_file.write_text(good)
    after = snakemake(workdir, "-n", "--cores", "2")
    assert planned_jobs(after.stdout) == planned_jobs(before.stdout)
    nothing = ["Nothing to be done" in run.stdout + run.stderr for run in (before, after)]
    assert nothing[0] == nothing[1]


def test_an_openai_judge_without_its_key_warns_a_dry_run_and_stops_a_run_that_judges(embedded_run, tmp_path):
    """Issue 23: the judge's key variable unset: a dry run plans (with a warning), a real run due to judge stops
    before any job starts (every result kept), and a run that judges nothing needs no key. Only the judge jobs
    depend on the judge's settings: evaluate keeps its results."""
    workdir = tmp_path / "run"
    shutil.copytree(embedded_run, workdir, symlinks=True)
    config = yaml.safe_load((workdir / "config/config.yaml").read_text())
    config["evaluation"]["mtbench"]["judge"] = {"backend": "openai", "api_key_env": "CTXAWARE_TEST_UNSET_KEY"}
    (workdir / "config/openai.yaml").write_text(yaml.safe_dump(config))
    args = ("--cores", "2", "--configfile", "config/openai.yaml")
    message = "config key evaluation.mtbench.judge.api_key_env: the environment variable CTXAWARE_TEST_UNSET_KEY"
    dry = snakemake(workdir, "-n", *args)
    assert message in dry.stdout + dry.stderr
    planned = {rule for rule, _ in planned_jobs(dry.stdout)}
    assert "judge" in planned and not planned & {"evaluate", "evaluate_reference"}
    digest = results_digest(workdir)
    run = snakemake(workdir, *args, check=False, timeout=900)
    assert run.returncode != 0 and message in run.stdout + run.stderr
    assert "rule judge" not in run.stdout + run.stderr and results_digest(workdir) == digest
    snakemake(workdir, "results/tables/table3.csv", *args, "--forcerun", "table3")  # no judgment, no key


def test_a_method_no_model_trains_stops_the_run_naming_it(tmp_path):
    """Issue 23, item 7: on the embedded default each model lists its own methods, so a method added to the
    top-level `methods` only would plan nothing but the tables: start-up stops and names it."""
    workdir = copy_workflow(tmp_path / "untrained")
    config = yaml.safe_load((workdir / "config/config.yaml").read_text())
    config["methods"] = [*config["methods"], "indicator-0.55"]
    (workdir / "config/untrained.yaml").write_text(yaml.safe_dump(config))
    result = snakemake(workdir, "-n", "--cores", "2", "--configfile", "config/untrained.yaml", check=False)
    assert result.returncode != 0
    assert (
        "config key methods: no model trains ['indicator-0.55'] (models.tiny.methods: " in result.stdout + result.stderr
    )


def test_paper_config_plans_the_full_grid_offline(tmp_path):
    workdir = copy_workflow(tmp_path / "paper")
    output = snakemake(workdir, "-n", "--cores", "2", "--configfile", "config/paper.yaml").stdout
    counts = {}
    for rule, _ in planned_jobs(output):
        counts[rule] = counts.get(rule, 0) + 1
    methods = len(yaml.safe_load((workdir / "config/paper.yaml").read_text())["methods"])
    assert counts["finetune"] == 3 * 3 * methods
    # per dataset, a scoring in 2047 tokens (TinyLlama's rows) and one in 4096 (the Llama rows': the original's *_4k)
    assert counts["gather_scores"] == 2 * 3 and counts["score_layers"] == 1
    assert counts["evaluate"] == 3 * 3 * methods  # one job per model runs its five benchmarks
    # Table 4's evaluated references: the instruct models as they are, no fine-tune of theirs
    jobs = planned_jobs(output)
    references = sorted(path for rule, path in jobs if rule == "evaluate_reference")
    assert references == [f"results/eval/{name}/none/reference/nih.json" for name in LLAMA_REFERENCES]
    # one CPU job judges each evaluation's MT-Bench answers, the references' too
    judged = sorted(path for rule, path in jobs if rule == "judge" and "/none/reference/" in path)
    assert judged == [f"results/eval/{name}/none/reference/mtbench.json" for name in LLAMA_REFERENCES]
    assert counts["judge"] == counts["evaluate"] + len(LLAMA_REFERENCES)
    assert not any(
        name in path for rule, path in jobs if rule not in {"evaluate_reference", "judge"} for name in LLAMA_REFERENCES
    )
    assert counts["score_turns"] == 2 * 3 and counts["prepare_dataset"] == 3
    assert counts["tag_indicator"] == counts["tag_indicator_at_window"] == 3
    assert not {"organism_world", "pretrain_organism"} & set(counts)


def test_paper_config_scores_the_llama_rows_in_their_own_window(tmp_path):
    """Issue 22 (b): the original tagged the Llama rows' data in 4096 tokens (its *_4k sets), TinyLlama's in 2047:
    models.<m>.scoring_max_length adds one scoring per dataset, with its gather and tagging jobs, at paths of its
    own; the TinyLlama branches read the 2047-token scores at the paths a run without the option has."""
    workdir = copy_workflow(tmp_path / "paper")
    config = yaml.safe_load((workdir / "config/paper.yaml").read_text())
    assert [config["models"][m].get("scoring_max_length") for m in config["models"]] == [None, 4096, 4096]
    for model in config["models"].values():
        model.pop("scoring_max_length", None)
    (workdir / "config/one-window.yaml").write_text(yaml.safe_dump(config))
    dry_run = snakemake(workdir, "-n", "--cores", "2", "--configfile", "config/paper.yaml").stdout
    one_window = snakemake(workdir, "-n", "--cores", "2", "--configfile", "config/one-window.yaml").stdout
    datasets = ("sharegpt", "ultrachat", "wizardlm")
    added = set(planned_jobs(dry_run)) - set(planned_jobs(one_window))
    assert sorted(added) == sorted(
        [
            *[
                ("score_turns", f"results/scores/{d}/tinyllama-sharegpt-window4096/shard-1-of-1.parquet")
                for d in datasets
            ],
            *[("gather_scores", f"results/scores/{d}/tinyllama-sharegpt-window4096.parquet") for d in datasets],
            *[("tag_indicator_at_window", f"results/sft/{d}/indicator-0.6-window4096.parquet") for d in datasets],
        ]
    )
    assert set(planned_jobs(one_window)) - set(planned_jobs(dry_run)) == set()
    inputs = planned_inputs(dry_run)
    for d in datasets:
        assert f"results/sft/{d}/indicator-0.6.parquet" in inputs[f"results/models/tinyllama/{d}/indicator-0.6"]
        assert inputs[f"results/sft/{d}/indicator-0.6.parquet"][1] == f"results/scores/{d}/tinyllama-sharegpt.parquet"
        for llama in ("llama2-7b", "llama3-8b"):
            assert (
                f"results/sft/{d}/indicator-0.6-window4096.parquet"
                in inputs[f"results/models/{llama}/{d}/indicator-0.6"]
            )
            assert f"results/sft/{d}/vanilla.parquet" in inputs[f"results/models/{llama}/{d}/vanilla"]


def test_the_corrected_overlay_plans_the_published_procedures_jobs(tmp_path):
    """config/paper-corrected.yaml changes settings, not coordinates: over config/paper.yaml it plans the same
    jobs on the same paths (its settings: test_plan's overlay test)."""
    workdir = copy_workflow(tmp_path / "corrected")
    published = snakemake(workdir, "-n", "--cores", "2", "--configfile", "config/paper.yaml").stdout
    overlay = ("--configfile", "config/paper.yaml", "config/paper-corrected.yaml")
    corrected = snakemake(workdir, "-n", "--cores", "2", *overlay).stdout
    assert sorted(planned_jobs(corrected)) == sorted(planned_jobs(published)) and planned_jobs(published)


# what each kind of correction of the quirk ablation may add: rules whose outputs carry `+<correction>`
ABLATION_RULES = {
    "evaluation": {"evaluate_correction"},
    "tagging": {"tag_indicator", "tag_indicator_at_window", "finetune", "evaluate", "judge", "nih_heatmap"},
    "scoring": {
        *("score_turns", "gather_scores", "tag_indicator", "tag_indicator_at_window"),
        *("finetune", "evaluate", "judge", "nih_heatmap"),
    },
    "recipes": {"finetune", "evaluate", "judge", "nih_heatmap"},
    "datasets": {
        *("prepare_dataset", "vanilla_sft", "score_turns", "gather_scores", "tag_indicator"),
        *("tag_indicator_at_window", "finetune", "evaluate", "judge", "nih_heatmap"),
    },
}


def test_the_quirk_ablation_adds_only_each_corrections_branches_to_the_published_plan(tmp_path):
    """Issue 22: config/paper-ablation.yaml over config/paper.yaml plans every published job on the same path, and
    beyond them only jobs whose outputs name one correction (`+<correction>`), of the stages that correction
    changes, and the table of the ablation. Counts from the paper's grid (3 datasets x 3 models x {vanilla,
    indicator-0.6}, 2 references; TinyLlama on a recipe of its own, both Llamas on llama-lora)."""
    workdir = copy_workflow(tmp_path / "ablation")
    published_run = snakemake(workdir, "-n", "--cores", "2", "--configfile", "config/paper.yaml").stdout
    args = ("-n", "--cores", "2", "--configfile", "config/paper.yaml", "config/paper-ablation.yaml")
    ablation_run = snakemake(workdir, *args).stdout
    published, ablation = planned_jobs(published_run), planned_jobs(ablation_run)
    assert set(published) <= set(ablation)
    corrections = yaml.safe_load((workdir / "config/paper-ablation.yaml").read_text())["ablation"]
    added = {name: [] for name in corrections}
    for rule, path in set(ablation) - set(published):
        if rule == "quirk_ablation":
            continue
        names = [name for name in corrections if re.search(rf"\+{re.escape(name)}(?:[/.-]|$)", path)]
        assert len(names) == 1, (rule, path)
        added[names[0]].append(rule)
    assert [rule for rule, _ in set(ablation) - set(published) if rule == "quirk_ablation"] == ["quirk_ablation"]
    for name, rules in added.items():
        kinds = [kind for kind in ABLATION_RULES if kind in corrections[name]]
        assert set(rules) <= set().union(*(ABLATION_RULES[kind] for kind in kinds)), (name, set(rules))
    counts = {name: {rule: rules.count(rule) for rule in rules} for name, rules in added.items()}
    # each correction alone: a corrected dataset by the published models (3 x 2 methods), a corrected recipe's
    # models on the published datasets, [IND]'s options on the tagged branch only; scores and tags: the 9 tagged rows
    finetunes = {
        **{"sharegpt-refusal-filter": 6, "wizardlm-official": 6, "special-indicator": 9, "qlora": 12},
        **{"trainable-indicator": 6, "eq2-tokens": 9, "truncated-unscored": 9, "no-period": 9},
    }
    assert {name: c.get("finetune", 0) for name, c in counts.items() if c.get("finetune")} == finetunes
    for name in finetunes:
        assert counts[name]["finetune"] == counts[name]["evaluate"] == counts[name]["judge"]
    # scored again in both windows (TinyLlama's 2047, the Llamas' 4096): per dataset, and per corrected dataset
    assert counts["eq2-tokens"]["score_turns"] == counts["truncated-unscored"]["score_turns"] == 2 * 3
    assert counts["sharegpt-refusal-filter"]["score_turns"] == 2 and "score_turns" not in counts["no-period"]
    # a correction of the evaluation: every row's fine-tune (18) and reference (2) again, on its tasks only
    corrected_tasks = {"generation-prompt": 3, "sentence-cut": 3, "qa-auto-dtype": 3}
    corrected_tasks |= {"quac-original-golds": 1, "drop-100-tokens": 1}
    assert {name: counts[name]["evaluate_correction"] / 20 for name in corrected_tasks} == corrected_tasks
    inputs = planned_inputs(ablation_run)
    evaluation = "results/eval/tinyllama/sharegpt/indicator-0.6+sentence-cut/squad.json"
    assert inputs[evaluation][0] == "results/models/tinyllama/sharegpt/indicator-0.6"  # the published fine-tune
    assert (
        "results/sft/sharegpt/indicator-0.6+no-period.parquet"
        in inputs["results/models/tinyllama/sharegpt/indicator-0.6+no-period"]
    )
    # the "." correction tags from the published scores, the scoring correction from its own
    assert inputs["results/sft/sharegpt/indicator-0.6+no-period.parquet"][1] == (
        "results/scores/sharegpt/tinyllama-sharegpt.parquet"
    )
    assert inputs["results/sft/sharegpt/indicator-0.6+eq2-tokens-window4096.parquet"][1] == (
        "results/scores/sharegpt/tinyllama-sharegpt+eq2-tokens-window4096.parquet"
    )


def test_a_correction_with_a_bad_value_stops_at_start_up_naming_it(tmp_path):
    workdir = copy_workflow(tmp_path / "bad-correction")
    (workdir / "config/bad.yaml").write_text(yaml.safe_dump({"ablation": {"cut": {"scoring": {"compat": "bogus"}}}}))
    result = snakemake(workdir, "-n", "--configfile", "config/paper.yaml", "config/bad.yaml", check=False)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "config key ablation.cut" in output and "'bogus' is not one of" in output, output[-2000:]


def test_paper_config_plans_both_scores_when_asked(tmp_path):
    """config/paper.yaml's documented change: the likelihood ratio's top 30% beside the paper's indicator-0.6."""
    workdir = copy_workflow(tmp_path / "paper")
    config = yaml.safe_load((workdir / "config/paper.yaml").read_text())
    config["methods"] = [*config["methods"], "indicator-lr-q0.3"]
    (workdir / "config/both.yaml").write_text(yaml.safe_dump(config))
    jobs = planned_jobs(snakemake(workdir, "-n", "--cores", "2", "--configfile", "config/both.yaml").stdout)
    counts = {rule: sum(r == rule for r, _ in jobs) for rule, _ in jobs}
    assert counts["finetune"] == counts["evaluate"] == 3 * 3 * 3
    # each score in TinyLlama's window (2047) and in the Llama rows' (4096)
    assert counts["score_turns"] == counts["gather_scores"] == 2 * 2 * 3
    assert counts["tag_indicator"] == counts["tag_indicator_at_window"] == 2 * 3
    assert counts["score_layers"] == 1 and counts["table3"] == 1 and counts["prepare_dataset"] == 3
    scores = sorted(path for rule, path in jobs if rule == "gather_scores")
    assert scores == sorted(
        f"results/scores/{dataset}/tinyllama-sharegpt{suffix}{window}.parquet"
        for dataset in ("sharegpt", "ultrachat", "wizardlm")
        for suffix in ("", "-lr")
        for window in ("", "-window4096")
    )
    tagged = sorted(path for rule, path in jobs if rule.startswith("tag_indicator"))
    assert tagged == sorted(
        f"results/sft/{dataset}/{branch}{window}.parquet"
        for dataset in ("sharegpt", "ultrachat", "wizardlm")
        for branch in ("indicator-0.6", "indicator-lr-q0.3")
        for window in ("", "-window4096")
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


def test_a_correction_of_the_evaluation_runs_on_the_published_fine_tunes_and_moves_only_its_column(
    embedded_run, tmp_path
):
    """Issue 22's quirk ablation, run on a copy of a finished embedded default: a correction of SQuAD's answer cut
    (lm-eval's ". " instead of the first sentence) evaluates SQuAD again on every published fine-tune and the
    reference, and nothing else: no published result changes but Table 4 and its figure. Each corrected response
    is the published one (the same model and prompt), its answer lm-eval's cut of it. The lm-eval cut keeps the
    first sentence whole or runs past it, so containment can only rise: the ablation table's SQuAD change is at
    least 0 on every row, its other columns exactly 0 (taken from the published rows), the average a quarter of it.
    """
    from ctxaware.metrics import lm_eval_cut

    workdir = tmp_path / "ablation"
    shutil.copytree(embedded_run, workdir, symlinks=True)
    correction = {"ablation": {"lm-eval-cut": {"evaluation": {"squad": {"answer_cut": "lm_eval"}}}}}
    (workdir / "config/cut.yaml").write_text(yaml.safe_dump(correction))
    args = ("--cores", "2", "--configfile", "config/config.yaml", "config/cut.yaml")
    jobs = planned_jobs(snakemake(workdir, "-n", *args).stdout)
    plan = configured_plan(workdir / "config/config.yaml")
    rows = len(plan.grid()) + len(plan.references)
    assert sorted(path for rule, path in jobs if rule == "evaluate_correction") == sorted(
        f"results/eval/{model}/{dataset}/{method}+lm-eval-cut/squad.json"
        for dataset, model, method in [*plan.reference_runs(), *plan.grid()]
    )
    tables = {"table4", "threshold_ablation", "quirk_ablation"}
    assert {rule for rule, _ in jobs} == {"evaluate_correction", *tables}
    before = results_digest(workdir)
    snakemake(workdir, *args)
    after = results_digest(workdir)
    redone = ("results/tables/table4.", "results/figures/threshold_ablation.png", "results/logs/")
    changed = [path for path in before if after[path] != before[path] and not path.startswith(redone)]
    assert changed == []
    for dataset, model, method in [*plan.reference_runs(), *plan.grid()]:
        folder = workdir / "results/eval" / model / dataset
        published = read_jsonl(folder / method / "squad.generations.jsonl")
        corrected = read_jsonl(folder / f"{method}+lm-eval-cut" / "squad.generations.jsonl")
        assert [r["response"] for r in corrected] == [r["response"] for r in published]
        assert [r["answer"] for r in corrected] == [lm_eval_cut(r["response"]) for r in corrected]
    ablation = pd.read_csv(workdir / "results/tables/quirk_ablation.csv", keep_default_na=False, na_values=[""])
    assert len(ablation) == rows and set(ablation["correction"]) == {"lm-eval-cut"}
    assert (ablation["squad"] >= 0).all()
    for column in ("nih", "quac", "drop"):
        assert (ablation[column] == 0).all(), column
    assert ablation["mt_bench"].fillna(0).eq(0).all()
    assert ablation["avg"].tolist() == pytest.approx((ablation["squad"] / 4).tolist(), abs=1e-4)  # csv: 4 digits
    table4 = pd.read_csv(workdir / "results/tables/table4.csv")
    assert len(table4) == 2 * rows


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_the_seed_models_fine_tune_starts_among_the_first_fine_tunes(embedded_run):
    """Rule finetune's priority: after pretraining, the scheduler starts the seed model's fine-tune, which every
    scoring (so every tagged branch) waits for, among the first fine-tunes (one per core), not after the others."""
    plan = configured_plan(embedded_run / "config/config.yaml")
    log = sorted((embedded_run / ".snakemake/log").glob("*.snakemake.log"))[0].read_text()  # the complete run's
    started = re.findall(r"rule finetune:\n(?:.*\n)*?\s+output: (\S+)", log)
    assert sorted(started) == sorted(plan.model_path(run.model, run.dataset, run.method) for run in plan.grid())
    assert plan.scorer_model() in started[: int(LOCAL_RUN[LOCAL_RUN.index("--cores") + 1])], started


def test_json_outputs_are_finite_numbers(embedded_run):
    """Every result file Table 4 reads (the judged mtbench.json included; evaluate's mtbench.answers.json is the
    judge's input, not a result) holds a finite score."""
    results = configured_plan(embedded_run / "config/config.yaml").eval_results()
    assert any(path.endswith("/mtbench.json") for path in results) and any("/reference/" in p for p in results)
    for path in results:
        score = json.loads((embedded_run / path).read_text())["score"]
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
    assert len(shards) == 2 * 12 and shards[0].endswith("shard-1-of-4.parquet")  # both windows, as the gathers
    assert sum(rule == "gather_scores" for rule, _ in jobs) == 2 * 3


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
