import math

import pandas as pd
import pytest

from ctxaware.methods import parse_tagging
from ctxaware.tagging import cutoff, eligible, quota, tag_conversations, tagged_mask, tagged_ratio

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
    tagged, stats = tag_conversations(CONVERSATIONS, SCORES, threshold=0.6)
    assert tagged[0]["messages"][0]["content"] == "Summarise: ... [IND]"
    assert tagged[0]["messages"][2]["content"] == "Why?"
    assert tagged[1]["messages"][0]["content"] == "Hi"
    assert tagged[2]["messages"][0]["content"] == "Cut"  # NaN (truncated) is never tagged
    assert [m["content"] for m in tagged[0]["messages"][1::2]] == ["Short.", "Because."]
    assert stats["n_tagged"] == 1 and stats["n_assistant_turns"] == 4 and stats["ratio"] == 0.25
    assert CONVERSATIONS[0]["messages"][0]["content"] == "Summarise: ..."  # input untouched


def test_lower_beta_tags_more_and_ratio_matches_table3():
    tagged, stats = tag_conversations(CONVERSATIONS, SCORES, threshold=0.1)
    assert tagged[0]["messages"][2]["content"] == "Why? [IND]" and tagged[1]["messages"][0]["content"] == "Hi [IND]"
    assert stats["n_tagged"] == 3
    assert tagged_ratio(SCORES, 0.1) == 0.75 and tagged_ratio(SCORES, 0.6) == 0.25


def test_missing_scores_are_counted_and_untagged():
    _, stats = tag_conversations(CONVERSATIONS, SCORES.iloc[:1], threshold=0.0)
    assert stats["n_turns_without_score"] == 3 and stats["n_tagged"] == 1


def test_tagged_mask_is_strictly_above_beta_and_never_nan():
    scores = pd.DataFrame({"score": [math.nan, 0.5, 0.50001, -1.0, 1.0]})
    assert tagged_mask(scores, 0.5).tolist() == [False, False, True, False, True]
    assert tagged_mask(scores, -2.0).tolist() == [False, True, True, True, True]
    assert tagged_mask(scores, parse_tagging("0.5").threshold).tolist() == [False, False, True, False, True]


# likelihood-ratio scores by hand: two turns tie at 0.8, one is truncated (NaN), two have no context to remove
# (score exactly 0, never tagged), one scores below them (the context made its response less likely)
LR_SCORES = pd.DataFrame(
    {
        "conversation_id": ["a", "b", "c", "d", "e", "f", "g", "h", "i"],
        "turn": [0] * 9,
        "score": [0.9, 0.8, 0.8, 0.5, math.nan, 0.1, 0.0, 0.0, -0.2],
        "no_context": [False, False, False, False, False, False, True, True, False],
    }
)


def _tagged_ids(scores, tagging: str) -> list[str]:
    return sorted(scores.loc[tagged_mask(scores, parse_tagging(tagging).threshold), "conversation_id"])


@pytest.mark.parametrize(
    ("tagging", "expected", "cut"),
    [
        ("lr-q0.3", ["a"], 0.8),  # 6 eligible turns, quota 1: the 2nd largest (0.8) is the cut
        ("lr-q0.4", ["a"], 0.8),  # quota 2 would split the tie at 0.8: both tied turns stay untagged
        ("lr-q0.5", ["a", "b", "c"], 0.5),  # quota 3: the tie fits whole
        ("lr-q0.6", ["a", "b", "c"], 0.5),  # quota 3 (3.6 rounded down)
        ("lr-q0.9", ["a", "b", "c", "d", "f"], -0.2),
        ("lr-q1", ["a", "b", "c", "d", "f", "i"], -math.inf),  # every eligible turn, never NaN or no_context
        ("lr-q0", [], 0.9),
        ("lr-0", ["a", "b", "c", "d", "f"], 0.0),
        ("lr-0.8", ["a"], 0.8),
    ],
)
def test_a_quantile_tags_the_top_share_of_eligible_turns_and_never_splits_a_tie(tagging, expected, cut):
    threshold = parse_tagging(tagging).threshold
    assert cutoff(LR_SCORES, threshold) == cut
    assert _tagged_ids(LR_SCORES, tagging) == expected
    for seed in range(5):  # ties are decided by the rule, never by the rows' order
        shuffled = LR_SCORES.sample(frac=1, random_state=seed).reset_index(drop=True)
        assert _tagged_ids(shuffled, tagging) == expected
    if threshold.kind == "quantile":
        assert len(expected) <= quota(threshold, 6)  # never above the quota


def test_turns_without_context_or_score_are_never_eligible():
    assert eligible(LR_SCORES).tolist() == [True, True, True, True, False, True, False, False, True]
    assert not tagged_mask(LR_SCORES, -1.0)[LR_SCORES["no_context"]].any()  # even below every score
    assert eligible(LR_SCORES.drop(columns="no_context")).sum() == 8  # attention scores: every scored turn


def test_the_quota_is_computed_on_the_number_as_written():
    """0.29 * 100 is 28.999999999999996 in floating point: the quota of q0.29 over 100 turns is 29."""
    threshold = parse_tagging("q0.29").threshold
    assert quota(threshold, 100) == 29 and quota(threshold, 10) == 2 and quota(threshold, 0) == 0
    scores = pd.DataFrame({"score": [float(i) for i in range(100)]})
    assert tagged_mask(scores, threshold).sum() == 29


def test_quantile_stats_record_the_cut_and_the_population():
    conversations = [_conversation(cid, "user", "assistant") for cid in LR_SCORES["conversation_id"]]
    tagged, stats = tag_conversations(conversations, LR_SCORES, parse_tagging("lr-q0.5").threshold)
    assert [c["messages"][0]["content"].endswith(" [IND]") for c in tagged] == [True] * 3 + [False] * 6
    assert stats == {
        "quantile": 0.5,
        "cutoff": 0.5,
        "n_eligible": 6,
        "n_conversations": 9,
        "n_assistant_turns": 9,
        "n_tagged": 3,
        "ratio": 3 / 9,
        "n_turns_without_score": 0,
        "n_no_context": 2,
    }
    _, everything = tag_conversations(conversations, LR_SCORES, parse_tagging("lr-q1").threshold)
    assert everything["cutoff"] is None and everything["n_tagged"] == 6
    assert tagged_ratio(LR_SCORES, parse_tagging("lr-q1").threshold) == 6 / 9


def _conversation(cid, *roles):
    return {"id": cid, "messages": [{"role": r, "content": f"{r} {i}"} for i, r in enumerate(roles)]}


def test_turns_are_counted_over_every_assistant_message():
    """Three turns (scores looked up by turn index), and two assistant messages answering one instruction."""
    three = _conversation("three", "user", "assistant", "user", "assistant", "user", "assistant")
    double = _conversation(7, "system", "user", "assistant", "assistant")  # ids are matched as strings
    scores = pd.DataFrame(
        {"conversation_id": ["three"] * 3 + ["7", "7"], "turn": [0, 1, 2, 0, 1], "score": [0.1, 0.2, 0.9, 0.8, 0.9]}
    )
    tagged, stats = tag_conversations([three, double], scores, threshold=0.5)
    tagged_three = [dict(m) for m in three["messages"]]
    tagged_three[4]["content"] = "user 4 [IND]"
    tagged_double = [dict(m) for m in double["messages"]]
    tagged_double[1]["content"] = "user 1 [IND]"
    assert tagged == [{"id": "three", "messages": tagged_three}, {"id": 7, "messages": tagged_double}]
    assert stats == {
        "beta": 0.5,
        "n_conversations": 2,
        "n_assistant_turns": 5,
        "n_tagged": 2,  # the instruction answered twice above beta carries one [IND]
        "ratio": 2 / 5,
        "n_turns_without_score": 0,
    }


def test_nothing_to_tag():
    tagged, stats = tag_conversations([_conversation("u", "user")], SCORES.iloc[:0], threshold=0.5)
    assert tagged == [_conversation("u", "user")]
    assert stats == {
        "beta": 0.5,
        "n_conversations": 1,
        "n_assistant_turns": 0,
        "n_tagged": 0,
        "ratio": 0.0,
        "n_turns_without_score": 0,
    }
    assert tagged_ratio(SCORES.iloc[:0], 0.5) == 0.0
    assert tagged_ratio(SCORES.iloc[:1], 0.5) == 1.0 and tagged_ratio(SCORES.iloc[3:], -1.0) == 0.0  # NaN


def test_tag_file_writes_the_tagged_conversations_and_their_stats(tmp_path):
    import json

    import pyarrow.parquet as pq

    from ctxaware.tagging import tag_file

    pd.DataFrame(CONVERSATIONS).to_parquet(tmp_path / "data.parquet")
    SCORES.to_parquet(tmp_path / "scores.parquet")
    out, stats_path = tmp_path / "tagged.parquet", tmp_path / "stats.json"
    stats = tag_file(str(tmp_path / "data.parquet"), str(tmp_path / "scores.parquet"), 0.6, str(out), str(stats_path))
    expected, expected_stats = tag_conversations(CONVERSATIONS, SCORES, threshold=0.6)
    from ctxaware.data import read_conversations

    assert pq.read_schema(out).names == ["id", "messages"]  # nothing but the conversations
    assert read_conversations(str(out)) == expected
    assert stats == expected_stats and stats_path.read_text() == json.dumps(stats, indent=2)  # readable


# The original's modify_prompt (analyse_dataset/process_dataset.py@124b797 l.77-102), run on these contents with
# these scores at threshold 0.6 (its input: content + " The user attention ratio is {score}.", as its add_prompt
# writes it): its outputs, kept literally. A turn it has no score for stays as it is.
ORIGINAL_MODIFY_PROMPT = [
    ("Hello", 0.65, "Hello. [IND]"),
    ("Hello", 0.6, "Hello."),  # not tagged (strict >), the "." all the same
    ("Summarize this text", 0.61474609375, "Summarize this text. [IND]"),
    ("What is 2+2?", 0.9, "What is 2+2? [IND]"),
    ("Fix my code:\n```x=1```", 0.7, "Fix my code:\n```x=1``` [IND]"),
    ("Translate: bonjour", -1.0, "Translate: bonjour."),
    ("", 0.8, " [IND]"),
    ("ends with space ", 0.8, "ends with space  [IND]"),
    ("multi  space", 0.8, "multi  space. [IND]"),
    ("Name three 日本", 0.9, "Name three 日本. [IND]"),
    ("ok)", 0.9, "ok) [IND]"),
]


def _one_turn_each(contents: list[str]) -> list[dict]:
    return [
        {"id": f"o{i}", "messages": [{"role": "user", "content": text}, {"role": "assistant", "content": "A"}]}
        for i, text in enumerate(contents)
    ]


def test_append_period_gives_the_original_modify_prompt_outputs():
    contents, scores, expected = zip(*ORIGINAL_MODIFY_PROMPT, strict=True)
    conversations = _one_turn_each([*contents, "Unscored"])  # the last has no row: untouched, as in the original
    table = pd.DataFrame({"conversation_id": [f"o{i}" for i in range(len(scores))], "turn": 0, "score": scores})
    tagged, stats = tag_conversations(conversations, table, threshold=0.6, append_period=True)
    assert [c["messages"][0]["content"] for c in tagged] == [*expected, "Unscored"]
    assert stats["n_periods_appended"] == 6 and stats["n_tagged"] == 9 and stats["n_turns_without_score"] == 1
    # off (the default): [IND] alone, and the stats as they were
    tagged, stats = tag_conversations(conversations, table, threshold=0.6)
    assert [c["messages"][0]["content"] for c in tagged] == [
        f"{text} [IND]" if score > 0.6 else text for text, score in zip(contents, scores, strict=True)
    ] + ["Unscored"]
    assert "n_periods_appended" not in stats


def test_append_period_once_per_instruction_and_never_on_a_nan_turn():
    """Each scored turn's own instruction gets its "." (several turns: each); a NaN turn (no response token in the
    window) has no score, so no "."."""
    tagged, stats = tag_conversations(CONVERSATIONS, SCORES, threshold=0.6, append_period=True)
    assert [m["content"] for m in tagged[0]["messages"][::2]] == ["Summarise: ... [IND]", "Why?"]
    assert tagged[1]["messages"][0]["content"] == "Hi."
    assert tagged[2]["messages"][0]["content"] == "Cut"  # NaN: untouched
    assert stats["n_periods_appended"] == 1
    assert [m["content"] for m in tagged[0]["messages"][1::2]] == ["Short.", "Because."]  # responses untouched


def test_tag_file_passes_append_period_on(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ctxaware.data import read_conversations
    from ctxaware.tagging import tag_file

    data, scores = tmp_path / "data.parquet", tmp_path / "scores.parquet"
    pq.write_table(pa.Table.from_pylist(CONVERSATIONS), data)
    SCORES.to_parquet(scores, index=False)
    out, out_stats = tmp_path / "sft.parquet", tmp_path / "stats.json"
    tag_file(str(data), str(scores), 0.6, str(out), str(out_stats), append_period=True)
    assert read_conversations(str(out))[1]["messages"][0]["content"] == "Hi."
    tag_file(str(data), str(scores), 0.6, str(out), str(out_stats))
    assert read_conversations(str(out))[1]["messages"][0]["content"] == "Hi"
