import math

import pandas as pd

from ctxaware.tagging import is_tagged, tag_conversations, tagged_ratio

CONVERSATIONS = [
    {
        "id": "a",
        "messages": [
            {"role": "user", "content": "Summarise: ..."},
            {"role": "assistant", "content": "Short."},
            {"role": "user", "content": "Why?"},
            {"role": "assistant", "content": "Because."},
        ],
    },
    {"id": "b", "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]},
    {"id": "c", "messages": [{"role": "user", "content": "Cut"}, {"role": "assistant", "content": "..."}]},
]
SCORES = pd.DataFrame(
    {
        "conversation_id": ["a", "a", "b", "c"],
        "turn": [0, 1, 0, 0],
        "score": [0.61, 0.2, 0.6, math.nan],  # b sits exactly on beta: strict > leaves it untagged
        "n_response_tokens": [2, 2, 1, 0],
        "truncated": [False, False, False, True],
    }
)


def test_tags_exactly_the_instructions_above_beta():
    tagged, stats = tag_conversations(CONVERSATIONS, SCORES, beta=0.6)
    assert tagged[0]["messages"][0]["content"] == "Summarise: ... [IND]"
    assert tagged[0]["messages"][2]["content"] == "Why?"
    assert tagged[1]["messages"][0]["content"] == "Hi"
    assert tagged[2]["messages"][0]["content"] == "Cut"  # NaN (truncated) is never tagged
    assert [m["content"] for m in tagged[0]["messages"][1::2]] == ["Short.", "Because."]
    assert stats["n_tagged"] == 1 and stats["n_assistant_turns"] == 4 and stats["ratio"] == 0.25
    assert CONVERSATIONS[0]["messages"][0]["content"] == "Summarise: ..."  # input untouched


def test_lower_beta_tags_more_and_ratio_matches_table3():
    tagged, stats = tag_conversations(CONVERSATIONS, SCORES, beta=0.1)
    assert tagged[0]["messages"][2]["content"] == "Why? [IND]" and tagged[1]["messages"][0]["content"] == "Hi [IND]"
    assert stats["n_tagged"] == 3
    assert tagged_ratio(SCORES, 0.1) == 0.75 and tagged_ratio(SCORES, 0.6) == 0.25


def test_missing_scores_are_counted_and_untagged():
    _, stats = tag_conversations(CONVERSATIONS, SCORES.iloc[:1], beta=0.0)
    assert stats["n_turns_without_score"] == 3 and stats["n_tagged"] == 1


def test_helpers():
    assert not is_tagged(math.nan, 0.5) and not is_tagged(None, 0.5) and is_tagged(0.50001, 0.5)
