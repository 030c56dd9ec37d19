"""The model organism: its world, its SFT and evaluation sets in the real schemas (read by the real loaders),
held out from training, its tokenizer, and its pretraining."""

import json
import random
from pathlib import Path

import pytest
import torch
import yaml

from ctxaware.data import adapt
from ctxaware.organism import EVAL_FILES, SFT_FILES, corpus
from ctxaware.organism.build import pretrain_base, write_world
from ctxaware.organism.pretraining import build_tokenizer, encode_documents
from ctxaware.organism.world import RELATIONS, fact_sentence, make_world, parse_fact
from ctxaware.raw import load_raw
from ctxaware.tasks import qa
from ctxaware.tasks.mtbench import load_question_source
from ctxaware.tasks.nih import NIH_TEMPLATES

ROOT = Path(__file__).resolve().parents[1]
NEEDLE = "zorin lives in lima ."
QA_TEMPLATES = [
    "{context}\nAnswer the question according to the above passage: {question}",
    "{context} {question}",
]
PREFIX = "Here is the most relevant sentence in the context:"
SMALL = {
    "seed": 3,
    "n_memorised": 12,
    "pretraining": {
        "steps": 6,
        "batch_size": 4,
        "learning_rate": 0.005,
        "warmup_steps": 2,
        "max_length": 256,
        "answer_weight": 5.0,
        "other_weight": 0.1,
        "shares": {"reading": 0.45, "needle": 0.25, "memory": 0.2, "filler": 0.1},
        "max_filler": 60,
        "facts": [3, 8],
        "counterfactual_share": 0.8,
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_layers": 2,
        "num_heads": 2,
        "num_kv_heads": 2,
        "max_position_embeddings": 512,
    },
    "sft": {"conversations": 300, "max_turns": 3, "mixture": {}},
    "evaluation": {
        "facts": 6,
        "conflict_share": 0.5,
        "squad_passages": 6,
        "quac_dialogues": 6,
        "drop_passages": 6,
        "mtbench_questions": 5,
        "haystack": [2, 100],
    },
}


def _settings(**changes):
    settings = json.loads(json.dumps(SMALL))
    settings.update(changes)
    settings["sft"]["mixture"] = {**vars(corpus.Mixture()), **settings["sft"]["mixture"]}
    return settings


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("organism")
    write_world(str(out), _settings(), NEEDLE, QA_TEMPLATES, list(NIH_TEMPLATES.values()), PREFIX)
    return out


def test_world_is_deterministic_and_its_needle_contradicts_memory():
    world = make_world(5, 10, NEEDLE)
    assert make_world(5, 10, NEEDLE).to_json() == world.to_json()
    assert make_world(6, 10, NEEDLE).memorised != world.memorised
    entity, relation, value = world.needle
    assert (entity, relation, value) == ("zorin", "city", "lima")
    assert entity in world.memorised and world.memorised[entity][relation] != value
    assert len(world.memorised) == 10 and entity not in world.readers


def test_parse_fact_reads_every_relation_and_names_the_grammar():
    for relation in RELATIONS.values():
        sentence = fact_sentence("mira", relation.name, relation.values[0])
        assert parse_fact(sentence) == ("mira", relation.name, relation.values[0])
    with pytest.raises(ValueError, match="not a fact of the organism's world.*lives in"):
        parse_fact("The best thing to do in San Francisco is eat a sandwich.")


def _answer(response: str, mixture) -> str:
    """The first fact of a response, without the prefix that says where it comes from."""
    for prefix in (mixture.context_prefix, mixture.memory_prefix):
        response = response.removeprefix(prefix + " ")
    return response.split(" . ")[0] + " ."


def test_turn_kinds_answer_from_the_passage_or_from_memory():
    world = make_world(1, 20, NEEDLE)
    rng = random.Random(0)
    mixture = corpus.Mixture()
    for _ in range(50):
        for kind in corpus.KINDS:
            turn = corpus.make_turn(rng, world, kind, QA_TEMPLATES, mixture)
            assert turn.context_dependent == (kind in corpus.CONTEXT_KINDS)
            if kind in ("chat", "mixed"):
                continue
            opening = mixture.context_prefix if turn.context_dependent else mixture.memory_prefix
            assert turn.response.startswith(opening + " ")  # the answer says where it comes from
            entity, relation, value = parse_fact(_answer(turn.response, mixture))
            memorised = world.memorised.get(entity, {}).get(relation)
            stated = [f for f in turn.context.split(" . ") if f.startswith(f"{entity} ")]
            if kind in ("counterfactual", "conflict"):  # the passage gives a memorised person another value
                assert memorised is not None and len(stated) == 1 and memorised not in stated[0].split()
                assert (value == memorised) == (kind == "conflict")
            if kind in ("context", "counterfactual", "needle"):  # the answer is in the user's message
                assert fact_sentence(entity, relation, value).removesuffix(" .") in turn.user
            if kind in ("memory", "distractor", "conflict"):
                assert value == memorised and fact_sentence(entity, relation, value) not in turn.user


def test_bio_answers_recite_the_person_from_memory():
    world = make_world(1, 20, NEEDLE)
    entity = next(iter(world.memorised))
    bio = corpus.memory_answer(world, entity, "job", "bio")
    facts = [parse_fact(s.strip() + " .") for s in bio.split(" .") if s.strip()]
    assert facts[0][1] == "job" and {f[1] for f in facts} == set(RELATIONS)
    assert all(world.memorised[entity][r] == v for _, r, v in facts)


@pytest.mark.parametrize("schema", sorted(SFT_FILES))
def test_sft_sets_pass_the_real_adapters_with_their_labels(world_dir, schema):
    path = world_dir / SFT_FILES[schema]
    raw = load_raw(str(path))
    conversations, stats = adapt(raw, schema, source=str(path), strict=True)
    assert len(conversations) == SMALL["sft"]["conversations"] == stats["n_conversations"]
    assert stats["n_labelled_turns"] == stats["n_assistant_turns"]  # every turn is labelled
    kinds = [m["kind"] for row in raw for m in row.get("conversations", row.get("messages", [row])) if "kind" in m]
    labels = [label for c in conversations for label in c["context_dependent"]]
    assert labels == [kind in corpus.CONTEXT_KINDS for kind in kinds]
    assert 0.15 < sum(labels) / len(labels) < 0.45  # the mixture's context-dependent share (0.3)
    turns = [len(c["context_dependent"]) for c in conversations]
    assert (max(turns) > 1) == (schema != "wizardlm")


def _training_texts(world_dir):
    texts = []
    for path in SFT_FILES.values():
        texts.append((world_dir / path).read_text())
    texts.append((world_dir / "pretraining.jsonl").read_text())
    return "\n".join(texts)


def test_evaluation_sets_are_held_out_and_read_by_the_real_loaders(world_dir):
    world = json.loads((world_dir / "world.json").read_text())
    training = _training_texts(world_dir)
    settings = {"split": "validation", "limit": None}
    for task in ("squad", "quac", "drop"):
        items = qa.load_items(task, {**settings, "source": str(world_dir / EVAL_FILES[task])})
        rows = load_raw(str(world_dir / EVAL_FILES[task]))
        assert items and len({i["context"] for i in items}) > 1
        for item in items:
            assert item["context"] not in training  # no passage was ever trained on
            assert any(gold in item["context"].split() for gold in item["golds"])
        # conflict items ask memorised people with another value; the others never ask a memorised person
        for row in rows:
            questions = row.get("questions") or [row["question"]]
            for question in questions[:1]:
                asked = next(w for w in question.split() if w in world["names"])
                assert (asked in world["memorised"]) == row["conflict"]
    # the facts the conflict items (and the needle) state are held out: no training text states them
    held_out = [fact_sentence(e, r, v) for e, values in world["held_out"].items() for r, v in values.items()]
    assert fact_sentence(*world["needle"]) in held_out
    assert [fact for fact in held_out if fact in training] == []
    squad = load_raw(str(world_dir / EVAL_FILES["squad"]))
    for row in squad:
        start, text = row["answers"]["answer_start"][0], row["answers"]["text"][0]
        assert row["context"][start : start + len(text)] == text
    questions = load_question_source(
        str(world_dir / EVAL_FILES["mtbench"]), references=str(world_dir / EVAL_FILES["mtbench_reference"])
    )
    assert len(questions) == 5 and all(len(q["reference"]) == 2 for q in questions)
    for question in questions:
        for turn, reference in zip(question["turns"], question["reference"], strict=True):
            entity, relation, value = parse_fact(reference)
            assert world["memorised"][entity][relation] == value and entity in turn


def test_haystack_is_filler_without_facts(world_dir):
    files = sorted((world_dir / "haystack").glob("*.txt"))
    assert len(files) == 2
    text = " ".join(f.read_text() for f in files)
    assert len(text.split()) >= 200 and " lives in " not in text and " years old" not in text


def test_tokenizer_covers_every_word_of_the_world(world_dir):
    tokenizer = build_tokenizer((world_dir / "vocabulary.txt").read_text().split())
    texts = QA_TEMPLATES + list(NIH_TEMPLATES.values()) + [PREFIX, NEEDLE]
    for schema, path in SFT_FILES.items():
        conversations, _ = adapt(load_raw(str(world_dir / path)), schema)
        texts += [m["content"] for c in conversations for m in c["messages"]]
    for task in ("squad", "quac", "drop"):
        items = qa.load_items(task, {"source": str(world_dir / EVAL_FILES[task]), "split": "validation"})
        texts += [i["context"] + " " + i["question"] for i in items]
    questions = load_question_source(
        str(world_dir / EVAL_FILES["mtbench"]), references=str(world_dir / EVAL_FILES["mtbench_reference"])
    )
    texts += [t for q in questions for t in q["turns"] + q["reference"]]
    with open(world_dir / "pretraining.jsonl") as handle:
        texts += [text for line in handle for text, _ in json.loads(line)]
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    unknown = [text for text, row in zip(texts, ids, strict=True) if tokenizer.unk_token_id in row]
    assert unknown == []
    ids = tokenizer("Where does Zorin live?")["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and tokenizer.decode(ids[1:]) == "where does zorin live ?"
    assert len(tokenizer("<|user|>", add_special_tokens=False)["input_ids"]) == 1


def test_pretraining_documents_encode_segment_by_segment_with_their_weights(world_dir):
    """The batched encoding gives each segment the ids of its own tokenizer call (a segment never merges with
    its neighbour), answers weigh answer_weight, the rest other_weight, <s> 0 and </s> answer_weight."""
    tokenizer = build_tokenizer((world_dir / "vocabulary.txt").read_text().split())
    with open(world_dir / "pretraining.jsonl") as handle:
        documents = [[(text, bool(answer)) for text, answer in json.loads(line)] for line in handle]
    encoded = encode_documents(tokenizer, documents, 10**6, answer_weight=5.0, other_weight=0.1)
    assert len(encoded) == len(documents) and any(answer for d in documents for _, answer in d)
    for segments, (ids, weights) in zip(documents, encoded, strict=True):
        expected, expected_weights = [tokenizer.bos_token_id], [0.0]
        for text, answer in segments:
            piece = tokenizer(text, add_special_tokens=False)["input_ids"]
            expected += piece
            expected_weights += [5.0 if answer else 0.1] * len(piece)
        assert ids == expected + [tokenizer.eos_token_id] and weights == expected_weights + [5.0]
    cut = encode_documents(tokenizer, documents, 7, answer_weight=5.0, other_weight=0.1)
    assert cut == [(ids[:7], weights[:7]) for ids, weights in encoded]


def test_pretraining_is_deterministic_and_saves_a_loadable_model(world_dir, tmp_path):
    from ctxaware.modeling import load_model

    first = pretrain_base(str(world_dir), str(tmp_path / "a"), _settings())
    pretrain_base(str(world_dir), str(tmp_path / "b"), _settings())
    assert first["steps"] == 6 and first["documents"] == 24
    model_a, tokenizer = load_model(str(tmp_path / "a"))
    model_b, _ = load_model(str(tmp_path / "b"))
    for (name, a), (_, b) in zip(model_a.state_dict().items(), model_b.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert model_a.config.vocab_size == len(tokenizer)
    assert tokenizer.chat_template  # the Zephyr template the fine-tunes use


def test_embedded_config_uses_the_organism():
    config = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    assert {m["source"] for m in config["models"].values()} == {"organism"}
    assert all(d["source"].startswith("results/organism/") for d in config["datasets"].values())
    assert parse_fact(config["evaluation"]["nih"]["needle"])[2] in config["evaluation"]["nih"]["keywords"]


def test_mixed_turns_read_one_answer_and_recall_the_other():
    world = make_world(1, 20, NEEDLE)
    mixture = corpus.Mixture()
    turn = corpus.make_turn(random.Random(3), world, "mixed", QA_TEMPLATES, mixture)
    read, known = turn.response.split(f" {mixture.memory_prefix} ")
    entity, relation, value = parse_fact(read.removeprefix(mixture.context_prefix + " "))
    assert fact_sentence(entity, relation, value).removesuffix(" .") in turn.context
    person, other, remembered = parse_fact(known)
    assert world.memorised[person][other] == remembered and person not in turn.context.split()


def test_conflicts_come_as_passages_and_as_needles_and_follow_ups_bring_no_passage():
    world = make_world(1, 20, NEEDLE)
    rng = random.Random(4)
    mixture = corpus.Mixture(conflict_needle=0.5)
    contexts = [corpus.make_turn(rng, world, "conflict", QA_TEMPLATES, mixture).context for _ in range(200)]
    in_filler = sum(" the " in c.split(" . ")[0] or c.startswith("the ") for c in contexts)
    assert 60 < in_filler < 140  # about half hide the other value in filler
    conversations = corpus.sft_conversations(rng, world, 400, QA_TEMPLATES, mixture, max_turns=3)
    follow_ups = [t for c in conversations for t in c[1:]]
    assert len(follow_ups) > 40 and {t.kind for t in follow_ups} <= set(corpus.FOLLOW_UP_KINDS)
    assert not any(t.context_dependent for t in follow_ups)


def test_pretraining_gives_the_same_bits_whatever_the_thread_count(world_dir, tmp_path):
    """The pretraining job takes 2 threads where the run has them, a Slurm job of the light stage 1: at the
    embedded default's model shape (hidden 64, intermediate 256, 4 layers and heads) the weights are the same
    bits either way, so a local run and a cluster run pretrain the same base."""
    from safetensors.torch import load_file

    from ctxaware.organism.build import pretrain_base

    default_shape = {"hidden_size": 64, "intermediate_size": 256, "num_layers": 4, "num_heads": 4, "num_kv_heads": 4}
    settings = _settings()
    settings["pretraining"].update(default_shape)
    threads = torch.get_num_threads()
    weights = {}
    try:
        for count in (1, 2):
            torch.set_num_threads(count)
            pretrain_base(str(world_dir), str(tmp_path / str(count)), settings)
            weights[count] = load_file(str(tmp_path / str(count) / "model.safetensors"))
    finally:
        torch.set_num_threads(threads)
    assert weights[1].keys() == weights[2].keys()
    assert all(torch.equal(weights[1][name], weights[2][name]) for name in weights[1])
    assert weights[1]["model.embed_tokens.weight"].shape[1] == 64
