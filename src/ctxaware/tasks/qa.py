"""Contextual QA tasks (SQuAD v1.1, QuAC, DROP): loaders for the datasets' real schemas and prompts."""

from __future__ import annotations

import json
from pathlib import Path

CANNOTANSWER = "CANNOTANSWER"


def load_rows(source: str, split: str = "validation", hub_config: str | None = None) -> list[dict]:
    """Rows from a local json/jsonl/parquet file, or a hub dataset id through datasets (clusters)."""
    path = Path(source)
    if path.exists():
        if path.suffix == ".parquet":
            import pandas as pd

            return pd.read_parquet(path).to_dict("records")
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".jsonl":
            rows = []
            for number, line in enumerate(text.splitlines(), 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as error:
                        raise ValueError(f"{source} line {number}: not valid JSON ({error})") from error
            return rows
        data = json.loads(text)
        return data["data"] if isinstance(data, dict) and "data" in data else data
    from datasets import load_dataset

    return list(load_dataset(source, hub_config, split=split))


def _field(row: dict, key: str, source: str, index: int):
    if key not in row or row[key] is None:
        raise ValueError(f"{source} row {index}: missing field '{key}'")
    return row[key]


def _golds(values) -> list[str]:
    return list(dict.fromkeys(str(v) for v in values if str(v).strip()))


def squad_items(rows: list[dict], source: str) -> list[dict]:
    return [
        {
            "id": str(_field(row, "id", source, i)),
            "context": _field(row, "context", source, i),
            "question": _field(row, "question", source, i),
            "golds": _golds(_field(row, "answers", source, i)["text"]),
        }
        for i, row in enumerate(rows)
    ]


def quac_items(rows: list[dict], source: str) -> list[dict]:
    """The first question of each dialogue; golds from its annotated answers (and the original answer)."""
    items = []
    for i, row in enumerate(rows):
        context = _field(row, "context", source, i)
        if context.endswith(CANNOTANSWER):  # QuAC appends the no-answer token to every context
            context = context[: -len(CANNOTANSWER)].rstrip()
        answers = _field(row, "answers", source, i)["texts"][0]
        original = row.get("orig_answers", {}).get("texts") or []
        items.append(
            {
                "id": str(_field(row, "dialogue_id", source, i)),
                "context": context,
                "question": _field(row, "questions", source, i)[0],
                "golds": _golds(list(answers) + list(original[:1])),
            }
        )
    return items


def drop_items(rows: list[dict], source: str) -> list[dict]:
    return [
        {
            "id": str(_field(row, "query_id", source, i)),
            "context": _field(row, "passage", source, i),
            "question": _field(row, "question", source, i),
            "golds": _golds(_field(row, "answers_spans", source, i)["spans"]),
        }
        for i, row in enumerate(rows)
    ]


ITEMS = {"squad": squad_items, "quac": quac_items, "drop": drop_items}


def load_items(task: str, settings: dict) -> list[dict]:
    rows = load_rows(settings["source"], settings.get("split", "validation"), settings.get("hub_config"))
    items = ITEMS[task](rows, settings["source"])
    return items[: settings["limit"]] if settings.get("limit") else items
