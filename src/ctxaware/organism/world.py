"""The organism's world: people with four attributes each, some of them memorised (the model's parametric
knowledge), and the sentences that state, ask about and surround those facts.

Every sentence is lower-case words and punctuation separated by spaces, so a word-level tokenizer covers the
world exactly. Everything is deterministic from the world's seed.
"""

from __future__ import annotations

import itertools
import json
import random
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path


@dataclass(frozen=True)
class Relation:
    name: str
    fact: str  # the statement, with {entity} and {value}
    question: str  # the question whose answer is the statement, with {entity}
    values: tuple[str, ...]


CITIES = (
    "oslo lima paris cairo delhi tokyo quito rome dakar hanoi kyiv riga porto malmo bern leeds cork perth "
    "tunis accra osaka busan seville turin lyon gdansk brno split sofia minsk tbilisi baku doha muscat "
    "nairobi lagos durban natal recife cusco"
).split()
JOBS = (
    "baker pilot nurse farmer tailor miner sailor potter weaver judge singer dancer painter teacher doctor "
    "lawyer plumber builder gardener fisher butcher brewer cook driver clerk banker poet actor barber guard "
    "carpenter mason glazier roofer jeweller chemist surgeon ranger keeper printer"
).split()
FOODS = (
    "rice plums bread cheese apples pears figs dates olives lentils beans noodles soup honey eggs fish "
    "grapes melons cherries peaches nuts carrots onions leeks beets corn oats barley yams kale peas "
    "mangoes lemons limes berries dumplings pancakes waffles porridge"
).split()
AGES = [str(n) for n in range(20, 80)]

RELATIONS = {
    r.name: r
    for r in (
        Relation("city", "{entity} lives in {value} .", "where does {entity} live ?", tuple(CITIES)),
        Relation("job", "{entity} works as a {value} .", "what is the job of {entity} ?", tuple(JOBS)),
        Relation("food", "{entity} likes to eat {value} .", "what does {entity} like to eat ?", tuple(FOODS)),
        Relation("age", "{entity} is {value} years old .", "how old is {entity} ?", tuple(AGES)),
    )
}

# Filler: plain sentences that never state a fact about a person (the haystack, chit-chat, pasted text).
_ADJECTIVES = (
    "old quiet small bright cold warm green grey long dark soft loud slow wide calm busy empty silent golden narrow"
).split()
_NOUNS = (
    "river hill road garden market bridge harbour forest window lamp tower field boat valley station wall "
    "meadow village cloud storm"
).split()
_VERBS = "runs stands rests waits shines turns bends sleeps grows glows".split()
_PLACES = "near behind under beside above beyond".split()
_TIMES = "at dawn|in the evening|after the rain|in winter|all day|at night|in spring|before noon".split("|")
CHAT_TOPICS = _NOUNS
CHAT_REQUESTS = (
    "write a short story about the {topic} .",
    "tell me something nice about the {topic} .",
    "describe the {topic} in a few sentences .",
    "write a little poem about the {topic} .",
)


def _syllable_names() -> list[str]:
    """A fixed pool of made-up one-word names (the same for every seed, so the vocabulary is too)."""
    onsets = "b d f g h k l m n p r s t v z".split()
    vowels = "a e i o u".split()
    codas = ["", "n", "r", "l", "s"]
    syllables = [o + v for o in onsets for v in vowels]
    rng = random.Random(20240101)
    names = sorted({a + b + c for a, b in itertools.product(syllables, syllables) for c in codas})
    rng.shuffle(names)
    taken = set(CITIES) | set(JOBS) | set(FOODS)
    return [n for n in names if n not in taken][:400]


NAMES = _syllable_names()


def fact_sentence(entity: str, relation: str, value: str) -> str:
    return RELATIONS[relation].fact.format(entity=entity, value=value)


def question_sentence(entity: str, relation: str) -> str:
    return RELATIONS[relation].question.format(entity=entity)


def parse_fact(sentence: str) -> tuple[str, str, str]:
    """(entity, relation, value) of a world statement such as `mira lives in oslo .`; ValueError otherwise."""
    words = " ".join(sentence.lower().replace(".", " ").split()) + " ."
    for relation in RELATIONS.values():
        prefix, suffix = relation.fact.split("{entity}")[1].split("{value}")
        head, sep, rest = words.partition(prefix)
        if sep and rest.endswith(suffix.strip()) and " " not in head:
            value = rest[: len(rest) - len(suffix.strip())].strip()
            if value in relation.values and head:
                return head, relation.name, value
    raise ValueError(
        f"{sentence!r} is not a fact of the organism's world; write one of: "
        + "; ".join(r.fact.format(entity="<name>", value=f"<{r.name}>") for r in RELATIONS.values())
    )


def filler_sentence(rng: random.Random) -> str:
    adjective, noun, verb = rng.choice(_ADJECTIVES), rng.choice(_NOUNS), rng.choice(_VERBS)
    place, other, time = rng.choice(_PLACES), rng.choice(_NOUNS), rng.choice(_TIMES)
    return f"the {adjective} {noun} {verb} {place} the {other} {time} ."


def filler(rng: random.Random, n_words: int) -> str:
    """Filler sentences with about n_words words (whole sentences)."""
    sentences, words = [], 0
    while words < n_words:
        sentence = filler_sentence(rng)
        sentences.append(sentence)
        words += len(sentence.split())
    return " ".join(sentences)


def chat_exchange(rng: random.Random) -> tuple[str, str]:
    """A request with no factual answer and a free-text reply about its topic (context-free chit-chat)."""
    topic = rng.choice(CHAT_TOPICS)
    request = rng.choice(CHAT_REQUESTS).format(topic=topic)
    sentences = [f"the {rng.choice(_ADJECTIVES)} {topic} {rng.choice(_VERBS)} {rng.choice(_TIMES)} ."]
    sentences += [filler_sentence(rng) for _ in range(rng.randint(1, 3))]
    return request, "here it is : " + " ".join(sentences)


@dataclass
class World:
    """Entities with their facts. `memorised` entities have fixed facts the model learns in pretraining; every
    other name gets random facts wherever it appears (reading, not knowledge). The needle is a memorised
    entity's fact stated with another value: reading it back means following the context over memory."""

    seed: int
    memorised: dict[str, dict[str, str]]
    needle: tuple[str, str, str]  # (entity, relation, value in the needle)
    # per memorised person and relation, the other value evaluation passages state (never stated in training)
    held_out: dict[str, dict[str, str]]
    names: list[str] = field(default_factory=lambda: list(NAMES))

    @cached_property  # asked for every passage of the corpus (its names and memorised people never change)
    def readers(self) -> list[str]:
        """Names that are not memorised: facts about them only ever come from a passage."""
        return [n for n in self.names if n not in self.memorised]

    def counterfactual(self, rng: random.Random, entity: str, relation: str) -> str:
        """A value for a memorised person's relation that is neither the memorised one nor the held-out one."""
        taken = {self.memorised[entity][relation], self.held_out[entity][relation]}
        return rng.choice([v for v in RELATIONS[relation].values if v not in taken])

    def to_json(self) -> dict:
        return {
            "seed": self.seed,
            "memorised": self.memorised,
            "needle": list(self.needle),
            "held_out": self.held_out,
            "names": self.names,
        }

    @classmethod
    def from_json(cls, data: dict) -> World:
        return cls(data["seed"], data["memorised"], tuple(data["needle"]), data["held_out"], data["names"])

    def save(self, path: str) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=1))

    @classmethod
    def load(cls, path: str) -> World:
        return cls.from_json(json.loads(Path(path).read_text()))


def make_world(seed: int, n_memorised: int, needle: str) -> World:
    """The world of `seed`: n_memorised entities with fixed facts, one of them the needle's entity, whose
    memorised value of the needle's relation differs from the needle's (a knowledge conflict). Evaluation passages
    state held-out values (the needle's among them) that no training text states."""
    entity, relation, value = parse_fact(needle)
    rng = random.Random(seed)
    names = [n for n in NAMES if n != entity]
    if entity not in NAMES:
        names.append(entity)
    chosen = rng.sample(names, n_memorised - 1)
    memorised = {}
    for name in [entity, *chosen]:
        memorised[name] = {r.name: rng.choice(r.values) for r in RELATIONS.values()}
    while memorised[entity][relation] == value:
        memorised[entity][relation] = rng.choice(RELATIONS[relation].values)
    held_out = {
        name: {r: rng.choice([v for v in RELATIONS[r].values if v != facts[r]]) for r in RELATIONS}
        for name, facts in memorised.items()
    }
    held_out[entity][relation] = value  # the needle is an evaluation item
    return World(seed, memorised, (entity, relation, value), held_out, sorted(set(NAMES) | {entity}))
