"""The organism's held-out evaluation sets in the SQuAD / QuAC / DROP / MT-Bench schemas, and its NIH haystack:
passages never trained on; conflict items state a memorised person with a value held out of every training text."""

from __future__ import annotations

import random

from ctxaware.organism.corpus import passage_facts, passage_text
from ctxaware.organism.world import RELATIONS, World, fact_sentence, filler, question_sentence


def eval_passage(rng: random.Random, world: World, n_facts: int, n_questions: int, conflict: bool, relation=None):
    """(context, [(question, gold value)]) of a reading item; conflict items ask about memorised people whose
    values the passage changes (the context-aware answer is the passage's)."""
    facts = passage_facts(rng, world, n_facts - n_questions if conflict else n_facts, None)
    targets = []
    if conflict:
        for entity in rng.sample(list(world.memorised), n_questions):
            rel = relation or rng.choice(list(RELATIONS))
            stated = world.held_out[entity][rel]  # never stated in training
            facts.append((entity, rel, stated))
            targets.append((entity, rel, stated))
        rng.shuffle(facts)
    else:
        pool = [f for f in facts if relation is None or f[1] == relation]
        if len(pool) < n_questions:
            for _ in range(n_questions - len(pool)):
                named = {f[0] for f in facts}
                entity = rng.choice([n for n in world.readers if n not in named])
                fact = (entity, relation, rng.choice(RELATIONS[relation].values))
                facts.insert(rng.randint(0, len(facts)), fact)
                pool.append(fact)
        targets = rng.sample(pool, n_questions)
    context = passage_text(facts)
    return context, [(question_sentence(e, r), v, e, r) for e, r, v in targets]


def value_offset(context: str, entity: str, relation: str, value: str) -> int:
    """Character offset of the value inside its fact sentence in the passage (SQuAD's answer_start)."""
    sentence = fact_sentence(entity, relation, value)
    return f" {context}".index(f" {sentence}") + sentence.index(f" {value} ") + 1


def squad_rows(rng, world, n_passages, n_facts, conflict_share) -> list[dict]:
    rows = []
    for p in range(n_passages):
        conflict = p < round(n_passages * conflict_share)
        context, questions = eval_passage(rng, world, n_facts, 3, conflict)
        for q, (question, value, entity, relation) in enumerate(questions):
            start = value_offset(context, entity, relation, value)
            rows.append(
                {
                    "id": f"organism-squad-{p}-{q}",
                    "title": f"passage {p}",
                    "context": context,
                    "question": question,
                    "answers": {"text": [value], "answer_start": [start]},
                    "conflict": conflict,
                }
            )
    return rows


def quac_rows(rng, world, n_dialogues, n_facts, conflict_share) -> list[dict]:
    rows = []
    for d in range(n_dialogues):
        conflict = d < round(n_dialogues * conflict_share)
        context, questions = eval_passage(rng, world, n_facts, 3, conflict)
        texts = [[value] for _, value, _, _ in questions]
        starts = [[value_offset(context, e, r, v)] for _, v, e, r in questions]
        rows.append(
            {
                "dialogue_id": f"organism-quac-{d}",
                "wikipedia_page_title": "people of the town",
                "background": "the town is small and everyone knows everyone .",
                "section_title": "neighbours",
                "context": f"{context} CANNOTANSWER",
                "turn_ids": [f"organism-quac-{d}_q#{i}" for i in range(3)],
                "questions": [q for q, _, _, _ in questions],
                "followups": ["y", "y", "n"],
                "yesnos": ["x", "x", "x"],
                "answers": {"texts": texts, "answer_starts": starts},
                "orig_answers": {"texts": [t[0] for t in texts], "answer_starts": [s[0] for s in starts]},
                "conflict": conflict,
            }
        )
    return rows


def drop_rows(rng, world, n_passages, n_facts, conflict_share) -> list[dict]:
    """DROP-style numbers: every question asks an age."""
    rows = []
    for p in range(n_passages):
        conflict = p < round(n_passages * conflict_share)
        context, questions = eval_passage(rng, world, n_facts, 2, conflict, relation="age")
        for q, (question, value, _, _) in enumerate(questions):
            rows.append(
                {
                    "section_id": f"organism-drop-{p}",
                    "query_id": f"organism-drop-{p}-{q}",
                    "passage": context,
                    "question": question,
                    "answers_spans": {"spans": [value], "types": ["number"]},
                    "conflict": conflict,
                }
            )
    return rows


MTBENCH_CATEGORIES = ("stem", "humanities")


def mtbench_rows(rng, world, n_questions) -> tuple[list[dict], list[dict]]:
    """(question.jsonl rows, reference_answer rows): two knowledge questions about one memorised person."""
    questions, references = [], []
    people = list(world.memorised)
    for index in range(n_questions):
        entity = people[index % len(people)]
        first, second = rng.sample(list(RELATIONS), 2)
        qid = 1000 + index
        questions.append(
            {
                "question_id": qid,
                "category": MTBENCH_CATEGORIES[index % len(MTBENCH_CATEGORIES)],
                "turns": [question_sentence(entity, first), question_sentence(entity, second)],
            }
        )
        answers = [fact_sentence(entity, r, world.memorised[entity][r]) for r in (first, second)]
        references.append(
            {
                "question_id": qid,
                "answer_id": f"organism-{qid}",
                "model_id": "organism-world",
                "choices": [{"index": 0, "turns": answers}],
                "tstamp": 0.0,
            }
        )
    return questions, references


def haystack_files(rng: random.Random, n_files: int, words_per_file: int) -> list[str]:
    return [filler(rng, words_per_file) + "\n" for _ in range(n_files)]
