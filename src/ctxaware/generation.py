"""One batched generation engine for every task: token-budget batches over length-sorted prompts, left
padding, greedy decoding, stop strings, and a per-prompt cache so an interrupted evaluation resumes."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from ctxaware.chat import render
from ctxaware.scoring import token_budget_batches


def cut_at_stops(text: str, stops: list[str]) -> str:
    cut = len(text)
    for stop in stops:
        index = text.find(stop)
        if 0 <= index < cut:
            cut = index
    return text[:cut]


class GenerationCache:
    """Append-only jsonl of {key, output}; keys hash the prompt and the decoding settings."""

    def __init__(self, path: str | None):
        self.path = Path(path) if path else None
        self.entries: dict[str, str] = {}
        if self.path and self.path.exists():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:  # a line cut by a kill: that prompt is simply regenerated
                    continue
                self.entries[record["key"]] = record["output"]

    @staticmethod
    def key(prompt_ids: list[int], settings: dict) -> str:
        payload = json.dumps({"ids": prompt_ids, **settings}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()

    def add(self, items: list[tuple[str, str]]) -> None:
        for key, output in items:
            self.entries[key] = output
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a+b") as tail:  # a line cut by a kill must not swallow the next record
                if tail.seek(0, os.SEEK_END) > 0:
                    tail.seek(-1, os.SEEK_END)
                    if tail.read(1) != b"\n":
                        tail.write(b"\n")
            with self.path.open("a", encoding="utf-8") as handle:
                handle.writelines(json.dumps({"key": k, "output": o}) + "\n" for k, o in items)
                handle.flush()
                os.fsync(handle.fileno())


class Generator:
    """The transformers backend: greedy `model.generate` over left-padded batches of length-sorted prompts."""

    backend = "transformers"

    def __init__(self, model, tokenizer, batch_tokens: int = 8192, cache_path: str | None = None):
        self.model, self.tokenizer = model, tokenizer
        self.batch_tokens = batch_tokens
        self.cache = GenerationCache(cache_path)
        self.n_generated = 0  # prompts actually run through the model (cache misses)

    def encode_chat(self, messages: list[dict], use_template: bool = True, response_prefix: str = "") -> list[int]:
        if use_template:
            text = render(self.tokenizer, messages, add_generation_prompt=True)
            return self.tokenizer(text + response_prefix, add_special_tokens=False)["input_ids"]
        text = "\n".join(m["content"] for m in messages if m["role"] != "system") + response_prefix
        return self.tokenizer(text, add_special_tokens=True)["input_ids"]

    def generate_ids(self, prompts: list[list[int]], max_new_tokens: int, stops: list[str] | None = None) -> list[str]:
        """Greedy continuations of token-id prompts, cut at the first stop string; cached prompts are not rerun."""
        stops = stops or []
        settings = {"max_new_tokens": max_new_tokens, "stops": stops}
        if self.backend != "transformers":  # another engine's outputs never stand in for this one's
            settings["backend"] = self.backend
        keys = [GenerationCache.key(p, settings) for p in prompts]
        missing = [i for i, k in enumerate(keys) if k not in self.cache.entries]
        # the batch budget counts the tokens a sequence will reach, prompt plus new tokens
        budget_lengths = [len(prompts[i]) + max_new_tokens for i in missing]
        for batch in self._batches(budget_lengths):
            indices = [missing[j] for j in batch]
            outputs = self._generate_batch([prompts[i] for i in indices], max_new_tokens, stops)
            self.cache.add([(keys[i], out) for i, out in zip(indices, outputs, strict=True)])
            self.n_generated += len(indices)
        return [self.cache.entries[k] for k in keys]

    def _batches(self, lengths: list[int]) -> list[list[int]]:
        """Index batches over length-sorted prompts within the token budget (cache writes follow each batch)."""
        return token_budget_batches(lengths, self.batch_tokens)

    @torch.inference_mode()
    def _generate_batch(self, prompts: list[list[int]], max_new_tokens: int, stops: list[str]) -> list[str]:
        device = next(self.model.parameters()).device
        pad = self.tokenizer.pad_token_id
        longest = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), longest), pad, dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        for row, prompt in enumerate(prompts):  # left padding: every prompt ends where generation starts
            input_ids[row, longest - len(prompt) :] = torch.tensor(prompt)
            attention_mask[row, longest - len(prompt) :] = 1
        generated = self.model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            pad_token_id=pad,
            eos_token_id=self.tokenizer.eos_token_id,
            stop_strings=stops or None,
            tokenizer=self.tokenizer if stops else None,
        )
        texts = self.tokenizer.batch_decode(generated[:, longest:], skip_special_tokens=True)
        return [cut_at_stops(t, stops).strip() for t in texts]
