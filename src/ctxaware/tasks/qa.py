"""Contextual QA tasks (SQuAD v1.1, QuAC, DROP): loaders for the datasets' real schemas and prompts."""

from __future__ import annotations

from ctxaware.data import load_raw

CANNOTANSWER = "CANNOTANSWER"


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
    rows = load_raw(settings["source"], settings.get("split", "validation"), settings.get("hub_config"))
    items = ITEMS[task](rows, settings["source"])
    return items[: settings["limit"]] if settings.get("limit") else items
