"""The stand-in tokenizers (ctxaware.standins) against an independent reference: llama.cpp's own tokenizations of
its Llama-2 (SentencePiece) and Llama-3 (BPE) vocabularies, 46 inputs each (leading and repeated spaces, tabs,
newlines, emoji, CJK, code). `make standins` (a prerequisite of `make test`) installs the sources under
.venv/standins; without npm the tokenizer tests skip, naming it, unless CTXAWARE_REQUIRE_STANDINS=1 (CI)."""

import os
from pathlib import Path

import pytest

from ctxaware.standins import (
    LLAMA2_JS,
    LLAMA3_MODELS,
    LLAMA_CPP_MODELS,
    llama2_tokenizer,
    llama3_tokenizer,
    llama_cpp_references,
)

STANDINS = Path(__file__).resolve().parents[1] / ".venv/standins"


def source(relative: str, needs: str) -> Path:
    path = STANDINS / relative
    if not path.exists():
        message = f"{path} is missing: `make standins` installs it ({needs})"
        if os.environ.get("CTXAWARE_REQUIRE_STANDINS") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="module")
def llama2():
    return llama2_tokenizer(source(LLAMA2_JS, "needs npm"))


@pytest.fixture(scope="module")
def llama3_instruct():
    return llama3_tokenizer(source(LLAMA3_MODELS, "needs npm"), chat_template=True)


def references(name: str) -> list[tuple[str, list[int]]]:
    return llama_cpp_references(source(f"{LLAMA_CPP_MODELS}/ggml-vocab-{name}.gguf", "from PyPI's llama-cpp-python"))


def mismatches(tokenizer, cases) -> list[tuple[str, list[int], list[int]]]:
    encoded = [(text, ids, tokenizer(text, add_special_tokens=False).input_ids) for text, ids in cases]
    return [case for case in encoded if case[1] != case[2]]


def test_llama_cpp_references_are_read_as_llama_cpp_splits_them():
    cases = references("llama-spm")
    assert len(cases) == 46
    assert ("", []) in cases and (" ", [259]) in cases and ("Hello world", [15043, 3186]) in cases


def test_the_llama2_standin_tokenizes_as_llama_cpp(llama2):
    cases = references("llama-spm")
    assert mismatches(llama2, cases) == []
    assert llama2("Hello world").input_ids == [1, 15043, 3186]  # BOS, as Llama-2-7b-hf adds it
    assert all(llama2.decode(ids) == text for text, ids in cases)


def test_the_llama2_vocabulary_is_llama_cpps(llama2):
    from gguf import GGUFReader

    field = GGUFReader(source(f"{LLAMA_CPP_MODELS}/ggml-vocab-llama-spm.gguf", "")).fields["tokenizer.ggml.tokens"]
    pieces = [bytes(field.parts[i]).decode("utf-8") for i in field.data]
    assert pieces == llama2.convert_ids_to_tokens(list(range(len(pieces))))


def test_a_metaspace_llama2_loses_leading_spaces_and_the_references_catch_it(llama2):
    """The layout transformers 5's LlamaTokenizer class (and its GGUF loader) gives Llama-2: a Metaspace
    pre-tokenizer that prepends "▁" only where the text has none, so " Hello" becomes "Hello". A stand-in built
    that way must fail the reference check, on exactly the inputs that open with a space."""
    from tokenizers import pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = llama2.backend_tokenizer.__class__.from_str(llama2.backend_tokenizer.to_str())
    backend.normalizer = None
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    faulty = PreTrainedTokenizerFast(tokenizer_object=backend)
    failed = {text for text, _, _ in mismatches(faulty, references("llama-spm"))}
    assert failed and failed == {text for text, _ in references("llama-spm") if text.startswith(" ")}


def test_the_llama3_standin_tokenizes_as_llama_cpp_and_adds_bos(llama3_instruct):
    cases = references("llama-bpe")
    assert mismatches(llama3_instruct, cases) == []
    assert llama3_instruct("Hello world").input_ids == [128000, 9906, 1917]
    assert all(llama3_instruct.decode(ids) == text for text, ids in cases)


def test_the_llama3_instruct_template_is_meta_llamas(llama3_instruct):
    """Meta's Llama-3 prompt format (model card of Meta-Llama-3-8B-Instruct; meta-llama/llama3
    llama/tokenizer.py ChatFormat): a header per message, each message closed by <|eot_id|>, one BOS."""
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there "}]
    text = llama3_instruct.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    ids = llama3_instruct.apply_chat_template(messages, add_generation_prompt=True, return_dict=False)
    assert ids.count(llama3_instruct.bos_token_id) == 1 and ids[0] == llama3_instruct.bos_token_id
    assert llama3_instruct.eos_token == "<|eot_id|>"
