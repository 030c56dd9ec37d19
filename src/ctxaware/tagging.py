"""Tagging: append [IND] to the user instruction of every turn whose response scored above beta."""

from __future__ import annotations

import pandas as pd

from ctxaware.chat import append_indicator


def tagged_mask(scores: pd.Series, beta: float) -> pd.Series:
    """Which turns are tagged: score strictly above beta; a NaN score (truncated response) never is (NaN > beta
    is false)."""
    return scores > beta


def tag_conversations(conversations: list[dict], scores: pd.DataFrame, beta: float) -> tuple[list[dict], dict]:
    """[IND] on the instruction of every tagged turn; a turn without a row in `scores` is counted and untagged."""
    rows = scores.assign(tagged=tagged_mask(scores["score"], beta))[["conversation_id", "turn", "tagged"]]
    tagged_of = {(str(conversation_id), int(turn)): bool(tagged) for conversation_id, turn, tagged in rows.to_numpy()}
    tagged_conversations, n_turns, n_tagged, n_missing = [], 0, 0, 0
    for conversation in conversations:
        messages = [dict(m) for m in conversation["messages"]]
        turn, last_user = 0, None
        for index, message in enumerate(messages):
            if message["role"] == "user":
                last_user = index
            elif message["role"] == "assistant":
                is_tagged = tagged_of.get((str(conversation["id"]), turn))
                n_missing += is_tagged is None
                n_turns += 1
                if last_user is not None and is_tagged:
                    messages[last_user]["content"] = append_indicator(messages[last_user]["content"])
                    n_tagged += 1
                    last_user = None  # one [IND] per instruction
                turn += 1
        tagged_conversations.append({"id": conversation["id"], "messages": messages})
    stats = {
        "beta": beta,
        "n_conversations": len(conversations),
        "n_assistant_turns": n_turns,
        "n_tagged": n_tagged,
        "ratio": n_tagged / n_turns if n_turns else 0.0,
        "n_turns_without_score": n_missing,
    }
    return tagged_conversations, stats


def tagged_ratio(scores: pd.DataFrame, beta: float) -> float:
    """Share of assistant turns tagged at beta (Table 3); unscored (NaN) turns count as untagged."""
    return float(tagged_mask(scores["score"], beta).mean()) if len(scores) else 0.0


def tag_file(data_parquet: str, scores_parquet: str, beta: float, out_parquet: str, out_stats: str) -> dict:
    import json
    from pathlib import Path

    import pyarrow as pa
    import pyarrow.parquet as pq

    from ctxaware.data import read_conversations

    conversations, stats = tag_conversations(read_conversations(data_parquet), pd.read_parquet(scores_parquet), beta)
    pq.write_table(pa.Table.from_pylist(conversations), out_parquet)  # read back by read_conversations
    Path(out_stats).write_text(json.dumps(stats, indent=2))  # ASCII
    return stats
