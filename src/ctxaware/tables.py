"""Tables: the paper's Table 4 (csv, markdown, LaTeX) and Table 3 (share of tagged turns per threshold)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from ctxaware.methods import ATTENTION, BETA, VARIANT_MARK, canonical_number, parse_tagging, split_variant
from ctxaware.tagging import tagged_ratio
from ctxaware.tasks import CONTEXT_TASKS, TASKS

KEYS = ["sft_dataset", "model", "method"]  # a row: one fine-tune
TASK_COLUMN = {task: "mt_bench" if task == "mtbench" else task for task in TASKS}
TABLE4_COLUMNS = [*KEYS, *CONTEXT_TASKS, "avg", "mt_bench"]


def table4_frame(rows: list[dict]) -> pd.DataFrame:
    """rows: each fine-tune's keys and `results`, {task: its evaluation json}; a task without one is NaN."""
    records = []
    for row in rows:
        record = {key: row[key] for key in KEYS}
        for task, column in TASK_COLUMN.items():
            path = row["results"].get(task)
            record[column] = math.nan if path is None else float(json.loads(Path(path).read_text())["score"])
        # avg is only defined when all four context tasks ran (as in the paper): a missing one's NaN makes it NaN
        record["avg"] = sum(record[t] for t in CONTEXT_TASKS) / 4
        records.append(record)
    return pd.DataFrame.from_records(records, columns=TABLE4_COLUMNS)


def _with_paper(frame: pd.DataFrame, paper_csv: str | None) -> pd.DataFrame:
    """Adds paper_<column> beside ours where the paper reports the same (dataset, model, method)."""
    if not paper_csv:
        return frame
    paper = pd.read_csv(paper_csv)
    missing = [key for key in KEYS if key not in paper.columns]
    if missing:
        raise ValueError(f"config key report.paper_table4: {paper_csv} has no column {', '.join(missing)}")
    value_columns = [c for c in TABLE4_COLUMNS if c not in KEYS and c in paper.columns]
    paper = paper.rename(columns={c: f"paper_{c}" for c in value_columns})
    return frame.merge(paper, on=KEYS, how="left")


def write_table4(rows: list[dict], out_csv: str, out_md: str, out_tex: str, paper_csv: str | None = None):
    frame = table4_frame(rows)
    frame.to_csv(out_csv, index=False, float_format="%.4f")
    shown = _with_paper(frame, paper_csv)
    Path(out_md).write_text(shown.to_markdown(index=False, floatfmt=".4f") + "\n")
    latex = shown.rename(columns=lambda c: c.replace("_", " ")).to_latex(
        index=False, float_format="%.4f", na_rep="--", escape=True
    )
    Path(out_tex).write_text(latex)
    return frame


QUIRK_VALUES = [column for column in TABLE4_COLUMNS if column not in KEYS]


def ablation_rows(table: pd.DataFrame) -> pd.Series:
    """Which rows of Table 4 are the quirk ablation's: a `+<correction>` in the dataset, model or method."""
    return table[KEYS].apply(lambda column: column.str.contains(VARIANT_MARK, regex=False)).any(axis=1)


def quirk_ablation(table4_csv: str, out_csv: str, out_md: str, corrections: list[str]) -> pd.DataFrame:
    """How much each correction of the quirk ablation (config ablation) moves Table 4: per row it added (a
    `+<correction>` in its dataset, model or method), its published row's coordinates and each column's change,
    corrected minus published (csv); the mean change per correction over its rows (md)."""
    table = pd.read_csv(table4_csv, keep_default_na=False, na_values=[""])
    marked = ablation_rows(table)
    published = table[~marked].set_index(KEYS)
    records = []
    for _, row in table[marked].iterrows():
        split = {key: split_variant(row[key]) for key in KEYS}
        correction = next(variant for _, variant in split.values() if variant)
        coordinates = tuple(base for base, _ in split.values())
        if coordinates not in published.index:
            raise ValueError(f"{table4_csv}: row {tuple(row[KEYS])} has no published row {coordinates}")
        before = published.loc[coordinates]
        change = {column: row[column] - before[column] for column in QUIRK_VALUES}
        records.append({"correction": correction, **dict(zip(KEYS, coordinates, strict=True)), **change})
    frame = pd.DataFrame.from_records(records, columns=["correction", *KEYS, *QUIRK_VALUES])
    frame.to_csv(out_csv, index=False, float_format="%.4f")
    means = frame.groupby("correction", sort=False)[QUIRK_VALUES].mean().reindex(corrections)
    means.insert(0, "rows", frame.groupby("correction", sort=False).size().reindex(corrections).fillna(0).astype(int))
    Path(out_md).write_text(means.reset_index().to_markdown(index=False, floatfmt="+.4f") + "\n")
    return frame


TABLE3_COLUMNS = ["dataset", "beta", "ratio"]  # the paper's; `score` and `threshold` follow when taggings are added


def table3_frame(scores_by_dataset: dict[str, str], betas: list[float], taggings: list[dict] = ()) -> pd.DataFrame:
    """The share of assistant turns tagged per dataset at each beta on the attention score (paper Table 3), then
    at each of `taggings` ({dataset, tagging, scores}: a quantile or another score, `Plan.table3_taggings`), by
    the tagging rule itself. With taggings the table says each row's `score` and `threshold` (as in branch names);
    a quantile has no `beta`."""
    records = []
    for dataset, path in scores_by_dataset.items():
        scores = pd.read_parquet(path)
        for beta in betas:
            row = {"dataset": dataset, "beta": beta, "ratio": tagged_ratio(scores, beta)}
            records.append({**row, "score": ATTENTION, "threshold": canonical_number(str(beta))})
        for row in taggings:
            if row["dataset"] != dataset:
                continue
            tagging = parse_tagging(row["tagging"])
            threshold = tagging.threshold
            records.append(
                {
                    "dataset": dataset,
                    "beta": threshold.value if threshold.kind == BETA else math.nan,
                    "ratio": tagged_ratio(pd.read_parquet(row["scores"]), threshold),
                    "score": tagging.score,
                    "threshold": threshold.text,
                }
            )
    columns = TABLE3_COLUMNS + (["score", "threshold"] if taggings else [])
    return pd.DataFrame.from_records(records, columns=columns)


def write_table3(
    scores_by_dataset: dict[str, str], betas: list[float], out_csv: str, taggings: list[dict] = ()
) -> pd.DataFrame:
    frame = table3_frame(scores_by_dataset, betas, taggings)
    frame.to_csv(out_csv, index=False, float_format="%.4f")
    return frame
