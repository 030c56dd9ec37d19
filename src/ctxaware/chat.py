"""Chat formatting: the Zephyr/TinyLlama template and per-message token spans from offsets."""

from __future__ import annotations

import bisect
import itertools
import sys
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


# set on a tokenizer (ctxaware.modeling.load_tokenizer, from the model's ctxaware_model.json) whose conversations
# keep the template's own rendering without a system message: a default system prompt, for an imported model
TEMPLATE_SYSTEM = "ctxaware_template_system"


def keeps_template_system(tokenizer) -> bool:
    return bool(getattr(tokenizer, TEMPLATE_SYSTEM, False))


def with_system(messages: list[dict], tokenizer=None) -> list[dict]:
    """Insert the empty system message the alignment-handbook recipes add when a conversation has none, unless the
    tokenizer keeps its template's own (keeps_template_system: its default system prompt stays)."""
    messages = [{"role": m["role"], "content": m["content"]} for m in messages]
    if keeps_template_system(tokenizer):
        return messages
    if not messages or messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": ""})
    return messages


def append_indicator(text: str) -> str:
    return f"{text} {IND_TOKEN}"


# how [IND] joins the vocabulary (recipes.<r>.indicator_token). special: a special token, as the paper describes it
# (Section 3.2): matched on the raw text, dropped by decode(skip_special_tokens=True). added: a plain added token, as
# the original's tokenizer.add_tokens(['[IND]']) (TinyLlama/scripts/run_sft.py l.139-153, scripts/utils.py
# l.176-187): normalized (a legacy Llama-2 tokenizer.json's normalizer makes it absorb the space before it) and kept
# by skip_special_tokens
INDICATOR_TOKENS = ("special", "added")
DEFAULT_INDICATOR_TOKEN = "special"


def prepare_tokenizer(tokenizer, with_indicator: bool = False, indicator_token: str = DEFAULT_INDICATOR_TOKEN):
    """Give any causal-LM tokenizer the Zephyr template, a pad token and (optionally) the [IND] token, special or
    a plain added one (INDICATOR_TOKENS)."""
    if indicator_token not in INDICATOR_TOKENS:
        raise ValueError(
            f"config key recipes.<recipe>.indicator_token: {indicator_token!r} is not one of {INDICATOR_TOKENS}"
        )
    tokenizer.chat_template = ZEPHYR_TEMPLATE
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    if with_indicator and IND_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_tokens([IND_TOKEN], special_tokens=indicator_token == "special")
    return tokenizer


def _text(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> str:
    """The chat template's text of `messages` as they are."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def render(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> str:
    """The conversation with the empty system message added, or without it for templates that reject a system
    role (Gemma, Mistral: the paper's Section 2 renders the official instruct models with their own templates)."""
    full = with_system(messages, tokenizer)
    try:
        return _text(tokenizer, full, add_generation_prompt)
    except Exception:  # jinja2's raise_exception in the template: "System role not supported"
        if not full or full[0]["role"] != "system" or full[0]["content"]:
            raise
        return _text(tokenizer, full[1:], add_generation_prompt)


def render_lm_eval(tokenizer, messages: list[dict]) -> str:
    """The prompt lm-eval's chat rendering gives (HFLM.wrap_chat_template, which the original's QA evaluation ran
    with use_chat_template=True): the conversation closed by an empty assistant turn, without the generation
    prompt, stripped, then the eos and bos texts cut off its end and stripped again; in the Zephyr template that
    ends at `<|assistant|>`, without the newline the generation prompt adds."""
    text = render(tokenizer, [*messages, {"role": "assistant", "content": ""}]).strip()
    text = text.removesuffix(tokenizer.eos_token or "").removesuffix(tokenizer.bos_token or "")
    return text.strip()


@dataclass
class Span:
    """Token span [start, end) of one message's content (header tokens excluded)."""

    role: str
    start: int
    end: int
    # the tokens the template writes for the message, [segment_start, segment_end): its header (from the end
    # of the previous message's rendering), content and closing (Zephyr: eos and newline)
    segment_start: int
    segment_end: int


@dataclass
class Encoded:
    input_ids: list[int]
    spans: list[Span]  # one per message of with_system(messages), in order
    n_tokens_untruncated: int


# Sentinels mark where the template puts each message's content. They are built from two characters the
# rendered conversation does not hold (content and template alike), so no content can clash with them: the
# Private Use Area's first free ones, which no template writes, and past it the rest of Unicode.
MARK_START = 0xE000


def free_marks(text: str) -> tuple[str, str]:
    """The first two characters, from U+E000 on (then wrapping to U+0000), that `text` does not hold."""
    present = set(text)
    codes = itertools.chain(range(MARK_START, sys.maxunicode + 1), range(MARK_START))
    marks = tuple(itertools.islice((chr(code) for code in codes if chr(code) not in present), 2))
    if len(marks) < 2:
        raise ValueError("the conversation holds every Unicode character but one; no sentinel can locate roles")
    return marks


def sentinel(index: int, marks: tuple[str, str]) -> str:
    """Message `index`'s placeholder: its number between the two marks (free_marks of the real render)."""
    return f"{marks[0]}{index}{marks[1]}"


def content_char_spans(tokenizer, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and each message's content as [start, end) character offsets in it.

    The conversation is rendered once with every content replaced by a unique sentinel (made of characters the
    real render does not hold, so no content clashes with it), so each content is
    placed where the template puts it, after its own header: searching the rendered text for the content
    itself would land on a header that contains it ("user", "a", "s", "\n", ...). The real render must equal
    the sentinel render with the contents put back, i.e. the template copies content verbatim.
    """
    text = _text(tokenizer, messages)
    marks = free_marks(text)
    skeleton = _text(tokenizer, [{"role": m["role"], "content": sentinel(i, marks)} for i, m in enumerate(messages)])
    pieces, char_spans, cursor, length = [], [], 0, 0
    for index, message in enumerate(messages):
        marker = sentinel(index, marks)
        at = skeleton.find(marker, cursor)
        if at < 0:
            raise ValueError("chat template does not render each message's content once, in order; cannot locate roles")
        pieces += [skeleton[cursor:at], message["content"]]
        length += at - cursor
        char_spans.append((length, length + len(message["content"])))
        length += len(message["content"])
        cursor = at + len(marker)
    pieces.append(skeleton[cursor:])
    if "".join(pieces) != text:
        raise ValueError("chat template does not copy message content verbatim; cannot locate roles")
    return text, char_spans


def segment_char_starts(tokenizer, messages: list[dict], text: str, char_spans: list[tuple[int, int]]) -> list[int]:
    """Where each message's rendering starts in `text`: the end of the conversation rendered up to the message
    before it (Zephyr: just after the previous message's eos and newline, at its own header). A template whose
    shorter renders are not prefixes of the whole puts the boundary at the previous content's end."""
    starts = [0]
    for index in range(1, len(messages)):
        lower, upper = char_spans[index - 1][1], char_spans[index][0]
        try:
            before = _text(tokenizer, messages[:index])
        except Exception:  # jinja2's raise_exception: a template that rejects this prefix of the conversation
            before = None
        fits = before is not None and text.startswith(before) and lower <= len(before) <= upper
        starts.append(len(before) if fits else lower)
    return starts


def token_length(tokenizer, messages: list[dict], max_length: int | None = None) -> int:
    """len(encode_with_spans(tokenizer, messages, max_length).input_ids), without locating spans or keeping ids:
    the tokens of the same render (with_system, the template as it is), truncated the same way."""
    n = len(tokenizer(_text(tokenizer, with_system(messages, tokenizer)), add_special_tokens=False)["input_ids"])
    return n if max_length is None else min(n, max_length)


def encode_with_spans(tokenizer, messages: list[dict], max_length: int | None = None) -> Encoded:
    """Tokenize a rendered conversation and find each message's content and segment tokens from character offsets.

    Works for any template that copies message content verbatim (content_char_spans); a token belongs to a
    message's content when its characters overlap that content, and to its segment when it starts at or after
    the message's rendering starts and before the next one's.
    """
    messages = with_system(messages, tokenizer)
    text, char_spans = content_char_spans(tokenizer, messages)
    segment_starts = segment_char_starts(tokenizer, messages, text, char_spans)
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = encoding["input_ids"], encoding["offset_mapping"]

    token_ends = [end for _, end in offsets]

    def first_token_from(char: int) -> int:
        """The first token that ends after `char` (a token straddling the boundary belongs to what follows)."""
        return bisect.bisect_right(token_ends, char)

    token_starts = [first_token_from(c) for c in segment_starts[1:]] + [len(ids)]
    spans, segment_start = [], 0
    for message, (char_start, char_end), segment_end in zip(messages, char_spans, token_starts, strict=True):
        start = max(first_token_from(char_start), segment_start)
        end = start
        while char_end > char_start and end < len(ids) and offsets[end][0] < char_end:
            end += 1
        spans.append(Span(message["role"], start, end, segment_start, max(segment_end, end)))
        segment_start = max(segment_end, end)
    return Encoded(list(ids[:max_length]), spans, len(ids))  # max_length None keeps every token
