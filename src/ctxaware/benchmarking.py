"""Measuring helpers shared by the scripts in benchmarks/."""

from __future__ import annotations

import os
import threading
import time

import torch


class PeakMemory:
    """Peak resident memory (CPU, sampled from /proc) or peak allocated memory (CUDA) during a block."""

    def __init__(self, device: str):
        self.device, self.peak, self._running = device, 0, False

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _sample(self):
        while self._running:
            self.peak = max(self.peak, self._rss() - self.start)
            time.sleep(0.002)

    def __enter__(self):
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
        else:
            self.start, self._running = self._rss(), True
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.device == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.start
        else:
            self._running = False
            self._thread.join()


def llama_config(tokenizer, args, max_positions: int):
    """A Llama config of the shape in args (layers, hidden, intermediate, heads, kv_heads, vocab) for a tokenizer;
    the embedding keeps args.vocab rows even where the tokenizer has fewer (a real model's shape)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=max(args.vocab, len(tokenizer)),
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        max_position_embeddings=max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
