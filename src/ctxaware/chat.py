"""Chat formatting: the Zephyr/TinyLlama template and per-message token spans from offsets."""

from __future__ import annotations

from dataclasses import dataclass

from ctxaware import IND_TOKEN

# Zephyr/TinyLlama template (the paper uses it for every fine-tuned model). The {% generation %} markers let
# TRL compute assistant-only masks; bos is part of the template so text is tokenized without extra specials.
ZEPHYR_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|assistant|>\n' }}{% generation %}{{ message['content'] + eos_token }}{% endgeneration %}{{ '\n' }}"
    "{% else %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


def with_system(messages: list[dict]) -> list[dict]:
    """Insert the empty system message the alignment-handbook recipes add when a conversation has none."""
    messages = [{"role": m["role"], "content": m["content"]} for m in messages]
    if not messages or messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": ""})
    return messages


def append_indicator(text: str) -> str:
    return f"{text} {IND_TOKEN}"


def prepare_tokenizer(tokenizer, with_indicator: bool = False):
    """Give any causal-LM tokenizer the Zephyr template, a pad token and (optionally) the [IND] special token."""
    tokenizer.chat_template = ZEPHYR_TEMPLATE
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    if with_indicator and IND_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_tokens([IND_TOKEN], special_tokens=True)
    return tokenizer


def render(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> str:
    """The conversation with the empty system message added, or without it for templates that reject a system
    role (Gemma, Mistral: the paper's Section 2 renders the official instruct models with their own templates)."""
    full = with_system(messages)
    try:
        return tokenizer.apply_chat_template(full, tokenize=False, add_generation_prompt=add_generation_prompt)
    except Exception:  # jinja2's raise_exception in the template: "System role not supported"
        if full[0]["content"]:
            raise
        return tokenizer.apply_chat_template(full[1:], tokenize=False, add_generation_prompt=add_generation_prompt)


@dataclass
class Span:
    """Token span [start, end) of one message's content (header tokens excluded)."""

    role: str
    start: int
    end: int
    # the message's whole segment: from the end of the previous content to the end of this one's eos
    segment_start: int
    segment_end: int


@dataclass
class Encoded:
    input_ids: list[int]
    spans: list[Span]  # one per message of with_system(messages), in order
    n_tokens_untruncated: int


def encode_with_spans(tokenizer, messages: list[dict], max_length: int | None = None) -> Encoded:
    """Tokenize a rendered conversation and find each message's content tokens from character offsets.

    Works for any template that copies message content verbatim: contents are located in the rendered text
    in order, and a token belongs to a message when its characters overlap that message's content.
    """
    messages = with_system(messages)
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    char_spans, cursor = [], 0
    for message in messages:
        start = text.find(message["content"], cursor)
        if start < 0:
            raise ValueError("chat template does not copy message content verbatim; cannot locate roles")
        char_spans.append((start, start + len(message["content"])))
        cursor = start + len(message["content"])
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = encoding["input_ids"], encoding["offset_mapping"]
    spans, token_index = [], 0
    previous_end_token = 0
    for message, (char_start, char_end) in zip(messages, char_spans, strict=True):
        # skip tokens ending before the content starts (template header)
        while token_index < len(ids) and offsets[token_index][1] <= char_start:
            token_index += 1
        start = token_index
        while token_index < len(ids) and offsets[token_index][0] < char_end:
            token_index += 1
        end = token_index if char_end > char_start else start
        # the segment runs to the eos that closes this message (the next token after content when present)
        segment_end = min(end + 1, len(ids))
        spans.append(Span(message["role"], start, end, previous_end_token, segment_end))
        previous_end_token = segment_end
    n_tokens = len(ids)
    if max_length is not None and n_tokens > max_length:
        ids = ids[:max_length]
    return Encoded(list(ids), spans, n_tokens)
