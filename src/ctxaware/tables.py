"""Tables: the paper's Table 4 (csv, markdown, LaTeX) and Table 3 (share of tagged turns per beta)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from ctxaware.tagging import tagged_ratio

CONTEXT_TASKS = ("nih", "squad", "quac", "drop")
TABLE4_COLUMNS = ["sft_dataset", "model", "method", "nih", "squad", "quac", "drop", "avg", "mt_bench"]
TASK_COLUMN = {"nih": "nih", "squad": "squad", "quac": "quac", "drop": "drop", "mtbench": "mt_bench"}


def _coordinates(result_path: str) -> tuple[str, str, str, str]:
    """results/eval/{model}/{dataset}/{method}/{task}.json -> (model, dataset, method, task)."""
    path = Path(result_path)
    return path.parts[-4], path.parts[-3], path.parts[-2], path.name.removesuffix(".json")


def table4_frame(rows: list[dict], result_paths: list[str]) -> pd.DataFrame:
    scores = {}
    for result_path in result_paths:
        model, dataset, method, task = _coordinates(result_path)
        scores[(dataset, model, method, TASK_COLUMN[task])] = json.loads(Path(result_path).read_text())["score"]
    records = []
    for row in rows:
        record = dict(row)
        for column in TASK_COLUMN.values():
            value = scores.get((row["sft_dataset"], row["model"], row["method"], column))
            record[column] = math.nan if value is None else float(value)
        # avg is only defined when all four context tasks ran (as in the paper): a missing one's NaN makes it NaN
        record["avg"] = sum(record[t] for t in CONTEXT_TASKS) / 4
        records.append(record)
    return pd.DataFrame.from_records(records, columns=TABLE4_COLUMNS)


def _with_paper(frame: pd.DataFrame, paper_csv: str | None) -> pd.DataFrame:
    """Adds paper_<column> beside ours where the paper reports the same (dataset, model, method)."""
    if not paper_csv:
        return frame
    paper = pd.read_csv(paper_csv)
    missing = [key for key in TABLE4_COLUMNS[:3] if key not in paper.columns]
    if missing:
        raise ValueError(f"config key report.paper_table4: {paper_csv} has no column {', '.join(missing)}")
    value_columns = [c for c in TABLE4_COLUMNS[3:] if c in paper.columns]
    paper = paper.rename(columns={c: f"paper_{c}" for c in value_columns})
    return frame.merge(paper, on=["sft_dataset", "model", "method"], how="left")


def write_table4(rows, tasks, result_paths, out_csv, out_md, out_tex, paper_csv=None) -> pd.DataFrame:
    frame = table4_frame(rows, result_paths)
    frame.to_csv(out_csv, index=False, float_format="%.4f")
    shown = _with_paper(frame, paper_csv)
    Path(out_md).write_text(shown.to_markdown(index=False, floatfmt=".4f") + "\n")
    latex = shown.rename(columns=lambda c: c.replace("_", " ")).to_latex(
        index=False, float_format="%.4f", na_rep="--", escape=True
    )
    Path(out_tex).write_text(latex)
    return frame


def table3_frame(scores_by_dataset: dict[str, str], betas: list[float]) -> pd.DataFrame:
    records = []
    for dataset, path in scores_by_dataset.items():
        scores = pd.read_parquet(path)
        for beta in betas:
            records.append({"dataset": dataset, "beta": beta, "ratio": tagged_ratio(scores, beta)})
    return pd.DataFrame.from_records(records, columns=["dataset", "beta", "ratio"])


def write_table3(scores_by_dataset: dict[str, str], betas: list[float], out_csv: str) -> pd.DataFrame:
    frame = table3_frame(scores_by_dataset, betas)
    frame.to_csv(out_csv, index=False, float_format="%.4f")
    return frame
