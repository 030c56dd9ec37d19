"""recipes.<r>.indicator_token: [IND] as a special token (the paper's text) or a plain added one (the original's
tokenizer.add_tokens(['[IND]']), TinyLlama/scripts/run_sft.py l.139-153, scripts/utils.py l.176-187)."""

import os
from pathlib import Path

import pytest

from ctxaware import IND_TOKEN
from ctxaware.chat import append_indicator, prepare_tokenizer, render
from ctxaware.modeling import load_tokenizer

# A Llama-2-style SentencePiece tokenizer: Mistral-7B-v0.1's (mistral-common 1.13.1's data/tokenizer.model.v1,
# Apache-2.0, installed by make setup) as a hub tokenizer.json in the Llama-2/TinyLlama layout: BPE with byte
# fallback, the legacy normalizer (Prepend "▁", Replace " " by "▁"), no pre-tokenizer, LlamaTokenizer.
MESSAGES = [{"role": "user", "content": append_indicator("Summarize the text.")}]
# '<s><|system|>\n</s>\n<|user|>\nSummarize the text. [IND]</s>\n<|assistant|>\n' up to "." (shared by all)
PREFIX = [1, 523, 28766, 6574, 28766, 28767, 13, 2, 28705, 13, 28789, 28766, 1838, 28766, 28767, 13, 9881, 3479, 653]
PREFIX += [272, 2245, 28723]
SUFFIX = [2, 28705, 13, 28789, 28766, 489, 11143, 28766, 28767, 13]  # </s>\n<|assistant|>\n
# The original's path, run in a scratch folder: tokenizers.Tokenizer.from_file on that tokenizer.json (transformers
# 4.x used the file as it is) and add_tokens with what transformers 4.x's add_tokens(['[IND]']) passes
# (AddedToken normalized=True, special=False), against add_special_tokens (normalized=False, special=True).
# A normalized added token is matched on the normalized text, "▁[IND]": it absorbs the space before it.
ORIGINAL_IDS = {"added": PREFIX + [32000] + SUFFIX, "special": PREFIX + [28705, 32000] + SUFFIX}
# ctxaware under transformers 5 gives the same: its LlamaTokenizer class would rebuild the tokenizer with a Metaspace
# pre-tokenizer and no normalizer (the space before [IND] its own "▁", 28705, under either kind), but
# ctxaware.modeling.load_tokenizer reads a LlamaTokenizer repository's tokenizer.json as it is, as transformers 4 did
CTXAWARE_IDS = ORIGINAL_IDS


@pytest.fixture(scope="module")
def llama_style_tokenizer(tmp_path_factory) -> str:
    """mistral-common's SentencePiece model (from the wheel make setup downloads) written as a Llama-2-style hub
    tokenizer folder."""
    import json
    import sys
    import zipfile

    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, processors
    from transformers.convert_slow_tokenizer import SentencePieceExtractor

    folder = tmp_path_factory.mktemp("llama-style")
    (wheel,) = (Path(sys.prefix) / "wheels").glob("mistral_common-1.13.1-*.whl")
    model = tmp_path_factory.mktemp("sentencepiece") / "tokenizer.model.v1"  # not beside the tokenizer.json
    model.write_bytes(zipfile.ZipFile(wheel).read("mistral_common/data/tokenizer.model.v1"))
    extracted = SentencePieceExtractor(str(model)).extract(None)
    bpe = models.BPE(extracted["vocab"], extracted["merges"], unk_token="<unk>", fuse_unk=True, byte_fallback=True)
    tokenizer = Tokenizer(bpe)
    tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tokenizer.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tokenizer.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in ("<unk>", "<s>", "</s>")])
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tokenizer.save(str(folder / "tokenizer.json"))
    config = {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    config |= {"add_bos_token": True, "add_eos_token": False, "legacy": True, "model_max_length": 2048}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return str(folder)


@pytest.mark.parametrize("kind", ["special", "added"])
def test_a_real_llama_tokenizer_under_each_indicator_token_kind(llama_style_tokenizer, kind):
    from tokenizers import AddedToken, Tokenizer

    tokenizer = prepare_tokenizer(load_tokenizer(llama_style_tokenizer), with_indicator=True, indicator_token=kind)
    text = render(tokenizer, MESSAGES, add_generation_prompt=True)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert ids == CTXAWARE_IDS[kind]
    assert (IND_TOKEN in tokenizer.decode(ids, skip_special_tokens=True)) == (kind == "added")
    # the original's add_tokens on the hub file as it is: the ids the literal data records
    original = Tokenizer.from_file(os.path.join(llama_style_tokenizer, "tokenizer.json"))
    if kind == "added":
        original.add_tokens([AddedToken(IND_TOKEN, special=False, normalized=True)])
    else:
        original.add_special_tokens([AddedToken(IND_TOKEN, special=True, normalized=False)])
    assert original.encode(text, add_special_tokens=False).ids == ORIGINAL_IDS[kind]


@pytest.mark.parametrize("kind", ["special", "added"])
def test_skip_special_tokens_keeps_the_indicator_only_when_it_is_a_plain_added_token(tiny_model_dir, kind):
    tokenizer = prepare_tokenizer(load_tokenizer(tiny_model_dir), with_indicator=True, indicator_token=kind)
    ids = tokenizer("What is it? [IND]", add_special_tokens=False)["input_ids"]
    assert ids[-1] == tokenizer.convert_tokens_to_ids(IND_TOKEN)
    assert tokenizer.added_tokens_decoder[ids[-1]].special == (kind == "special")
    assert (IND_TOKEN in tokenizer.decode(ids, skip_special_tokens=True)) == (kind == "added")
    assert IND_TOKEN in tokenizer.decode(ids, skip_special_tokens=False)


def test_an_unknown_indicator_token_kind_is_refused(tiny_model_dir):
    with pytest.raises(ValueError, match="indicator_token"):
        prepare_tokenizer(load_tokenizer(tiny_model_dir), with_indicator=True, indicator_token="user_defined")
