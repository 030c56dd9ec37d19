"""The stand-in tokenizers (ctxaware.standins) against an independent reference: llama.cpp's own tokenizations of
its Llama-2 (SentencePiece) and Llama-3 (BPE) vocabularies, 46 inputs each (leading and repeated spaces, tabs,
newlines, emoji, CJK, code). `make standins` (a prerequisite of `make test`) installs the sources under
.venv/standins; without npm the tokenizer tests skip, naming it, unless CTXAWARE_REQUIRE_STANDINS=1 (CI)."""

import json
import os
from pathlib import Path

import pytest

from ctxaware.modeling import load_tokenizer
from ctxaware.standins import (
    LLAMA2_JS,
    LLAMA3_MODELS,
    LLAMA_CPP_MODELS,
    build_model_repo,
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


# ---- stand-in model repositories (ctxaware.standins.build_model_repo), loaded as the workflow loads hub models ----

WHEELS = Path(__file__).resolve().parents[1] / ".venv/wheels"


@pytest.fixture(scope="module")
def repos(tmp_path_factory):
    """Stand-in repositories of one model per tokenizer family, built once."""
    source(LLAMA2_JS, "needs npm")
    root = tmp_path_factory.mktemp("standin-repos")
    hub_ids = (
        "meta-llama/Llama-2-7b-hf", "meta-llama/Llama-2-7b-chat-hf", "meta-llama/Meta-Llama-3-8B",
        "meta-llama/Llama-3.1-8B-Instruct",
        "mistralai/Mistral-7B-Instruct-v0.2", "mistralai/Mistral-7B-Instruct-v0.3", "google/gemma-2-9b-it",
    )  # fmt: skip
    return {hub_id: build_model_repo(hub_id, root / hub_id, STANDINS, WHEELS) for hub_id in hub_ids}


def test_a_llama2_repo_loads_with_its_tokenizer_json_as_written(repos):
    """The hub's Llama-2 repositories name the class LlamaTokenizer, which transformers 5 rebuilds with a Metaspace
    pre-tokenizer (a planted fault the workflow would meet on a cluster: load_tokenizer without its fix). The
    workflow's loader must tokenize as llama.cpp does, and keep the "▁" after `</s>` (Zephyr's `</s>\\n`)."""
    from transformers import AutoTokenizer

    repo = repos["meta-llama/Llama-2-7b-hf"]
    assert json.loads((repo / "tokenizer_config.json").read_text())["tokenizer_class"] == "LlamaTokenizer"
    tokenizer = load_tokenizer(str(repo))
    assert mismatches(tokenizer, references("llama-spm")) == []
    assert tokenizer("Hello</s>\n").input_ids == [1, 15043, 2, 29871, 13]
    rebuilt = AutoTokenizer.from_pretrained(repo)  # transformers 5 alone
    assert len(mismatches(rebuilt, references("llama-spm"))) == 15
    assert rebuilt("Hello</s>\n").input_ids == [1, 15043, 2, 13]


def test_the_llama2_chat_template_renders_meta_llamas_format(repos):
    """Meta's reference code (meta-llama/llama, llama/generation.py `chat_completion`): each exchange is
    `[bos] + encode(f"[INST] {user.strip()} [/INST] {answer.strip()} ") + [eos]`, the last user message
    `[bos] + encode(f"[INST] {user.strip()} [/INST]")`, a system prompt wrapped in <<SYS>> into the first one."""
    tokenizer = load_tokenizer(str(repos["meta-llama/Llama-2-7b-chat-hf"]))
    system, turns = "Be brief.", [(" What is 2+2? ", "4 "), ("And 3+3?", None)]
    expected = []
    for i, (user, answer) in enumerate(turns):
        user = f"<<SYS>>\n{system}\n<</SYS>>\n\n{user}" if i == 0 else user
        text = f"[INST] {user.strip()} [/INST]" + ("" if answer is None else f" {answer.strip()} ")
        expected += [1] + tokenizer(text, add_special_tokens=False).input_ids + ([] if answer is None else [2])
    messages = [{"role": "system", "content": system}]
    for user, answer in turns:
        messages += [{"role": "user", "content": user}] + ([{"role": "assistant", "content": answer}] if answer else [])
    assert tokenizer.apply_chat_template(messages, return_dict=False) == expected


def test_each_standin_has_its_models_layout_and_special_tokens(repos):
    from transformers import AutoConfig

    llama3 = AutoConfig.from_pretrained(repos["meta-llama/Meta-Llama-3-8B"])
    assert (llama3.model_type, llama3.vocab_size, llama3.max_position_embeddings) == ("llama", 128256, 8192)
    assert llama3.num_attention_heads // llama3.num_key_value_heads == 4  # grouped-query attention, 32 / 8
    llama2 = AutoConfig.from_pretrained(repos["meta-llama/Llama-2-7b-hf"])
    assert llama2.num_attention_heads == llama2.num_key_value_heads and llama2.max_position_embeddings == 4096
    gemma = AutoConfig.from_pretrained(repos["google/gemma-2-9b-it"])
    assert (gemma.model_type, gemma.vocab_size, gemma.attn_logit_softcapping) == ("gemma2", 256000, 50.0)
    mistral = load_tokenizer(str(repos["mistralai/Mistral-7B-Instruct-v0.3"]))
    assert len(mistral) == 32768 and mistral("Hi").input_ids[0] == mistral.bos_token_id == 1
    gemma_it = load_tokenizer(str(repos["google/gemma-2-9b-it"]))
    rendered = gemma_it.apply_chat_template(
        [{"role": "user", "content": "Hi "}], tokenize=False, add_generation_prompt=True
    )
    assert rendered == "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"  # Gemma's formatting guide


def spans_by_prefix_length(tokenizer, messages):
    """A planted fault, span code written for a BOS-adding SentencePiece tokenizer (Llama-2): a message's content
    starts where the tokens of the text before it end, counted with add_special_tokens and one taken off for the
    BOS. On a tokenizer whose pieces merge across the boundary, or that adds no BOS, the spans shift."""
    from ctxaware.chat import content_char_spans, with_system

    text, char_spans = content_char_spans(tokenizer, with_system(messages, tokenizer))
    ids = tokenizer(text, add_special_tokens=False).input_ids
    return ids, [
        (len(tokenizer(text[:a]).input_ids) - 1, len(tokenizer(text[:b]).input_ids) - 1) for a, b in char_spans
    ]


def misplaced_spans(ids, spans, tokenizer, messages):
    """Messages whose span of tokens does not decode to their content."""
    from ctxaware.chat import with_system

    contents = [m["content"] for m in with_system(messages, tokenizer)]
    return [c for c, (a, b) in zip(contents, spans, strict=True) if tokenizer.decode(ids[a:b]).strip() != c.strip()]


def test_message_spans_decode_to_their_content_on_every_standin(repos):
    """The workflow's spans (encode_with_spans: character offsets; scoring reads them, in the Zephyr template of
    the fine-tunes) hold on every tokenizer family of the paper's models; the planted span code that assumes a
    BOS-adding SentencePiece tokenizer fails on Llama-3, whose byte-level pieces merge a space into the next word."""
    from ctxaware.chat import encode_with_spans, prepare_tokenizer

    messages = [
        {"role": "user", "content": "Read this: the cat sat on the mat.\n\nWhere did it sit?"},
        {"role": "assistant", "content": "On the mat."},
        {"role": "user", "content": "And the dog?"},
    ]
    for hub_id, repo in repos.items():
        tokenizer = prepare_tokenizer(load_tokenizer(str(repo)))
        encoded = encode_with_spans(tokenizer, messages)
        spans = [(s.start, s.end) for s in encoded.spans]
        assert misplaced_spans(encoded.input_ids, spans, tokenizer, messages) == [], hub_id
    # Llama-3's tokenizer as @lenml ships it adds no BOS (no TemplateProcessing): the workflow's spans still hold,
    # the planted span code, which takes one token off for a BOS, misplaces every message
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer.from_file(str(source(LLAMA3_MODELS, "needs npm") / "tokenizer.json"))
    llama3 = prepare_tokenizer(
        PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<|begin_of_text|>", eos_token="<|end_of_text|>")
    )
    encoded = encode_with_spans(llama3, messages)
    assert misplaced_spans(encoded.input_ids, [(s.start, s.end) for s in encoded.spans], llama3, messages) == []
    assert len(misplaced_spans(*spans_by_prefix_length(llama3, messages), llama3, messages)) == 3
    llama2 = prepare_tokenizer(load_tokenizer(str(repos["meta-llama/Llama-2-7b-hf"])))  # where it was written for
    assert misplaced_spans(*spans_by_prefix_length(llama2, messages), llama2, messages) == []


MISTRAL_REFERENCE = Path(__file__).parent / "data/mistral_common_reference.json"


@pytest.mark.parametrize(
    "hub_id, version", [("mistralai/Mistral-7B-Instruct-v0.2", "v1"), ("mistralai/Mistral-7B-Instruct-v0.3", "v3")]
)
def test_the_mistral_standins_tokenize_and_chat_as_mistral_common(repos, hub_id, version):
    """Against mistral-common, Mistral's own implementation (its outputs kept in tests/data, made in a scratch
    folder: installed here it would take over transformers' Mistral tokenizers): llama.cpp's 46 inputs, and a
    conversation in the hub's chat template against mistral-common's instruct encoding of it (v1 for v0.2's
    tokenizer, v3 for v0.3's, whose [INST] and [/INST] are control tokens)."""
    reference = json.loads(MISTRAL_REFERENCE.read_text())
    tokenizer = load_tokenizer(str(repos[hub_id]))
    texts, expected = reference["texts"], reference["tokenizers"][version]
    encoded = [tokenizer(text, add_special_tokens=False).input_ids for text in texts]
    # the hub's non-legacy layout (what its templates' `<s> [INST]` need) prepends no "▁" to a text that opens
    # with a space, where SentencePiece adds its dummy prefix regardless: exactly those inputs differ
    differing = [t for t, e, o in zip(texts, expected, encoded, strict=True) if e != o]
    assert differing == [t for t in texts if t.startswith(" ")] and len(differing) == 15
    chat = tokenizer.apply_chat_template(reference["conversation"], return_dict=False)
    assert chat == reference["chat"][version]["tokens"]


def test_the_llama31_instruct_template_opens_with_its_system_header(repos):
    """Llama-3.1's prompt format (Meta's model card, llama-models' prompt_format): every conversation opens with a
    system header holding the knowledge cutoff and the date, then the system prompt; turns as Llama-3's."""
    tokenizer = load_tokenizer(str(repos["meta-llama/Llama-3.1-8B-Instruct"]))
    assert mismatches(tokenizer, references("llama-bpe")) == []  # @lenml's Llama-3.1 tokenizer: Llama-3's vocabulary
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
        "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\nBe brief.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    )


def test_the_gemma2_standin_tokenizes_as_transformers_tests_assert(repos):
    """No llama.cpp references of Gemma's vocabulary ship in the sdist: the reference is transformers' own Gemma
    tests (expected ids of Gemma-1's tokenizer, the vocabulary Gemma-2 keeps), kept in tests/data."""
    reference = json.loads((Path(__file__).parent / "data/gemma_reference.json").read_text())
    tokenizer = load_tokenizer(str(repos["google/gemma-2-9b-it"]))
    assert len(reference["cases"]) == 13
    assert [c["text"] for c in reference["cases"] if tokenizer(c["text"]).input_ids != c["input_ids"]] == []
