"""Figures: NIH recall heatmaps and the threshold ablation."""

from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from ctxaware.tagging import method_beta  # noqa: E402


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


def threshold_ablation(table4_csv: str, out_png: str) -> pd.DataFrame:
    """Each task's score against beta per (dataset, model); vanilla drawn as beta = 1.0 like the paper's Table 9."""
    table = pd.read_csv(table4_csv)
    table["beta"] = [method_beta(m) if method_beta(m) is not None else 1.0 for m in table["method"]]
    columns = [c for c in ["nih", "squad", "quac", "drop", "mt_bench"] if table[c].notna().any()]
    figure, axes = plt.subplots(1, max(1, len(columns)), figsize=(3.2 * max(1, len(columns)), 3), squeeze=False)
    for axis, column in zip(axes[0], columns, strict=False):
        for (dataset, model), group in table.groupby(["sft_dataset", "model"]):
            group = group.sort_values("beta")
            axis.plot(group["beta"], group[column], marker="o", label=f"{dataset}/{model}")
        axis.set_title(column)
        axis.set_xlabel("beta (1.0 = vanilla)")
    axes[0][0].legend(fontsize=6)
    figure.tight_layout()
    figure.savefig(out_png, dpi=120)
    plt.close(figure)
    return table
