"""Tagging: append [IND] to the user instruction of every turn a threshold selects by its score.

Which turns are tagged is decided in one place, `tagged_mask`: a turn is eligible when it has a score (NaN: a
truncated response) and context to remove (`no_context`, a column of likelihood-ratio scores: the turn's input
was its instruction alone, its score is exactly 0 by definition); an eligible turn is tagged when its score is
strictly above the threshold's cutoff (`cutoff`).

`append_period` (tagging.append_period) reproduces a quirk of the original code's tagging step (`modify_prompt`,
analyse_dataset/process_dataset.py@124b797 l.94-95): every user message it found a score for gets a "." when it
ends in a letter or digit, tagged or not, before the " [IND]".
"""

from __future__ import annotations

import math
from decimal import Decimal

import numpy as np
import pandas as pd

from ctxaware.chat import append_indicator
from ctxaware.methods import BETA, Threshold


def eligible(scores: pd.DataFrame) -> pd.Series:
    """Turns a threshold may tag: scored (a NaN score, a truncated response, never is) and, where the scores
    say so, with context to remove (a `no_context` turn never is)."""
    mask = scores["score"].notna()
    if "no_context" in scores:
        mask &= ~scores["no_context"].astype(bool)
    return mask


def quota(threshold: Threshold, n_eligible: int) -> int:
    """How many of n eligible turns a quantile may tag: floor(q * n), computed on the number as written (0.3,
    not the float nearest to it), so `q0.3` of 10 turns is exactly 3."""
    return int(Decimal(threshold.number) * n_eligible)  # int() truncates: floor for a non-negative product


def cutoff(scores: pd.DataFrame, threshold: Threshold | float) -> float:
    """The score an eligible turn must exceed to be tagged. A beta (a Threshold of kind beta, or a number): itself.
    A quantile q: the (k+1)-th largest eligible score, k = quota(q, n eligible), or -inf when k covers them all.
    At most k turns are strictly above it, and turns tied with it are all left untagged, so ties at the cut never
    depend on the rows' order: the tagged share is q of the eligible turns, less those tied at the cut."""
    if not isinstance(threshold, Threshold):
        return float(threshold)
    if threshold.kind == BETA:
        return threshold.value
    values = np.sort(scores.loc[eligible(scores), "score"].to_numpy())[::-1]
    k = quota(threshold, len(values))
    return float(values[k]) if k < len(values) else -math.inf


def tagged_mask(scores: pd.DataFrame, threshold: Threshold | float) -> pd.Series:
    """Which turns (rows of a scores table) are tagged: eligible, with a score strictly above the cutoff."""
    return eligible(scores) & (scores["score"] > cutoff(scores, threshold))


def _threshold_stats(scores: pd.DataFrame, threshold: Threshold | float) -> dict:
    """The threshold as the stats file records it: a beta as `beta` (the paper's), a quantile with its cutoff
    (None when it tags every eligible turn) and how many turns it could choose from."""
    value = cutoff(scores, threshold)
    if not isinstance(threshold, Threshold) or threshold.kind == BETA:
        return {"beta": value}
    return {
        "quantile": threshold.value,
        "cutoff": None if value == -math.inf else value,
        "n_eligible": int(eligible(scores).sum()),
    }


def with_period(text: str) -> str:
    """The original's "." (process_dataset.py@124b797 l.94-95): added when the text ends in a letter or digit
    (str.isalnum, as there: Unicode letters and digits too)."""
    return f"{text}." if text and text[-1].isalnum() else text


def tag_conversations(
    conversations: list[dict], scores: pd.DataFrame, threshold: Threshold | float, append_period: bool = False
) -> tuple[list[dict], dict]:
    """[IND] on the instruction of every tagged turn; a turn without a row in `scores` is counted and untagged.

    append_period: the instruction of every turn with a finite score, tagged or not, first gets `with_period`. The
    original appended it to every turn its scorer handed a score string to; a NaN here (no response token in the
    window) has none: the original's rare NaN (a response header ending exactly at the window's end) and -1 (no
    response scored at all) turns, which it also gave a ".", are left as they are.
    """
    rows = scores.assign(tagged=tagged_mask(scores, threshold), scored=scores["score"].notna())
    state_of = {
        (str(conversation_id), int(turn)): (bool(tagged), bool(scored))
        for conversation_id, turn, tagged, scored in rows[["conversation_id", "turn", "tagged", "scored"]].to_numpy()
    }
    tagged_conversations, n_turns, n_tagged, n_missing, n_periods = [], 0, 0, 0, 0
    for conversation in conversations:
        messages = [dict(m) for m in conversation["messages"]]
        turn, last_user, with_periods = 0, None, set()
        for index, message in enumerate(messages):
            if message["role"] == "user":
                last_user = index
            elif message["role"] == "assistant":
                state = state_of.get((str(conversation["id"]), turn))
                is_tagged, is_scored = state if state is not None else (False, False)
                n_missing += state is None
                n_turns += 1
                if append_period and is_scored and last_user is not None and last_user not in with_periods:
                    content = messages[last_user]["content"]
                    messages[last_user]["content"] = with_period(content)
                    n_periods += messages[last_user]["content"] != content
                    with_periods.add(last_user)
                if last_user is not None and is_tagged:
                    messages[last_user]["content"] = append_indicator(messages[last_user]["content"])
                    n_tagged += 1
                    last_user = None  # one [IND] per instruction
                turn += 1
        tagged_conversations.append({"id": conversation["id"], "messages": messages})
    stats = {
        **_threshold_stats(scores, threshold),
        "n_conversations": len(conversations),
        "n_assistant_turns": n_turns,
        "n_tagged": n_tagged,
        "ratio": n_tagged / n_turns if n_turns else 0.0,
        "n_turns_without_score": n_missing,
    }
    if "no_context" in scores:
        stats["n_no_context"] = int(scores["no_context"].sum())
    if append_period:  # only then: the default's stats stay as they were
        stats["n_periods_appended"] = n_periods
    return tagged_conversations, stats


def tagged_ratio(scores: pd.DataFrame, threshold: Threshold | float) -> float:
    """Share of assistant turns tagged at a threshold (Table 3); ineligible turns count as untagged."""
    return float(tagged_mask(scores, threshold).mean()) if len(scores) else 0.0


def tag_file(
    data_parquet: str,
    scores_parquet: str,
    threshold: Threshold | float,
    out_parquet: str,
    out_stats: str,
    append_period: bool = False,
) -> dict:
    import json
    from pathlib import Path

    import pyarrow as pa
    import pyarrow.parquet as pq

    from ctxaware.data import read_conversations

    conversations = read_conversations(data_parquet)
    conversations, stats = tag_conversations(
        conversations, pd.read_parquet(scores_parquet), threshold, append_period=append_period
    )
    pq.write_table(pa.Table.from_pylist(conversations), out_parquet)  # read back by read_conversations
    Path(out_stats).write_text(json.dumps(stats, indent=2))  # ASCII
    return stats
