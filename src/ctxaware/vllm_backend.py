"""The optional vLLM backend (config `evaluation.backend: vllm`), for clusters where vllm is installed.

Same interface as the transformers Generator (token-id prompts in, greedy text out, per-prompt cache), so
every task runs unchanged. A full fine-tune is served as is; a LoRA/QLoRA adapter is served on its base model
through vLLM's LoRA support (`LLM(enable_lora=True)` + `LoRARequest`), unless the adapter changes the
vocabulary: vLLM's LoRA shares the base model's vocabulary (its per-adapter extra vocabulary was removed), so
an adapter that adds [IND] (a new embedding row, trainable-token weights) is merged into a copy of the base
first. `evaluation.vllm.adapter` forces either way.
"""

from __future__ import annotations

import json
from pathlib import Path

from ctxaware.generation import Generator, cut_at_stops
from ctxaware.modeling import load_tokenizer, read_model_info

# max_lora_rank values vLLM accepts
_VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def import_vllm():
    try:
        import vllm
    except ImportError as error:
        raise RuntimeError(
            "config key evaluation.backend is 'vllm' but the vllm package is not installed "
            f"({error}); install vllm in the cluster environment (pip install vllm) or set "
            "evaluation.backend: transformers"
        ) from None
    return vllm


def lora_rank_limit(rank: int) -> int:
    """The smallest max_lora_rank vLLM accepts that holds an adapter of this rank."""
    for allowed in _VLLM_LORA_RANKS:
        if allowed >= rank:
            return allowed
    raise ValueError(f"LoRA rank {rank} exceeds the largest rank vLLM serves ({_VLLM_LORA_RANKS[-1]})")


def _base_vocab_size(base: str) -> int:
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(base).vocab_size


def adapter_mode(model_dir: str, requested: str = "auto") -> str:
    """How vLLM serves model_dir: `full` (a whole model), `lora` (base + LoRARequest) or `merge` (a merged copy).

    requested: `auto` (lora unless the adapter changes the vocabulary), `lora` or `merge`.
    """
    if requested not in ("auto", "lora", "merge"):
        raise ValueError(f"config key evaluation.vllm.adapter: {requested!r} is not one of auto, lora, merge")
    info = read_model_info(model_dir) or {}
    if not info.get("adapter"):
        return "full"
    changes_vocab = bool(_adapter_config(model_dir).get("trainable_token_indices")) or len(
        load_tokenizer(model_dir)
    ) > _base_vocab_size(info["base"])
    if requested == "lora" and changes_vocab:
        raise ValueError(
            f"config key evaluation.vllm.adapter: {model_dir} adds tokens to its base model's vocabulary, which "
            "vLLM's LoRA support cannot serve; use `merge` or `auto`"
        )
    if requested == "auto":
        return "merge" if changes_vocab else "lora"
    return requested


def _adapter_config(model_dir: str) -> dict:
    path = Path(model_dir) / "adapter_config.json"
    return json.loads(path.read_text()) if path.exists() else {}


def merge_adapter(model_dir: str, out_dir: str) -> str:
    """Write base + adapter merged (bf16, on the CPU) with the fine-tune's tokenizer to out_dir."""
    import torch

    from ctxaware.modeling import load_model

    model, tokenizer = load_model(model_dir, dtype=torch.bfloat16, device="cpu", merge_adapter=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def load_vllm(model_dir: str, settings: dict, work_dir: str):
    """(llm, tokenizer, lora_request) for model_dir; a merged copy, when needed, is written under work_dir."""
    vllm = import_vllm()
    mode = adapter_mode(model_dir, settings.get("adapter", "auto"))
    engine_args = {
        "dtype": settings.get("dtype", "auto"),
        "gpu_memory_utilization": settings.get("gpu_memory_utilization", 0.9),
        "tensor_parallel_size": settings.get("tensor_parallel_size", 1),
        "seed": 0,
    }
    if settings.get("max_model_len"):
        engine_args["max_model_len"] = settings["max_model_len"]
    lora_request = None
    if mode == "full":
        llm = vllm.LLM(model=model_dir, tokenizer=model_dir, **engine_args)
    elif mode == "lora":
        from vllm.lora.request import LoRARequest

        base = read_model_info(model_dir)["base"]
        rank = lora_rank_limit(int(_adapter_config(model_dir).get("r", 16)))
        llm = vllm.LLM(
            model=base, tokenizer=model_dir, enable_lora=True, max_lora_rank=rank, max_loras=1, **engine_args
        )
        lora_request = LoRARequest("ctxaware-adapter", 1, str(Path(model_dir).resolve()))
    else:
        merged = merge_adapter(model_dir, str(Path(work_dir) / "merged"))
        llm = vllm.LLM(model=merged, tokenizer=merged, **engine_args)
    return llm, load_tokenizer(model_dir), lora_request


class VLLMGenerator(Generator):
    """Generation by vLLM's `LLM.generate` on token-id prompts (vLLM batches and schedules them itself).

    Prompts go to vLLM in chunks of `chunk_prompts` so the per-prompt cache is written as the work advances
    and a killed job resumes at the missing prompts, like the transformers backend.
    """

    backend = "vllm"

    def __init__(self, llm, tokenizer, lora_request=None, chunk_prompts: int = 1024, cache_path: str | None = None):
        super().__init__(None, tokenizer, batch_tokens=0, cache_path=cache_path)
        self.llm, self.lora_request, self.chunk_prompts = llm, lora_request, chunk_prompts

    def context_window(self) -> int | None:
        """vLLM's max_model_len (the model's window unless evaluation.vllm.max_model_len lowers it)."""
        try:
            return int(self.llm.llm_engine.model_config.max_model_len)
        except AttributeError:
            return None

    def _batches(self, prompts: list[list[int]], lengths: list[int]) -> list[list[int]]:
        order = sorted(range(len(lengths)), key=lambda i: lengths[i])
        return [order[i : i + self.chunk_prompts] for i in range(0, len(order), self.chunk_prompts)]

    def _generate_batch(
        self,
        prompts: list[list[int]],
        max_new_tokens: int,
        stops: list[str],
        temperatures: list[float] | None = None,
        sampling: dict | None = None,
    ) -> list[str]:
        from vllm import SamplingParams

        from ctxaware.generation import prompt_seed

        def params_for(prompt, temperature):
            if temperature <= 0:
                return SamplingParams(
                    temperature=0.0, max_tokens=max_new_tokens, stop=stops or None, skip_special_tokens=True
                )
            # vLLM's per-request seed: a prompt's sample does not depend on its batch, as with SeededSampler
            return SamplingParams(
                temperature=temperature,
                top_k=sampling["top_k"] or -1,
                top_p=sampling["top_p"],
                seed=prompt_seed(prompt, sampling["seed"]) % 2**31,
                max_tokens=max_new_tokens,
                stop=stops or None,
                skip_special_tokens=True,
            )

        temperatures = temperatures or [0.0] * len(prompts)
        params = [params_for(p, t) for p, t in zip(prompts, temperatures, strict=True)]
        outputs = self.llm.generate(
            [{"prompt_token_ids": list(p)} for p in prompts],  # vLLM's TokensPrompt: no re-tokenisation
            params,
            lora_request=self.lora_request,
            use_tqdm=False,
        )
        return [cut_at_stops(o.outputs[0].text, stops).strip() for o in outputs]
