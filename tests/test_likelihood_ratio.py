"""The likelihood-ratio score against the model's own forward on the two inputs, each written out by hand in the
Zephyr format (not with the scorer's rendering), and its sharding, truncation and ties."""

import math

import pandas as pd
import pytest
import torch
from scoring_helpers import record_plans

from ctxaware.likelihood_ratio import LR_COLUMNS, score_conversations
from ctxaware.modeling import load_model
from ctxaware.scoring import score_conversations as attention_scores

SYSTEM = "Answer briefly."
MULTI = {
    "id": "multi",
    "messages": [
        {"role": "user", "content": "Explain why the sky is blue."},
        {"role": "assistant", "content": "Sunlight scatters in the atmosphere, and blue light scatters most."},
        {"role": "user", "content": "Read the passage: the fox jumps over the dog.\n\nWhat jumps?"},
        {"role": "assistant", "content": "The fox jumps."},
    ],
}
PASSAGE = {
    "id": "passage",
    "messages": [
        {"role": "system", "content": SYSTEM},
        {
            "role": "user",
            "content": "Paris is the capital of France.\nThe river runs through the town.\nWhat is the capital?",
        },
        {"role": "assistant", "content": "Paris is the capital."},
    ],
}


def _zephyr(tokenizer, messages: list[dict]) -> tuple[list[int], list[int]]:
    """Token ids of a conversation written out in the Zephyr format (an empty system message first when it has
    none), and the positions of its last response's content tokens: those after the text up to its header."""
    if messages[0]["role"] != "system":
        messages = [{"role": "system", "content": ""}, *messages]
    bos, eos = tokenizer.bos_token, tokenizer.eos_token
    before = bos + "".join(f"<|{m['role']}|>\n{m['content']}{eos}\n" for m in messages[:-1]) + "<|assistant|>\n"
    ids = tokenizer(before + messages[-1]["content"] + eos + "\n", add_special_tokens=False)["input_ids"]
    start = len(tokenizer(before, add_special_tokens=False)["input_ids"])
    end = len(tokenizer(before + messages[-1]["content"], add_special_tokens=False)["input_ids"])
    assert ids[:start] == tokenizer(before, add_special_tokens=False)["input_ids"]  # the header ends a token
    return ids, list(range(start, end))


def _mean_nll(model, tokenizer, messages: list[dict]) -> float:
    """The model's own forward: mean over the last response's tokens of -log p(token | everything before it)."""
    ids, rows = _zephyr(tokenizer, messages)
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float()
    logprobs = torch.log_softmax(logits[[r - 1 for r in rows]], dim=-1)
    return -float(logprobs[range(len(rows)), [ids[r] for r in rows]].mean())


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_model_dir):
    """The tiny random model with sharp attention and logits, so that removing the context moves a response's
    mean NLL by tenths of a nat (the untouched model is near uniform: thousandths)."""
    model, tokenizer = load_model(tiny_model_dir)
    with torch.no_grad():
        for layer in model.model.layers:
            attention = layer.self_attn
            for projection, factor in ((attention.q_proj, 8), (attention.k_proj, 4), (attention.v_proj, 3)):
                projection.weight.mul_(factor)
            attention.o_proj.weight.mul_(30)
        model.lm_head.weight.mul_(20)
    return model, tokenizer


def test_the_score_is_the_nll_without_the_context_minus_the_nll_with_it(model_and_tokenizer):
    """Turn m with the context: the conversation up to its response as rendered (earlier assistant turns in);
    without it: the system message and the turn's instruction only. Nats per response token."""
    model, tokenizer = model_and_tokenizer
    messages = MULTI["messages"]
    scores = score_conversations(model, tokenizer, [MULTI], max_length=512)
    assert list(scores.columns) == ["conversation_index", *LR_COLUMNS]
    with_context = _mean_nll(model, tokenizer, messages)
    last_turn = _mean_nll(model, tokenizer, messages[2:])
    assert scores["score"].tolist() == [0.0, pytest.approx(last_turn - with_context, abs=1e-4)]
    assert scores["no_context"].tolist() == [True, False]  # the first turn's input is its instruction alone
    paragraph = score_conversations(model, tokenizer, [MULTI], max_length=512, instruction="last_paragraph")
    question = [{"role": "user", "content": "What jumps?"}, messages[3]]
    first = [{"role": "user", "content": "Explain why the sky is blue."}, messages[1]]
    assert _mean_nll(model, tokenizer, first) == pytest.approx(_mean_nll(model, tokenizer, messages[:2]), abs=1e-6)
    expected = _mean_nll(model, tokenizer, question) - with_context
    assert paragraph["score"].tolist() == [0.0, pytest.approx(expected, abs=1e-4)]
    assert abs(expected - (last_turn - with_context)) > 1e-3  # the two definitions really differ here
    sum_not_mean = expected * len(_zephyr(tokenizer, question)[1])
    assert paragraph["score"][1] != pytest.approx(sum_not_mean, abs=1e-3)


@pytest.mark.parametrize(
    ("instruction", "split", "kept"),
    [
        ("last_line", None, "What is the capital?"),
        ("split", r"\.\s*", "What is the capital?"),  # the last piece with text: after the last full stop
        ("split", "river", "runs through the town.\nWhat is the capital?"),
    ],
)
def test_the_system_message_stays_and_the_split_keeps_the_last_piece(model_and_tokenizer, instruction, split, kept):
    model, tokenizer = model_and_tokenizer
    messages = PASSAGE["messages"]
    scores = score_conversations(model, tokenizer, [PASSAGE], 512, instruction=instruction, split=split)
    alone = [messages[0], {"role": "user", "content": kept}, messages[2]]
    expected = _mean_nll(model, tokenizer, alone) - _mean_nll(model, tokenizer, messages)
    assert scores["score"].tolist() == [pytest.approx(expected, abs=1e-4)] and not scores["no_context"][0]
    ties = score_conversations(model, tokenizer, [PASSAGE], 512)  # last_turn: the system message is not context
    assert ties["score"].tolist() == [0.0] and ties["no_context"].tolist() == [True]


def test_truncation_is_the_attention_scorers(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    for max_length in (20, 40, 60, 512):
        scores = score_conversations(model, tokenizer, [MULTI, PASSAGE], max_length, instruction="last_line")
        attention = attention_scores(model, tokenizer, [MULTI, PASSAGE], [1], max_length)
        assert scores["truncated"].tolist() == attention["truncated"].tolist(), max_length
        assert scores["n_response_tokens"].tolist() == attention["n_response_tokens"].tolist()
        assert scores["n_instruction_tokens"].tolist() == attention["n_instruction_tokens"].tolist()
        assert scores["score"].isna().tolist() == attention["score"].isna().tolist()
    assert scores["score"].notna().all()
    assert score_conversations(model, tokenizer, [MULTI], 40)["truncated"].tolist() == [False, True]


def test_a_conversation_scores_the_same_in_any_batch(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    alone = score_conversations(model, tokenizer, [MULTI], 512, instruction="last_paragraph")
    batched = score_conversations(
        model, tokenizer, [PASSAGE, MULTI], 512, batch_tokens=10_000, instruction="last_paragraph"
    )
    assert batched["score"].tolist()[1:] == pytest.approx(alone["score"].tolist(), abs=1e-4)


def fox_questions(n: int, lines: int, answers: int) -> list[dict]:
    """n one-turn questions after 0 to lines - 1 lines of context, with answers of 1 to `answers` sentences; then
    MULTI and PASSAGE."""
    return [
        {
            "id": f"c{i}",
            "messages": [
                {"role": "user", "content": "The quick brown fox jumps.\n" * (i % lines) + "Who jumps?"},
                {"role": "assistant", "content": "The fox." * (1 + i % answers)},
            ],
        }
        for i in range(n)
    ] + [MULTI, PASSAGE]


def test_sharded_scoring_gathers_to_exactly_the_one_shard_table(tiny_model_dir, tmp_path):
    from ctxaware.likelihood_ratio import score_file
    from ctxaware.scoring import gather_scores

    conversations = fox_questions(11, lines=3, answers=2)
    data = tmp_path / "data.parquet"
    pd.DataFrame(conversations).to_parquet(data)
    settings = {"instruction": "last_line", "batch_tokens": 200}
    score_file(tiny_model_dir, str(data), str(tmp_path / "one.parquet"), **settings)
    unsharded = gather_scores([str(tmp_path / "one.parquet")], str(tmp_path / "unsharded.parquet"))
    shards = [str(tmp_path / f"shard{shard}.parquet") for shard in range(3)]
    for shard, path in enumerate(shards):
        score_file(tiny_model_dir, str(data), path, **settings, shard=shard, n_shards=3)
    assert all(len(pd.read_parquet(p)) > 0 for p in shards)  # the work really was split
    assert gather_scores(shards, str(tmp_path / "gathered.parquet")).equals(unsharded)
    assert list(unsharded.columns) == LR_COLUMNS
    assert unsharded["no_context"].sum() == 5  # the four one-line questions and MULTI's first turn
    assert not unsharded["score"].isna().any() and (unsharded.loc[unsharded["no_context"], "score"] == 0).all()
    assert math.isclose(unsharded["score"].abs().sum(), unsharded.loc[~unsharded["no_context"], "score"].abs().sum())


def test_a_shard_builds_only_its_own_plans_and_the_shards_gather_to_one_shard_scoring(model_and_tokenizer, monkeypatch):
    """Each shard of 4 builds the plans (with and without context) of its own conversations only, about a
    quarter of them, and the 4 shards' rows are one-shard scoring's, bit for bit."""
    import ctxaware.likelihood_ratio as likelihood_ratio

    model, tokenizer = model_and_tokenizer
    conversations = fox_questions(30, lines=5, answers=3)
    settings = {"max_length": 512, "batch_tokens": 200, "instruction": "last_line"}
    one = score_conversations(model, tokenizer, conversations, **settings)
    built = record_plans(monkeypatch, likelihood_ratio)
    shards, own = [], []
    for shard in range(4):
        built.clear()
        table = score_conversations(model, tokenizer, conversations, **settings, shard=shard, n_shards=4)
        shards.append(table)
        own.append(set(built))
        assert set(built) == set(table["conversation_id"])
        assert 4 <= len(own[-1]) <= 12  # about a quarter of 32
    assert sorted(i for ids in own for i in ids) == sorted(c["id"] for c in conversations)  # each in one shard
    gathered = pd.concat(shards, ignore_index=True).sort_values(["conversation_index", "turn"], kind="stable")
    assert gathered.reset_index(drop=True).equals(one)
    assert (~one["no_context"]).sum() >= 20 and one["score"].notna().all()
