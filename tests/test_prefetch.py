"""`python -m ctxaware.prefetch` against a stand-in of the Hugging Face hub on loopback (tests/loopback.py), and the
project's own loaders reading what it fetched with HF_HUB_OFFLINE=1 and the stand-in stopped."""

import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from loopback import HubServer
from smk_helpers import configured_plan

from ctxaware.plan import Plan
from ctxaware.prefetch import hub_repos, load_config, unread_model_files

ROOT = Path(__file__).resolve().parents[1]
MODEL, QA, CHATS = "org/tiny-llama", "org/qa", "org/chats"
DATA_FILES = {"validation": "plain_text/validation-*.parquet"}


def parquet(rows: list[dict]) -> bytes:
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), sink)
    return sink.getvalue()


def squad_row(answer: str) -> dict:
    return {"id": answer, "context": f"It is {answer}.", "question": "What?", "answers": {"text": [answer]}}


def chat_row(index: int) -> dict:
    return {"id": f"c{index}", "conversations": [{"from": "human", "value": "Hi?"}, {"from": "gpt", "value": "Hello."}]}


@pytest.fixture
def hub(tiny_model_dir):
    """A model repository (a tiny Llama, with a pickled copy of its weights and Meta-style original/ files that
    transformers never reads), a QA dataset with two revisions of parquet files, and a chat dataset."""
    model_files = {path.name: path.read_bytes() for path in Path(tiny_model_dir).iterdir() if path.is_file()}
    model_files |= {"pytorch_model.bin": b"pickled copy", "original/consolidated.00.pth": b"meta checkpoint"}
    server = HubServer(
        {
            ("model", MODEL): {"main": model_files},
            ("dataset", QA): {
                "main": {"plain_text/validation-00000.parquet": parquet([squad_row("old")])},
                "v2": {
                    "plain_text/validation-00000.parquet": parquet([squad_row("Paris"), squad_row("Rome")]),
                    "plain_text/train-00000.parquet": parquet([squad_row("train")]),
                    "qa.py": b"# a loading script datasets no longer runs",
                },
            },
            ("dataset", CHATS): {"main": {"data/train-00000-of-00001.parquet": parquet([chat_row(0), chat_row(1)])}},
        }
    )
    yield server
    server.close()


def write_config(path: Path, model: str = MODEL) -> Path:
    config = {
        "datasets": {"chats": {"source": CHATS, "format": "sharegpt"}},
        "models": {"tiny": {"source": model, "recipe": "small"}},
        "recipes": {"small": {"finetuning": "full"}},
        "methods": ["vanilla"],
        "scoring": {"seed_model": {"name": "tiny", "path": model}, "layer": 1},
        "evaluation": {"tasks": ["squad"], "squad": {"source": QA, "revision": "v2", "data_files": DATA_FILES}},
    }
    path.write_text(yaml.safe_dump(config))
    return path


def run(code_or_args: list[str], hf_home: Path, endpoint: str, offline: bool = False) -> subprocess.CompletedProcess:
    """A fresh interpreter: huggingface_hub reads HF_ENDPOINT, HF_HOME and HF_HUB_OFFLINE once, at import."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("HF_", "HUGGINGFACE"))}
    env |= {"HF_HOME": str(hf_home), "HF_ENDPOINT": endpoint, "HF_HUB_DISABLE_TELEMETRY": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests"), env.get("PYTHONPATH", "")])
    if offline:
        env |= {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, *code_or_args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )


OFFLINE_LOADS = textwrap.dedent(
    f"""
    import json, sys
    from ctxaware.data import prepare
    from ctxaware.modeling import load_model
    from ctxaware.tasks import qa

    model, tokenizer = load_model({MODEL!r}, device="cpu")
    items = qa.load_items("squad", {{"source": {QA!r}, "revision": "v2", "data_files": {DATA_FILES!r}}})
    stats = prepare({CHATS!r}, "sharegpt", sys.argv[1] + "/chats.parquet", sys.argv[1] + "/chats.json")
    print(json.dumps({{
        "layers": model.config.num_hidden_layers,
        "tokens": len(tokenizer("Paris is in France.")["input_ids"]),
        "golds": [item["golds"] for item in items],
        "conversations": stats["n_conversations"],
    }}))
    """
)


def test_prefetched_sources_load_offline_with_the_stand_in_stopped(hub, tmp_path):
    hf_home, config = tmp_path / "hf", write_config(tmp_path / "config.yaml")
    dry = run(["-m", "ctxaware.prefetch", "--configfile", str(config), "--dry-run"], hf_home, hub.url)
    assert dry.returncode == 0, dry.stderr
    assert "models.tiny.source, scoring.seed_model.path: model org/tiny-llama @ main" in dry.stdout
    assert (
        "would fetch" in dry.stdout
        and not hub.downloads
        and not (hf_home / "hub" / "models--org--tiny-llama" / "blobs").exists()
    )

    fetched = run(["-m", "ctxaware.prefetch", "--configfile", str(config)], hf_home, hub.url)
    assert fetched.returncode == 0, fetched.stderr
    out = fetched.stdout
    assert "evaluation.squad.source: dataset org/qa @ v2, files ['plain_text/validation-*.parquet']" in out
    assert "datasets.chats.source: dataset org/chats @ main" in out and "3 of 3 hub repositories" in out
    downloaded = {path for repo, path in hub.downloads}
    # only the split's data_files of the QA set, at its revision; no model file that loading never reads
    assert {path for repo, path in hub.downloads if repo == QA} == {"plain_text/validation-00000.parquet"}
    assert not downloaded & {"pytorch_model.bin", "original/consolidated.00.pth", "qa.py"}
    assert "model.safetensors" in downloaded
    hub.close()  # from here on nothing answers at HF_ENDPOINT

    loaded = run(["-c", OFFLINE_LOADS, str(tmp_path)], hf_home, hub.url, offline=True)
    assert loaded.returncode == 0, loaded.stderr[-4000:]
    result = json.loads(loaded.stdout.strip().splitlines()[-1])
    assert result["layers"] == 3 and result["tokens"] > 0
    assert result["golds"] == [["Paris"], ["Rome"]]  # revision v2's file, not main's
    assert result["conversations"] == 2


def test_an_unknown_repository_fails_naming_its_config_key(hub, tmp_path):
    config = write_config(tmp_path / "config.yaml", model="org/no-such-model")
    result = run(["-m", "ctxaware.prefetch", "--configfile", str(config)], tmp_path / "hf", hub.url)
    assert result.returncode == 1
    assert (
        "config key models.tiny.source, scoring.seed_model.path: cannot fetch model org/no-such-model" in result.stderr
    )
    assert "RepositoryNotFoundError" in result.stderr
    assert "2 of 3 hub repositories" in result.stdout  # the other sources are fetched all the same


def test_the_paper_config_fetches_each_hub_source_once_by_its_keys():
    repos = {repo.repo_id: repo for repo in hub_repos(configured_plan(ROOT / "config/paper.yaml"))}
    assert repos["meta-llama/Llama-2-7b-hf"].keys == ("models.llama2-7b.source", "diagnosis.pairs.llama2-7b.base")
    assert repos["google/gemma-2-27b-it"].keys == ("diagnosis.pairs.gemma2-27b.instruct",)
    quac = repos["allenai/quac"]
    assert (quac.repo_type, quac.revision) == ("dataset", "f0afadd97c1b0234ed5dc589b2259b9c2efa1743")
    assert quac.allow_patterns == ("plain_text/validation-*.parquet",)
    assert repos["HuggingFaceH4/ultrachat_200k"].keys == ("datasets.ultrachat.source",)
    assert repos["EleutherAI/drop"].allow_patterns is None
    # package: files and the openai judge's model name are no hub sources
    assert not any(
        key.startswith(("evaluation.mtbench", "evaluation.nih")) for repo in repos.values() for key in repo.keys
    )
    assert hub_repos(configured_plan(ROOT / "config/config.yaml")) == []  # the embedded default reads no hub


def test_model_files_that_loading_never_reads_are_skipped():
    with_safetensors = unread_model_files(["config.json", "model.safetensors", "pytorch_model.bin"])
    assert "*.bin" in with_safetensors and "*/*" in with_safetensors
    assert "*.bin" not in unread_model_files(["config.json", "pytorch_model.bin"])  # the only weights: kept


def test_offline_a_hub_dataset_never_fetched_names_its_key_and_make_prefetch(tmp_path):
    code = "from ctxaware.tasks import qa; qa.load_items('squad', {'source': 'org/never-fetched', 'revision': 'v2'})"
    result = run(["-c", code], tmp_path / "hf", "http://127.0.0.1:9", offline=True)
    assert result.returncode != 0
    assert (
        "config key evaluation.squad.source: org/never-fetched (revision v2) is not in the local hub cache"
        in result.stderr
    )
    assert "make prefetch" in result.stderr


def test_the_quirk_ablation_prefetches_its_corrected_dataset_too():
    """config/paper-ablation.yaml over config/paper.yaml: the corrected WizardLM source is a hub repository of its
    own, named by its ablation entry's key; a corrected ShareGPT (the filter) reads the published repository."""
    plan = Plan(load_config([str(ROOT / "config/paper.yaml"), str(ROOT / "config/paper-ablation.yaml")]))
    repos = {repo.repo_id: repo for repo in hub_repos(plan)}
    assert repos["WizardLMTeam/WizardLM_evol_instruct_70k"].keys == ("datasets.wizardlm+wizardlm-official.source",)
    assert repos["ucla-cmllab/vicuna_cleaned"].keys == (
        "datasets.sharegpt.source",
        "datasets.sharegpt+sharegpt-refusal-filter.source",
    )
    assert len(repos) == len(hub_repos(configured_plan(ROOT / "config/paper.yaml"))) + 1
