"""The Section 2 gather jobs: the per-pair csvs into Table 7 / Figure 2, Figures 3 and 4, and Table 1. Torch-free:
pandas and matplotlib only."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ctxaware.diagnosis import ROLES, VARIANTS
from ctxaware.figures import plt

VARIANT_LABELS = {
    "base": "pretrained",
    "no_template": "instruct, w/o chat template",
    "template_prefix": "instruct, w/ chat template",
    "template_no_prefix": "instruct, w/ chat template, w/o response prefix",
    "no_template_no_prefix": "instruct, w/o chat template, w/o response prefix",
}
VARIANT_COLORS = {
    "base": "tab:green",
    "no_template": "tab:blue",
    "template_prefix": "tab:red",
    "template_no_prefix": "tab:orange",
    "no_template_no_prefix": "tab:purple",
}


def write_csv(frame: pd.DataFrame, path: str) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)


def concat_csvs(paths: list[str]) -> pd.DataFrame:
    return pd.concat([pd.read_csv(p) for p in paths], ignore_index=True)


def summarize_templates(per_template: pd.DataFrame) -> pd.DataFrame:
    """Mean and (sample) standard deviation of recall over the templates; error = 1 - recall (Figure 2). Rows per
    grid length (the template study's) are first pooled per template, weighted by their cases."""
    if "length" in per_template:
        keys = ["pair", "model", "variant", "template"]
        weighted = per_template.assign(hits=per_template["score"] * per_template["n"])
        pooled = weighted.groupby(keys, sort=False)[["hits", "n"]].sum().reset_index()
        per_template = pooled.assign(score=pooled["hits"] / pooled["n"]).drop(columns="hits")
    grouped = per_template.groupby(["pair", "model", "variant"], sort=False)["score"]
    table = grouped.agg(recall_mean="mean", recall_std="std", n_templates="count").reset_index()
    table["recall_std"] = table["recall_std"].fillna(0.0)
    table["error_mean"] = 1 - table["recall_mean"]
    return table


def write_template_study(per_pair_csvs: list[str], out_csv: str, out_png: str) -> pd.DataFrame:
    """Table 7 (mean and std of recall over the Table 8 templates) and Figure 2 (recall error bars per pair)."""
    table = summarize_templates(concat_csvs(per_pair_csvs))
    write_csv(table, out_csv)
    pairs = list(dict.fromkeys(table["pair"]))
    figure, axis = plt.subplots(figsize=(max(5.5, 2.0 + 1.6 * len(pairs)), 3.8))
    variants = [variant for variant in VARIANTS if variant in set(table["variant"])]  # the ones the pairs ran
    width = 0.8 / len(variants)
    for offset, variant in enumerate(variants):
        rows = table[table["variant"] == variant].set_index("pair").reindex(pairs)
        positions = [i + (offset - (len(variants) - 1) / 2) * width for i in range(len(pairs))]
        axis.bar(
            positions,
            rows["error_mean"],
            width,
            yerr=rows["recall_std"],
            color=VARIANT_COLORS[variant],
            label=VARIANT_LABELS[variant],
            capsize=2,
        )
    axis.set_xticks(range(len(pairs)), pairs)
    axis.set_ylabel("NIH recall error (1 - recall)")
    axis.set_title("NIH recall error, mean over Table 8 templates (Figure 2)", fontsize=9)
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(out_png, dpi=120)
    plt.close(figure)
    return table


def allocation_layer(table: pd.DataFrame, layer: int | None) -> pd.DataFrame:
    """Rows of one layer per pair: the configured one, or each model's middle layer."""
    chosen = []
    for _, rows in table.groupby("pair", sort=False):
        pick = layer if layer is not None else int(rows["layer"].max()) // 2
        if pick not in set(rows["layer"]):
            raise ValueError(f"config key diagnosis.allocation.layer: layer {pick} is not in the model's layers")
        chosen.append(rows[rows["layer"] == pick])
    return pd.concat(chosen, ignore_index=True)


def write_allocation(per_pair_csvs: list[str], layer: int | None, out_csv: str, out_png: str) -> pd.DataFrame:
    """All layers to the csv; Figure 3 (change with the template) and Figure 4 (allocation) on one layer."""
    table = concat_csvs(per_pair_csvs)
    write_csv(table, out_csv)
    shown = allocation_layer(table, layer)
    pairs = list(dict.fromkeys(shown["pair"]))
    figure, (change, full) = plt.subplots(1, 2, figsize=(max(9.0, 4.0 + 2.4 * len(pairs)), 3.8))
    colors = {"user": "tab:blue", "assistant": "tab:orange", "bos": "tab:gray"}
    for index, pair in enumerate(pairs):
        rows = shown[shown["pair"] == pair].set_index("chat_template")
        delta = rows.loc[True, list(ROLES)] - rows.loc[False, list(ROLES)]
        for offset, role in enumerate(ROLES):
            change.bar(
                index + (offset - 1) * 0.25, delta[role], 0.25, color=colors[role], label=role if not index else None
            )
        for side, template in enumerate((False, True)):
            bottom = 0.0
            x = 2 * index + side
            for role in ROLES:
                value = float(rows.loc[template, role])
                full.bar(x, value, 0.8, bottom=bottom, color=colors[role], label=role if x == 0 else None)
                bottom += value
    change.axhline(0, color="black", linewidth=0.8)
    change.set_xticks(range(len(pairs)), pairs)
    change.set_ylabel("attention change with chat template")
    change.set_title("Figure 3: change in allocation", fontsize=9)
    change.legend(fontsize=7)
    full.set_xticks(range(2 * len(pairs)), [f"{p}\n{t}" for p in pairs for t in ("w/o tmpl", "w/ tmpl")], fontsize=7)
    full.set_ylabel("attention share (renormalised)")
    full.set_title("Figure 4: allocation at the first answer token", fontsize=9)
    full.legend(fontsize=7)
    layers = ", ".join(f"{p}: layer {int(shown[shown['pair'] == p]['layer'].iloc[0])}" for p in pairs)
    figure.suptitle(f"retrieval head per prompt (Eq. 3); {layers}", fontsize=8)
    figure.tight_layout()
    figure.savefig(out_png, dpi=120)
    plt.close(figure)
    return table


def write_steering(per_pair_csvs: list[str], out_csv: str) -> pd.DataFrame:
    """Table 1: every (pair, task, alpha) row; the compat mode and steered heads are columns of every row."""
    table = concat_csvs(per_pair_csvs)
    write_csv(table, out_csv)
    return table
