"""Score validity (beyond the paper, which had no ground truth): how well the seed model's context-dependency
scores separate the turns whose responses depend on the user's context from the others, where a dataset carries
ground-truth labels (the model organism's sets do; hub datasets do not, and their rows say so with n = 0)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ctxaware.data import LABEL_KEY, read_labels

COLUMNS = ["dataset", "layer", "auroc", "n", "n_context_dependent", "source"]


def auroc(scores, labels) -> float:
    """Area under the ROC curve of `scores` for the positive `labels` (the Mann-Whitney U statistic over
    n_pos * n_neg, ties counted half); NaN when a class is empty."""
    scores = np.asarray(scores, dtype=float)
    labels = np.asarray(labels, dtype=bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = pd.Series(scores).rank(method="average").to_numpy()  # ties get their average rank
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def labelled_scores(labels: pd.DataFrame, scores: pd.DataFrame) -> pd.DataFrame:
    """Scores joined to labels on (conversation_id, turn); unlabelled and unscored (truncated) turns dropped."""
    joined = scores.merge(labels, on=["conversation_id", "turn"], how="inner", validate="many_to_one")
    joined = joined[joined[LABEL_KEY].notna() & joined["score"].notna()]
    return joined.assign(**{LABEL_KEY: joined[LABEL_KEY].astype(bool)})


def validity_row(dataset: str, layer: int, joined: pd.DataFrame, source: str) -> dict:
    return {
        "dataset": dataset,
        "layer": layer,
        "auroc": auroc(joined["score"], joined[LABEL_KEY]) if len(joined) else math.nan,
        "n": len(joined),
        "n_context_dependent": int(joined[LABEL_KEY].sum()) if len(joined) else 0,
        "source": source,
    }


def score_validity(
    data: dict[str, str], scores: dict[str, str], layer: int, layer_study: str | None, layer_dataset: str | None
) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """(table, labelled scores per dataset at the scoring layer). One row per dataset at the scoring layer
    (source `scores`: every turn), and one per layer of the layer study's sample (source `layer_study`)."""
    rows, joined_by_dataset = [], {}
    for dataset, data_path in data.items():
        labels = read_labels(data_path)
        joined = labelled_scores(labels, pd.read_parquet(scores[dataset]))
        joined_by_dataset[dataset] = joined
        rows.append(validity_row(dataset, layer, joined, "scores"))
        if layer_study and dataset == layer_dataset:
            long = pd.read_parquet(layer_study)
            for study_layer, group in long.groupby("layer", sort=True):
                rows.append(validity_row(dataset, int(study_layer), labelled_scores(labels, group), "layer_study"))
    return pd.DataFrame(rows, columns=COLUMNS), joined_by_dataset


def write_score_validity(
    data: dict[str, str],
    scores: dict[str, str],
    layer: int,
    out_csv: str,
    out_png: str,
    layer_study: str | None = None,
    layer_dataset: str | None = None,
) -> pd.DataFrame:
    table, joined = score_validity(data, scores, layer, layer_study, layer_dataset)
    table.to_csv(out_csv, index=False, float_format="%.4f")
    _figure(table, joined, layer, out_png)
    return table


def _figure(table: pd.DataFrame, joined: dict[str, pd.DataFrame], layer: int, out_png: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = list(joined)
    fig, axes = plt.subplots(1, len(datasets) + 1, figsize=(3.2 * (len(datasets) + 1), 3), squeeze=False)
    bins = np.linspace(0, 1, 26)
    for ax, dataset in zip(axes[0], datasets, strict=False):
        frame = joined[dataset]
        for value, name, color in ((True, "context-dependent", "tab:blue"), (False, "context-free", "tab:orange")):
            ax.hist(frame.loc[frame[LABEL_KEY] == value, "score"], bins=bins, alpha=0.6, label=name, color=color)
        row = table[(table["dataset"] == dataset) & (table["source"] == "scores")].iloc[0]
        title = f"{dataset}: AUROC {row['auroc']:.3f}" if row["n"] else f"{dataset}: no labels"
        ax.set(title=title, xlabel=f"score (layer {layer})", ylabel="turns")
        ax.legend(fontsize=7)
    ax = axes[0][-1]
    study = table[table["source"] == "layer_study"]
    if len(study):
        ax.plot(study["layer"], study["auroc"], marker="o", label=f"{study['dataset'].iloc[0]} (sample)")
    scored = table[table["source"] == "scores"]
    ax.scatter(scored["layer"], scored["auroc"], color="black", zorder=3, label="every turn")
    ax.axhline(0.5, color="grey", linestyle=":", linewidth=1)
    ax.set(title="AUROC by layer", xlabel="layer", ylabel="AUROC", ylim=(0, 1.02))
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
