"""Score validity (beyond the paper, which had no ground truth): how well the seed model's context-dependency
scores (the attention score of Eq. 2, the likelihood ratio) separate the turns whose responses depend on the
user's context from the others, where a dataset carries ground-truth labels (the model organism's sets do; hub
datasets do not, and their rows say so with n = 0)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ctxaware.data import LABEL_KEY, read_labels
from ctxaware.methods import ATTENTION

COLUMNS = ["dataset", "method", "layer", "auroc", "n", "n_context_dependent", "source"]


def auroc(scores, labels) -> float:
    """Area under the ROC curve of `scores` for the positive `labels` (the Mann-Whitney U statistic over
    n_pos * n_neg, ties counted half); NaN when a class is empty."""
    labels = np.asarray(labels, dtype=bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = pd.Series(scores).rank(method="average").to_numpy()  # ties get their average rank
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def labelled_scores(labels: pd.DataFrame, scores: pd.DataFrame) -> pd.DataFrame:
    """Scores joined to labels on (conversation_id, turn); unlabelled and unscored (truncated) turns dropped."""
    joined = scores.merge(labels, on=["conversation_id", "turn"], validate="many_to_one")  # an inner join
    joined = joined[joined[LABEL_KEY].notna() & joined["score"].notna()]
    return joined.assign(**{LABEL_KEY: joined[LABEL_KEY].astype(bool)})


def validity_row(dataset: str, method: str, layer: int | None, joined: pd.DataFrame, source: str) -> dict:
    return {
        "dataset": dataset,
        "method": method,
        "layer": layer,
        "auroc": auroc(joined["score"], joined[LABEL_KEY]),  # NaN without both kinds of turns
        "n": len(joined),
        "n_context_dependent": int(joined[LABEL_KEY].sum()),
        "source": source,
    }


def score_validity(
    data: dict[str, str], scores: list[dict], layer_study: str | None = None, layer_dataset: str | None = None
) -> tuple[pd.DataFrame, dict[tuple[str, str], pd.DataFrame]]:
    """(table, labelled scores per (dataset, method)). `scores`: {dataset, method, layer, path} per score file
    (the attention score at its layer, the likelihood ratio with layer None). One row per score file (source
    `scores`: every turn), and one per layer of the attention layer study's sample (source `layer_study`)."""
    rows, joined_by_score = [], {}
    labels = {dataset: read_labels(path) for dataset, path in data.items()}
    for score in scores:
        dataset, method = score["dataset"], score["method"]
        joined = labelled_scores(labels[dataset], pd.read_parquet(score["path"]))
        joined_by_score[dataset, method] = joined
        rows.append(validity_row(dataset, method, score["layer"], joined, "scores"))
    if layer_study:
        long = pd.read_parquet(layer_study)
        for study_layer, group in long.groupby("layer"):  # in the order of the layers
            joined = labelled_scores(labels[layer_dataset], group)
            rows.append(validity_row(layer_dataset, ATTENTION, int(study_layer), joined, "layer_study"))
    table = pd.DataFrame(rows, columns=COLUMNS).astype({"layer": "Int64"})
    return table, joined_by_score


def write_score_validity(
    data: dict[str, str],
    scores: list[dict],
    out_csv: str,
    out_png: str,
    layer_study: str | None = None,
    layer_dataset: str | None = None,
) -> pd.DataFrame:
    table, joined = score_validity(data, scores, layer_study, layer_dataset)
    table.to_csv(out_csv, index=False, float_format="%.4f")
    from ctxaware.figures import score_validity_histograms  # matplotlib only here: the table stays light

    score_validity_histograms(table, joined, out_png)
    return table
