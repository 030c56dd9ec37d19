"""What the likelihood-ratio score removes (ctxaware.without_context), on hand-written conversations."""

import copy

import pytest

from ctxaware.without_context import INSTRUCTIONS, instruction_of, split_pattern, without_context


@pytest.mark.parametrize(
    ("message", "instruction", "split", "kept"),
    [
        ("Passage.\n\nWhat?", "last_turn", None, "Passage.\n\nWhat?"),
        ("  What? ", "last_turn", None, "  What? "),  # the whole message, verbatim
        ("Passage.\n\nWhat?", "last_paragraph", None, "What?"),
        ("Passage.\n \t\n  What?  ", "last_paragraph", None, "What?"),  # a blank line may hold spaces and tabs
        ("One.\nTwo.\n\n\nWhat?\n\n", "last_paragraph", None, "What?"),  # trailing blank pieces are skipped
        ("Line one.\nWhat?", "last_paragraph", None, "Line one.\nWhat?"),  # one paragraph: all of it
        ("Line one.\nWhat?", "last_line", None, "What?"),
        ("Line one.\nWhat?\n", "last_line", None, "What?"),
        ("What?", "last_line", None, "What?"),
        ("\n\n", "last_paragraph", None, "\n\n"),  # no piece with text: the message as it is
        ("ctx ctx Q: first Q: second", "split", "Q:", "second"),
        ("a1b22c", "split", r"[0-9]+", "c"),
        ("a1b2", "split", r"([0-9])", "b"),  # a group in the expression does not make a piece
        ("x--y--", "split", "--", "y"),
    ],
)
def test_instruction_of(message, instruction, split, kept):
    assert instruction_of(message, instruction, split) == kept


def test_the_default_instruction_is_the_whole_turn():
    assert instruction_of("Passage.\n\nWhat?") == "Passage.\n\nWhat?"


def test_split_patterns_and_their_errors():
    assert INSTRUCTIONS == ("last_turn", "last_paragraph", "last_line", "split")
    assert split_pattern("last_turn") is None and split_pattern("last_turn", "ignored") is None
    assert split_pattern("last_line") == r"\n" and split_pattern("split", "Q:") == "Q:"
    with pytest.raises(ValueError, match=r"^instruction 'first_turn': expected one of last_turn, last_paragraph, "):
        split_pattern("first_turn")
    for missing in (None, ""):
        with pytest.raises(ValueError, match=r"^instruction split needs a regular expression in split$"):
            instruction_of("a", "split", missing)


def _m(role, content):
    return {"role": role, "content": content}


def test_the_first_turn_whose_message_is_its_instruction_has_nothing_to_remove():
    assert without_context([_m("user", "Hi"), _m("assistant", "Hello")]) == [None]
    system = [_m("system", "Be brief."), _m("user", "Hi"), _m("assistant", "Hello")]
    assert without_context(system) == [None]  # the system message is not the user's context
    one_paragraph = [_m("user", "  Hi \n\n"), _m("assistant", "Hello")]
    assert without_context(one_paragraph, "last_paragraph") == [None]  # only whitespace would go


def test_a_later_turn_loses_the_earlier_turns_and_keeps_the_system_message():
    messages = [
        _m("system", ""),
        _m("user", "Doc.\n\nQ1?"),
        _m("assistant", "A1."),
        _m("user", "Q2?"),
        _m("assistant", "A2."),
    ]
    original = copy.deepcopy(messages)
    assert without_context(messages) == [None, [_m("system", ""), _m("user", "Q2?"), _m("assistant", "A2.")]]
    assert without_context(messages, "last_paragraph") == [
        [_m("system", ""), _m("user", "Q1?"), _m("assistant", "A1.")],
        [_m("system", ""), _m("user", "Q2?"), _m("assistant", "A2.")],
    ]
    assert messages == original  # the conversation is not changed


def test_a_split_removes_the_earlier_pieces_of_the_message():
    messages = [_m("user", "ctx Q: what?"), _m("assistant", "that")]
    assert without_context(messages, "split", "Q:") == [[_m("user", "what?"), _m("assistant", "that")]]
    assert without_context(messages, "split", "nowhere") == [None]


def test_two_answers_to_one_instruction_and_an_answer_without_one():
    """The second answer's context holds the first answer; an assistant message before any user message keeps no
    instruction (and, first in the conversation, loses nothing)."""
    double = [_m("user", "Q"), _m("assistant", "A"), _m("assistant", "B")]
    assert without_context(double) == [None, [_m("user", "Q"), _m("assistant", "B")]]
    leading = [_m("assistant", "Welcome."), _m("user", "Q"), _m("assistant", "A")]
    assert without_context(leading) == [None, [_m("user", "Q"), _m("assistant", "A")]]
    system_first = [_m("system", "S"), _m("assistant", "Welcome."), _m("assistant", "Again.")]
    assert without_context(system_first) == [None, [_m("system", "S"), _m("assistant", "Again.")]]
    assert without_context([]) == [] and without_context([_m("user", "unanswered")]) == []


def test_only_role_and_content_are_kept():
    messages = [_m("system", "S") | {"name": "x"}, _m("user", "a\nb") | {"extra": 1}, _m("assistant", "c")]
    assert without_context(messages, "last_line") == [[_m("system", "S"), _m("user", "b"), _m("assistant", "c")]]
