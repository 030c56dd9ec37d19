"""The paper's phenomenon on the embedded default's model organism, asserted on the artifacts of its run: the base
reads, the vanilla chat fine-tune reads worse under the template, and the context-dependency score separates the
labelled turns. The margins hold over organism seeds 0, 1 and 2 (README, "The embedded default", where the
measured values are); a broken scorer (scores shuffled: AUROC ~0.5), a template or training that stops reading,
or an organism that never learned to read fails here.

The paper's main claim, that [IND] tagging recovers context use (Table 4), does not hold on the organism: on no
seed of 0-2 do the indicator branches beat vanilla by 0.1 on every dataset (README). Its test is kept as a
strict expected failure, so the day a design shows the remedy the run says so and the marker must go.
"""

import pandas as pd
import pytest
from smk_helpers import configured_plan, indicator_methods

pytestmark = pytest.mark.workflow

BASE_NIH = 0.8  # NIH recall of the base without template (Table 7, variant base)
NIH_LOSS = 0.15  # the vanilla fine-tune with the template reads the needle at least this much worse
SCORE_AUROC = 0.9  # the seed model's score against the ground-truth labels, every dataset
REMEDY = 0.1  # indicator over vanilla on the context-task average (Table 4), every dataset
READING_MODE = 0.95  # share of QA answers of the [IND] model (with [IND]) that open as read from the context
VANILLA_MODE = 0.6  # the same share for vanilla, which answers many of them from memory
CONTEXT_TASKS = ["nih", "squad", "quac", "drop"]


def _config(run) -> dict:
    """The run's config validated as the Snakefile does it: the schema's defaults filled in."""
    return configured_plan(run / "config/config.yaml").config


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
    scored = validity[(validity["source"] == "scores") & (validity["method"] == "attention")].set_index("dataset")
    assert set(scored.index) == set(_config(embedded_run)["datasets"])
    assert (scored["n"] > 1000).all() and (scored["layer"] == _config(embedded_run)["scoring"]["layer"]).all()
    assert (scored["auroc"] >= SCORE_AUROC).all(), scored


def reading_mode_share(run, model: str, dataset: str, method: str, prefix: str) -> float:
    """Share of SQuAD/QuAC/DROP answers that open the way the SFT data opens answers read from the context."""
    answers = pd.concat(
        pd.read_json(run / f"results/eval/{model}/{dataset}/{method}/{task}.generations.jsonl", lines=True)
        for task in ("squad", "quac", "drop")
    )["response"]
    return float(answers.str.startswith(prefix).mean())


def test_indicator_switches_the_model_to_reading_its_context(embedded_run):
    """What [IND] teaches, on every dataset and seed: with [IND] on the query, the indicator model answers every
    contextual question in the mode of the SFT turns that depended on their context ("according to the text ,");
    vanilla answers a large share from memory ("from what i know ,"). Fails when [IND] never reaches the model
    (dropped at training or at evaluation) or when the tags carry no information about the labels."""
    config = _config(embedded_run)
    prefix = config["organism"]["sft"]["mixture"]["context_prefix"]
    method = indicator_methods(config)[0]
    for dataset in config["datasets"]:
        tagged = reading_mode_share(embedded_run, "tiny", dataset, method, prefix)
        vanilla = reading_mode_share(embedded_run, "tiny", dataset, "vanilla", prefix)
        assert tagged >= READING_MODE and vanilla <= VANILLA_MODE, (dataset, tagged, vanilla)


@pytest.mark.xfail(
    strict=True,
    reason="measured on seeds 0-2: indicator minus vanilla on the context-task average at most +0.098 (README)",
)
def test_indicator_recovers_context_use_on_every_dataset(embedded_run):
    """Table 4's pattern: the [IND] model (with [IND] on every query) reads its context better than vanilla."""
    config = _config(embedded_run)
    table = pd.read_csv(embedded_run / "results/tables/table4.csv")
    tiny = table[table["model"] == "tiny"].set_index(["sft_dataset", "method"])
    method = indicator_methods(config)[0]
    for dataset in config["datasets"]:
        vanilla, tagged = tiny.loc[(dataset, "vanilla")], tiny.loc[(dataset, method)]
        assert tagged["avg"] - vanilla["avg"] >= REMEDY, (dataset, tagged[CONTEXT_TASKS], vanilla[CONTEXT_TASKS])
