"""The embedded default's base model: a small Llama-architecture LM and a byte-level BPE tokenizer, built offline.

Saved with save_pretrained so the rest of the workflow loads it with the same from_pretrained calls it uses for
hub ids on clusters.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from ctxaware.chat import ZEPHYR_TEMPLATE

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>"]
# Role headers become single tokens so role spans stay crisp in the tiny vocabulary.
ROLE_HEADERS = ["<|system|>", "<|user|>", "<|assistant|>"]


def corpus_lines(paths: list[str]) -> list[str]:
    """Every text field of the given files (txt, json, jsonl): the tokenizer sees the data it will encode."""
    lines: list[str] = []

    def walk(value):
        if isinstance(value, str):
            lines.append(value)
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    for path in sorted(paths):
        text = Path(path).read_text(encoding="utf-8")
        if path.endswith(".jsonl"):
            for line in text.splitlines():
                if line.strip():
                    walk(json.loads(line))
        elif path.endswith(".json"):
            walk(json.loads(text))
        else:
            lines.extend(text.splitlines())
    return [line for line in lines if line.strip()]


def build_tokenizer(corpus: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS + ROLE_HEADERS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    return chat_tokenizer(tokenizer)


def chat_tokenizer(tokenizer: Tokenizer) -> PreTrainedTokenizerFast:
    """A transformers tokenizer over `tokenizer` with the special tokens and the Zephyr chat template of the
    workflow's own models (this one and the model organism's)."""
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        model_max_length=4096,
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = ZEPHYR_TEMPLATE
    return fast


def build_tiny_model(
    out_dir: str,
    corpus_files: list[str],
    vocab_size: int = 2048,
    hidden_size: int = 64,
    intermediate_size: int = 128,
    num_layers: int = 4,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    max_position_embeddings: int = 2048,
    seed: int = 0,
) -> dict:
    """Build, save and describe the tiny base model; deterministic for a given seed and corpus."""
    torch.manual_seed(seed)
    tokenizer = build_tokenizer(corpus_lines(corpus_files), vocab_size)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    info = {"parameters": sum(p.numel() for p in model.parameters()), "vocab_size": len(tokenizer)}
    info.update(config.to_diff_dict())
    return info
