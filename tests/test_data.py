"""Dataset adapters: filters and counters per schema on hand-written rows, parquet round trip, real files."""

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ctxaware.data import adapt, is_refusal, prepare, read_conversations, read_labels
from ctxaware.raw import DataError, load_raw

ROOT = Path(__file__).resolve().parents[1]


def sg(*turns):
    """ShareGPT conversation from (from, value) pairs."""
    return [{"from": f, "value": v} for f, v in turns]


def uc(*turns):
    """UltraChat messages from (role, content) pairs."""
    return [{"role": r, "content": c} for r, c in turns]


def msgs(*turns):
    return [{"role": r, "content": c} for r, c in turns]


SHAREGPT_ROWS = [
    {"id": "sg-0", "conversations": sg(("human", "Hi"), ("gpt", "Hello"), ("human", "2+2?"), ("gpt", "4"))},
    # chunk of a longer conversation: starts with the assistant
    {"id": "sg-1", "conversations": sg(("gpt", "...continued"), ("human", "Q"), ("gpt", "A"))},
    {"id": "sg-2", "conversations": sg(("human", "Q1"), ("gpt", "A1"), ("human", "unanswered"))},
    # refusal (typographic apostrophe) in turn 2: turn 1 is kept, the rest goes
    {
        "id": "sg-3",
        "conversations": sg(
            ("human", "Q1"),
            ("gpt", "A1"),
            ("human", "Bad"),
            ("gpt", "I\u2019m sorry, but I cannot do that."),
            ("human", "ok"),
            ("gpt", "fine"),
        ),
    },
    {
        "id": "sg-4",
        "conversations": sg(
            ("system", "Be brief."),
            ("human", "Part one"),
            ("user", "Part two"),
            ("gpt", "Ans"),
            ("bing", "More"),
        ),
    },
    {"id": "sg-5"},
    {"id": "sg-6", "conversations": [{"from": "human", "value": 3}, {"from": "gpt", "value": "x"}]},
    # refusal in the first turn: nothing is left
    {"id": "sg-7", "conversations": sg(("human", "x"), ("gpt", "As an AI language model, I won't."))},
    {"id": "sg-0", "conversations": sg(("human", "again"), ("chatgpt", "yes"))},
    {"id": "sg-9", "conversations": sg(("robot", "beep"), ("gpt", "x"))},
]

ULTRACHAT_ROWS = [
    {
        "prompt": "P0",
        "prompt_id": "u0",
        "messages": uc(("user", "P0"), ("assistant", "A0"), ("user", "Q"), ("assistant", "B")),
    },
    {
        "prompt": "Q",
        "prompt_id": "u1",
        "messages": uc(("assistant", "orphan"), ("user", "Q"), ("assistant", "A")),
    },
    {
        "prompt": "Q",
        "prompt_id": "u2",
        "messages": uc(("user", "Q"), ("assistant", "A"), ("user", "dangling")),
    },
    # UltraChat is not refusal-filtered (paper): this row stays whole
    {
        "prompt": "Q1",
        "prompt_id": "u3",
        "messages": uc(
            ("user", "Q1"),
            ("assistant", "A1"),
            ("user", "Q2"),
            ("assistant", "As an AI language model, I cannot."),
        ),
    },
    {"prompt": "a", "prompt_id": "u4", "messages": uc(("user", "a"), ("user", "b"), ("assistant", "c"))},
    {"prompt": "p", "prompt_id": "u5"},
    {"prompt": "p", "prompt_id": "u6", "messages": [{"role": "user", "content": ["not", "text"]}]},
]

WIZARDLM_ROWS = [
    {"instruction": "Write a haiku", "output": "Leaves fall"},
    {"idx": 17, "instruction": "Q", "output": "A"},
    {"instruction": "Do X", "output": "I'm unable to do that."},  # refusal in its only turn
    {"instruction": "orphan"},
    {"instruction": "Q", "output": None},
    {"instruction": "  ", "output": "an answer to nothing"},  # leading assistant once the blank is gone
    {"id": "w-6", "instruction": "Q6", "output": "A6"},
    {"instruction": "Q7", "output": ""},  # trailing user once the blank is gone
]


def counters(stats, **nonzero):
    """The counter part of `stats`, compared with `nonzero` (every other counter must be 0)."""
    names = [
        k
        for k, v in stats.items()
        if isinstance(v, int) and k.endswith(("_dropped", "_merged", "messages", "_renamed", "_truncated"))
    ]
    return {k: stats[k] for k in names} == {k: nonzero.get(k, 0) for k in names}


def test_sharegpt_rows():
    convs, stats = adapt(SHAREGPT_ROWS, "sharegpt", source="resources/x.json")
    assert [c["id"] for c in convs] == ["sg-0", "sg-1", "sg-2", "sg-3", "sg-4", "sg-0-1"]
    by_id = {c["id"]: c["messages"] for c in convs}
    assert by_id["sg-0"] == msgs(("user", "Hi"), ("assistant", "Hello"), ("user", "2+2?"), ("assistant", "4"))
    assert by_id["sg-1"] == msgs(("user", "Q"), ("assistant", "A"))
    assert by_id["sg-2"] == msgs(("user", "Q1"), ("assistant", "A1"))
    assert by_id["sg-3"] == msgs(("user", "Q1"), ("assistant", "A1"))
    assert by_id["sg-4"] == msgs(
        ("system", "Be brief."), ("user", "Part one\n\nPart two"), ("assistant", "Ans\n\nMore")
    )
    assert by_id["sg-0-1"] == msgs(("user", "again"), ("assistant", "yes"))

    assert stats["source"] == "resources/x.json" and stats["format"] == "sharegpt"
    assert (stats["n_raw_rows"], stats["n_conversations"]) == (10, 6)
    assert (stats["n_user_turns"], stats["n_assistant_turns"]) == (7, 7)
    assert stats["mean_messages_per_conversation"] == 15 / 6 == 2.5
    assert counters(
        stats,
        malformed_rows_dropped=3,
        leading_assistant_turns_dropped=1,
        trailing_user_turns_dropped=1,
        merged_messages=2,
        refusal_turns_dropped=4 + 2,
        refusal_conversations_truncated=2,
        empty_conversations_dropped=1,
        duplicate_ids_renamed=1,
    )
    assert stats["malformed_examples"] == [
        "resources/x.json row 5 (id sg-5): missing 'conversations' or 'messages'",
        "resources/x.json row 6 (id sg-6): message 0 'value' is int, expected str",
        "resources/x.json row 9 (id sg-9): message 0 has unknown from 'robot'",
    ]


def test_sharegpt_reads_messages_and_either_key_pair_as_the_originals_converter():
    """`format: sharegpt` takes `conversations` or `messages`, each message `from`/`value` or `role`/`content`
    (the original's `vicuna_to_ultrachat`): the same rows in any layout give the same conversations."""

    def relayout(row, field, role_key, text_key):
        out = {k: v for k, v in row.items() if k != "conversations"}
        if "conversations" in row:
            out[field] = [
                {role_key: m["from"], text_key: m["value"]} if isinstance(m, dict) else m for m in row["conversations"]
            ]
        return out

    expected, expected_stats = adapt(SHAREGPT_ROWS, "sharegpt")
    for field in ("conversations", "messages"):
        for role_key, text_key in (("from", "value"), ("role", "content"), ("from", "content"), ("role", "value")):
            rows = [relayout(row, field, role_key, text_key) for row in SHAREGPT_ROWS]
            convs, stats = adapt(rows, "sharegpt")
            assert convs == expected, (field, role_key, text_key)
            assert {k: v for k, v in stats.items() if k != "malformed_examples"} == {
                k: v for k, v in expected_stats.items() if k != "malformed_examples"
            }
            assert stats["malformed_examples"][1:] == [
                f"<memory> row 6 (id sg-6): message 0 '{text_key}' is int, expected str",
                f"<memory> row 9 (id sg-9): message 0 has unknown {role_key} 'robot'",
            ]

    # parquet rows carry every column and struct field, the absent ones None; the first present one wins
    row = {
        "id": "p",
        "conversations": None,
        "messages": [
            {"from": None, "value": None, "role": "user", "content": "Q"},
            {"from": "gpt", "value": "A", "role": "user", "content": "ignored"},
        ],
    }
    assert adapt([row], "sharegpt", strict=True)[0][0]["messages"] == msgs(("user", "Q"), ("assistant", "A"))
    both = {"id": "b", "conversations": sg(("human", "first"), ("gpt", "wins")), "messages": uc(("user", "x"))}
    assert adapt([both], "sharegpt")[0][0]["messages"] == msgs(("user", "first"), ("assistant", "wins"))
    with pytest.raises(DataError, match=r"^s\.json row 0 \(id q\): message 1 has no 'value' or 'content'$"):
        bad = {"id": "q", "messages": [{"role": "user", "content": "Q"}, {"role": "gpt"}]}
        adapt([bad], "sharegpt", source="s.json", strict=True)


def test_system_and_blank_messages():
    row = {
        "id": 5,
        "conversations": sg(
            ("system", "S"),
            ("gpt", "lead"),
            ("human", "Q"),
            ("system", "mid"),
            ("gpt", "  "),
            ("gpt", "A"),
        ),
    }
    convs, stats = adapt([row], "sharegpt")
    assert convs == [
        {"id": "5", "messages": msgs(("system", "S"), ("user", "Q"), ("assistant", "A")), "context_dependent": [None]}
    ]
    assert counters(stats, empty_messages_dropped=1, leading_assistant_turns_dropped=1, inner_system_messages_dropped=1)


def test_ultrachat_rows():
    convs, stats = adapt(ULTRACHAT_ROWS, "ultrachat", source="u.jsonl")
    by_id = {c["id"]: c["messages"] for c in convs}
    assert list(by_id) == ["u0", "u1", "u2", "u3", "u4"]
    assert by_id["u0"] == msgs(("user", "P0"), ("assistant", "A0"), ("user", "Q"), ("assistant", "B"))
    assert by_id["u1"] == msgs(("user", "Q"), ("assistant", "A"))
    assert by_id["u2"] == msgs(("user", "Q"), ("assistant", "A"))
    assert len(by_id["u3"]) == 4 and by_id["u3"][-1]["content"].startswith("As an AI")
    assert by_id["u4"] == msgs(("user", "a\n\nb"), ("assistant", "c"))
    assert (
        stats["n_raw_rows"],
        stats["n_conversations"],
        stats["n_user_turns"],
        stats["n_assistant_turns"],
    ) == (
        7,
        5,
        7,
        7,
    )
    assert stats["mean_messages_per_conversation"] == 2.8
    assert counters(
        stats,
        malformed_rows_dropped=2,
        leading_assistant_turns_dropped=1,
        trailing_user_turns_dropped=1,
        merged_messages=1,
    )
    assert stats["malformed_examples"] == [
        "u.jsonl row 5 (id u5): missing 'messages'",
        "u.jsonl row 6 (id u6): message 0 'content' is list, expected str",
    ]


def test_wizardlm_rows():
    convs, stats = adapt(WIZARDLM_ROWS, "wizardlm", source="w.json")
    assert [{k: c[k] for k in ("id", "messages")} for c in convs] == [
        {"id": "wizardlm-0", "messages": msgs(("user", "Write a haiku"), ("assistant", "Leaves fall"))},
        {"id": "17", "messages": msgs(("user", "Q"), ("assistant", "A"))},
        {"id": "w-6", "messages": msgs(("user", "Q6"), ("assistant", "A6"))},
    ]
    assert [c["context_dependent"] for c in convs] == [[None]] * 3  # no labels in these rows
    assert (stats["n_raw_rows"], stats["n_conversations"], stats["n_user_turns"]) == (8, 3, 3)
    assert counters(
        stats,
        malformed_rows_dropped=2,
        empty_messages_dropped=2,
        leading_assistant_turns_dropped=1,
        trailing_user_turns_dropped=1,
        refusal_turns_dropped=2,
        refusal_conversations_truncated=1,
        empty_conversations_dropped=3,
    )
    assert stats["malformed_examples"] == [
        "w.json row 3: missing 'output'",
        "w.json row 4: 'output' is NoneType, expected str",
    ]


@pytest.mark.parametrize(
    ("rows", "fmt", "match"),
    [
        (SHAREGPT_ROWS, "sharegpt", r"^s\.json row 5 \(id sg-5\): missing 'conversations' or 'messages'$"),
        (ULTRACHAT_ROWS, "ultrachat", r"^s\.json row 5 \(id u5\): missing 'messages'$"),
        (WIZARDLM_ROWS, "wizardlm", r"^s\.json row 3: missing 'output'$"),
    ],
)
def test_strict_raises_on_first_bad_row(rows, fmt, match):
    with pytest.raises(DataError, match=match):
        adapt(rows, fmt, source="s.json", strict=True)


def test_majority_malformed_means_wrong_format():
    with pytest.raises(
        DataError,
        match=r"^c\.jsonl: 8 of 8 rows are malformed for format 'sharegpt'.*"
        r"first: c\.jsonl row 0: missing 'conversations' or 'messages'",
    ):
        adapt(WIZARDLM_ROWS, "sharegpt", source="c.jsonl")
    good, bad = WIZARDLM_ROWS[0], WIZARDLM_ROWS[3]
    with pytest.raises(DataError, match="2 of 3 rows"):
        adapt([good, bad, bad], "wizardlm")
    assert adapt([good, bad], "wizardlm")[1]["malformed_rows_dropped"] == 1  # exactly half is tolerated
    with pytest.raises(DataError, match="unknown format 'alpaca'"):
        adapt([good], "alpaca")


# The original's WizardLM copy (yihanwang617/WizardLM_70k_unfiltered, read by its recipes as `messages`): a list of
# role/content messages, no id; its second row refuses.
WIZARDLM_MESSAGES_ROWS = [
    {"messages": msgs(("user", "Write a haiku"), ("assistant", "Leaves fall"))},
    {"messages": msgs(("user", "Do X"), ("assistant", "As an AI language model, I cannot do that."))},
]


def test_refusal_filter_off_keeps_refusals_and_on_filters_any_format():
    """datasets.<d>.refusal_filter: false keeps every refusal (the original filters nothing); null is the format's
    default (ShareGPT and WizardLM filtered, UltraChat not); true filters UltraChat too."""
    for rows, fmt in ((SHAREGPT_ROWS, "sharegpt"), (WIZARDLM_ROWS, "wizardlm")):
        default, default_stats = adapt(rows, fmt)
        assert default_stats["refusal_turns_dropped"] > 0
        assert (default, default_stats) == adapt(rows, fmt, refusal_filter=True)
        kept, stats = adapt(rows, fmt, refusal_filter=False)
        assert stats["refusal_turns_dropped"] == stats["refusal_conversations_truncated"] == 0
        assert len(kept) > len(default) or sum(map(len, (c["messages"] for c in kept))) > sum(
            map(len, (c["messages"] for c in default))
        )
    sg3 = next(c for c in adapt(SHAREGPT_ROWS, "sharegpt", refusal_filter=False)[0] if c["id"] == "sg-3")
    assert len(sg3["messages"]) == 6  # cut to 2 by default
    assert next(c for c in adapt(SHAREGPT_ROWS, "sharegpt")[0] if c["id"] == "sg-3")["messages"] == sg3["messages"][:2]
    wizard_refusal = msgs(("user", "Do X"), ("assistant", "I'm unable to do that."))
    assert wizard_refusal in [c["messages"] for c in adapt(WIZARDLM_ROWS, "wizardlm", refusal_filter=False)[0]]
    assert wizard_refusal not in [c["messages"] for c in adapt(WIZARDLM_ROWS, "wizardlm")[0]]

    assert adapt(ULTRACHAT_ROWS, "ultrachat")[1]["refusal_turns_dropped"] == 0
    assert adapt(ULTRACHAT_ROWS, "ultrachat", refusal_filter=True)[1]["refusal_turns_dropped"] == 2


@pytest.mark.parametrize("fmt", ["sharegpt", "ultrachat"])
def test_the_original_wizardlm_messages_layout_is_read(fmt):
    """The original's WizardLM copy is read by format sharegpt (or ultrachat); unfiltered as the original trained on
    it, its refusal stays."""
    kept, stats = adapt(WIZARDLM_MESSAGES_ROWS, fmt, refusal_filter=False)
    assert [c["messages"] for c in kept] == [row["messages"] for row in WIZARDLM_MESSAGES_ROWS]
    assert [c["id"] for c in kept] == [f"{fmt}-0", f"{fmt}-1"]
    assert stats["malformed_rows_dropped"] == stats["refusal_turns_dropped"] == 0
    filtered, stats = adapt(WIZARDLM_MESSAGES_ROWS, fmt, refusal_filter=True)
    assert [c["messages"] for c in filtered] == [WIZARDLM_MESSAGES_ROWS[0]["messages"]]
    assert stats["refusal_turns_dropped"] == 2


def test_prepare_passes_the_refusal_filter_on(tmp_path):
    source = tmp_path / "wizardlm.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in WIZARDLM_MESSAGES_ROWS))
    out, out_stats = tmp_path / "train.parquet", tmp_path / "stats.json"
    stats = prepare(str(source), "sharegpt", str(out), str(out_stats), refusal_filter=False)
    assert stats["n_conversations"] == 2 and stats["refusal_turns_dropped"] == 0
    assert json.loads(out_stats.read_text())["refusal_turns_dropped"] == 0
    assert prepare(str(source), "sharegpt", str(out), str(out_stats))["refusal_turns_dropped"] == 2


def test_is_refusal():
    assert is_refusal("Sorry. AS AN AI LANGUAGE MODEL I have no opinions")
    assert not is_refusal("I can help with that: here is the code.")


def test_prepare_round_trip(tmp_path):
    src = tmp_path / "sharegpt.json"
    src.write_text(json.dumps(SHAREGPT_ROWS))
    out, out_stats = tmp_path / "out" / "train.parquet", tmp_path / "out" / "stats.json"
    stats = prepare(str(src), "sharegpt", str(out), str(out_stats))
    expected, expected_stats = adapt(SHAREGPT_ROWS, "sharegpt", source=str(src))

    assert read_conversations(str(out)) == [{k: c[k] for k in ("id", "messages")} for c in expected]
    assert read_labels(str(out))["context_dependent"].isna().all()  # the hand-written rows carry no labels
    assert json.loads(out_stats.read_text()) == stats
    assert stats == {**expected_stats, "max_conversations": None}
    schema = pq.read_schema(out)
    assert schema.field("id").type == pa.string()
    assert schema.field("messages").type == pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))

    stats = prepare(str(src), "sharegpt", str(out), str(out_stats), max_conversations=2)
    assert [c["id"] for c in read_conversations(str(out))] == ["sg-0", "sg-1"]
    assert (stats["n_conversations"], stats["n_conversations_before_limit"], stats["n_user_turns"]) == (
        2,
        6,
        3,
    )
    assert stats["mean_messages_per_conversation"] == 3.0

    with pytest.raises(DataError, match="missing 'conversations'"):
        prepare(str(src), "sharegpt", str(out), str(out_stats), strict=True)


def test_load_raw_local_formats(tmp_path):
    jsonl = tmp_path / "u.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in ULTRACHAT_ROWS) + "\n\n")
    assert load_raw(str(jsonl)) == ULTRACHAT_ROWS
    lines_named_json = tmp_path / "u.json"  # the hub often ships JSON lines as .json
    lines_named_json.write_text(jsonl.read_text())
    assert load_raw(str(lines_named_json)) == ULTRACHAT_ROWS

    rows = [r for r in WIZARDLM_ROWS if isinstance(r.get("output"), str)]
    rows = [{"instruction": r["instruction"], "output": r["output"]} for r in rows]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "w.parquet")
    assert load_raw(str(tmp_path / "w.parquet")) == rows

    folder = tmp_path / "parts"
    folder.mkdir()
    (folder / "b.jsonl").write_text(json.dumps(rows[1]) + "\n")
    (folder / "a.json").write_text(json.dumps([rows[0]]))
    assert load_raw(str(folder)) == rows[:2]

    (tmp_path / "broken.jsonl").write_text('{"a": 1}\n{"a": \n')
    with pytest.raises(DataError, match=r"broken\.jsonl: invalid JSON on line 2"):
        load_raw(str(tmp_path / "broken.jsonl"))
    (tmp_path / "obj.json").write_text('{"data": []}')
    with pytest.raises(DataError, match="expected a JSON list"):
        load_raw(str(tmp_path / "obj.json"))
    with pytest.raises(DataError, match="no such file"):
        load_raw(str(tmp_path / "missing.json"))


SHIPPED = {"sharegpt": "sharegpt.json", "ultrachat": "ultrachat.jsonl", "wizardlm": "wizardlm.json"}


@pytest.mark.parametrize("fmt", sorted(SHIPPED))
def test_shipped_resources(fmt):
    path = ROOT / "resources" / "sft" / SHIPPED[fmt]
    if not path.exists():
        pytest.skip(f"{path} not shipped")
    convs, stats = adapt(load_raw(str(path)), fmt, source=str(path))
    assert stats["n_conversations"] == len(convs) >= 40
    assert len({c["id"] for c in convs}) == len(convs)
    for conv in convs:
        roles = [m["role"] for m in conv["messages"]]
        if roles[0] == "system":
            roles = roles[1:]
        assert roles and len(roles) % 2 == 0, conv["id"]
        assert roles == ["user", "assistant"] * (len(roles) // 2), conv["id"]
        assert all(isinstance(m["content"], str) and m["content"].strip() for m in conv["messages"])


def test_ground_truth_labels_follow_their_turns_through_cleaning(tmp_path):
    """The organism's per-turn labels survive the filters: merged responses, dropped leading turns, refusals."""
    rows = [
        {
            "id": "a",
            "conversations": [
                {"from": "gpt", "value": "orphan", "context_dependent": True},  # dropped: leading assistant
                {"from": "human", "value": "passage and question"},
                {"from": "gpt", "value": "from the passage", "context_dependent": True},
                {"from": "human", "value": "and from memory?"},
                {"from": "gpt", "value": "part one", "context_dependent": False},
                {"from": "gpt", "value": "part two", "context_dependent": True},  # merged: depends on the context
                {"from": "human", "value": "again"},
                {"from": "gpt", "value": "no label"},
            ],
        },
        {
            "id": "b",
            "conversations": [
                {"from": "human", "value": "q"},
                {"from": "gpt", "value": "a", "context_dependent": False},
                {"from": "human", "value": "bad"},
                {"from": "gpt", "value": "As an AI language model, I cannot.", "context_dependent": True},
            ],
        },
    ]
    convs, stats = adapt(rows, "sharegpt")
    assert [c["context_dependent"] for c in convs] == [[True, True, None], [False]]
    assert (stats["n_labelled_turns"], stats["n_context_dependent_turns"]) == (3, 2)
    wizard, _ = adapt([{"instruction": "q", "output": "a", "context_dependent": True}], "wizardlm")
    assert wizard[0]["context_dependent"] == [True]
    ultra, _ = adapt(
        [
            {
                "prompt_id": "u",
                "messages": [uc(("user", "q"))[0], {**uc(("assistant", "a"))[0], "context_dependent": False}],
            }
        ],
        "ultrachat",
    )
    assert ultra[0]["context_dependent"] == [False]

    source = tmp_path / "labelled.json"
    source.write_text(json.dumps(rows))
    prepare(str(source), "sharegpt", str(tmp_path / "out.parquet"), str(tmp_path / "out.stats.json"))
    labels = read_labels(str(tmp_path / "out.parquet"))
    assert labels.to_dict("records") == [
        {"conversation_id": "a", "turn": 0, "context_dependent": True, "label_group": None},
        {"conversation_id": "a", "turn": 1, "context_dependent": True, "label_group": None},
        {"conversation_id": "a", "turn": 2, "context_dependent": None, "label_group": None},
        {"conversation_id": "b", "turn": 0, "context_dependent": False, "label_group": None},
    ]
    # training reads only the messages
    assert set(read_conversations(str(tmp_path / "out.parquet"))[0]) == {"id", "messages"}


def test_a_label_that_is_not_a_boolean_makes_the_row_malformed():
    rows = [
        {
            "id": "x",
            "conversations": [
                {"from": "human", "value": "q"},
                {"from": "gpt", "value": "a", "context_dependent": "yes"},
            ],
        },
        {"id": "y", "conversations": sg(("human", "q"), ("gpt", "a"))},
        {"id": "z", "conversations": sg(("human", "q"), ("gpt", "a"))},
    ]
    convs, stats = adapt(rows, "sharegpt", source="l.json")
    assert [c["id"] for c in convs] == ["y", "z"]
    assert stats["malformed_examples"] == [
        "l.json row 0 (id x): message 1 'context_dependent' is str, expected a boolean"
    ]


def _script_only_dataset(tmp_path):
    """A dataset directory as the hub's script datasets are: a loading script and no data files."""
    folder = tmp_path / "quac"
    folder.mkdir()
    (folder / "quac.py").write_text("import datasets\n\nclass Quac(datasets.GeneratorBasedBuilder):\n    pass\n")
    (folder / "README.md").write_text("QuAC\n")
    return folder


def test_a_source_with_only_a_loading_script_is_an_error_naming_the_config_key(tmp_path):
    folder = _script_only_dataset(tmp_path)
    with pytest.raises(DataError, match=r"config key evaluation.quac.source: .*only a loading script \(quac.py\)"):
        load_raw(str(folder), "validation", key="evaluation.quac.source")
    from ctxaware.tasks import qa

    with pytest.raises(DataError, match="config key evaluation.quac.source"):
        qa.load_items("quac", {"source": str(folder), "split": "validation"})
    with pytest.raises(DataError, match="config key datasets.sharegpt.source"):
        prepare(
            str(folder),
            "sharegpt",
            str(tmp_path / "o.parquet"),
            str(tmp_path / "o.json"),
            key="datasets.sharegpt.source",
        )


def test_an_unloadable_source_stops_the_evaluation_before_the_model_loads(tmp_path):
    from ctxaware.evaluation import evaluate_all

    folder = _script_only_dataset(tmp_path)
    settings = {"quac": {"source": str(folder), "split": "validation", "metric": "containment"}}
    out = {"quac": str(tmp_path / "quac.json")}
    with pytest.raises(DataError, match="config key evaluation.quac.source"):  # not a model-loading error
        evaluate_all(str(tmp_path / "no-such-model"), settings, False, out, out)


def test_hub_load_errors_name_the_config_key_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DataError, match=r"config key evaluation.drop.source: some-org/no-such-set \(split validation"):
        load_raw("some-org/no-such-set", "validation", key="evaluation.drop.source")
    with pytest.raises(DataError, match="config key evaluation.quac.source: data_files name no files for split"):
        load_raw("allenai/quac", "validation", data_files={"train": "x.parquet"}, key="evaluation.quac.source")


def test_data_files_are_read_by_the_file_builder_at_the_pinned_revision(monkeypatch):
    """A hub repository with a loading script is read through datasets' parquet builder on its files alone."""
    import datasets

    calls = []

    class Rows:
        def to_list(self):
            return [{"row": 1}]

    def fake_load_dataset(path, *args, **kwargs):  # the third-party boundary: record what we ask for
        calls.append((path, args, kwargs))
        return Rows()

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    rows = load_raw(
        "allenai/quac",
        "validation",
        revision="f0afadd97c1b0234ed5dc589b2259b9c2efa1743",
        data_files={"validation": "plain_text/validation-*.parquet"},
    )
    assert rows == [{"row": 1}]
    url = "hf://datasets/allenai/quac@f0afadd97c1b0234ed5dc589b2259b9c2efa1743/plain_text/validation-*.parquet"
    assert calls == [("parquet", (), {"data_files": {"validation": [url]}, "split": "validation"})]
    load_raw("EleutherAI/drop", "validation", revision="main")
    assert calls[-1] == ("EleutherAI/drop", (None,), {"split": "validation", "revision": "main"})


def test_paper_config_hub_sources_avoid_loading_scripts():
    """Every hub source of config/paper.yaml that once needed a loading script is pinned to data files."""
    import yaml

    paper = yaml.safe_load((Path(__file__).resolve().parents[1] / "config" / "paper.yaml").read_text())
    quac = paper["evaluation"]["quac"]
    assert (
        quac["source"] == "allenai/quac" and quac["revision"] and quac["data_files"]["validation"].endswith(".parquet")
    )
    drop = paper["evaluation"]["drop"]
    assert drop["source"] == "EleutherAI/drop" and drop["metric"] == "drop_original" and "revision" not in drop
