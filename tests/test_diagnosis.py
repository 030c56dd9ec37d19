"""Attention steering (Eq. 1), retrieval heads (Eq. 3) and attention allocation (Figures 3 and 4)."""

import math
from types import SimpleNamespace

import pytest
import torch

from ctxaware.attention import Steering, steered_attention, steering_exponents
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


@pytest.mark.parametrize("use_template", [True, False])
def test_roles_tokenize_like_the_generator(tiny, use_template):
    model, tokenizer = tiny
    content = "The quick brown fox jumps over the lazy dog. What is the capital of France?"
    ids, roles = encode_roles(tokenizer, content, use_template, "\nParis is")
    generator = Generator(model, tokenizer)
    assert ids == generator.encode_chat([{"role": "user", "content": content}], use_template, "\nParis is")
    user_text = tokenizer.decode([i for i, r in zip(ids, roles, strict=True) if r == "user"])
    assert user_text.strip() == content
    assert tokenizer.decode([i for i, r in zip(ids, roles, strict=True) if r == "assistant"]) == "\nParis is"
    assert (roles[0] == "bos") == (ids[0] == tokenizer.bos_token_id)  # BOS only where the tokenizer adds it
    assert roles.count("bos") <= 1
    assert ("template" in roles) == use_template


@pytest.mark.parametrize("content", ["user", "a", "assistant", "s", "t", "system", "\n"])
def test_user_role_is_the_content_even_when_a_header_holds_it(tiny, content):
    _, tokenizer = tiny
    ids, roles = encode_roles(tokenizer, content, True, "")
    user = [i for i, role in enumerate(roles) if role == "user"]
    assert user and tokenizer.decode([ids[i] for i in user]) == content
    # the content comes right after the user header, never in the assistant header of the generation prompt
    header = ids.index(tokenizer.convert_tokens_to_ids("<|user|>"))
    assert header < user[0] < ids.index(tokenizer.convert_tokens_to_ids("<|assistant|>"))


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


def test_steering_generator_unsteered_equals_generator_and_alpha_changes_attention(tiny):
    model, tokenizer = tiny
    queries = [[{"role": "user", "content": text}] for text in ("What is the capital of France?", "Explain why.")]
    plain = Generator(model, tokenizer, share_prefixes=False)
    expected = plain.generate_ids([plain.encode_chat(q) for q in queries], 6)
    unsteered = SteeringGenerator(model, tokenizer, 4096, None)
    assert unsteered.generate_ids([unsteered.encode_chat(q) for q in queries], 6) == expected
    steering = Steering(1e-6, {0: [0, 1, 2, 3], 1: [0, 1, 2, 3], 2: [0, 1, 2, 3]}, 3, 4, "none")
    steered = SteeringGenerator(model, tokenizer, 4096, steering)
    outputs = steered.generate_ids([steered.encode_chat(q) for q in queries], 6)
    assert len(outputs) == 2 and steering.user.shape[0] == 2
    # the batch's user mask is left-padded like its prompts: the shorter prompt's padding is not user
    lengths = sorted(len(steered.encode_chat(q)) for q in queries)
    assert not steering.user[0, : lengths[1] - lengths[0]].any()


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
