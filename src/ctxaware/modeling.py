"""Loading models and tokenizers: hub ids, local directories and the workflow's own fine-tunes (full or adapter)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast
from transformers.utils import cached_file
from transformers.utils import logging as hf_logging

from ctxaware import IND_TOKEN
from ctxaware.chat import TEMPLATE_SYSTEM

MODEL_INFO = "ctxaware_model.json"  # written next to every fine-tune: base model, recipe, adapter or not
# SentencePiece classes that transformers 5 rebuilds from the vocabulary (a Metaspace pre-tokenizer), ignoring the
# repository's tokenizer.json: Llama-2's (TinyLlama, Llama-2-7b-hf) then drops the "▁" token after `</s>` and after
# spaces (15 of llama.cpp's 46 reference inputs differ). The original, on transformers 4, used tokenizer.json as is.
REBUILT_TOKENIZERS = {"LlamaTokenizer", "LlamaTokenizerFast", "GemmaTokenizer", "GemmaTokenizerFast"}

hf_logging.disable_progress_bar()


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def default_dtype(device: str | None = None) -> torch.dtype:
    """bf16 on GPU, fp32 on CPU (bf16 matmuls on CPU are slow and less exact)."""
    return torch.bfloat16 if (device or default_device()) == "cuda" else torch.float32


# the precision an imported model asks its jobs to compute in (imported_models.dtype, recorded by the import)
INFO_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def read_model_info(path: str) -> dict | None:
    info = Path(path) / MODEL_INFO
    return json.loads(info.read_text()) if info.exists() else None


def _repo_file(path: str, name: str) -> str | None:
    """A file of a local model or a hub repository (downloaded into the hub cache), None when it has none."""
    return cached_file(path, name, _raise_exceptions_for_missing_entries=False)


def load_tokenizer(path: str):
    settings = _repo_file(path, "tokenizer_config.json")
    declared = json.loads(Path(settings).read_text()).get("tokenizer_class") if settings else None
    if declared in REBUILT_TOKENIZERS and _repo_file(path, "tokenizer.json"):
        tokenizer = PreTrainedTokenizerFast.from_pretrained(path)  # the repository's tokenizer.json, as written
    else:
        tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    # an imported model renders conversations without a system message as its template does (imported_models)
    if (read_model_info(path) or {}).get("system_message") == "template":
        setattr(tokenizer, TEMPLATE_SYSTEM, True)
    return tokenizer


def add_token_rows(model, vocab_size: int, new_ids: list[int]) -> None:
    """Make room for a tokenizer of vocab_size tokens and start the rows of the tokens we added (new_ids) at the
    mean of the rows before them: deterministic, unlike sampling. Never shrinks: some models (Qwen) pad their
    embedding beyond the tokenizer, and an added id can then fall on an unused padding row."""
    if vocab_size > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(vocab_size, mean_resizing=False)
    if not new_ids:
        return
    rows = torch.tensor(sorted(new_ids))
    with torch.no_grad():
        for embedding in {model.get_input_embeddings(), model.get_output_embeddings()}:
            if embedding is not None:
                weight = embedding.weight
                weight[rows] = weight[: int(rows.min())].mean(dim=0, keepdim=True).to(weight.dtype)


def load_model(
    path: str,
    attn_implementation: str = "sdpa",
    dtype: torch.dtype | None = None,
    device: str | None = None,
    merge_adapter: bool = True,
):
    """(model, tokenizer) for a hub id, a local model, or a workflow fine-tune with a LoRA/QLoRA adapter; in
    `dtype`, else the precision an imported model's info records, else default_dtype."""
    device = device or default_device()
    info = read_model_info(path) or {}
    dtype = dtype or INFO_DTYPES.get(info.get("dtype")) or default_dtype(device)
    tokenizer = load_tokenizer(path)
    base = info.get("base") if info.get("adapter") else path
    model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype, attn_implementation=attn_implementation)
    if info.get("adapter"):
        from peft import PeftModel

        # the adapter was trained on these rows: rebuild them exactly as training started
        added = [tokenizer.convert_tokens_to_ids(IND_TOKEN)] if info.get("with_indicator") else []
        add_token_rows(model, len(tokenizer), added)
        model = PeftModel.from_pretrained(model, path)
        if merge_adapter:
            model = model.merge_and_unload()
    model.to(device).eval()
    return model, tokenizer
