"""Benchmark of fine-tuning: training tokens/s and peak memory of full SFT, LoRA and QLoRA (bitsandbytes nf4).

Each recipe trains the same random-weight Llama-architecture model on the same conversations through
ctxaware's own trainer (TRL SFTTrainer, the [IND] token added and its rows trainable), every conversation
truncated to exactly --seq-len tokens, for --steps optimizer steps. Each recipe runs in a fresh process so the
memory figures do not mix; full SFT is the baseline the ratios are taken against.

    python benchmarks/finetune.py                 # CPU: 12 layers, hidden 1024, vocab 32000 (220M parameters)
    python benchmarks/finetune.py --llama3-8b     # GPU: QLoRA on a random Llama-3-8B shape at 4096 tokens

tokens/s leaves out the first step (allocation and kernel warm-up). Peak memory is the growth of resident
memory from before the model is loaded to the end of training (CPU), or the peak of allocated GPU memory.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import tempfile
import time
from pathlib import Path

import pandas as pd

LLAMA3_8B = dict(hidden=4096, intermediate=14336, layers=32, heads=32, kv_heads=8, vocab=128256)
ALL_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def build_model(args, out_dir: Path) -> str:
    """A random-weight Llama of the requested shape with a BPE tokenizer trained on the shipped haystack."""
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    from ctxaware.benchmarking import llama_config
    from ctxaware.tiny import build_tiny_model

    haystack = sorted(str(p) for p in Path("resources/haystack").glob("*.txt"))
    tokenizer_dir = out_dir / "tokenizer"
    build_tiny_model(str(tokenizer_dir), haystack, vocab_size=min(args.vocab, 4096), hidden_size=8,
                     intermediate_size=8, num_layers=1, num_heads=1, num_kv_heads=1)  # fmt: skip
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = llama_config(tokenizer, args, max_positions=max(4096, args.seq_len))
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = LlamaForCausalLM(config).to(torch.bfloat16 if torch.cuda.is_available() else torch.float32)
    model_dir = out_dir / "model"
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    return str(model_dir)


def build_data(args, out_dir: Path) -> str:
    """Conversations of haystack text, each longer than --seq-len tokens, so every one is cut to exactly it."""
    text = " ".join(p.read_text() for p in sorted(Path("resources/haystack").glob("*.txt"))).split()
    words = max(2 * args.seq_len, 64)
    conversations = []
    for index in range(args.steps * args.batch):
        start = (index * 997) % max(1, len(text) - words)
        chunk = text[start : start + words]
        half = len(chunk) // 2
        messages = [
            {"role": "user", "content": " ".join(chunk[:half]) + " [IND]"},
            {"role": "assistant", "content": " ".join(chunk[half:])},
        ]
        conversations.append({"id": str(index), "messages": messages})
    path = out_dir / "train.parquet"
    pd.DataFrame(conversations).to_parquet(path)
    return str(path)


def recipe_for(method: str, args) -> dict:
    return {
        "finetuning": method,
        "learning_rate": 1e-4,
        "lr_scheduler": "constant",
        "warmup_ratio": 0.0,
        "global_batch_size": args.batch,
        "per_device_batch_size": args.batch,
        "max_length": args.seq_len,
        "epochs": 1,
        "max_steps": args.steps,
        "gradient_checkpointing": args.gradient_checkpointing,
        "precision": "auto",  # bf16-mixed on a GPU, fp32 on the CPU, as the workflow's recipes
        "loss": "all",
        "save_steps": 10**6,
        "logging_steps": 1,
        "lm_head_loss": "fused",
        "length_groups": 1,
        "indicator_embedding": "trainable",
        "lora": {"r": 16, "alpha": 16, "dropout": 0.05, "target_modules": ALL_PROJECTIONS},
    }


def train_one(method: str, args, model_dir: str, data: str, results) -> None:
    """One recipe, in its own process: seconds per step, tokens/s and peak memory."""
    import torch
    from transformers import TrainerCallback

    from ctxaware.benchmarking import PeakMemory
    from ctxaware.training import build_trainer

    torch.set_num_threads(os.cpu_count() or 1)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    step_ends = []

    class StepClock(TrainerCallback):
        def on_step_end(self, *_, **__):
            if device == "cuda":
                torch.cuda.synchronize()
            step_ends.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as checkpoints, PeakMemory(device) as memory:
        start = time.perf_counter()
        trainer, _, _ = build_trainer(model_dir, data, checkpoints, recipe_for(method, args), True, 42, [StepClock()])
        trainer.train()
    step_seconds = (step_ends[-1] - step_ends[0]) / (len(step_ends) - 1)
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    results.put(
        {
            "method": method,
            "seconds_per_step": step_seconds,
            "tokens_per_s": args.batch * args.seq_len / step_seconds,
            "peak_mib": memory.peak / 2**20,
            "trainable_parameters": trainable,
            "total_seconds": time.perf_counter() - start,
        }
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--kv-heads", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--intermediate", type=int, default=2816)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--methods", nargs="+", default=["full", "lora", "qlora"])
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--llama3-8b", action="store_true", help="GPU: QLoRA on the Llama-3-8B shape at 4096 tokens")
    args = parser.parse_args()
    if args.llama3_8b:
        for key, value in LLAMA3_8B.items():
            setattr(args, key, value)
        args.seq_len, args.batch, args.methods, args.gradient_checkpointing = 4096, 1, ["qlora"], True

    context = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        model_dir, data = build_model(args, scratch), build_data(args, scratch)
        print(
            f"model: {args.layers} layers, hidden {args.hidden}, {args.heads} query / {args.kv_heads} KV heads, "
            f"vocab {args.vocab}; {args.steps} steps x {args.batch} sequences x {args.seq_len} tokens"
        )
        rows = []
        for method in args.methods:
            results = context.Queue()
            process = context.Process(target=train_one, args=(method, args, model_dir, data, results))
            process.start()
            process.join()
            if process.exitcode != 0:
                raise SystemExit(f"{method}: the training process failed (exit code {process.exitcode})")
            rows.append(results.get())
    baseline = rows[0]
    header = ["tokens/s", "s/step", "peak MiB", "trainable", "speed", "memory"]
    print(f"{'recipe':8s} " + " ".join(f"{h:>{w}s}" for h, w in zip(header, [10, 8, 10, 12, 7, 7], strict=True)))
    for row in rows:
        print(
            f"{row['method']:8s} {row['tokens_per_s']:10.0f} {row['seconds_per_step']:8.2f} {row['peak_mib']:10.0f} "
            f"{row['trainable_parameters']:12,d} {row['tokens_per_s'] / baseline['tokens_per_s']:6.2f}x "
            f"{row['peak_mib'] / baseline['peak_mib']:6.2f}x"
        )
    print(f"(speed and memory relative to {baseline['method']})")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
