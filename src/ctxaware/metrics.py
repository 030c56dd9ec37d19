"""Scores for the evaluation tasks (docs/architecture.md, Evaluation tasks): QA containment, NIH keyword recall,
MT-Bench ratings."""

from __future__ import annotations

import re
import string

_PUNCTUATION = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
# A sentence ends at . ! or ? followed by whitespace or the end of text, so "3.5" mid-token never cuts.
_SENTENCE_END = re.compile(r"[.!?](?=\s|$)")
# the stop string of the original's SQuAD, QuAC and DROP tasks in lm-eval
LM_EVAL_STOP = ". "
ANSWER_CUTS = ("sentence", "lm_eval")
_PUNCT_TO_SPACE = str.maketrans({c: " " for c in string.punctuation})
_RATING = re.compile(r"\[\[(\d+\.?\d*)\]\]")
_RATING_BACKUP = re.compile(r"\[(\d+\.?\d*)\]")
KEYWORD_METHODS = ("exact", "prefix", "membership")


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lowercase, drop punctuation, drop articles, collapse whitespace."""
    text = "".join(c for c in text.lower() if c not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def first_sentence(text: str) -> str:
    """Text up to and including the first sentence terminator; the whole (stripped) text if there is none."""
    text = text.lstrip()
    match = _SENTENCE_END.search(text)
    return text[: match.end()] if match else text.strip()


def lm_eval_cut(text: str) -> str:
    """The text before the first ". ", the period dropped: lm-eval's cut of the original's QA answers (their
    tasks' `until: [". "]`, applied post hoc by HFLM.generate_until, `s = s.split(term)[0]`). A bare newline, a
    "?" or "!" never cut; the EOS, lm-eval's other stop, already ends generation here."""
    return text.split(LM_EVAL_STOP)[0]


def cut_answer(text: str, cut: str) -> str:
    """The answer scored in a QA response: its first sentence (sentence, the paper's) or lm-eval's cut."""
    if cut == "sentence":
        return first_sentence(text)
    if cut == "lm_eval":
        return lm_eval_cut(text)
    raise ValueError(f"answer cut {cut!r} is not one of {ANSWER_CUTS}")


def containment(response: str, golds: list[str]) -> float:
    """1.0 if a normalized non-empty gold is a substring of the normalized response (plain substring: "3" is
    found inside "13", as in the paper's containment metric)."""
    normalized = normalize_answer(response)
    return max((1.0 for g in map(normalize_answer, golds) if g and g in normalized), default=0.0)


def containment_raw_regex(response: str, golds: list[str]) -> float:
    """The original's lm-eval variant (SQuAD/QuAC before its 2025-02 normalisation, DROP always): a
    case-insensitive search of the escaped raw gold in the raw response. Empty golds are skipped because an
    empty pattern would match any response."""
    return max((1.0 for g in golds if g and re.search(re.escape(g), response, re.IGNORECASE)), default=0.0)


def drop_original(response: str, first_answer: list[str]) -> float:
    """The original's DROP metric: containment_raw_regex against the spans of the first gold answer only (the
    dataset's own `answer`; the validated answers are ignored), numbers matched as substrings."""
    return containment_raw_regex(response, first_answer)


def keyword_recall(response: str, keywords: list[str], method: str = "exact") -> float:
    """NIH score: the fraction of keywords found in the response.

    exact: the keyword equals a word (lowercased, punctuation replaced by spaces); prefix: some word starts
    with the keyword ("sandwiches" counts for "sandwich"); membership: substring of the lowercased response.
    """
    if method not in KEYWORD_METHODS:
        raise ValueError(f"unknown keyword_recall method {method!r}; expected one of {KEYWORD_METHODS}")
    if not keywords:
        raise ValueError("keyword_recall needs at least one keyword")
    lowered = response.lower()
    words = lowered.translate(_PUNCT_TO_SPACE).split()
    if method == "exact":
        vocabulary = set(words)
        found = [k.lower() in vocabulary for k in keywords]
    elif method == "prefix":
        found = [any(w.startswith(k.lower()) for w in words) for k in keywords]
    else:
        found = [k.lower() in lowered for k in keywords]
    return sum(found) / len(keywords)


def parse_rating(judgment: str) -> float | None:
    """MT-Bench rating: "[[n]]" first, then FastChat's fallback "[n]"; None if absent or outside 1..10."""
    match = _RATING.search(judgment) or _RATING_BACKUP.search(judgment)
    if match is None:
        return None
    rating = float(match.group(1))
    return rating if 1 <= rating <= 10 else None
