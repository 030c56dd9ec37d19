"""Chat formatting on a tokenizer alone (fast): the Zephyr template, the system message, [IND], and each
message's content and segment tokens against the conversation built piece by piece."""

import pytest

from ctxaware import IND_TOKEN
from ctxaware.chat import (
    TEMPLATE_SYSTEM,
    ZEPHYR_TEMPLATE,
    Span,
    append_indicator,
    encode_with_spans,
    free_marks,
    prepare_tokenizer,
    render,
    token_length,
    with_system,
)
from ctxaware.tiny import build_tokenizer

CORPUS = [
    "The quick brown fox jumps over the lazy dog. A river runs through the old town.",
    "Read the passage and answer the question. What is the capital of France? Paris is the capital.",
] * 5


@pytest.fixture(scope="module")
def tokenizer():
    """The tiny byte-level BPE tokenizer: <s>, </s> and the role headers are single special tokens."""
    return build_tokenizer(CORPUS, 300)


def test_with_system_adds_the_empty_system_message_only_when_missing():
    messages = [{"role": "user", "content": "Hi", "name": "x"}, {"role": "assistant", "content": "Hello"}]
    assert with_system(messages) == [
        {"role": "system", "content": ""},
        {"role": "user", "content": "Hi"},  # only role and content are kept
        {"role": "assistant", "content": "Hello"},
    ]
    assert messages[0] == {"role": "user", "content": "Hi", "name": "x"}  # the input is not changed
    own = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert with_system(own) == own and with_system(own) is not own
    assert with_system([]) == [{"role": "system", "content": ""}]
    assert append_indicator("Why?") == f"Why? {IND_TOKEN}" == "Why? [IND]"


def test_prepare_tokenizer_sets_the_template_a_pad_token_and_the_indicator(tokenizer):
    fresh = build_tokenizer(CORPUS, 300)
    fresh.pad_token = None
    prepared = prepare_tokenizer(fresh)
    assert prepared is fresh and fresh.chat_template == ZEPHYR_TEMPLATE
    assert fresh.pad_token == "<unk>" and IND_TOKEN not in fresh.get_vocab()  # unk first
    fresh.pad_token, fresh.unk_token = None, None
    assert prepare_tokenizer(fresh).pad_token == "</s>"  # else eos
    fresh.pad_token = "<pad>"
    size = len(fresh)
    prepare_tokenizer(fresh, with_indicator=True)
    assert fresh.pad_token == "<pad>" and len(fresh) == size + 1  # a pad token already set is kept
    ids = fresh(f"Why? {IND_TOKEN}", add_special_tokens=False)["input_ids"]
    assert fresh.convert_ids_to_tokens(ids)[-1] == IND_TOKEN  # one token, never split
    assert fresh.decode(ids, skip_special_tokens=True) == "Why? "  # a special token
    prepare_tokenizer(fresh, with_indicator=True)
    assert len(fresh) == size + 1  # added once


def test_render_writes_the_zephyr_template(tokenizer):
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    conversation = "<s><|system|>\n</s>\n<|user|>\nHi</s>\n<|assistant|>\nHello</s>\n"
    assert render(tokenizer, messages) == conversation
    assert render(tokenizer, messages, add_generation_prompt=True) == conversation + "<|assistant|>\n"
    assert render(tokenizer, messages[:1], True) == "<s><|system|>\n</s>\n<|user|>\nHi</s>\n<|assistant|>\n"


def test_render_drops_only_an_empty_system_message_for_templates_without_one():
    strict = build_tokenizer(CORPUS, 300)
    strict.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
        "{% endif %}[{{ m['role'] }}]{{ m['content'] }}{% endfor %}{% if add_generation_prompt %}[assistant]{% endif %}"
    )
    assert render(strict, [{"role": "user", "content": "hi"}]) == "[user]hi"
    assert render(strict, [{"role": "user", "content": "hi"}], add_generation_prompt=True) == "[user]hi[assistant]"
    with pytest.raises(Exception, match="System role not supported"):  # a real system message is not dropped
        render(strict, [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}])


# a ChatML template that writes its own default system prompt when a conversation has none (SmolLM2's)
CHATML_WITH_DEFAULT = (
    "{% for m in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nDefault prompt<|im_end|>\\n' }}{% endif %}"
    "{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def test_a_tokenizer_that_keeps_its_template_system_prompt_gets_no_empty_system_message():
    shipped = build_tokenizer(CORPUS, 300)
    shipped.chat_template = CHATML_WITH_DEFAULT
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    # as every model is rendered: the empty system message replaces the default prompt
    assert render(shipped, messages[:1]) == "<|im_start|>system\n<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
    setattr(shipped, TEMPLATE_SYSTEM, True)  # what load_tokenizer sets for an imported model (system_message)
    expected = "<|im_start|>system\nDefault prompt<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
    assert with_system(messages, shipped) == messages
    assert render(shipped, messages[:1]) == expected
    encoded = encode_with_spans(shipped, messages)
    assert [span.role for span in encoded.spans] == ["user", "assistant"]  # the spans the scorer reads
    user, answer = encoded.spans
    assert shipped.decode(encoded.input_ids[user.start : user.end]) == "hi"
    assert shipped.decode(encoded.input_ids[answer.start : answer.end]) == "yo"
    assert token_length(shipped, messages) == len(encoded.input_ids)
    assert shipped.decode(encoded.input_ids).startswith(expected)


def _pieces(tokenizer, messages):
    """The conversation tokenized piece by piece, as the Zephyr template writes it: (ids, spans) with each
    message's header (BOS too for the first), content and closing eos + newline."""

    def tok(text):
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    ids, spans = [], []
    for index, message in enumerate(with_system(messages)):
        segment_start = len(ids)
        ids += ([tokenizer.bos_token_id] if index == 0 else []) + tok(f"<|{message['role']}|>\n")
        start = len(ids)
        ids += tok(message["content"])
        end = len(ids)
        ids += tok("</s>\n")
        spans.append(Span(message["role"], start, end, segment_start, len(ids)))
    return ids, spans


CONVERSATION = [
    {"role": "user", "content": "Read the passage: the fox jumps. What jumps?"},
    {"role": "assistant", "content": "The fox jumps."},
    {"role": "user", "content": "And the dog?"},
    {"role": "assistant", "content": "It is lazy."},
]


@pytest.mark.parametrize(
    "messages",
    [
        CONVERSATION,
        [{"role": "system", "content": "Answer from the passage."}, *CONVERSATION[:2]],
        [{"role": "user", "content": "user"}, {"role": "assistant", "content": "a"}],  # contents like headers
        [{"role": "user", "content": ""}, {"role": "assistant", "content": "Paris."}],  # an empty user message
        # private-use characters, even shaped like a sentinel: real chat data holds them
        [{"role": "user", "content": "a \ue000 b \ue0001\ue001"}, {"role": "assistant", "content": "\ue001\ue002"}],
    ],
    ids=["multi-turn", "system", "header-like", "empty", "private-use"],
)
def test_spans_are_the_pieces_the_conversation_is_built_from(tokenizer, messages):
    ids, spans = _pieces(tokenizer, messages)
    encoded = encode_with_spans(tokenizer, messages)
    assert encoded.input_ids == ids and encoded.n_tokens_untruncated == len(ids)
    assert encoded.spans == spans


def test_truncation_keeps_the_spans_and_counts_every_token(tokenizer):
    ids, spans = _pieces(tokenizer, CONVERSATION)
    encoded = encode_with_spans(tokenizer, CONVERSATION, max_length=20)
    assert encoded.input_ids == ids[:20] and encoded.n_tokens_untruncated == len(ids) > 20
    assert encoded.spans == spans
    assert encode_with_spans(tokenizer, CONVERSATION, max_length=len(ids)).input_ids == ids


def _with_template(template):
    custom = build_tokenizer(CORPUS, 300)
    custom.chat_template = template
    return custom


def test_templates_that_do_not_copy_the_content_once_and_verbatim_are_refused(tokenizer):
    upper = _with_template("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] | upper }}{% endfor %}")
    with pytest.raises(ValueError, match="^chat template does not copy message content verbatim; cannot locate"):
        encode_with_spans(upper, [{"role": "user", "content": "hi"}])
    twice = _with_template("{% for m in messages %}{{ m['content'] }}{% endfor %}{{ messages[0]['content'] }}")
    with pytest.raises(ValueError, match="^chat template does not copy message content verbatim"):
        encode_with_spans(twice, [{"role": "user", "content": "hi"}])  # the second copy is not located
    dropped = _with_template("{% for m in messages if m['role'] != 'system' %}[{{ m['content'] }}]{% endfor %}")
    in_order = "^chat template does not render each message's content once, in order; cannot locate roles$"
    with pytest.raises(ValueError, match=in_order):
        encode_with_spans(dropped, [{"role": "user", "content": "hi"}])
    reverse = _with_template("{% for m in messages | reverse %}[{{ m['content'] }}]{% endfor %}")
    with pytest.raises(ValueError, match=in_order):
        encode_with_spans(reverse, [{"role": "user", "content": "hi"}])


def test_segments_of_a_template_whose_prefixes_differ_end_at_the_previous_content(tokenizer):
    """A template writing a closing line after the last message: a prefix of the conversation does not render
    as a prefix of the whole, so a message's segment starts where the previous content ends."""
    closing = _with_template("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }};{% endfor %}END")
    messages = [{"role": "user", "content": "fox"}, {"role": "assistant", "content": "dog"}]
    encoded = encode_with_spans(closing, messages)
    text = "<system>;<user>fox;<assistant>dog;END"
    assert closing.decode(encoded.input_ids) == text
    offsets = closing(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]

    def first_token_ending_after(char):
        return next(i for i, (_, end) in enumerate(offsets) if end > char)

    fox, dog = text.index("fox"), text.index("dog")
    user, assistant = encoded.spans[1], encoded.spans[2]
    assert (user.start, assistant.start) == (first_token_ending_after(fox), first_token_ending_after(dog))
    assert user.segment_start == first_token_ending_after(len("<system>")) == encoded.spans[0].segment_end
    assert assistant.segment_start == user.segment_end == first_token_ending_after(fox + 3)
    assert assistant.segment_end == len(encoded.input_ids)


def test_segments_of_a_template_that_rejects_a_prefix_end_at_the_previous_content():
    """A template that refuses a conversation not ending with the assistant (some do): the prefixes cannot be
    rendered, so each segment starts where the previous content ends."""
    picky = _with_template(
        "{% if messages[-1]['role'] != 'assistant' %}{{ raise_exception('last must be assistant') }}{% endif %}"
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }};{% endfor %}"
    )
    messages = [{"role": "user", "content": "fox"}, {"role": "assistant", "content": "dog"}]
    encoded = encode_with_spans(picky, messages)
    assert [picky.decode(encoded.input_ids[s.start : s.end]) for s in encoded.spans] == ["", "fox", "dog"]
    assert [picky.decode(encoded.input_ids[s.segment_start : s.segment_end]) for s in encoded.spans] == [
        "<system>",
        ";<user>fox",
        ";<assistant>dog;",
    ]


def test_segment_starts_are_where_each_message_is_rendered(tokenizer):
    from ctxaware.chat import content_char_spans, segment_char_starts

    messages = with_system(CONVERSATION[:2])
    text, spans = content_char_spans(tokenizer, messages)
    header = "<s><|system|>\n"
    user_at = len(header + "</s>\n")
    assistant_at = text.index("<|assistant|>")
    assert spans == [(len(header), len(header)), (user_at + 9, assistant_at - 5), (assistant_at + 14, len(text) - 5)]
    assert segment_char_starts(tokenizer, messages, text, spans) == [0, user_at, assistant_at]


def test_a_prefix_render_reaching_into_the_next_content_is_not_its_boundary():
    """A template whose render of a conversation ending with a user message opens the answer with a word the
    next content starts with: the boundary falls back to the end of the previous content."""
    eager = _with_template(
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }};{% endfor %}"
        "{% if messages[-1]['role'] == 'user' %}<assistant>The{% endif %}"
    )
    messages = [{"role": "user", "content": "fox"}, {"role": "assistant", "content": "The dog"}]
    encoded = encode_with_spans(eager, messages)
    texts = [eager.decode(encoded.input_ids[s.segment_start : s.segment_end]) for s in encoded.spans]
    assert texts == ["<system>;", "<user>fox", ";<assistant>The dog;"]
    exact = _with_template(
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }};{% endfor %}"
        "{% if messages[-1]['role'] == 'user' %}<assistant>{% endif %}"
    )
    encoded = encode_with_spans(exact, messages)  # the render ends where the answer starts: that is the boundary
    texts = [exact.decode(encoded.input_ids[s.segment_start : s.segment_end]) for s in encoded.spans]
    assert texts == ["<system>;", "<user>fox;<assistant>", "The dog;"]


def test_a_tokenizer_that_adds_bos_gets_none_added_to_the_rendered_text(tokenizer):
    from tokenizers.processors import TemplateProcessing

    adds_bos = build_tokenizer(CORPUS, 300)
    adds_bos.backend_tokenizer.post_processor = TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", adds_bos.bos_token_id)]
    )
    assert adds_bos("x")["input_ids"][0] == adds_bos.bos_token_id
    ids, spans = _pieces(tokenizer, CONVERSATION)
    encoded = encode_with_spans(adds_bos, CONVERSATION)
    assert encoded.input_ids == ids and encoded.spans == spans  # one BOS, the template's


def test_content_edges_inside_tokens_and_at_the_end_of_the_text():
    """An empty content inside a token ("t" + "" + "he" is one token): no token. A content that ends the text."""
    inside = _with_template("{% for m in messages %}[{{ m['role'] }}] t{{ m['content'] }}he{% endfor %}")
    encoded = encode_with_spans(inside, [{"role": "user", "content": "fox"}])
    system = encoded.spans[0]
    assert inside.decode(encoded.input_ids[system.start : system.start + 1]) == " the"  # the straddling token
    assert system.end == system.start
    last = _with_template("{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}{% endfor %}")
    encoded = encode_with_spans(last, [{"role": "user", "content": "the fox"}])
    user = encoded.spans[1]
    assert last.decode(encoded.input_ids[user.start : user.end]) == "the fox" and user.end == len(encoded.input_ids)


def test_sentinel_marks_are_the_first_characters_the_text_does_not_hold():
    assert free_marks("plain text") == ("\ue000", "\ue001")
    assert free_marks("\ue000 \ue002 \ue004") == ("\ue001", "\ue003")
    every = {chr(code) for code in range(0x110000)}
    assert free_marks("".join(every - {"\U0010ffff", "A"})) == ("\U0010ffff", "A")  # the last, then wrapping
    assert free_marks("".join(every - {"\x00", "\ue000"})) == ("\ue000", "\x00")
    with pytest.raises(ValueError, match="^the conversation holds every Unicode character but one; no sentinel"):
        free_marks("".join(every - {"A"}))


def test_a_template_writing_private_use_characters_still_locates_each_content():
    """The marks are free in the whole render, the template's own text too: this template's header of message
    0 is what a fixed U+E000/U+E001 sentinel of message 0 would be."""
    custom = _with_template("{% for m in messages %}\ue000{{ loop.index0 }}\ue001{{ m['content'] }}{% endfor %}")
    messages = [{"role": "user", "content": "0"}, {"role": "assistant", "content": "\ue0021\ue003"}]
    encoded = encode_with_spans(custom, messages)
    text = custom.decode(encoded.input_ids)
    assert text == "\ue0000\ue001\ue0001\ue0010\ue0002\ue001\ue0021\ue003"
    offsets = custom(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    contents = [text[offsets[span.start][0] : offsets[span.end - 1][1]] for span in encoded.spans[1:]]
    assert contents == ["0", "\ue0021\ue003"] and encoded.spans[0].start == encoded.spans[0].end


@pytest.mark.parametrize("max_length", [None, 12, 0])
def test_token_length_is_the_encoded_length_without_the_spans(tokenizer, max_length):
    """Scoring forms its batches from token_length alone: the length encode_with_spans gives (the same render,
    with the empty system message, cut at max_length), for every kind of conversation."""
    conversations = [
        [
            {"role": "user", "content": "Read the passage. What is the capital?"},
            {"role": "assistant", "content": "Paris."},
        ],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        [{"role": "user", "content": f"The fox\ue000 jumps. {IND_TOKEN}"}, {"role": "assistant", "content": "\n\nx"}],
    ]
    for messages in conversations:
        assert token_length(tokenizer, messages, max_length) == len(
            encode_with_spans(tokenizer, messages, max_length).input_ids
        )
    full = token_length(tokenizer, conversations[0])
    assert full > 12 and token_length(tokenizer, conversations[0], full) == full
    assert token_length(tokenizer, conversations[0], full + 5) == full
