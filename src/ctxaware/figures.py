"""Figures: NIH recall heatmaps, the threshold ablation, layer agreement and instruction lengths. Importing this
module sets matplotlib's file-only backend; other figure modules take `plt` from here."""

from __future__ import annotations

import json
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from ctxaware.methods import ATTENTION, BETA, QUANTILE, REFERENCE, parse_method  # noqa: E402
from ctxaware.tables import TASK_COLUMN, ablation_rows  # noqa: E402
from ctxaware.tagging import tagged_mask  # noqa: E402


def nih_heatmap(generations_jsonl: str, out_png: str, title: str) -> pd.DataFrame:
    """Recall per (needle depth, context length) cell, red (0) to green (1), as the original repository drew it."""
    with open(generations_jsonl, encoding="utf-8") as handle:
        records = [json.loads(line) for line in handle if line.strip()]
    frame = pd.DataFrame(records)
    grid = frame.pivot_table(index="depth", columns="length", values="score", aggfunc="mean")
    figure, axis = plt.subplots(figsize=(1.0 + 0.45 * grid.shape[1], 1.0 + 0.3 * grid.shape[0]))
    image = axis.imshow(grid.to_numpy(), cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")
    axis.set_xticks(range(grid.shape[1]), [str(c) for c in grid.columns], rotation=90)
    axis.set_yticks(range(grid.shape[0]), [f"{d}%" for d in grid.index])
    axis.set_xlabel("context length (tokens)")
    axis.set_ylabel("needle depth")
    axis.set_title(f"NIH recall: {title}\nmean {frame['score'].mean():.3f}")
    figure.colorbar(image, ax=axis, label="recall")
    figure.tight_layout()
    figure.savefig(out_png, dpi=120)
    plt.close(figure)
    return grid


def _tags_nothing(score: str, kind: str) -> float | None:
    """Where the vanilla branch sits on a threshold axis: the threshold that tags no turn. Beta 1.0 on the
    attention score (a share of attention, at most 1; the paper's Table 9), a quantile of 0; a beta on the
    likelihood ratio (unbounded) has none."""
    if kind == QUANTILE:
        return 0.0
    return 1.0 if score == ATTENTION else None


def threshold_ablation(table4_csv: str, out_png: str) -> pd.DataFrame:
    """Each task's score against the threshold per (dataset, model), one row of panels per threshold axis (a beta
    or a quantile, on the attention score or the likelihood ratio), vanilla as the reference where its
    threshold tags nothing (`_tags_nothing`), or as a dashed line where no threshold does."""
    table = pd.read_csv(table4_csv)
    # evaluate-only rows have no threshold; the quirk ablation's rows (a `+<correction>` in a coordinate) are not
    # the published procedure's points
    table = table[(table["method"] != REFERENCE) & ~ablation_rows(table)].reset_index(drop=True)
    methods = [parse_method(m) for m in table["method"]]
    table["threshold"] = [m.threshold.value if m.with_indicator else math.nan for m in methods]
    table["axis"] = [(m.score, m.threshold.kind) if m.with_indicator else None for m in methods]
    # qk-lora methods are their own line: their vanilla reference is qk-lora, not the recipe's vanilla
    table["training"] = ["qk-lora" if m.qk_lora else "recipe" for m in methods]
    axes_keys = list(dict.fromkeys(key for key in table["axis"] if key is not None)) or [(ATTENTION, BETA)]
    columns = [c for c in TASK_COLUMN.values() if table[c].notna().any()]
    shape = (len(axes_keys), max(1, len(columns)))
    figure, axes = plt.subplots(*shape, figsize=(3.2 * shape[1], 3 * shape[0]), squeeze=False)
    for row, (score, kind) in enumerate(axes_keys):
        reference = _tags_nothing(score, kind)
        for axis, column in zip(axes[row], columns, strict=False):
            for (dataset, model, training), group in table.groupby(["sft_dataset", "model", "training"]):
                vanilla = group[group["axis"].isna()]
                points = group[[key == (score, kind) for key in group["axis"]]]
                if reference is not None:
                    points = pd.concat([points, vanilla.assign(threshold=reference)])
                label = f"{dataset}/{model}" + (" qk-lora" if training == "qk-lora" else "")
                if points.empty:
                    continue
                points = points.sort_values("threshold")
                (line,) = axis.plot(points["threshold"], points[column], marker="o", label=label)
                if reference is None:
                    for value in vanilla[column]:
                        axis.axhline(value, linestyle="--", color=line.get_color(), linewidth=0.8)
            axis.set_title(column)
            name = "quantile q" if kind == QUANTILE else "beta"
            where = "" if reference is None else f" ({reference:.1f} = vanilla)"
            axis.set_xlabel(f"{name}{where}" + ("" if score == ATTENTION else f", {score}"))
        axes[row][0].legend(fontsize=6)
    figure.tight_layout()
    figure.savefig(out_png, dpi=120)
    plt.close(figure)
    return table


def heatmaps(matrices: dict[str, pd.DataFrame], out_png: str, axis_label: str) -> None:
    """Side-by-side annotated heatmaps of square matrices (layer agreement, Figure 5)."""
    figure, axes = plt.subplots(1, len(matrices), figsize=(4.6 * len(matrices), 4), squeeze=False)
    for axis, (title, matrix) in zip(axes[0], matrices.items(), strict=True):
        image = axis.imshow(matrix.to_numpy(), cmap="viridis")
        labels = [str(x) for x in matrix.index]
        axis.set_xticks(range(len(labels)), labels)
        axis.set_yticks(range(len(labels)), labels)
        axis.set_xlabel(axis_label)
        axis.set_ylabel(axis_label)
        axis.set_title(title)
        if len(labels) <= 12:
            for i in range(len(labels)):
                for j in range(len(labels)):
                    axis.text(j, i, f"{matrix.iat[i, j]:.2f}", ha="center", va="center", color="w", fontsize=7)
        figure.colorbar(image, ax=axis)
    figure.tight_layout()
    figure.savefig(out_png, dpi=120)
    plt.close(figure)


def instruction_lengths(scores_by_dataset: dict[str, str], beta: float, out_png: str) -> pd.DataFrame:
    """Instruction length (tokens) of all scored turns vs the tagged subset per dataset (paper Figures 6-8)."""
    figure, axes = plt.subplots(1, len(scores_by_dataset), figsize=(4 * len(scores_by_dataset), 3), squeeze=False)
    rows = []
    for axis, (dataset, path) in zip(axes[0], scores_by_dataset.items(), strict=True):
        scores = pd.read_parquet(path)
        tagged = scores[tagged_mask(scores, beta)]
        bins = 20
        axis.hist(scores["n_instruction_tokens"], bins=bins, alpha=0.6, density=True, label=f"all ({len(scores)})")
        axis.hist(
            tagged["n_instruction_tokens"], bins=bins, alpha=0.6, density=True, label=f"s > {beta} ({len(tagged)})"
        )
        axis.set_title(dataset)
        axis.set_xlabel("instruction length (tokens)")
        axis.legend(fontsize=7)
        rows.append(
            {
                "dataset": dataset,
                "median_all": scores["n_instruction_tokens"].median(),
                "median_tagged": tagged["n_instruction_tokens"].median(),
            }
        )
    figure.tight_layout()
    figure.savefig(out_png, dpi=120)
    plt.close(figure)
    return pd.DataFrame(rows)


LABEL_COLORS = ((True, "context-dependent", "tab:blue"), (False, "context-free", "tab:orange"))


def score_validity_histograms(table: pd.DataFrame, joined: dict[tuple[str, str], pd.DataFrame], out_png: str) -> None:
    """Score histograms by label, one panel per (method, dataset), and AUROC by layer (attention)."""
    methods = list(dict.fromkeys(method for _, method in joined))
    datasets = list(dict.fromkeys(dataset for dataset, _ in joined))
    fig, axes = plt.subplots(
        len(methods), len(datasets) + 1, figsize=(3.2 * (len(datasets) + 1), 3 * len(methods)), squeeze=False
    )
    for row_axes, method in zip(axes, methods, strict=True):
        for ax, dataset in zip(row_axes, datasets, strict=False):
            frame = joined.get((dataset, method))
            if frame is None:
                ax.axis("off")
                continue
            bins = np.linspace(min(0.0, frame["score"].min()), max(1.0, frame["score"].max()), 26)
            for value, name, color in LABEL_COLORS:
                scores = frame.loc[frame["context_dependent"] == value, "score"]
                ax.hist(scores, bins=bins, alpha=0.6, label=name, color=color)
            row = table[(table["dataset"] == dataset) & (table["method"] == method) & (table["source"] == "scores")]
            row = row.iloc[0]
            title = f"{dataset}: AUROC {row['auroc']:.3f}" if row["n"] else f"{dataset}: no labels"
            where = f"layer {row['layer']}" if method == ATTENTION else "nats"
            ax.set(title=title, xlabel=f"{method} score ({where})", ylabel="turns")
            ax.legend(fontsize=7)
        row_axes[-1].axis("off")
    ax = axes[0][-1]
    ax.axis("on")
    study = table[table["source"] == "layer_study"]
    for negatives, rows in study.groupby("negatives", sort=False):  # one line per comparison
        line = ax.plot(rows["layer"], rows["auroc"], marker="o", markersize=3, label=f"vs {negatives} (layer study)")
        length = table[(table["method"] == "instruction_length") & (table["negatives"] == negatives)]
        length = length[length["dataset"] == rows["dataset"].iloc[0]]
        if len(length):  # the length baseline of the same comparison
            ax.axhline(length["auroc"].iloc[0], color=line[0].get_color(), linestyle="--", linewidth=1)
    scored = table[(table["source"] == "scores") & (table["method"] == ATTENTION)]
    ax.scatter(scored["layer"], scored["auroc"], color="black", zorder=3, s=12, label="every turn")
    ax.axhline(0.5, color="grey", linestyle=":", linewidth=1)
    ax.set(title="attention AUROC by layer (dashed: length)", xlabel="layer", ylabel="AUROC", ylim=(0, 1.02))
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
