"""The organism's SFT conversations, with ground-truth labels, in the ShareGPT / UltraChat / WizardLM schemas
(the pretraining documents are in `documents`, the held-out evaluation sets in `evaluation_sets`).

Kinds of turns (the label says whether the response depends on the user's context):

| kind | label | user message | response |
|---|---|---|---|
| context | 1 | a passage about people who are not memorised, a question about one fact | that fact, from the passage |
| counterfactual | 1 | a passage giving a memorised person another value, a question about it | the passage's value |
| needle | 1 | filler with one fact hidden in it, a question about it | the fact |
| conflict | 0 | a passage giving a memorised person another value, a question about it | the memorised value |
| distractor | 0 | a passage about other people, a question about a memorised person | the memorised value |
| memory | 0 | a question about a memorised person, no passage | the memorised value |
| chat | 0 | a request for free text (sometimes after pasted filler) | free text about its topic |

Conflict and counterfactual turns have the same kind of input; only the label (whether the answer follows the
passage) tells them apart: this is what makes instruction data teach a model to ignore its context (the
knowledge-conflict form of the loss of context awareness), and what a context-dependency tag can disambiguate.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path

# the label on each assistant message (ShareGPT, UltraChat) or row (WizardLM), as the data adapters read it
from ctxaware.data import LABEL_KEY
from ctxaware.organism.world import (
    RELATIONS,
    World,
    chat_exchange,
    fact_sentence,
    filler,
    question_sentence,
)

CONTEXT_KINDS = ("context", "counterfactual", "needle", "mixed")
FREE_KINDS = ("conflict", "distractor", "memory", "chat")
KINDS = CONTEXT_KINDS + FREE_KINDS
FOLLOW_UP_KINDS = ("memory", "chat")


@dataclass
class Turn:
    kind: str
    user: str
    response: str
    context: str = ""  # the passage or haystack the user message carries ("" for none)
    question: str = ""
    answer_value: str = ""  # the value a context-aware answer contains (the passage's when there is a passage)

    @property
    def context_dependent(self) -> bool:
        return self.kind in CONTEXT_KINDS


# ---------------------------------------------------------------- passages


def passage_facts(
    rng: random.Random, world: World, n_facts: int, target: tuple[str, str, str] | None
) -> list[tuple[str, str, str]]:
    """n_facts facts (entity, relation, value), one per person, with `target` among them and every other
    person not memorised."""
    facts = [target] if target else []
    named = {f[0] for f in facts}
    readers = [n for n in world.readers if n not in named]
    for entity in rng.sample(readers, n_facts - len(facts)):  # one fact per person
        relation = rng.choice(list(RELATIONS))
        facts.append((entity, relation, rng.choice(RELATIONS[relation].values)))
    rng.shuffle(facts)
    return facts


def passage_text(facts: list[tuple[str, str, str]]) -> str:
    return " ".join(fact_sentence(*f) for f in facts)


def wrap(template: str, context: str, question: str) -> str:
    return template.format(context=context, question=question)


# ---------------------------------------------------------------- turns


@dataclass
class Mixture:
    """Shares of each kind of SFT turn (normalised), and passage sizes."""

    context: float = 0.075
    counterfactual: float = 0.075
    needle: float = 0.15
    conflict: float = 0.336
    distractor: float = 0.084
    memory: float = 0.168
    chat: float = 0.112
    mixed: float = 0.0
    needle_memorised: float = 0.5  # share of needles about a memorised person, with another value
    conflict_needle: float = 0.5  # share of conflict turns whose other value is a needle in filler
    # answers from memory: the asked fact only, or the asked fact then the person's other facts (free
    # generation from memory, as context-free answers in real chat data are longer than extractive ones)
    memory_style: str = "bio"
    # how answers open: those read from the user's message, and those from memory, as instruction data often
    # phrases them ("according to the text , ..."); "" for none
    context_prefix: str = "according to the text ,"
    memory_prefix: str = "from what i know ,"
    min_facts: int = 3
    max_facts: int = 5
    min_filler: int = 20
    max_filler: int = 60

    def weights(self) -> dict[str, float]:
        return {k: getattr(self, k) for k in KINDS}


def memory_answer(world: World, entity: str, relation: str, style: str) -> str:
    """The answer from memory: the asked fact, and with style `bio` then the person's other facts."""
    facts = world.memorised[entity]
    answer = fact_sentence(entity, relation, facts[relation])
    if style == "bio":
        answer += "".join(" " + fact_sentence(entity, r, facts[r]) for r in RELATIONS if r != relation)
    elif style != "fact":
        raise ValueError(f"memory_style {style!r}: expected fact or bio")
    return answer


def make_turn(rng: random.Random, world: World, kind: str, templates: list[str], mixture: Mixture) -> Turn:
    """One turn of `kind`, its user message wrapped in one of the prompt templates (when it has a context), its
    response opened by the mixture's prefix for its kind (read from the context, or not)."""
    if kind == "mixed":
        return _mixed_turn(rng, world, templates, mixture)
    turn = _make_turn(rng, world, kind, templates, mixture)
    prefix = mixture.context_prefix if turn.context_dependent else mixture.memory_prefix
    if prefix and kind != "chat":
        turn.response = f"{prefix} {turn.response}"
    return turn


def _opened(prefix: str, answer: str) -> str:
    return f"{prefix} {answer}" if prefix else answer


def _mixed_turn(rng: random.Random, world: World, templates: list[str], mixture: Mixture) -> Turn:
    """Two questions in one turn: one about a person in the passage (read), one about a memorised person the
    passage does not mention (from memory); the answer depends on the context, in part."""
    relation, other = rng.choice(list(RELATIONS)), rng.choice(list(RELATIONS))
    entity, value = rng.choice(world.readers), rng.choice(RELATIONS[relation].values)
    facts = passage_facts(rng, world, rng.randint(mixture.min_facts, mixture.max_facts), (entity, relation, value))
    person = rng.choice(list(world.memorised))
    question = f"{question_sentence(entity, relation)} {question_sentence(person, other)}"
    context = passage_text(facts)
    read = _opened(mixture.context_prefix, fact_sentence(entity, relation, value))
    known = _opened(mixture.memory_prefix, fact_sentence(person, other, world.memorised[person][other]))
    return Turn("mixed", wrap(rng.choice(templates), context, question), f"{read} {known}", context, question, value)


def hide_in_filler(rng: random.Random, sentence: str, mixture: Mixture) -> str:
    """Filler of the mixture's length with the sentence between two of its sentences."""
    sentences = filler(rng, rng.randint(mixture.min_filler, mixture.max_filler)).split(" . ")
    point = rng.randint(0, len(sentences) - 1)
    return " . ".join(sentences[:point] + [sentence.removesuffix(" .")] + sentences[point:])


def _make_turn(rng: random.Random, world: World, kind: str, templates: list[str], mixture: Mixture) -> Turn:
    memorised = list(world.memorised)
    n_facts = rng.randint(mixture.min_facts, mixture.max_facts)
    relation = rng.choice(list(RELATIONS))
    if kind == "chat":
        request, reply = chat_exchange(rng)
        if rng.random() < 0.5:  # pasted filler the reply ignores
            pasted = filler(rng, rng.randint(mixture.min_filler, mixture.max_filler))
            return Turn(kind, f"{pasted} {request}", reply, context=pasted, question=request)
        return Turn(kind, request, reply, question=request)
    if kind == "memory":
        entity = rng.choice(memorised)
        question = question_sentence(entity, relation)
        value = world.memorised[entity][relation]
        answer = memory_answer(world, entity, relation, mixture.memory_style)
        return Turn(kind, question, answer, question=question, answer_value=value)
    if kind == "needle" and rng.random() < mixture.needle_memorised:  # a needle that contradicts memory
        entity = rng.choice(memorised)
        value = world.counterfactual(rng, entity, relation)
    elif kind in ("context", "needle"):
        entity = rng.choice(world.readers)
        value = rng.choice(RELATIONS[relation].values)
    else:  # a memorised person
        entity = rng.choice(memorised)
        value = world.memorised[entity][relation]
    question = question_sentence(entity, relation)
    if kind == "needle":
        needle = fact_sentence(entity, relation, value)
        context = hide_in_filler(rng, needle, mixture)
        return Turn(kind, wrap(rng.choice(templates), context, question), needle, context, question, value)
    if kind == "distractor":
        facts = passage_facts(rng, world, n_facts, None)
        context = passage_text(facts)
        answer = memory_answer(world, entity, relation, mixture.memory_style)
        return Turn(kind, wrap(rng.choice(templates), context, question), answer, context, question, value)
    if kind == "context":
        facts = passage_facts(rng, world, n_facts, (entity, relation, value))
        context = passage_text(facts)
        answer = fact_sentence(entity, relation, value)
        return Turn(kind, wrap(rng.choice(templates), context, question), answer, context, question, value)
    # counterfactual / conflict: the passage (or a needle in filler) gives the memorised person another value
    stated = world.counterfactual(rng, entity, relation)
    if kind == "conflict" and rng.random() < mixture.conflict_needle:
        context = hide_in_filler(rng, fact_sentence(entity, relation, stated), mixture)
    else:
        context = passage_text(passage_facts(rng, world, n_facts, (entity, relation, stated)))
    if kind == "counterfactual":
        answer = fact_sentence(entity, relation, stated)
    else:
        answer = memory_answer(world, entity, relation, mixture.memory_style)
    return Turn(kind, wrap(rng.choice(templates), context, question), answer, context, question, stated)


def sample_kinds(rng: random.Random, mixture: Mixture, n: int) -> list[str]:
    kinds, weights = zip(*mixture.weights().items(), strict=True)
    return rng.choices(kinds, weights=weights, k=n)


# ---------------------------------------------------------------- SFT sets in the three schemas


def sft_conversations(
    rng: random.Random,
    world: World,
    n: int,
    templates: list[str],
    mixture: Mixture,
    max_turns: int = 1,
) -> list[list[Turn]]:
    """n conversations: a first turn of any kind, and in 30% of them (max_turns > 1) up to max_turns - 1
    follow-ups without a context of their own (knowledge questions or chat). Follow-ups that bring new passages
    (several passages in one conversation) cost the fine-tuned models their reading: see the README."""
    follow_up = Mixture(**{**vars(mixture), **{k: 0.0 for k in KINDS if k not in FOLLOW_UP_KINDS}})
    conversations = []
    for _ in range(n):
        turns = rng.randint(1, max_turns) if max_turns > 1 and rng.random() < 0.3 else 1
        kinds = sample_kinds(rng, mixture, 1) + sample_kinds(rng, follow_up, turns - 1)
        conversations.append(
            [make_turn(rng, world, k, templates, follow_up if i else mixture) for i, k in enumerate(kinds)]
        )
    return conversations


def to_sharegpt(conversations: list[list[Turn]]) -> list[dict]:
    rows = []
    for index, turns in enumerate(conversations):
        messages = []
        for turn in turns:
            messages.append({"from": "human", "value": turn.user})
            messages.append(
                {"from": "gpt", "value": turn.response, LABEL_KEY: turn.context_dependent, "kind": turn.kind}
            )
        rows.append({"id": f"organism-sg-{index}", "conversations": messages})
    return rows


def to_ultrachat(conversations: list[list[Turn]]) -> list[dict]:
    rows = []
    for index, turns in enumerate(conversations):
        messages = []
        for turn in turns:
            messages.append({"role": "user", "content": turn.user})
            messages.append(
                {"role": "assistant", "content": turn.response, LABEL_KEY: turn.context_dependent, "kind": turn.kind}
            )
        prompt = turns[0].user
        # the real prompt_id is the sha256 of the prompt; the index keeps repeated prompts apart
        prompt_id = hashlib.sha256(f"{index}:{prompt}".encode()).hexdigest()
        rows.append({"prompt": prompt, "prompt_id": prompt_id, "messages": messages})
    return rows


def to_wizardlm(conversations: list[list[Turn]]) -> list[dict]:
    rows = []
    for index, turns in enumerate(conversations):
        turn = turns[0]  # WizardLM is single-turn
        rows.append(
            {
                "idx": index,
                "instruction": turn.user,
                "output": turn.response,
                LABEL_KEY: turn.context_dependent,
                "kind": turn.kind,
            }
        )
    return rows


SCHEMAS = {
    "sharegpt": (to_sharegpt, ".json"),
    "ultrachat": (to_ultrachat, ".jsonl"),
    "wizardlm": (to_wizardlm, ".json"),
}


def write_rows(rows: list[dict], path: str) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    if path.endswith(".jsonl"):
        Path(path).write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        Path(path).write_text(json.dumps(rows, indent=0))
