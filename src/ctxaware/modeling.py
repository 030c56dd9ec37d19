"""Loading models and tokenizers: hub ids, local directories and the workflow's own fine-tunes (full or adapter)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as hf_logging

MODEL_INFO = "ctxaware_model.json"  # written next to every fine-tune: base model, recipe, adapter or not

hf_logging.disable_progress_bar()


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def default_dtype(device: str | None = None) -> torch.dtype:
    """bf16 on GPU, fp32 on CPU (bf16 matmuls on CPU are slow and less exact)."""
    return torch.bfloat16 if (device or default_device()) == "cuda" else torch.float32


def read_model_info(path: str) -> dict | None:
    info = Path(path) / MODEL_INFO
    return json.loads(info.read_text()) if info.exists() else None


def load_tokenizer(path: str):
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    return tokenizer


def resize_embeddings_with_mean(model, new_size: int) -> None:
    """Grow the vocabulary; new rows start at the mean of the existing rows (deterministic, unlike sampling)."""
    old_size = model.get_input_embeddings().weight.shape[0]
    if new_size == old_size:
        return
    model.resize_token_embeddings(new_size, mean_resizing=False)
    with torch.no_grad():
        for embedding in {model.get_input_embeddings(), model.get_output_embeddings()}:
            if embedding is not None and embedding.weight.shape[0] == new_size:
                embedding.weight[old_size:] = embedding.weight[:old_size].mean(dim=0, keepdim=True)


def load_model(
    path: str,
    attn_implementation: str = "sdpa",
    dtype: torch.dtype | None = None,
    device: str | None = None,
    merge_adapter: bool = True,
):
    """(model, tokenizer) for a hub id, a local model, or a workflow fine-tune with a LoRA/QLoRA adapter."""
    device = device or default_device()
    dtype = dtype or default_dtype(device)
    info = read_model_info(path) or {}
    tokenizer = load_tokenizer(path)
    base = info.get("base") if info.get("adapter") else path
    model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype, attn_implementation=attn_implementation)
    if info.get("adapter"):
        from peft import PeftModel

        resize_embeddings_with_mean(model, len(tokenizer))
        model = PeftModel.from_pretrained(model, path)
        if merge_adapter:
            model = model.merge_and_unload()
    model.to(device).eval()
    return model, tokenizer
