"""Attention steering (Eq. 1), retrieval heads (Eq. 3) and attention allocation (Figures 3 and 4)."""

import math
from types import SimpleNamespace

import pytest
import torch

from ctxaware.attention import Steering, steer, steered_attention, steering_exponents
from ctxaware.chat import prepare_tokenizer
from ctxaware.diagnosis import (
    SteeringGenerator,
    encode_roles,
    last_token_attention,
    retrieval_heads,
    role_masses,
)
from ctxaware.generation import Generator
from ctxaware.modeling import load_model

USER = [False, True, True, False, True, False]  # key roles of a 6-token prompt: bos, user, user, tmpl, user, tmpl


def hand_attention(q, k, v, user, power):
    """Eq. 1 by hand: causal softmax, non-user keys times alpha^power per head, rows renormalised."""
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    n = q.shape[-2]
    scores = scores.masked_fill(torch.ones(n, n).triu(1).bool(), float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    is_user = torch.tensor(user, dtype=weights.dtype)  # (keys,)
    factor = is_user + (1 - is_user) * power[None, :, None, None]  # alpha^power on non-user keys, per head
    weights = weights * factor
    weights = weights / weights.sum(-1, keepdim=True)
    return (weights @ v).transpose(1, 2)


@pytest.mark.parametrize("compat", ["none", "original"])
def test_steering_matches_hand_computation_per_layer(compat):
    torch.manual_seed(0)
    heads, layers, alpha = 2, 3, 0.3
    steering = Steering(alpha, {layer: [0, 1] for layer in range(layers)}, layers, heads, compat)
    steering.user = torch.tensor([USER])
    q, k, v = (torch.randn(1, heads, len(USER), 4) for _ in range(3))
    for layer in range(layers):
        module = SimpleNamespace(layer_idx=layer, num_key_value_groups=1, _ctxaware_steering=steering)
        out, _ = steered_attention(module, q, k, v, None, scaling=0.5)
        # independent layers see alpha; the original's shared in-place mask gives layer k alpha^(k+1)
        power = alpha ** (1 if compat == "none" else layer + 1)
        expected = hand_attention(q, k, v, USER, torch.full((heads,), power))
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_steering_only_touches_chosen_heads_and_original_compounds_per_head():
    exponents = steering_exponents({0: [1], 2: [1, 0]}, 4, 3, "original")
    assert [exponents[layer].tolist() for layer in range(4)] == [[0, 1, 0], [0, 1, 0], [1, 2, 0], [1, 2, 0]]
    independent = steering_exponents({0: [1], 2: [1, 0]}, 4, 3, "none")
    assert [independent[layer].tolist() for layer in range(4)] == [[0, 1, 0], [0, 0, 0], [1, 1, 0], [0, 0, 0]]
    torch.manual_seed(1)
    q, k, v = (torch.randn(1, 3, len(USER), 4) for _ in range(3))
    steering = Steering(0.1, {0: [1]}, 1, 3, "none")
    steering.user = torch.tensor([USER])
    module = SimpleNamespace(layer_idx=0, num_key_value_groups=1, _ctxaware_steering=steering)
    out, _ = steered_attention(module, q, k, v, None, scaling=0.5)
    expected = hand_attention(q, k, v, USER, torch.tensor([1.0, 0.1, 1.0]))
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_retrieval_head_is_the_argmax_of_user_mass():
    attention = torch.tensor(
        [
            [[0.1, 0.4, 0.1, 0.1, 0.2, 0.1], [0.5, 0.1, 0.1, 0.2, 0.0, 0.1], [0.0, 0.3, 0.3, 0.1, 0.3, 0.0]],
            [[0.0, 0.1, 0.1, 0.0, 0.7, 0.1], [0.2, 0.2, 0.2, 0.2, 0.1, 0.1], [0.6, 0.1, 0.1, 0.1, 0.1, 0.0]],
        ]
    )  # user masses: layer 0 -> 0.7, 0.2, 0.9; layer 1 -> 0.9, 0.5, 0.3
    assert retrieval_heads(attention, USER) == [2, 0]


def test_role_masses_exclude_template_and_renormalise():
    attention = torch.tensor([[0.1, 0.2, 0.2, 0.3, 0.1, 0.1]])
    roles = ["bos", "user", "user", "template", "user", "assistant"]
    masses = role_masses(attention, roles)
    kept = 0.1 + 0.5 + 0.1  # bos + user + assistant
    assert masses["user"].item() == pytest.approx(0.5 / kept)
    assert masses["assistant"].item() == pytest.approx(0.1 / kept)
    assert masses["bos"].item() == pytest.approx(0.1 / kept)
    assert (masses["user"] + masses["assistant"] + masses["bos"]).item() == pytest.approx(1.0)
    assert masses["template_raw"].item() == pytest.approx(0.3)


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    model, tokenizer = load_model(tiny_model_dir)
    return model, prepare_tokenizer(tokenizer)


# the Zephyr template around one user message, written out by hand (ctxaware.chat.ZEPHYR_TEMPLATE renders it)
ZEPHYR_HEAD, ZEPHYR_TAIL = "<|system|>\n</s>\n<|user|>\n", "</s>\n<|assistant|>\n"
CONTENT = "The quick brown fox jumps over the lazy dog. What is the capital of France?"


def _with_bos_added(tokenizer):
    """A copy of the tokenizer that adds BOS to plain text, as Llama tokenizers do."""
    from tokenizers.processors import TemplateProcessing

    copy = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
    copy.backend_tokenizer.post_processor = TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tokenizer.bos_token_id)]
    )
    return prepare_tokenizer(copy)


def hand_roles(tokenizer, content: str, use_template: bool, prefix: str) -> tuple[list[int], list[str]]:
    """The prompt built piece by piece: each piece tokenized on its own and given its role."""

    def piece(text):
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    adds_bos = tokenizer("x", add_special_tokens=True)["input_ids"][0] == tokenizer.bos_token_id
    pieces = [("bos", [tokenizer.bos_token_id] if use_template or adds_bos else [])]
    if use_template:
        pieces += [("template", piece(ZEPHYR_HEAD)), ("user", piece(content)), ("template", piece(ZEPHYR_TAIL))]
    else:
        pieces += [("user", piece(content))]
    pieces.append(("assistant", piece(prefix)))
    return [i for _, ids in pieces for i in ids], [role for role, ids in pieces for _ in ids]


@pytest.mark.parametrize("adds_bos", [False, True])
@pytest.mark.parametrize("use_template", [True, False])
@pytest.mark.parametrize("prefix", ["\nParis is", ""])
def test_roles_are_the_pieces_the_prompt_is_built_from(tiny, use_template, adds_bos, prefix):
    model, tokenizer = tiny
    if adds_bos:
        tokenizer = _with_bos_added(tokenizer)
    ids, roles = encode_roles(tokenizer, CONTENT, use_template, prefix)
    assert (ids, roles) == hand_roles(tokenizer, CONTENT, use_template, prefix)
    assert roles.count("bos") == (use_template or adds_bos) and ("assistant" in roles) == (prefix != "")
    generator = Generator(model, tokenizer)
    assert ids == generator.encode_chat([{"role": "user", "content": CONTENT}], use_template, prefix)


def test_captured_attention_matches_eager_attentions(tiny, tiny_model_dir):
    model, tokenizer = tiny
    ids, _ = encode_roles(tokenizer, "Read the passage and answer the question.", True, "")
    captured = last_token_attention(model, ids)
    eager, _ = load_model(tiny_model_dir, attn_implementation="eager")
    with torch.inference_mode():
        reference = eager(input_ids=torch.tensor([ids]), output_attentions=True).attentions
    expected = torch.stack([layer[0, :, -1] for layer in reference])
    torch.testing.assert_close(captured, expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(captured.sum(-1), torch.ones(captured.shape[:2]))


ALL_HEADS = {0: [0, 1, 2, 3], 1: [0, 1, 2, 3], 2: [0, 1, 2, 3]}


def test_steering_generator_unsteered_equals_generator_and_steering_changes_outputs(tiny):
    model, tokenizer = tiny
    queries = [[{"role": "user", "content": text}] for text in ("What is the capital of France?", "Explain why.")]
    plain = Generator(model, tokenizer, share_prefixes=False)
    expected = plain.generate_ids([plain.encode_chat(q) for q in queries], 6)
    unsteered = SteeringGenerator(model, tokenizer, 4096, None)
    assert unsteered.generate_ids([unsteered.encode_chat(q) for q in queries], 6) == expected
    steering = Steering(1e-6, ALL_HEADS, 3, 4, "none")
    steered = SteeringGenerator(model, tokenizer, 4096, steering)
    outputs = steered.generate_ids([steered.encode_chat(q) for q in queries], 6)
    assert len(outputs) == 2 and outputs != expected
    assert steering.user.shape[0] == 2
    # the batch's user mask is left-padded like its prompts: the shorter prompt's padding is not user
    lengths = sorted(len(steered.encode_chat(q)) for q in queries)
    assert not steering.user[0, : lengths[1] - lengths[0]].any()
    # and the longer prompt's mask is its user tokens
    ids, roles = hand_roles(tokenizer, queries[0][0]["content"], True, "")
    assert steering.user[1].tolist() == [r == "user" for r in roles]


@pytest.mark.parametrize("alpha", [0.5, 0.1])
def test_steering_raises_the_user_attention_at_the_first_answer_token(tiny, alpha):
    """Eq. 1 at the last prompt position: on layer 0 (same input either way) a steered head's user mass u becomes
    u / (u + alpha (1 - u)); on every layer every steered head attends more to the user's tokens."""
    model, tokenizer = tiny
    ids, roles = hand_roles(tokenizer, CONTENT, True, "")
    user = torch.tensor([[r == "user" for r in roles]])
    before = last_token_attention(model, ids)[..., user[0]].sum(-1)  # (layers, heads)
    steering = Steering(alpha, ALL_HEADS, 3, 4, "none")
    steering.user = user
    with steer(model, steering):
        after = last_token_attention(model, ids)[..., user[0]].sum(-1)
    torch.testing.assert_close(after[0], before[0] / (before[0] + alpha * (1 - before[0])), atol=1e-5, rtol=1e-5)
    assert (after > before + 0.05).all()


def test_softcapped_attention_matches_hand_computation():
    torch.manual_seed(2)
    q, k, v = (torch.randn(1, 2, len(USER), 4) * 3 for _ in range(3))
    module = SimpleNamespace(layer_idx=0, num_key_value_groups=1)
    out, _ = steered_attention(module, q, k, v, None, scaling=0.5, softcap=2.0)
    scores = torch.tanh((q @ k.transpose(-1, -2)) * 0.5 / 2.0) * 2.0
    scores = scores.masked_fill(torch.ones(len(USER), len(USER)).triu(1).bool(), float("-inf"))
    expected = (torch.softmax(scores, dim=-1) @ v).transpose(1, 2)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_render_drops_the_empty_system_message_for_templates_without_one(tiny):
    from ctxaware.chat import render

    _, tokenizer = tiny
    strict = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
    strict.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
        "{% endif %}[{{ m['role'] }}]{{ m['content'] }}{% endfor %}"
    )
    assert render(strict, [{"role": "user", "content": "hi"}]) == "[user]hi"
