"""Score validity (beyond the paper, which had no ground truth): how well the seed model's context-dependency
scores (the attention score of Eq. 2, the likelihood ratio) separate the turns whose responses depend on the
user's context from the others, where a dataset carries ground-truth labels (the model organism's sets do; hub
datasets do not, and their rows say so with n = 0)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ctxaware.data import LABEL_GROUP_KEY, LABEL_KEY, read_labels
from ctxaware.methods import ATTENTION

COLUMNS = ["dataset", "method", "layer", "negatives", "auroc", "n", "n_context_dependent", "source"]
ALL = "all"  # the comparison with every turn labelled not context-dependent
# the baseline a valid score must beat: the turn's instruction length in the seed model's tokens (the attention
# score's n_instruction_tokens), rated like a score; a score that only tracks length looks no better than it
LENGTH_BASELINE = "instruction_length"


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


def comparisons(joined: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """{negatives: turns}: every labelled turn (`all`), and where the dataset groups its turns (label_group), the
    context-dependent ones with each group of the others (context_free, distractor)."""
    found = {ALL: joined}
    groups = joined[LABEL_GROUP_KEY] if LABEL_GROUP_KEY in joined else pd.Series(dtype=object)
    for group in dict.fromkeys(groups[~joined[LABEL_KEY] & groups.notna()]):
        found[group] = joined[joined[LABEL_KEY] | (groups == group)]
    return found


def validity_rows(dataset: str, method: str, layer: int | None, joined: pd.DataFrame, source: str) -> list[dict]:
    return [
        {
            "dataset": dataset,
            "method": method,
            "layer": layer,
            "negatives": negatives,
            "auroc": auroc(turns["score"], turns[LABEL_KEY]),  # NaN without both kinds of turns
            "n": len(turns),
            "n_context_dependent": int(turns[LABEL_KEY].sum()),
            "source": source,
        }
        for negatives, turns in comparisons(joined).items()
    ]


def score_validity(
    data: dict[str, str], scores: list[dict], layer_study: str | None = None, layer_dataset: str | None = None
) -> tuple[pd.DataFrame, dict[tuple[str, str], pd.DataFrame]]:
    """(table, labelled scores per (dataset, method)). `scores`: {dataset, method, layer, path} per score file
    (the attention score at its layer, the likelihood ratio with layer None). Rows per comparison (`comparisons`)
    of each score file (source `scores`: every turn), of the instruction-length baseline on the attention score's
    turns, and of each layer of the attention layer study's sample (source `layer_study`)."""
    rows, joined_by_score = [], {}
    labels = {dataset: read_labels(path) for dataset, path in data.items()}
    for score in scores:
        dataset, method = score["dataset"], score["method"]
        frame = pd.read_parquet(score["path"])
        joined = labelled_scores(labels[dataset], frame)
        joined_by_score[dataset, method] = joined
        rows += validity_rows(dataset, method, score["layer"], joined, "scores")
        if method == ATTENTION and "n_instruction_tokens" in frame:
            lengths = frame.assign(score=frame["n_instruction_tokens"].astype(float))
            rows += validity_rows(dataset, LENGTH_BASELINE, None, labelled_scores(labels[dataset], lengths), "scores")
    if layer_study:
        long = pd.read_parquet(layer_study)
        for study_layer, group in long.groupby("layer"):  # in the order of the layers
            joined = labelled_scores(labels[layer_dataset], group)
            rows += validity_rows(layer_dataset, ATTENTION, int(study_layer), joined, "layer_study")
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
