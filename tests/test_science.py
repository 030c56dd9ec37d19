"""The paper's phenomenon on the embedded default's model organism, asserted on the artifacts of its run: the base
reads, the vanilla chat fine-tune reads worse under the template, the context-dependency score separates the
labelled turns, and [IND] tagging recovers context use. The margins were measured over organism seeds 0, 1
and 2 (README, "The embedded default"); a bug in scoring, tagging, training or the [IND] plumbing fails here.
"""

import pandas as pd
import pytest
import yaml

pytestmark = pytest.mark.workflow

BASE_NIH = 0.8  # NIH recall of the base without template (Table 7, variant base)
NIH_LOSS = 0.15  # the vanilla fine-tune with the template reads the needle at least this much worse
SCORE_AUROC = 0.9  # the seed model's score against the ground-truth labels, every dataset
REMEDY = 0.1  # indicator over vanilla on the context-task average (Table 4), every dataset
CONTEXT_TASKS = ["nih", "squad", "quac", "drop"]


def _config(run):
    return yaml.safe_load((run / "config/config.yaml").read_text())


def indicator_method(config) -> str:
    """The embedded default's indicator branch of the full fine-tunes (the paper's method)."""
    methods = config["models"]["tiny"]["methods"] or config["methods"]
    return next(m for m in methods if m.startswith("indicator-"))


def template_study(run) -> pd.DataFrame:
    return pd.read_csv(run / "results/tables/nih_template_study.csv").set_index("variant")


def test_the_base_reads_the_needle_without_template(embedded_run):
    study = template_study(embedded_run)
    assert study.loc["base", "recall_mean"] >= BASE_NIH, study


def test_the_vanilla_fine_tune_reads_worse_under_the_template(embedded_run):
    """Table 7 / Figure 2: the instruct model with its template (with and without the response prefix) is
    below the base; the plain-format row of the same model is in the table beside it (forgetting vs template)."""
    study = template_study(embedded_run)
    base = study.loc["base", "recall_mean"]
    for variant in ("template_prefix", "template_no_prefix"):
        assert study.loc[variant, "recall_mean"] <= base - NIH_LOSS, study
    assert "no_template" in study.index


def test_the_score_separates_context_dependent_turns(embedded_run):
    validity = pd.read_csv(embedded_run / "results/tables/score_validity.csv")
    scored = validity[validity["source"] == "scores"].set_index("dataset")
    assert set(scored.index) == set(_config(embedded_run)["datasets"])
    assert (scored["n"] > 1000).all() and (scored["layer"] == _config(embedded_run)["scoring"]["layer"]).all()
    assert (scored["auroc"] >= SCORE_AUROC).all(), scored


def test_indicator_recovers_context_use_on_every_dataset(embedded_run):
    """Table 4's pattern: the [IND] model (with [IND] on every query) reads its context better than vanilla."""
    config = _config(embedded_run)
    table = pd.read_csv(embedded_run / "results/tables/table4.csv")
    tiny = table[table["model"] == "tiny"].set_index(["sft_dataset", "method"])
    method = indicator_method(config)
    for dataset in config["datasets"]:
        vanilla, tagged = tiny.loc[(dataset, "vanilla")], tiny.loc[(dataset, method)]
        assert tagged["avg"] - vanilla["avg"] >= REMEDY, (dataset, tagged[CONTEXT_TASKS], vanilla[CONTEXT_TASKS])
