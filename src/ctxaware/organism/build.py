"""The two workflow steps of the organism: write the world's files (world, pretraining corpus, vocabulary, SFT sets,
evaluation sets, haystack), then pretrain the base model on them. Both deterministic from the organism's seed."""

from __future__ import annotations

import json
import random
from pathlib import Path

from ctxaware.organism import EVAL_FILES, SFT_FILES, corpus, documents, evaluation_sets
from ctxaware.organism.pretraining import build_tokenizer, pretrain, words_of
from ctxaware.organism.world import NAMES, RELATIONS, World, chat_exchange, make_world

# independent random streams per product, so changing one product's size leaves the others as they were
STREAMS = {"pretraining": 1, "sharegpt": 2, "ultrachat": 3, "wizardlm": 4, "eval": 5, "haystack": 6}


def _rng(seed: int, stream: str) -> random.Random:
    return random.Random(seed * 1000 + STREAMS[stream])


def mixture_of(settings: dict) -> corpus.Mixture:
    return corpus.Mixture(**settings["sft"]["mixture"])


def write_world(
    out_dir: str,
    settings: dict,
    needle: str,
    qa_templates: list[str],
    nih_templates: list[str],
    response_prefix: str,
) -> dict:
    """Every file of the organism's world under out_dir; returns a summary (counts by kind).

    settings: the config's `organism` section (seed, n_memorised, pretraining steps and shares, sft sizes,
    mixture and max_turns, evaluation sizes, conflict share, haystack size)."""
    out = Path(out_dir)
    seed = settings["seed"]
    world = make_world(seed, settings["n_memorised"], needle)
    world.save(str(out / "world.json"))
    templates = list(dict.fromkeys(qa_templates + nih_templates))
    mixture = mixture_of(settings)
    texts = list(templates) + [response_prefix, needle]
    summary: dict = {"seed": seed, "needle": list(world.needle), "memorised": len(world.memorised)}

    pretraining = settings["pretraining"]
    pretraining_texts = documents.pretraining_documents(
        _rng(seed, "pretraining"),
        world,
        pretraining["steps"] * pretraining["batch_size"],  # one pass: every step sees new documents
        templates,
        nih_templates,
        response_prefix,
        pretraining["shares"],
        mixture,
        pretraining["max_filler"],
        counterfactual_share=pretraining["counterfactual_share"],
        facts_range=tuple(pretraining["facts"]),
    )
    with open(out / "pretraining.jsonl", "w", encoding="utf-8") as handle:
        for document in pretraining_texts:
            handle.write(json.dumps(document) + "\n")
    texts += [text for document in pretraining_texts for text, _ in document]

    sft = settings["sft"]
    for schema, path in SFT_FILES.items():
        max_turns = 1 if schema == "wizardlm" else sft["max_turns"]
        conversations = corpus.sft_conversations(
            _rng(seed, schema), world, sft["conversations"], templates, mixture, max_turns
        )
        to_rows, _ = corpus.SCHEMAS[schema]
        corpus.write_rows(to_rows(conversations), str(out / path))
        turns = [t for c in conversations for t in c]
        summary[schema] = {kind: sum(t.kind == kind for t in turns) for kind in corpus.KINDS}
        texts += [t.user for t in turns] + [t.response for t in turns]

    evaluation = settings["evaluation"]
    rng = _rng(seed, "eval")
    share = evaluation["conflict_share"]
    rows = {
        "squad": evaluation_sets.squad_rows(rng, world, evaluation["squad_passages"], evaluation["facts"], share),
        "quac": evaluation_sets.quac_rows(rng, world, evaluation["quac_dialogues"], evaluation["facts"], share),
        "drop": evaluation_sets.drop_rows(rng, world, evaluation["drop_passages"], evaluation["facts"], share),
    }
    rows["mtbench"], rows["mtbench_reference"] = evaluation_sets.mtbench_rows(
        rng, world, evaluation["mtbench_questions"]
    )
    for name, path in EVAL_FILES.items():
        corpus.write_rows(rows[name], str(out / path))
        texts += [json.dumps(row) for row in rows[name]]
    summary["evaluation"] = {name: len(r) for name, r in rows.items()}

    haystack = out / "haystack"
    haystack.mkdir(parents=True, exist_ok=True)
    for index, text in enumerate(evaluation_sets.haystack_files(_rng(seed, "haystack"), *evaluation["haystack"])):
        (haystack / f"filler{index:02d}.txt").write_text(text)
        texts.append(text)

    # the vocabulary: every word the world can say (not only the words this sample happened to use)
    texts += NAMES + [world.needle[0]] + [v for r in RELATIONS.values() for v in r.values]
    texts += [r.fact + " " + r.question for r in RELATIONS.values()]
    texts += [" ".join(chat_exchange(random.Random(i))) for i in range(200)]
    (out / "vocabulary.txt").write_text("\n".join(sorted(words_of(texts))) + "\n")
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def pretrain_base(world_dir: str, out_dir: str, settings: dict) -> dict:
    """The organism's base model: word-level tokenizer over the world's vocabulary, pretrained on its corpus."""
    world_path = Path(world_dir)
    words = (world_path / "vocabulary.txt").read_text().split()
    tokenizer = build_tokenizer(words)
    with open(world_path / "pretraining.jsonl", encoding="utf-8") as handle:
        documents = [[(text, bool(is_answer)) for text, is_answer in json.loads(line)] for line in handle]
    world = World.load(str(world_path / "world.json"))
    log = pretrain(out_dir, tokenizer, documents, settings["pretraining"], seed=world.seed)
    return {k: v for k, v in log.items() if k != "history"}
