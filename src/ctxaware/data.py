"""SFT data adapters: ShareGPT, UltraChat and WizardLM rows -> one chat schema, with the paper's filters.

Output conversations are {"id": str, "messages": [{"role": "system"|"user"|"assistant", "content": str}],
"context_dependent": [bool | None per assistant message]}: an optional leading system message, then alternating
user/assistant messages ending with an assistant. `context_dependent` is a ground-truth label some sources carry
(the model organism's sets: a boolean `context_dependent` on each assistant message, or on the row for WizardLM);
it is carried through cleaning (merged messages: true if any part is) and never shown to training; None where
the source has none.

Cleaning steps, in order (paper Section 4.1.2; every step is counted in the stats, in raw messages):
  1. drop whitespace-only messages;
  2. keep system messages only before the first user message; drop assistant messages found there
     (chunks of a longer conversation that lack the user input) and system messages later on;
  3. drop user messages at the end that have no response;
  4. merge consecutive messages of the same role with a blank line;
  5. (refusal filter: by default ShareGPT and WizardLM, see `refuses`) cut the conversation before the user turn
     that led to the first refusal;
  6. drop conversations left without a (user, assistant) pair.
"""

from __future__ import annotations

import json
from pathlib import Path

from ctxaware.raw import DataError, load_raw

FORMATS = ("sharegpt", "ultrachat", "wizardlm")
MAX_EXAMPLES = 20

# Lower-case; matched as substrings after folding typographic apostrophes. Kept short and specific: longer
# lists start to catch ordinary answers ("I am unable to find a bug in your code, it works").
REFUSAL_PHRASES = (
    "as an ai language model",
    "as a language model",
    "as an ai assistant, i cannot",
    "i'm sorry, but i cannot",
    "i'm sorry, but i can't",
    "i'm sorry, but as an ai",
    "i cannot fulfill",
    "i can't fulfill",
    "i am not able to",
    "i'm not able to",
    "i'm unable to",
    "i am unable to",
)
# The formats refusal-filtered by default: per the paper (Section 4.1.2) ShareGPT and WizardLM, not UltraChat (its
# responses come from a different pipeline). `datasets.<d>.refusal_filter` overrides it per dataset: the original
# code filters nothing (it trains on sets cleaned upstream).
REFUSAL_FILTERED = {"sharegpt", "wizardlm"}


def refuses(fmt: str, refusal_filter: bool | None = None) -> bool:
    """Whether conversations of `fmt` are cut at their first refusal: `refusal_filter`, or (None) the format's
    default."""
    return fmt in REFUSAL_FILTERED if refusal_filter is None else refusal_filter


SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "chatgpt": "assistant",
    "bing": "assistant",
    "bard": "assistant",
    "assistant": "assistant",
    "system": "system",
}
ULTRACHAT_ROLES = {"user": "user", "assistant": "assistant", "system": "system"}

COUNTERS = (
    "malformed_rows_dropped",
    "empty_messages_dropped",
    "leading_assistant_turns_dropped",
    "inner_system_messages_dropped",
    "trailing_user_turns_dropped",
    "merged_messages",
    "refusal_turns_dropped",
    "refusal_conversations_truncated",
    "empty_conversations_dropped",
    "duplicate_ids_renamed",
)


class _Malformed(Exception):
    """A row that cannot be read in the declared format (reason only; the caller adds file and row)."""


# ---------------------------------------------------------------- parsing, one function per schema


Message = tuple[str, str, "bool | None"]  # (role, text, context_dependent label)
LABEL_KEY = "context_dependent"
# a labelled set's conversation may name the group it belongs to (ctxaware.real_language: context_dependent,
# context_free, distractor): the validity table compares the context-dependent turns with each group of the others
LABEL_GROUP_KEY = "label_group"


def _label(value, where: str) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    raise _Malformed(f"{where} '{LABEL_KEY}' is {type(value).__name__}, expected a boolean")


# ShareGPT exports come in two layouts: `conversations` of {from, value} (the original dump) and `messages` of
# {role, content} (e.g. ucla-cmllab/vicuna_cleaned, read by the original through `vicuna_to_ultrachat`). As that
# converter does, either column is read with either key pair, the first of each that is present winning.
SHAREGPT_FIELDS = ("conversations", "messages")
SHAREGPT_ROLE_KEYS = ("from", "role")
SHAREGPT_TEXT_KEYS = ("value", "content")


def _parse_sharegpt(row: dict) -> tuple[object, list[Message]]:
    return row.get("id"), _parse_messages(row, SHAREGPT_FIELDS, SHAREGPT_ROLE_KEYS, SHAREGPT_TEXT_KEYS, SHAREGPT_ROLES)


def _parse_ultrachat(row: dict) -> tuple[object, list[Message]]:
    return row.get("prompt_id"), _parse_messages(row, ("messages",), ("role",), ("content",), ULTRACHAT_ROLES)


def _parse_wizardlm(row: dict) -> tuple[object, list[Message]]:
    for key in ("instruction", "output"):
        if key not in row:
            raise _Malformed(f"missing '{key}'")
        if not isinstance(row[key], str):
            raise _Malformed(f"'{key}' is {type(row[key]).__name__}, expected str")
    instruction = row["instruction"]
    if isinstance(row.get("input"), str) and row["input"].strip():  # Alpaca-style rows carry a separate input
        instruction = f"{instruction}\n\n{row['input']}"
    label = _label(row.get(LABEL_KEY), "row")
    return _row_id(row, "idx", "id"), [("user", instruction, None), ("assistant", row["output"], label)]


def _first_present(mapping: dict, keys: tuple[str, ...]) -> str | None:
    """The first of `keys` that `mapping` holds with a value (a column or struct field that is None is absent:
    parquet rows carry every column of the file)."""
    return next((k for k in keys if mapping.get(k) is not None), None)


def _either(keys: tuple[str, ...]) -> str:
    return " or ".join(f"'{k}'" for k in keys)


def _parse_messages(
    row: dict, fields: tuple[str, ...], role_keys: tuple[str, ...], text_keys: tuple[str, ...], roles: dict
) -> list[Message]:
    field = _first_present(row, fields)
    if field is None:
        raise _Malformed(f"missing {_either(fields)}")
    if not isinstance(row[field], list):
        raise _Malformed(f"'{field}' is {type(row[field]).__name__}, expected a list")
    messages = []
    for j, msg in enumerate(row[field]):
        if not isinstance(msg, dict):
            raise _Malformed(f"message {j} is {type(msg).__name__}, expected an object")
        role_key, text_key = _first_present(msg, role_keys), _first_present(msg, text_keys)
        for key, keys in ((role_key, role_keys), (text_key, text_keys)):
            if key is None:
                raise _Malformed(f"message {j} has no {_either(keys)}")
        role, text = msg[role_key], msg[text_key]
        if not isinstance(text, str):
            raise _Malformed(f"message {j} '{text_key}' is {type(text).__name__}, expected str")
        if not isinstance(role, str) or role.lower() not in roles:
            raise _Malformed(f"message {j} has unknown {role_key} {role!r}")
        messages.append((roles[role.lower()], text, _label(msg.get(LABEL_KEY), f"message {j}")))
    return messages


def _row_id(row: dict, *keys: str) -> object:
    return next((row[k] for k in keys if row.get(k) not in (None, "")), None)


PARSERS = {"sharegpt": _parse_sharegpt, "ultrachat": _parse_ultrachat, "wizardlm": _parse_wizardlm}
ID_KEYS = {"sharegpt": ("id",), "ultrachat": ("prompt_id",), "wizardlm": ("idx", "id")}


# ---------------------------------------------------------------- cleaning


def is_refusal(text: str) -> bool:
    text = text.lower().replace("\u2019", "'")
    return any(phrase in text for phrase in REFUSAL_PHRASES)


def _clean(messages: list[Message], refusals: bool, counts: dict) -> list[Message]:
    """Steps 1-5 of the module docstring on one conversation; updates `counts`."""
    kept = [m for m in messages if m[1].strip()]
    counts["empty_messages_dropped"] += len(messages) - len(kept)

    first_user = next((i for i, (role, _, _) in enumerate(kept) if role == "user"), len(kept))
    head, body = kept[:first_user], kept[first_user:]
    counts["leading_assistant_turns_dropped"] += sum(role == "assistant" for role, _, _ in head)
    counts["inner_system_messages_dropped"] += sum(role == "system" for role, _, _ in body)
    kept = [m for m in head if m[0] == "system"] + [m for m in body if m[0] != "system"]

    while kept and kept[-1][0] == "user":
        kept.pop()
        counts["trailing_user_turns_dropped"] += 1

    merged: list[Message] = []
    for role, text, label in kept:
        if merged and merged[-1][0] == role:
            merged[-1] = (role, f"{merged[-1][1]}\n\n{text}", _merge_labels(merged[-1][2], label))
            counts["merged_messages"] += 1
        else:
            merged.append((role, text, label))

    # Now [system], user, assistant, ..., assistant: the refusal's user turn sits right before it.
    if refusals:
        hit = next((i for i, (role, text, _) in enumerate(merged) if role == "assistant" and is_refusal(text)), None)
        if hit is not None:
            counts["refusal_turns_dropped"] += len(merged) - (hit - 1)
            counts["refusal_conversations_truncated"] += 1
            merged = merged[: hit - 1]
    return merged


def _merge_labels(first: bool | None, second: bool | None) -> bool | None:
    """A merged response depends on the context if any of its parts does; unknown only if both are."""
    if first is None and second is None:
        return None
    return bool(first) or bool(second)


def adapt(
    rows: list[dict], fmt: str, source: str = "<memory>", strict: bool = False, refusal_filter: bool | None = None
) -> tuple[list[dict], dict]:
    """Rows of `fmt` ("sharegpt", "ultrachat", "wizardlm") -> (conversations, stats); `refusal_filter` as `refuses`.

    Malformed rows are dropped and counted (strict=False) or raise DataError (strict=True); more than half
    of them malformed raises DataError either way, as that means the declared format is wrong.
    """
    if fmt not in PARSERS:
        raise DataError(f"{source}: unknown format {fmt!r}, expected one of {', '.join(FORMATS)}")
    parse, refusals = PARSERS[fmt], refuses(fmt, refusal_filter)
    counts = dict.fromkeys(COUNTERS, 0)
    examples: list[str] = []
    conversations: list[dict] = []
    for i, row in enumerate(rows):
        try:
            if not isinstance(row, dict):
                raise _Malformed(f"row is {type(row).__name__}, expected an object")
            row_id, messages = parse(row)
            group = row.get(LABEL_GROUP_KEY)
            if group is not None and not isinstance(group, str):
                raise _Malformed(f"'{LABEL_GROUP_KEY}' is {type(group).__name__}, expected a string")
        except _Malformed as e:
            raw_id = _row_id(row, *ID_KEYS[fmt]) if isinstance(row, dict) else None
            where = f"{source} row {i}" + (f" (id {raw_id})" if raw_id is not None else "")
            if strict:
                raise DataError(f"{where}: {e}") from None
            counts["malformed_rows_dropped"] += 1
            if len(examples) < MAX_EXAMPLES:
                examples.append(f"{where}: {e}")
            continue
        messages = _clean(messages, refusals, counts)
        if not any(role == "assistant" for role, _, _ in messages):
            counts["empty_conversations_dropped"] += 1
            continue
        conversations.append(
            {
                "id": str(row_id) if row_id not in (None, "") else f"{fmt}-{i}",
                "messages": [{"role": role, "content": text} for role, text, _ in messages],
                LABEL_KEY: [label for role, _, label in messages if role == "assistant"],
                **({LABEL_GROUP_KEY: group} if group is not None else {}),
            }
        )

    bad = counts["malformed_rows_dropped"]
    if rows and bad > len(rows) / 2:
        raise DataError(
            f"{source}: {bad} of {len(rows)} rows are malformed for format '{fmt}' (is the format right?); "
            f"first: {examples[0]}"
        )
    counts["duplicate_ids_renamed"] = _dedupe_ids(conversations)
    stats = {"source": str(source), "format": fmt, "n_raw_rows": len(rows), **_output_stats(conversations)}
    return conversations, {**stats, **counts, "malformed_examples": examples}


def _dedupe_ids(conversations: list[dict]) -> int:
    """Suffix repeated ids with -1, -2, ... (skipping ids already taken); returns how many were renamed."""
    seen: set[str] = set()
    renamed = 0
    for conv in conversations:
        new_id, k = conv["id"], 0
        while new_id in seen:
            k += 1
            new_id = f"{conv['id']}-{k}"
        renamed += new_id != conv["id"]
        conv["id"] = new_id
        seen.add(new_id)
    return renamed


def _output_stats(conversations: list[dict]) -> dict:
    roles = [m["role"] for conv in conversations for m in conv["messages"]]
    labels = [label for conv in conversations for label in conv.get(LABEL_KEY, [])]
    return {
        "n_conversations": len(conversations),
        "n_user_turns": roles.count("user"),
        "n_assistant_turns": roles.count("assistant"),
        "mean_messages_per_conversation": round(len(roles) / len(conversations), 4) if conversations else 0.0,
        "n_labelled_turns": sum(label is not None for label in labels),
        "n_context_dependent_turns": sum(label is True for label in labels),
    }


# ---------------------------------------------------------------- parquet in / out


def _schema(grouped: bool = False):
    import pyarrow as pa

    message = pa.struct([("role", pa.string()), ("content", pa.string())])
    fields = [("id", pa.string()), ("messages", pa.list_(message)), (LABEL_KEY, pa.list_(pa.bool_()))]
    return pa.schema(fields + ([(LABEL_GROUP_KEY, pa.string())] if grouped else []))


def prepare(
    source: str,
    fmt: str,
    out_parquet: str,
    out_stats: str,
    split: str = "train",
    hub_config: str | None = None,
    max_conversations: int | None = None,
    strict: bool = False,
    revision: str | None = None,
    data_files: str | list | dict | None = None,
    key: str = "source",
    refusal_filter: bool | None = None,
) -> dict:
    """load_raw + adapt (+ keep the first `max_conversations`) -> parquet and stats json; returns stats."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = load_raw(source, split, hub_config, revision, data_files, key)
    conversations, stats = adapt(rows, fmt, source=source, strict=strict, refusal_filter=refusal_filter)
    if not conversations:
        dropped = {k: v for k, v in stats.items() if k in COUNTERS and v}
        raise DataError(f"{source}: no conversation left for format '{fmt}' after filtering; dropped: {dropped}")
    if max_conversations is not None:
        stats["n_conversations_before_limit"] = len(conversations)
        conversations = conversations[:max_conversations]
        stats.update(_output_stats(conversations))
    stats["max_conversations"] = max_conversations

    for out in (out_parquet, out_stats):
        Path(out).parent.mkdir(parents=True, exist_ok=True)
    # the group column only where the source names groups: other datasets' files stay as they were
    grouped = any(LABEL_GROUP_KEY in conversation for conversation in conversations)
    pq.write_table(pa.Table.from_pylist(conversations, schema=_schema(grouped)), out_parquet)
    Path(out_stats).write_text(json.dumps(stats, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return stats


def read_labels(parquet_path: str):
    """One row per assistant turn of a prepared dataset: conversation_id, turn, context_dependent (None where the
    source has no label); the key the scores use."""
    import pandas as pd
    import pyarrow.parquet as pq

    names = pq.read_schema(parquet_path).names
    columns = ["id"] + [key for key in (LABEL_KEY, LABEL_GROUP_KEY) if key in names]
    rows = []
    for conversation in pq.read_table(parquet_path, columns=columns).to_pylist():
        for turn, label in enumerate(conversation.get(LABEL_KEY) or []):
            group = conversation.get(LABEL_GROUP_KEY)
            rows.append({"conversation_id": conversation["id"], "turn": turn, LABEL_KEY: label, LABEL_GROUP_KEY: group})
    return pd.DataFrame(rows, columns=["conversation_id", "turn", LABEL_KEY, LABEL_GROUP_KEY])


def read_conversations(parquet_path: str) -> list[dict]:
    """Conversations written by `prepare`, as plain python lists and dicts."""
    import pyarrow.parquet as pq

    return pq.read_table(parquet_path, columns=["id", "messages"]).to_pylist()
