"""Peak resident memory of scoring one shard, 1 shard vs 4 shards, on a CPU shape.

A tiny model (ctxaware.tiny) scores shard 0 of a few thousand synthetic conversations long enough that their
plans (token ids, user masks, response rows) dominate. Each measurement runs in a fresh subprocess and reads
ru_maxrss: `loaded` after the model and conversations are in memory, `peak` after scoring. Measured for
  - ctxaware's scorer (score_conversations: lengths first, plans built per batch of the shard's own batches);
  - all plans held, as the scorer did before (every conversation's plan built, then score_plans on the shard).
The plans' share is the all-plans peak above the loaded baseline.

    python benchmarks/scoring_memory.py                              # 3000 conversations of ~1500 tokens
    python benchmarks/scoring_memory.py --conversations 500 --shards 1 2 4
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

WORDS = (
    "the quick brown fox jumps over lazy dog river town capital france paris light blue sky scatters atmosphere "
    "why what who when read passage answer question explain because sunlight most city north south east west"
).split()


def make_conversations(n: int, tokens: int, seed: int = 0) -> list[dict]:
    """Two-turn conversations of about `tokens` words, most of them in the user messages."""
    rng = random.Random(seed)

    def text(words: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(words)) + "."

    conversations = []
    for index in range(n):
        length = rng.randint(tokens // 2, tokens)
        messages = []
        for _ in range(2):
            messages += [
                {"role": "user", "content": text(length * 3 // 8)},
                {"role": "assistant", "content": text(length // 8)},
            ]
        conversations.append({"id": f"c{index}", "messages": messages})
    return conversations


def max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def child(model_dir: str, data: str, mode: str, shard: int, n_shards: int, max_length: int, batch_tokens: int):
    import torch

    from ctxaware.data import read_conversations
    from ctxaware.modeling import load_model
    from ctxaware.scoring import plan_conversation, score_conversations, score_plans

    torch.set_num_threads(1)
    model, tokenizer = load_model(model_dir, attn_implementation="sdpa")
    conversations = read_conversations(data)
    loaded = max_rss_mib()
    if mode == "scorer":
        table = score_conversations(
            model, tokenizer, conversations, [0], max_length, "none", batch_tokens, shard, n_shards
        )
        turns = len(table)
    else:
        plans = [plan_conversation(tokenizer, c, max_length) for c in conversations]
        turns = len(score_plans(model, plans, [0], batch_tokens, tokenizer.pad_token_id, shard, n_shards))
    print(json.dumps({"loaded": loaded, "peak": max_rss_mib(), "turns": turns}))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conversations", type=int, default=3000)
    parser.add_argument("--tokens", type=int, default=2000, help="words per conversation, at most (about 1 token each)")
    parser.add_argument("--max-length", type=int, default=2047)
    parser.add_argument("--batch-tokens", type=int, default=16384)
    parser.add_argument("--shards", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--child", nargs=4, metavar=("MODEL", "DATA", "MODE", "N_SHARDS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        model_dir, data, mode, n_shards = args.child
        child(model_dir, data, mode, 0, int(n_shards), args.max_length, args.batch_tokens)
        return

    import pandas as pd

    from ctxaware.data import read_conversations
    from ctxaware.modeling import load_model
    from ctxaware.scoring import plan_conversation
    from ctxaware.tiny import build_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.txt"
        corpus.write_text("\n".join(" ".join(random.Random(i).choices(WORDS, k=40)) for i in range(200)))
        model_dir = str(Path(tmp) / "model")
        build_tiny_model(model_dir, [str(corpus)], vocab_size=512, num_layers=2, max_position_embeddings=2048)
        data = str(Path(tmp) / "data.parquet")
        pd.DataFrame(make_conversations(args.conversations, args.tokens)).to_parquet(data)
        _, tokenizer = load_model(model_dir)
        sample = read_conversations(data)[:50]
        mean_tokens = sum(len(plan_conversation(tokenizer, c, args.max_length).input_ids) for c in sample) / 50
        print(
            f"{args.conversations} conversations, ~{mean_tokens:.0f} tokens each "
            f"(~{args.conversations * mean_tokens / 1e6:.1f}M tokens); tiny model, layer 0; shard 0 of each count"
        )
        print(f"{'scoring':28s} {'shards':>6s} {'loaded MiB':>11s} {'peak MiB':>9s} {'peak-loaded':>12s} {'turns':>6s}")
        for mode, name in (("all-plans", "all plans held (before)"), ("scorer", "ctxaware (plans per batch)")):
            for n_shards in args.shards:
                command = [sys.executable, __file__, "--child", model_dir, data, mode, str(n_shards)]
                command += ["--max-length", str(args.max_length), "--batch-tokens", str(args.batch_tokens)]
                result = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
                above = result["peak"] - result["loaded"]
                print(
                    f"{name:28s} {n_shards:6d} {result['loaded']:11.0f} {result['peak']:9.0f} {above:12.0f} "
                    f"{result['turns']:6d}"
                )


if __name__ == "__main__":
    main()
