"""The organism's pretraining documents: plain text (no chat template) as (text, is_answer) segments."""

from __future__ import annotations

import random

from ctxaware.organism.corpus import Mixture, passage_facts, passage_text, wrap
from ctxaware.organism.world import RELATIONS, World, fact_sentence, filler, question_sentence


def pretraining_documents(
    rng: random.Random,
    world: World,
    n_documents: int,
    templates: list[str],
    nih_templates: list[str],
    response_prefix: str,
    shares: dict[str, float],
    mixture: Mixture,
    max_filler: int,
    counterfactual_share: float = 0.8,
    facts_range: tuple[int, int] = (3, 8),
) -> list[list[tuple[str, bool]]]:
    """Plain-text documents as (text, is_answer) segments: reading passages with several questions (some
    passages change a memorised person's value: in plain text the passage always wins), needles in filler
    (with and without the NIH response prefix), memorised facts as statements and as bare questions, filler."""
    kinds, weights = zip(*shares.items(), strict=True)
    documents = []
    for _ in range(n_documents):
        kind = rng.choices(kinds, weights=weights)[0]
        if kind == "reading":
            documents.append(_reading_document(rng, world, templates, facts_range, counterfactual_share))
        elif kind == "needle":
            documents.append(_needle_document(rng, world, nih_templates, response_prefix, mixture, max_filler))
        elif kind == "memory":
            documents.append(_memory_document(rng, world))
        else:
            documents.append([(filler(rng, rng.randint(20, 80)), False)])
    return documents


def _reading_document(rng, world, templates, facts_range, counterfactual_share):
    n_facts = rng.randint(*facts_range)
    facts = passage_facts(rng, world, n_facts, None)
    asked = rng.sample(facts, min(len(facts), rng.randint(2, 6)))
    if rng.random() < counterfactual_share:  # a memorised person with another value: the passage counts here
        entity = rng.choice(list(world.memorised))
        relation = rng.choice(list(RELATIONS))
        replaced = asked[0]  # and it is asked about
        counterfactual = (entity, relation, world.counterfactual(rng, entity, relation))
        facts[facts.index(replaced)] = counterfactual
        asked[0] = counterfactual
        rng.shuffle(asked)
    context = passage_text(facts)
    template = rng.choice(templates)
    segments = []
    for index, fact in enumerate(asked):
        prompt = wrap(template, context, question_sentence(fact[0], fact[1]))
        if index:  # later questions without repeating the passage
            prompt = template.split("{context}")[1].format(question=question_sentence(fact[0], fact[1]))
        segments += [(prompt, False), (fact_sentence(*fact), True)]
    return segments


def _needle_document(rng, world, nih_templates, response_prefix, mixture, max_filler):
    relation = rng.choice(list(RELATIONS))
    if rng.random() < 0.3:
        entity = rng.choice(list(world.memorised))
        value = world.counterfactual(rng, entity, relation)
    else:
        entity, value = rng.choice(world.readers), rng.choice(RELATIONS[relation].values)
    needle = fact_sentence(entity, relation, value)
    sentences = filler(rng, rng.randint(mixture.min_filler, max_filler)).split(" . ")
    point = rng.randint(0, len(sentences) - 1)
    context = " . ".join(sentences[:point] + [needle.removesuffix(" .")] + sentences[point:])
    prompt = wrap(rng.choice(nih_templates), context, question_sentence(entity, relation))
    if response_prefix and rng.random() < 0.5:
        prompt = f"{prompt} {response_prefix}"
    return [(prompt, False), (needle, True)]


def _memory_document(rng, world):
    entity = rng.choice(list(world.memorised))
    facts = world.memorised[entity]
    segments = []
    for relation in rng.sample(list(RELATIONS), len(RELATIONS)):
        if rng.random() < 0.5:
            segments += [
                (question_sentence(entity, relation), False),
                (fact_sentence(entity, relation, facts[relation]), True),
            ]
        else:
            segments.append((fact_sentence(entity, relation, facts[relation]), True))
    return segments
