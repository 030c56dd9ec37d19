"""What the likelihood-ratio score takes away: the one definition of an assistant turn's context, and of the
instruction that stays without it (torch-free).

With the context, turn m's response is read after the conversation as rendered up to it: the system message,
user turns 1..m and the assistant turns between them (the scorer's one forward over the whole conversation).
Without it, the response follows the system message and the turn's instruction only, rendered by the same
template: `[system, user: instruction, assistant: response]`. The instruction (`scoring.likelihood_ratio.
instruction`) is
- `last_turn`: the whole user message of turn m; the context is the earlier turns;
- `last_paragraph`, `last_line`, `split`: the last piece of that message with non-blank text, the message being
  cut at blank lines, at line breaks, or at each match of the regular expression `scoring.likelihood_ratio.split`;
  the context is the earlier turns and the message's earlier pieces.
The system message is kept in both: it is not the user's context (Eq. 2 does not count it either).
A turn with no context to remove (the first turn, whose user message is all instruction) has no second input:
its score is exactly 0 and it is marked `no_context`, which tagging never selects.
"""

from __future__ import annotations

import re

INSTRUCTIONS = ("last_turn", "last_paragraph", "last_line", "split")
SPLITS = {"last_paragraph": r"\n[ \t]*\n", "last_line": r"\n"}  # the named cuts; `split` takes its own


def split_pattern(instruction: str, split: str | None = None) -> str | None:
    """The regular expression that cuts a user message (None for last_turn: the message is not cut)."""
    if instruction not in INSTRUCTIONS:
        raise ValueError(f"instruction {instruction!r}: expected one of {', '.join(INSTRUCTIONS)}")
    if instruction == "split":
        if not split:
            raise ValueError("instruction split needs a regular expression in split")
        return split
    return SPLITS.get(instruction)


def instruction_of(message: str, instruction: str = "last_turn", split: str | None = None) -> str:
    """The part of a user message that stays without the context: the whole message (last_turn), or its last
    piece with non-blank text after cutting it at every match of the split, without the whitespace around it (the
    whole message when no piece has text)."""
    pattern = split_pattern(instruction, split)
    if pattern is None:
        return message
    pieces, start = [], 0
    for match in re.finditer(pattern, message):
        pieces.append(message[start : match.start()])
        start = match.end()
    pieces.append(message[start:])
    return next((piece.strip() for piece in reversed(pieces) if piece.strip()), message)


def without_context(messages: list[dict], instruction: str = "last_turn", split: str | None = None) -> list:
    """For each assistant message of a conversation, in order: the messages its response is read after without
    the context (`[system, user: instruction, assistant]`, the system message only where the conversation has
    one), or None when that removes nothing (the turn's input already is its instruction alone)."""
    system = (
        [{"role": "system", "content": messages[0]["content"]}] if messages and messages[0]["role"] == "system" else []
    )
    inputs, user = [], None  # user: index of the latest user message
    for index, message in enumerate(messages):
        if message["role"] == "user":
            user = index
        if message["role"] != "assistant":
            continue
        kept = []
        if user is not None:
            kept = [{"role": "user", "content": instruction_of(messages[user]["content"], instruction, split)}]
        # the context: every message between the system message and this response but the user message it answers,
        # and whatever text of that message the instruction leaves out
        earlier = [i for i in range(len(system), index) if i != user]
        cut = bool(kept) and messages[user]["content"].strip() != kept[0]["content"].strip()
        removes = bool(earlier) or cut
        inputs.append([*system, *kept, {"role": "assistant", "content": message["content"]}] if removes else None)
    return inputs
