"""One GPU check of the paper's heavy paths, on random weights of the real shapes initialised on the GPU itself.

    python benchmarks/gpu_check.py              # one GPU (an H200: well under 6 minutes)
    python benchmarks/gpu_check.py --cpu-smoke  # the same code on tiny shapes on the CPU, seconds (tests run it)

Four checks, one table:
  1. scoring: ctxaware's scorer (layer 15) on TinyLlama-1.1B in bf16: tokens/s, model FLOPs utilisation, and the
     hours that projects for ShareGPT (paper Table 2: 93,645 conversations of 1,567.68 tokens on average);
  2. full SFT step, TinyLlama-1.1B, precision bf16-mixed (fp32 weights and AdamW state, bf16 autocast, gradient
     checkpointing), 8 x 2048 tokens at lr 2e-5: step time, peak memory, share of a layer's weights moved;
  3. QLoRA step, Llama-3-8B (nf4 base with double quantisation, LoRA r16 on every projection in fp32, bf16
     compute, gradient checkpointing), 4 x 4096 tokens: step time, peak memory;
  4. the paper's NIH grid (20 lengths 200-2000 x 20 depths, 50 new tokens, Zephyr template) on the TinyLlama
     shape through ctxaware's batched engine: prompts/s.
Weights are random (no hub access): the numbers measure speed and memory, never quality.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from scoring import SHAREGPT_TOKENS, make_plans  # noqa: E402  (benchmarks/scoring.py)

from ctxaware.benchmarking import PeakMemory  # noqa: E402

SHAPES = {  # (vocab, hidden, intermediate, layers, heads, kv_heads)
    "TinyLlama-1.1B": dict(vocab=32000, hidden=2048, intermediate=5632, layers=22, heads=32, kv_heads=4),
    "Llama-3-8B": dict(vocab=128256, hidden=4096, intermediate=14336, layers=32, heads=32, kv_heads=8),
}
SMOKE_SHAPES = {
    "TinyLlama-1.1B": dict(vocab=512, hidden=64, intermediate=128, layers=4, heads=4, kv_heads=2),
    "Llama-3-8B": dict(vocab=512, hidden=64, intermediate=128, layers=2, heads=4, kv_heads=2),
}
FULL = dict(score_layer=15, score_conversations=96, sft_batch=8, sft_len=2048, qlora_batch=4, qlora_len=4096,
            nih=(200, 2000, 20, 20, 50), steps=3)  # fmt: skip
SMOKE = dict(score_layer=2, score_conversations=6, sft_batch=2, sft_len=64, qlora_batch=1, qlora_len=64,
             nih=(120, 240, 2, 2, 4), steps=1)  # fmt: skip
H200_BF16_TFLOPS = 989.0  # dense bf16 peak of an H100/H200 SXM


def config_for(shape: dict, max_positions: int):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=shape["vocab"],
        hidden_size=shape["hidden"],
        intermediate_size=shape["intermediate"],
        num_hidden_layers=shape["layers"],
        num_attention_heads=shape["heads"],
        num_key_value_heads=shape["kv_heads"],
        max_position_embeddings=max_positions,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )


def random_model(shape: dict, device: str, dtype: torch.dtype, max_positions: int = 8192):
    """A Llama of the shape with random weights created on `device` (never on the CPU first)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config_for(shape, max_positions), dtype=dtype)
    return model


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def layer_flops_per_token(shape: dict) -> float:
    """Matmul FLOPs per token of one decoder layer's projections (2 x multiply-adds)."""
    hidden, kv = shape["hidden"], shape["hidden"] * shape["kv_heads"] // shape["heads"]
    return 2.0 * (2 * hidden * hidden + 2 * hidden * kv + 3 * hidden * shape["intermediate"])


def check_scoring(shape: dict, settings: dict, device: str, peak_tflops: float) -> list[list]:
    from ctxaware.scoring import score_plans

    model = random_model(shape, device, torch.bfloat16).eval()
    layer = min(settings["score_layer"], shape["layers"] - 1)
    longest = 2047 if settings is FULL else 120
    plans = make_plans(settings["score_conversations"], min(100, longest // 2), longest, shape["vocab"])
    score_plans(model, plans[:2], [layer], 16384, 0)  # warm-up (kernels, allocator)
    synchronize(device)
    start = time.perf_counter()
    score_plans(model, plans, [layer], 16384, 0)
    synchronize(device)
    seconds = time.perf_counter() - start
    lengths = [len(p.input_ids) for p in plans]
    tokens = sum(lengths)
    # the layers run (0..layer) plus causal attention (QK and AV: 2 x 2 x hidden per key) over each sequence
    flops = (layer + 1) * (tokens * layer_flops_per_token(shape) + sum(2 * shape["hidden"] * n * n for n in lengths))
    mfu = flops / seconds / (peak_tflops * 1e12)
    hours = SHAREGPT_TOKENS / (tokens / seconds) / 3600
    return [
        [
            f"scoring (layer {layer})",
            "tokens/s",
            f"{tokens / seconds:,.0f}",
            f"{len(plans)} conversations, {tokens} tokens",
        ],
        ["scoring", "MFU", f"{mfu:.1%}", f"of {peak_tflops:g} TFLOPS bf16"],
        ["scoring", "ShareGPT projected", f"{hours:.2f} h", "93,645 x 1,567.68 tokens (paper Table 2)"],
    ]


def timed_steps(step, steps: int, device: str) -> float:
    step()  # warm-up
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    return (time.perf_counter() - start) / steps


def check_full_sft(shape: dict, settings: dict, device: str) -> list[list]:
    """One optimizer step of the TinyLlama full recipe as training.py's bf16-mixed sets it up."""
    from ctxaware.training import precision_dtypes

    weights_dtype, compute_dtype, _ = precision_dtypes("bf16-mixed", "full")
    model = random_model(shape, device, weights_dtype)
    # activation_checkpointing_enable: transformers 5's name of gradient_checkpointing_enable (deprecated there)
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable({"use_reentrant": False})
    model.config.use_cache = False
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-5, weight_decay=0.0)
    ids = torch.randint(3, shape["vocab"], (settings["sft_batch"], settings["sft_len"]), device=device)
    probe = model.model.layers[0].mlp.up_proj.weight
    before = probe.detach().clone()

    def step():
        with torch.autocast(device_type=device, dtype=compute_dtype):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    with PeakMemory(device) as memory:
        seconds = timed_steps(step, settings["steps"], device)
    moved = float((probe.detach() != before).float().mean())
    label = f"full SFT step ({settings['sft_batch']}x{settings['sft_len']}, bf16-mixed)"
    rows = [
        [label, "step time", f"{seconds:.2f} s", f"params {probe.dtype}, autocast {compute_dtype}"],
        [label, "peak memory", f"{memory.peak / 2**30:.1f} GiB", "weights + AdamW state + activations"],
        [label, "weights moved", f"{moved:.1%}", "layer 0 up_proj after the steps at lr 2e-5"],
    ]
    return rows


def quantize_linears(model, device: str, compute_dtype: torch.dtype) -> None:
    """Every decoder projection replaced in place by a bitsandbytes nf4 Linear4bit (double quantisation) holding
    the random weights, as from_pretrained with the recipe's BitsAndBytesConfig would (the LM head stays)."""
    import bitsandbytes as bnb

    for module in list(model.model.layers.modules()):
        for name, child in list(module.named_children()):
            if not isinstance(child, torch.nn.Linear):
                continue
            quantized = bnb.nn.Linear4bit(
                child.in_features,
                child.out_features,
                bias=child.bias is not None,
                compute_dtype=compute_dtype,
                compress_statistics=True,
                quant_type="nf4",
                device="meta",
            )
            weight = child.weight.data
            quantized.weight = bnb.nn.Params4bit(
                weight.cpu() if device == "cpu" else weight,
                requires_grad=False,
                compress_statistics=True,
                quant_type="nf4",
            ).to(device)
            setattr(module, name, quantized)
            del child, weight
    model.is_loaded_in_4bit = True
    if device == "cuda":
        torch.cuda.empty_cache()


def check_qlora(shape: dict, settings: dict, device: str) -> list[list]:
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    from ctxaware.training import cast_trained_parameters, precision_dtypes

    weights_dtype, compute_dtype, _ = precision_dtypes("bf16-mixed", "qlora")
    model = random_model(shape, device, weights_dtype)
    quantize_linears(model, device, compute_dtype)
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    config = LoraConfig(r=16, lora_alpha=16, lora_dropout=0.05, target_modules=targets, task_type="CAUSAL_LM")
    model = get_peft_model(model, config)
    cast_trained_parameters(model, "bf16-mixed")
    model.config.use_cache = False
    model.train()
    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=2e-4, weight_decay=0.0)
    ids = torch.randint(3, shape["vocab"], (settings["qlora_batch"], settings["qlora_len"]), device=device)

    def step():
        with torch.autocast(device_type=device, dtype=compute_dtype):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    with PeakMemory(device) as memory:
        seconds = timed_steps(step, settings["steps"], device)
    import bitsandbytes as bnb

    dtypes = ",".join(sorted({str(p.dtype).replace("torch.", "") for p in trained}))
    four_bit = sum(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
    label = f"QLoRA step ({settings['qlora_batch']}x{settings['qlora_len']}, nf4, r16)"
    rows = [
        [label, "step time", f"{seconds:.2f} s", f"{sum(p.numel() for p in trained) / 1e6:.1f}M trained ({dtypes})"],
        [label, "peak memory", f"{memory.peak / 2**30:.1f} GiB", f"during the steps; {four_bit} nf4 layers"],
    ]
    return rows


def check_nih(shape: dict, settings: dict, device: str) -> list[list]:
    """The paper's NIH grid through the batched engine (random weights, so answers are noise)."""
    from ctxaware.chat import prepare_tokenizer
    from ctxaware.evaluation import run_nih
    from ctxaware.generation import Generator
    from ctxaware.modeling import load_tokenizer
    from ctxaware.tiny import build_tokenizer, corpus_lines

    min_len, max_len, n_lengths, n_depths, new_tokens = settings["nih"]
    files = [
        str(f) for d in ("sft", "haystack", "eval") for f in sorted((ROOT / "resources" / d).rglob("*")) if f.is_file()
    ]
    with tempfile.TemporaryDirectory() as work:
        build_tokenizer(corpus_lines(files), min(shape["vocab"], 4096)).save_pretrained(work)
        tokenizer = prepare_tokenizer(load_tokenizer(work))
    model = random_model(shape, device, torch.bfloat16, max_positions=2048).eval()
    if shape["vocab"] > len(tokenizer):  # rows without a token would decode to nothing: never generate them
        model.generation_config.suppress_tokens = list(range(len(tokenizer), shape["vocab"]))
    nih = {
        "haystack": str(ROOT / "resources" / "haystack"),
        "context_buffer": 200 if settings is FULL else 20,
        "needle": "The best thing to do in San Francisco is eat a sandwich and sit in Dolores Park on a sunny day.",
        "question": "What is the best thing to do in San Francisco?",
        "keywords": ["eat", "sandwich", "sit", "dolores", "park", "sunny", "day"],
        "metric": "exact",
        "min_context": min_len,
        "max_context": max_len,
        "n_lengths": n_lengths,
        "n_depths": n_depths,
        "max_new_tokens": new_tokens,
        "prompt_template": "assistant-document",
        "use_chat_template": True,
        "response_prefix": "",
    }
    generator = Generator(model, tokenizer, batch_tokens=65536 if device == "cuda" else 4096)
    synchronize(device)
    start = time.perf_counter()
    summary, records = run_nih(generator, nih, False)
    synchronize(device)
    seconds = time.perf_counter() - start
    label = f"NIH grid ({n_lengths}x{n_depths}, {min_len}-{max_len} tokens, {new_tokens} new)"
    longest = max(r["prompt_tokens"] for r in records)
    return [
        [
            label,
            "prompts/s",
            f"{summary['n'] / seconds:.1f}",
            f"{summary['n']} prompts in {seconds:.1f} s, longest {longest}",
        ]
    ]


def main(argv: list[str] | None = None) -> list[list]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny shapes on the CPU (seconds)")
    parser.add_argument("--peak-tflops", type=float, default=H200_BF16_TFLOPS, help="the GPU's dense bf16 peak")
    parser.add_argument("--only", nargs="*", choices=["scoring", "sft", "qlora", "nih"], help="a subset of checks")
    args = parser.parse_args(argv)
    if args.cpu_smoke:
        device, shapes, settings = "cpu", SMOKE_SHAPES, SMOKE
    elif torch.cuda.is_available():
        device, shapes, settings = "cuda", SHAPES, FULL
    else:
        parser.error("no GPU visible: run on a GPU, or with --cpu-smoke")
    checks = {
        "scoring": lambda: check_scoring(shapes["TinyLlama-1.1B"], settings, device, args.peak_tflops),
        "sft": lambda: check_full_sft(shapes["TinyLlama-1.1B"], settings, device),
        "qlora": lambda: check_qlora(shapes["Llama-3-8B"], settings, device),
        "nih": lambda: check_nih(shapes["TinyLlama-1.1B"], settings, device),
    }
    rows, started = [], time.perf_counter()
    for name in args.only or checks:
        rows += checks[name]()
        if device == "cuda":
            torch.cuda.empty_cache()
    from tabulate import tabulate

    name = torch.cuda.get_device_name() if device == "cuda" else "CPU (smoke shapes)"
    print(f"gpu_check on {name}, torch {torch.__version__}, {time.perf_counter() - started:.0f} s in all")
    print(tabulate(rows, headers=["check", "measure", "value", "notes"], tablefmt="github"))
    for row in rows:  # a NaN or infinite measure means the check itself failed
        number = row[2].split()[0].replace(",", "").rstrip("%")
        assert math.isfinite(float(number)), row
    return rows


if __name__ == "__main__":
    main()
