"""Attention steering (Eq. 1), retrieval heads (Eq. 3) and attention allocation (Figures 3 and 4)."""

import math
from types import SimpleNamespace

import pytest
import torch

from ctxaware.attention import Steering, steer, steered_attention, steering_exponents
from ctxaware.chat import prepare_tokenizer
from ctxaware.diagnosis.roles import (
    encode_roles,
    last_token_attention,
    last_token_attentions,
    retrieval_heads,
    role_masses,
)
from ctxaware.diagnosis.steering import SteeringGenerator
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


@pytest.mark.parametrize("content", ["user", "a", "assistant", "s", "t", "system", "\n", "\ue0000\ue001 \ue000"])
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


def test_prefix_walk_attentions_equal_each_prompt_alone(tiny):
    """The allocation study's prompts share the haystack's opening, which the walk runs once: each prompt's
    first-answer-token attention is still the one its own forward gives (a twin with a prefix, a prompt that
    is another's prefix, a one-token prompt, an unrelated one)."""
    model, tokenizer = tiny
    haystack = "The river runs through the old town. " * 6
    prompts = [
        encode_roles(tokenizer, haystack + question, template, prefix)[0]
        for question in ("Where is the river?", "Where is the town?")
        for template, prefix in ((True, ""), (True, "Answer:"), (False, "\nAnswer:"))
    ]
    prompts += [prompts[0][:7], prompts[0][:1], encode_roles(tokenizer, "Hi", True, "")[0]]
    walked = last_token_attentions(model, prompts)
    for ids, attention in zip(prompts, walked, strict=True):
        torch.testing.assert_close(attention, last_token_attention(model, ids), atol=1e-5, rtol=1e-4)


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


@pytest.mark.parametrize("ending", ["generation_prompt", "lm_eval"])
def test_steering_generator_takes_each_qa_prompt_ending(tiny, ending):
    """Steering runs the QA tasks through run_qa, which asks for the task's prompt ending (the original's lm-eval
    ending in config/paper.yaml): the steered prompt is the plain generator's, its user tokens the content's."""
    model, tokenizer = tiny
    query = [{"role": "user", "content": "Context: the fox is brown.\nQuestion: what colour is the fox?"}]
    ids = SteeringGenerator(model, tokenizer, 4096, None).encode_chat(query, ending=ending)
    assert ids == Generator(model, tokenizer).encode_chat(query, ending=ending)
    role_ids, roles = encode_roles(tokenizer, query[0]["content"], True, "", ending)
    user = [token for token, role in zip(ids, roles, strict=True) if role == "user"]
    assert role_ids == ids and tokenizer.decode(user).strip() == query[0]["content"]
    assert tokenizer.decode(ids).endswith("<|assistant|>\n" if ending == "generation_prompt" else "<|assistant|>")


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


def _nih_settings(haystack_dir, **overrides) -> dict:
    (haystack_dir / "essay.txt").write_text("The river runs through the old town. The fox sleeps. " * 12)
    settings = {
        "haystack": str(haystack_dir),
        "context_buffer": 0,
        "needle": "The best thing to do in San Francisco is eat a sandwich.",
        "question": "What is the best thing to do in San Francisco?",
        "keywords": ["sandwich"],
        "metric": "exact",
        "min_context": 40,
        "max_context": 60,
        "n_lengths": 2,
        "n_depths": 1,
        "max_new_tokens": 2,
        "prompt_template": "assistant-document",
        "batch_tokens": 4096,
    }
    return settings | overrides


def test_attention_allocation_is_the_retrieval_heads_attention_by_role(tiny, tiny_model_dir, tmp_path):
    """Figures 3 and 4 against transformers' eager attention at the last prompt token, roles from the prompt's
    pieces: per layer the head with the most user attention without the template (Eq. 3), and that head's
    attention on user, assistant (response prefix) and BOS tokens renormalised without template tokens."""
    from ctxaware.diagnosis.allocation import attention_allocation
    from ctxaware.diagnosis.roles import nih_cases

    model, tokenizer = load_model(tiny_model_dir, attn_implementation="eager")
    with torch.no_grad():  # heads that differ, so the retrieval head is a real choice
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(40.0)
            layer.self_attn.k_proj.weight.mul_(10.0)
    model_dir = tmp_path / "model"
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    settings = _nih_settings(tmp_path)
    table = attention_allocation(str(model_dir), settings, "Answer:")
    cases = nih_cases(tokenizer, settings)
    assert len(table) == len(cases) * 2 * 3  # cases x (without, with template) x layers
    chosen = set()
    for case in cases:
        prompts = {
            template: hand_roles(tokenizer, case["prompt"], template, "Answer:" if template else "\nAnswer:")
            for template in (False, True)
        }
        last = {}
        with torch.no_grad():
            for template, (ids, _) in prompts.items():
                attentions = model(torch.tensor([ids]), output_attentions=True).attentions
                last[template] = torch.stack([a[0, :, -1] for a in attentions])  # (layers, heads, keys)
        plain_roles = prompts[False][1]
        user_mass = last[False][..., [r == "user" for r in plain_roles]].sum(-1)
        heads = user_mass.argmax(-1).tolist()
        chosen |= {(layer, head) for layer, head in enumerate(heads)}
        for template, (_, roles) in prompts.items():
            mass = {
                r: last[template][..., [x == r for x in roles]].sum(-1)
                for r in ("user", "assistant", "bos", "template")
            }
            kept = mass["user"] + mass["assistant"] + mass["bos"]
            rows = table[(table["case"] == case["id"]) & (table["chat_template"] == template)].sort_values("layer")
            assert rows["head"].tolist() == heads
            for layer, head in enumerate(heads):
                row = rows.iloc[layer]
                for role in ("user", "assistant", "bos"):
                    assert row[role] == pytest.approx(float(mass[role][layer, head] / kept[layer, head]), abs=1e-5)
                assert row["template_raw"] == pytest.approx(float(mass["template"][layer, head]), abs=1e-5)
            if not template:
                assert (rows["template_raw"] == 0).all()
    assert len({head for _, head in chosen}) > 1  # the heads chosen differ across layers or cases


# Table 7's columns: (model, chat template, response prefix) of each variant of the NIH template study
TABLE7 = {
    "base": ("base", False, True),
    "no_template": ("instruct", False, True),
    "template_prefix": ("instruct", True, True),
    "template_no_prefix": ("instruct", True, False),
    "no_template_no_prefix": ("instruct", False, False),
}


def test_template_study_variants_switch_model_template_and_prefix_as_table7(
    tiny_model_dir, tiny_mha_model_dir, tmp_path, monkeypatch
):
    from ctxaware.diagnosis import template_study
    from ctxaware.diagnosis.template_study import nih_template_study

    prompts_seen, calls = [], []
    build, generate_ids = template_study.nih_prompts, Generator.generate_ids

    def recording(generator, settings, with_indicator):
        cases, queries, prompts = build(generator, settings, with_indicator)
        heads = generator.model.config.num_key_value_heads
        prompts_seen.append((heads, [generator.tokenizer.decode(p) for p in prompts]))
        return cases, queries, prompts

    def one_call(self, prompts, *args, **kwargs):
        calls.append(len(prompts))
        return generate_ids(self, prompts, *args, **kwargs)

    monkeypatch.setattr(template_study, "nih_prompts", recording)
    monkeypatch.setattr(Generator, "generate_ids", one_call)
    models = {"base": tiny_model_dir, "instruct": tiny_mha_model_dir}  # 2 and 4 KV heads tell them apart
    kv_heads = {"base": 2, "instruct": 4}
    templates = ["assistant-document", "context"]
    table = nih_template_study("tiny", models, _nih_settings(tmp_path), templates, "Answer:", list(TABLE7))
    lengths = sorted(set(table["length"]))  # a row per grid length of each run
    assert len(lengths) == _nih_settings(tmp_path)["n_lengths"] and len(table) == len(prompts_seen) * len(lengths)
    runs = table.drop_duplicates(["variant", "template"])
    assert sorted(runs["variant"]) == sorted(list(TABLE7) * len(templates))
    assert len(prompts_seen) == len(runs)
    # one generation call per model, with every run's grid: the prefix walk shares across the variants
    assert calls == [sum(len(texts) for heads, texts in prompts_seen if heads == kv_heads[r]) for r in kv_heads]
    for (_, row), (heads, texts) in zip(runs.iterrows(), prompts_seen, strict=True):
        role, with_template, with_prefix = TABLE7[row["variant"]]
        assert row["model"] == models[role] and heads == kv_heads[role]
        for text in texts:
            assert text.startswith("<s><|system|>\n</s>\n<|user|>\n") == with_template
            assert ("<|assistant|>" in text) == with_template
            end = ("<|assistant|>\n" if with_template else "\n" if with_prefix else "?") + (
                "Answer:" if with_prefix else ""
            )  # plain text without the prefix ends where the user's question does
            assert text.endswith(end) and text.endswith("Answer:") == with_prefix
            opening = {"assistant-document": "You are a helpful AI assistant", "context": "Context: \n"}
            assert opening[row["template"]] in text
