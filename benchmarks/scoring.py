"""Benchmark of context-dependency scoring on a random-weight model of TinyLlama's shape family.

In one process it times, over the same conversations (lengths spread over 100-2047 tokens):
  (a) the original procedure: one conversation at a time, padded to 2047 tokens, every layer and the LM head,
      eager attention with output_attentions=True (all layers' attention kept), gradients not disabled;
  (b) the floor: a plain fast-kernel (sdpa) forward through layers 0..l, batched by the token budget, no
      attention extraction;
  (c) ctxaware's scorer (ctxaware.scoring.score_plans).
It prints tokens/s of each, the ratios a/c and c/b, the peak memory of each, and the largest |a - c|.

    python benchmarks/scoring.py                     # CPU: 22 layers, 32 query / 4 KV heads, hidden 512
    python benchmarks/scoring.py --tinyllama         # the real TinyLlama-1.1B shape (use on a GPU, bf16)
"""

from __future__ import annotations

import argparse
import math
import os
import random
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from ctxaware.batching import token_budget_batches
from ctxaware.benchmarking import PeakMemory
from ctxaware.scoring import Plan, Turn, score_plans

SHAREGPT_TOKENS = 93_645 * 1_567.68  # paper Table 2: conversations x mean length (TinyLlama tokens)


def make_model(args, device: str, dtype: torch.dtype, attn: str) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        max_position_embeddings=2048,
        attn_implementation=attn,
    )
    return LlamaForCausalLM(config).to(device=device, dtype=dtype).eval()


def make_plans(n: int, min_len: int, max_len: int, vocab: int, seed: int = 0) -> list[Plan]:
    """Conversations of alternating user / assistant segments with random tokens and lengths."""
    rng = random.Random(seed)
    plans = []
    for index in range(n):
        length = round(min_len + (max_len - min_len) * index / max(1, n - 1))  # evenly spread lengths
        ids = [rng.randrange(4, vocab) for _ in range(length)]
        user_mask, turns, position = [False] * length, [], 3  # a few template tokens first
        while position < length - 8:
            user_len = rng.randint(4, max(5, (length - position) // 2))
            for p in range(position, min(length, position + user_len)):
                user_mask[p] = True
            start = position + user_len + 3  # assistant header
            end = min(length, start + rng.randint(4, max(5, (length - start) // 2)))
            if start >= end:
                break
            turns.append(Turn(len(turns), list(range(start, end)), False, user_len))
            position = end + 2
        plans.append(Plan(f"c{index}", ids, user_mask, turns))
    return plans


def run_original(model, plans: list[Plan], layer: int, pad_length: int, pad_id: int) -> list[float]:
    """The original procedure, kept as it was (no no_grad, eager, all layers' attention, LM head)."""
    device = next(model.parameters()).device
    scores = []
    for plan in plans:
        ids = torch.full((1, pad_length), pad_id, dtype=torch.long)
        ids[0, : len(plan.input_ids)] = torch.tensor(plan.input_ids)
        mask = torch.zeros_like(ids)
        mask[0, : len(plan.input_ids)] = 1
        output = model(input_ids=ids.to(device), attention_mask=mask.to(device), output_attentions=True)
        attention = output.attentions[layer][0]
        user = torch.tensor(plan.user_mask + [False] * (pad_length - len(plan.input_ids)), device=device)
        for turn in plan.turns:
            scores.append(attention[:, turn.rows][:, :, user].float().sum(-1).amax(dim=0).mean().item())
        # drop every reference before the next conversation: a score tensor still attached to the autograd
        # graph would keep all layers' saved attention alive across iterations
        del output, attention
    return scores


@torch.inference_mode()
def run_floor(model, plans: list[Plan], layer: int, batch_tokens: int, pad_id: int) -> None:
    """A plain forward through layers 0..layer, batched like the scorer, nothing extracted."""
    device = next(model.parameters()).device
    decoder = model.get_decoder()
    all_layers = decoder.layers
    decoder.layers = all_layers[: layer + 1]
    try:
        for batch in token_budget_batches([len(p.input_ids) for p in plans], batch_tokens):
            longest = max(len(plans[i].input_ids) for i in batch)
            ids = torch.full((len(batch), longest), pad_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for row, i in enumerate(batch):
                ids[row, : len(plans[i].input_ids)] = torch.tensor(plans[i].input_ids)
                mask[row, : len(plans[i].input_ids)] = 1
            decoder(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False)
    finally:
        decoder.layers = all_layers
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(function, device: str, repeats: int = 1):
    """(best seconds over repeats, peak memory of the first run, last result)."""
    best, peak, result = math.inf, None, None
    for attempt in range(repeats):
        with PeakMemory(device) as memory:
            start = time.perf_counter()
            result = function()
            if device == "cuda":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - start)
        peak = memory.peak if attempt == 0 else peak
    return best, peak, result


def forward_flops(args, tokens: int, sum_squared_lengths: int) -> float:
    """Model FLOPs of layers 0..l (linear layers + attention scores and values), 2 per multiply-add."""
    head_dim = args.hidden // args.heads
    per_token = 2 * (
        args.hidden * head_dim * (args.heads + 2 * args.kv_heads)
        + args.hidden * args.hidden
        + 3 * args.hidden * args.intermediate
    )
    attention = 2 * 2 * args.heads * head_dim * sum_squared_lengths / 2  # causal half of QK^T and PV
    return (args.layer + 1) * (per_token * tokens + attention)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=22)
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--kv-heads", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--intermediate", type=int, default=1408)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--layer", type=int, default=15)
    parser.add_argument("--conversations", type=int, default=8)
    parser.add_argument("--min-length", type=int, default=100)
    parser.add_argument("--max-length", type=int, default=2047)
    parser.add_argument("--pad-length", type=int, default=2047)
    parser.add_argument("--batch-tokens", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=3, help="timings of (b) and (c) take the best of these")
    parser.add_argument("--tinyllama", action="store_true", help="the real TinyLlama-1.1B shape (hidden 2048)")
    parser.add_argument("--skip-original", action="store_true", help="skip (a), e.g. when it does not fit")
    args = parser.parse_args()
    if args.tinyllama:
        args.hidden, args.intermediate = 2048, 5632
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    torch.set_num_threads(os.cpu_count() or 1)

    plans = make_plans(args.conversations, args.min_length, args.max_length, args.vocab)
    tokens = sum(len(p.input_ids) for p in plans)
    n_turns = sum(len(p.turns) for p in plans)
    print(
        f"device {device} ({dtype}); model: {args.layers} layers, {args.heads} query / {args.kv_heads} KV heads, "
        f"hidden {args.hidden}; layer {args.layer}; {len(plans)} conversations, {tokens} tokens, {n_turns} turns"
    )

    fast = make_model(args, device, dtype, "sdpa")
    pad_id = 0
    run_floor(fast, plans[:1], args.layer, args.batch_tokens, pad_id)  # warm-up
    time_b, peak_b, _ = timed(
        lambda: run_floor(fast, plans, args.layer, args.batch_tokens, pad_id), device, args.repeats
    )
    time_c, peak_c, records = timed(
        lambda: score_plans(fast, plans, [args.layer], args.batch_tokens, pad_id), device, args.repeats
    )
    ours = [r["score"] for r in records]

    rows = [("(b) floor: fast forward through layers 0..l", time_b, peak_b), ("(c) ctxaware scorer", time_c, peak_c)]
    agreement = None
    if not args.skip_original:
        eager = make_model(args, device, dtype, "eager")
        eager.load_state_dict(fast.state_dict())
        time_a, peak_a, original = timed(
            lambda: run_original(eager, plans, args.layer, args.pad_length, pad_id), device
        )
        rows.insert(0, ("(a) original procedure", time_a, peak_a))
        # records are per turn in batch order; match them to the original's per-conversation order
        by_key = {(r["conversation_id"], r["turn"]): r["score"] for r in records}
        ordered = [by_key[(p.conversation_id, t.index)] for p in plans for t in p.turns]
        agreement = max(abs(a - c) for a, c in zip(original, ordered, strict=True))
        del eager
    print(f"{'method':48s} {'tokens/s':>12s} {'seconds':>9s} {'peak MiB':>10s}")
    for name, seconds, peak in rows:
        print(f"{name:48s} {tokens / seconds:12.0f} {seconds:9.2f} {peak / 2**20:10.0f}")
    if agreement is not None:
        time_a = rows[0][1]
        print(f"speed-up a/c: {time_a / time_c:.1f}x (target >= 8x)")
        print(f"max |a - c| over {len(ours)} turn scores: {agreement:.2e} (target <= 1e-4 in fp32)")
    print(f"overhead c/b: {time_c / time_b:.2f}x (target <= 1.3x)")
    longest = max(len(p.input_ids) for p in plans)
    budget_bytes = 4 * args.heads * min(args.batch_tokens, longest) * longest
    print(
        f"scorer's attention is formed for response rows of one layer only: at most {budget_bytes / 2**20:.0f} MiB "
        f"per sequence at the longest length (fp32), vs {args.layers * args.heads * args.pad_length**2 * 4 / 2**20:.0f}"
        f" MiB of all-layer attention per conversation in (a)"
    )
    if device == "cuda":
        sum_squares = sum(len(p.input_ids) ** 2 for p in plans)
        flops = forward_flops(args, tokens, sum_squares)
        peak_flops = float(os.environ.get("PEAK_TFLOPS", "989")) * 1e12  # H100 SXM dense bf16
        print(f"model FLOP utilisation of (c): {flops / time_c / peak_flops:.1%} of {peak_flops / 1e12:.0f} TFLOP/s")
        print(
            f"projected time to score ShareGPT ({SHAREGPT_TOKENS / 1e6:.0f}M tokens) on one GPU: "
            f"{SHAREGPT_TOKENS / (tokens / time_c) / 3600:.2f} h"
        )


if __name__ == "__main__":
    main()
