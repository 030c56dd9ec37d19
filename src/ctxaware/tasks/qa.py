"""Contextual QA tasks (SQuAD v1.1, QuAC, DROP): loaders for the datasets' real schemas and prompts."""

from __future__ import annotations

from ctxaware.raw import load_raw
from ctxaware.tasks import PROCEDURE_DEFAULTS

CANNOTANSWER = "CANNOTANSWER"
QUAC_GOLDS = ("answers_and_original", "answers")


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


def quac_context(row: dict, source: str, index: int) -> str:
    """The original's QuAC passage: 'Title: ' + page title + newline + background + ' ' + the section text
    without the no-answer token QuAC appends to every context."""
    section = _field(row, "context", source, index)
    if section.endswith(CANNOTANSWER):
        section = section[: -len(CANNOTANSWER)].rstrip()
    title, background = _field(row, "wikipedia_page_title", source, index), _field(row, "background", source, index)
    return f"Title: {title}\n{background} {section}"


def quac_items(rows: list[dict], source: str, golds: str = "answers_and_original") -> list[dict]:
    """The first question of each dialogue; golds from its annotated answers and its original answer
    (answers_and_original), or from the annotated answers only (answers: what the original's lm-eval task scored,
    `doc["answers"]["texts"][0]`)."""
    if golds not in QUAC_GOLDS:
        raise ValueError(f"config key evaluation.quac.golds: {golds!r} is not one of {QUAC_GOLDS}")
    items = []
    for i, row in enumerate(rows):
        context = quac_context(row, source, i)
        answers = _field(row, "answers", source, i)["texts"][0]
        original = (row.get("orig_answers", {}).get("texts") or []) if golds == "answers_and_original" else []
        items.append(
            {
                "id": str(_field(row, "dialogue_id", source, i)),
                "context": context,
                "question": _field(row, "questions", source, i)[0],
                "golds": _golds(list(answers) + list(original[:1])),
            }
        )
    return items


def drop_answer(answer: dict) -> list[str]:
    """One DROP answer as strings, as lm-eval's parse_answer reads it: the number, else the spans, else the
    date as 'day month year'."""
    if str(answer.get("number") or "").strip():
        return [str(answer["number"])]
    if answer.get("spans"):
        return [str(span) for span in answer["spans"]]
    date = answer.get("date") or {}
    return [" ".join(str(date.get(k) or "") for k in ("day", "month", "year")).strip()]


def _validated_answers(validated) -> list[dict]:
    """Validated answers as a list of answer dicts (parquet stores them as a dict of parallel lists)."""
    if isinstance(validated, dict):
        keys = [k for k in ("number", "date", "spans") if k in validated]
        return [dict(zip(keys, values, strict=True)) for values in zip(*(validated[k] for k in keys), strict=True)]
    return list(validated or [])


def drop_items(rows: list[dict], source: str) -> list[dict]:
    """DROP in either hub schema: EleutherAI/drop (the original's: `answer` and `validated_answers`), where
    `first_answer` is the dataset's own answer the original scored against; or ucinlp/drop (`answers_spans`:
    the validated answers' spans, flattened), where the answers' boundaries are lost and `first_answer` is the
    first span."""
    items = []
    for i, row in enumerate(rows):
        if "answer" in row:
            answers = [drop_answer(_field(row, "answer", source, i))]
            answers += [drop_answer(a) for a in _validated_answers(row.get("validated_answers"))]
            golds, first_answer = _golds(s for answer in answers for s in answer), _golds(answers[0])
        else:
            golds = _golds(_field(row, "answers_spans", source, i)["spans"])
            first_answer = golds[:1]
        items.append(
            {
                "id": str(_field(row, "query_id", source, i)),
                "context": _field(row, "passage", source, i),
                "question": _field(row, "question", source, i),
                "golds": golds,
                "first_answer": first_answer,
            }
        )
    return items


ITEMS = {"squad": squad_items, "quac": quac_items, "drop": drop_items}


def load_items(task: str, settings: dict) -> list[dict]:
    rows = load_raw(
        settings["source"],
        settings.get("split", "validation"),
        settings.get("hub_config"),
        settings.get("revision"),
        settings.get("data_files"),
        key=f"evaluation.{task}.source",
    )
    golds = settings.get("golds", PROCEDURE_DEFAULTS["golds"])
    if task == "quac":
        items = quac_items(rows, settings["source"], golds)
    elif golds != PROCEDURE_DEFAULTS["golds"]:
        raise ValueError(f"config key evaluation.{task}.golds: {golds!r} applies to QuAC only")
    else:
        items = ITEMS[task](rows, settings["source"])
    return items[: settings["limit"]] if settings.get("limit") else items
