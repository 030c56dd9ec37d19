"""One batched generation engine for every task: token-budget batches over length-sorted prompts, left
padding, greedy decoding (or seeded per-prompt sampling), stop strings, a prefix shared by a batch's prompts
prefilled once, and a per-prompt cache so an interrupted evaluation resumes."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch

from ctxaware.batching import token_budget_batches
from ctxaware.chat import render, render_lm_eval

# how a chat prompt ends: the template's generation prompt, or as lm-eval's chat rendering ends it (render_lm_eval)
PROMPT_ENDINGS = ("generation_prompt", "lm_eval")


@functools.cache
def kv_cache_name() -> str:
    """What transformers calls the KV cache, as a model argument and an output field: `cache` since transformers 5
    renamed `past_key_values`, which it still takes with a deprecation warning, or `past_key_values` before."""
    from transformers.modeling_outputs import CausalLMOutputWithPast

    names = {field.name for field in dataclasses.fields(CausalLMOutputWithPast)}
    return "cache" if "cache" in names else "past_key_values"


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


def prompt_seed(prompt_ids: list[int], seed: int) -> int:
    """A sampling seed of its own for each prompt, from the run's seed and the prompt's ids."""
    digest = hashlib.sha256(json.dumps({"seed": seed, "ids": list(prompt_ids)}).encode()).hexdigest()
    return int(digest[:15], 16)


class SeededSampler:
    """A logits processor that samples each row at its own temperature, with top-k and top-p (nucleus) filtering
    as transformers' warpers apply them, by the Gumbel-max trick: the argmax of the filtered, tempered logits plus
    Gumbel noise is a sample of their softmax. The noise comes from a generator seeded per prompt, so a prompt's
    answer depends on its ids and the seed alone, never on the batch it ran in: reruns, resumed and sharded runs
    agree. Rows at temperature 0 are left as they are (greedy)."""

    def __init__(self, temperatures: list[float], seeds: list[int], top_k: int, top_p: float, device):
        self.temperatures, self.top_k, self.top_p = temperatures, top_k, top_p
        self.generators = [
            torch.Generator(device=device).manual_seed(seed) if temperature > 0 else None
            for temperature, seed in zip(temperatures, seeds, strict=True)
        ]

    def __call__(self, input_ids, scores):
        scores = scores.clone()
        for row, (temperature, generator) in enumerate(zip(self.temperatures, self.generators, strict=True)):
            if generator is None:
                continue
            logits = scores[row].float() / temperature
            if 0 < self.top_k < logits.shape[-1]:
                kth = torch.topk(logits, self.top_k).values[-1]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            if self.top_p < 1.0:
                ordered, order = torch.sort(logits)  # ascending, as transformers' TopPLogitsWarper
                cumulative = ordered.softmax(-1).cumsum(-1)
                drop = cumulative <= 1 - self.top_p
                drop[-1] = False  # the most likely token always stays
                logits = logits.masked_fill(drop.scatter(0, order, drop), float("-inf"))
            uniform = torch.rand(logits.shape, generator=generator, device=logits.device, dtype=torch.float64)
            gumbel = -torch.log(-torch.log(uniform.clamp(1e-300, 1.0 - 1e-16)))
            scores[row] = (logits.double() + gumbel).to(scores.dtype)
        return scores


PREFILL_GAIN = 0.85  # prefill row by row when that runs at most this fraction of the padded batch's tokens


def common_prefix(first: list[int], second: list[int]) -> int:
    """How many leading tokens two prompts share."""
    n = min(len(first), len(second))
    differ = np.flatnonzero(np.asarray(first[:n]) != np.asarray(second[:n]))
    return int(differ[0]) if differ.size else n


def prefix_walk(prompts: list[list[int]], before: list[int] | None = None) -> tuple[list[int], list[int]]:
    """(order, shared): the prompts in token order of all but their last token (which runs with the batch), and
    for each in that order how many of those tokens it shares with the prompt before it (`before` precedes the
    first). Prefilling each prompt on its predecessor's cache computes every distinct prefix of the set once
    (the size of its trie): in token order a prompt's longest share with any other prompt is with a neighbour."""
    order = sorted(range(len(prompts)), key=lambda i: prompts[i][:-1])  # what a row's cache holds
    shared, previous = [], before
    for index in order:
        prompt = prompts[index]
        if previous is None:
            shared.append(0)
        else:
            shared.append(min(common_prefix(previous, prompt), len(previous) - 1, len(prompt) - 1))
        previous = prompt
    return order, shared


def walk_tokens(prompts: list[list[int]], shared: list[int], order: list[int]) -> int:
    """Tokens a prefix walk runs before decoding: each prompt's rest beyond its share (its last token with the
    batch), to set against the padded batch's."""
    return sum(len(prompts[i]) - s for i, s in zip(order, shared, strict=True))


def prefill_plan(prompts: list[list[int]], before: list[int] | None = None) -> tuple[list[int], list[int]] | None:
    """(order, shared) of prefix_walk when prefilling row by row, every shared prefix run once, costs at most
    PREFILL_GAIN of the left-padded batch's tokens (NIH grids: one haystack, the needle at many depths, with
    and without a response prefix; batches of very unequal lengths); None when the plain padded batch is as
    good."""
    if len(prompts) < 2 and before is None:
        return None
    order, shared = prefix_walk(prompts, before)
    if walk_tokens(prompts, shared, order) > PREFILL_GAIN * len(prompts) * max(len(p) for p in prompts):
        return None
    return order, shared


def walk_batches(prompts: list[list[int]], budget_lengths: list[int], batch_tokens: int) -> list[list[int]] | None:
    """Batches of consecutive prompts in token order within the budget, when walking the prompts' trie across
    them runs at most PREFILL_GAIN of the tokens of length-sorted padded batches (a grid of prompts over one
    text); None when length-sorted batches are as good (unrelated prompts)."""
    if len(prompts) < 2:
        return None
    order, shared = prefix_walk(prompts)
    padded = sum(
        len(batch) * max(len(prompts[i]) for i in batch) for batch in token_budget_batches(budget_lengths, batch_tokens)
    )
    if walk_tokens(prompts, shared, order) > PREFILL_GAIN * padded:
        return None
    return token_budget_batches(budget_lengths, batch_tokens, order)


def _plain_cache(cache) -> bool:
    """A cache of full-attention layers holding plain key and value tensors (what _prefill_rows can splice)."""
    layers = getattr(cache, "layers", None)
    return bool(layers) and all(
        isinstance(getattr(layer, "keys", None), torch.Tensor) and not getattr(layer, "is_sliding", False)
        for layer in layers
    )


def prefill_on(model, prompt: list[int], previous: list | None, length: int, device):
    """The KV cache of all but the prompt's last token, built on `previous` (a cache's per-layer keys and values)
    cut to the `length` tokens the prompt shares with it, running only the rest; None when the model's cache is
    not a plain per-layer key/value cache (sliding windows, recurrent state), which cannot be cut so."""
    from transformers import DynamicCache

    cache = DynamicCache()
    for index, (keys, values) in enumerate(previous if length else []):
        cache.update(keys[:, :, :length], values[:, :, :length], index)
    if len(prompt) - 1 > length:
        rest = torch.tensor([prompt[length:-1]], device=device)
        cache = getattr(model(input_ids=rest, **{kv_cache_name(): cache}, logits_to_keep=1), kv_cache_name())
        if not _plain_cache(cache):
            return None
    return cache


class Generator:
    """The transformers backend: greedy `model.generate` over left-padded batches of length-sorted prompts.

    When a batch's prompts share a long prefix or differ much in length (prefill_plan), the prompts are
    prefilled row by row without padding, the shared prefix once, and only decoding runs on the padded batch.
    """

    backend = "transformers"

    def __init__(
        self,
        model,
        tokenizer,
        batch_tokens: int = 8192,
        cache_path: str | None = None,
        share_prefixes: bool = True,
    ):
        self.model, self.tokenizer = model, tokenizer
        self.batch_tokens = batch_tokens
        self.share_prefixes = share_prefixes
        self.cache = GenerationCache(cache_path)
        self.n_generated = 0  # prompts actually run through the model (cache misses)
        self.n_row_prefilled = 0  # of those, prompts prefilled row by row on a shared prefix (prefill_plan)
        self.n_prefilled_tokens = 0  # tokens the model ran before decoding (row by row or padded)
        self._walk_tail = None  # (prompt, its layers' keys and values): the last prompt a prefix walk prefilled

    def context_window(self) -> int | None:
        """The most positions the model takes (prompt plus generated tokens), when its config says."""
        return getattr(self.model.config, "max_position_embeddings", None)

    def encode_chat(
        self,
        messages: list[dict],
        use_template: bool = True,
        response_prefix: str = "",
        ending: str = "generation_prompt",
    ) -> list[int]:
        """The conversation's prompt ids: in the chat template ending in its generation prompt, or as lm-eval
        ends it (ending lm_eval: render_lm_eval); or the messages' plain text (use_template False)."""
        if use_template:
            if ending not in PROMPT_ENDINGS:
                raise ValueError(f"prompt ending {ending!r} is not one of {PROMPT_ENDINGS}")
            if ending == "lm_eval":
                text = render_lm_eval(self.tokenizer, messages)
            else:
                text = render(self.tokenizer, messages, add_generation_prompt=True)
            return self.tokenizer(text + response_prefix, add_special_tokens=False)["input_ids"]
        text = "\n".join(m["content"] for m in messages if m["role"] != "system") + response_prefix
        return self.tokenizer(text, add_special_tokens=True)["input_ids"]

    def generate_ids(
        self,
        prompts: list[list[int]],
        max_new_tokens: int,
        stops: list[str] | None = None,
        temperatures: list[float] | None = None,
        sampling: dict | None = None,
    ) -> list[str]:
        """Continuations of token-id prompts, cut at the first stop string; cached prompts are not rerun.

        Greedy, unless `temperatures` gives a prompt a temperature above 0: that prompt is sampled with
        `sampling` ({seed, top_k, top_p}) from a seed of its own (SeededSampler), and its cache key holds them.
        """
        stops = stops or []
        temperatures = temperatures or [0.0] * len(prompts)
        settings = {"max_new_tokens": max_new_tokens, "stops": stops}
        if self.backend != "transformers":  # another engine's outputs never stand in for this one's
            settings["backend"] = self.backend
        keys = [
            GenerationCache.key(p, settings if t <= 0 else {**settings, "temperature": t, "sampling": sampling})
            for p, t in zip(prompts, temperatures, strict=True)
        ]
        missing = [i for i, k in enumerate(keys) if k not in self.cache.entries]
        # the batch budget counts the tokens a sequence will reach, prompt plus new tokens
        budget_lengths = [len(prompts[i]) + max_new_tokens for i in missing]
        self._walk_tail = None
        for batch in self._batches([prompts[i] for i in missing], budget_lengths):
            indices = [missing[j] for j in batch]
            outputs = self._generate_batch(
                [prompts[i] for i in indices], max_new_tokens, stops, [temperatures[i] for i in indices], sampling
            )
            self.cache.add([(keys[i], out) for i, out in zip(indices, outputs, strict=True)])
            self.n_generated += len(indices)
        self._walk_tail = None
        return [self.cache.entries[k] for k in keys]

    def _batches(self, prompts: list[list[int]], lengths: list[int]) -> list[list[int]]:
        """Index batches within the token budget (cache writes follow each batch): consecutive in token order
        when the prompts share long prefixes (walk_batches), else over length-sorted prompts."""
        walk = walk_batches(prompts, lengths, self.batch_tokens) if self.share_prefixes else None
        return walk or token_budget_batches(lengths, self.batch_tokens)

    @torch.inference_mode()
    def _generate_batch(
        self,
        prompts: list[list[int]],
        max_new_tokens: int,
        stops: list[str],
        temperatures: list[float] | None = None,
        sampling: dict | None = None,
    ) -> list[str]:
        device = next(self.model.parameters()).device
        processors = None
        if temperatures and any(t > 0 for t in temperatures):
            from transformers import LogitsProcessorList

            seeds = [prompt_seed(p, sampling["seed"]) for p in prompts]
            sampler = SeededSampler(temperatures, seeds, sampling["top_k"], sampling["top_p"], device)
            processors = LogitsProcessorList([sampler])
        pad = self.tokenizer.pad_token_id
        width = max(len(p) for p in prompts)
        # left padding: every prompt ends where generation starts
        input_ids = torch.tensor([[pad] * (width - len(p)) + list(p) for p in prompts], device=device)
        attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
        tail = self._walk_tail
        plan = prefill_plan(prompts, tail[0] if tail else None) if self.share_prefixes else None
        cache = None if plan is None else self._prefill_rows(prompts, *plan, device)
        self.n_row_prefilled += len(prompts) if cache is not None else 0
        if cache is None:
            self._walk_tail = None  # the padded batch runs every token of its prompts
            self.n_prefilled_tokens += len(prompts) * width
        generated = self.model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            **{kv_cache_name(): cache},  # all but each row's last token, when prefilled row by row
            max_new_tokens=max_new_tokens,
            do_sample=False,  # sampled rows are drawn by the SeededSampler, then picked by the argmax
            num_beams=1,
            logits_processor=processors,
            pad_token_id=pad,
            eos_token_id=self.tokenizer.eos_token_id,
            stop_strings=stops or None,
            tokenizer=self.tokenizer if stops else None,
        )
        texts = self.tokenizer.batch_decode(generated[:, width:], skip_special_tokens=True)
        return [cut_at_stops(t, stops).strip() for t in texts]

    def _prefill_rows(self, prompts: list[list[int]], order: list[int], shared: list[int], device):
        """The batch's KV cache for all but each prompt's last token, built without padding by a prefix walk:
        in token order each prompt starts from its predecessor's cache cut to their shared prefix (the batch's
        first from the previous batch's last prompt, self._walk_tail) and runs only its own rest; the rows'
        caches are right-aligned into one batch cache (zeros under the padding, which the attention mask
        hides). None for models whose cache is not a plain per-layer key/value cache (sliding windows,
        recurrent state): those take the padded batch."""
        from transformers import DynamicCache

        width = max(len(p) for p in prompts) - 1
        batch_layers = None
        previous = self._walk_tail[1] if self._walk_tail else None
        ran = 0
        for row, length in zip(order, shared, strict=True):
            prompt = prompts[row]
            cache = prefill_on(self.model, prompt, previous, length, device)
            if cache is None:
                self._walk_tail = None
                return None
            ran += max(len(prompt) - 1 - length, 0)
            previous = [(layer.keys, layer.values) for layer in cache.layers]
            self._walk_tail = (prompt, previous)
            size = len(prompt) - 1
            if size == 0:  # a one-token prompt: nothing before its last token
                continue
            if batch_layers is None:
                batch_layers = [
                    (
                        keys.new_zeros((len(prompts), keys.shape[1], width, keys.shape[3])),
                        values.new_zeros((len(prompts), values.shape[1], width, values.shape[3])),
                    )
                    for keys, values in previous
                ]
            for (batch_keys, batch_values), (keys, values) in zip(batch_layers, previous, strict=True):
                batch_keys[row, :, width - size :] = keys[0]
                batch_values[row, :, width - size :] = values[0]
        if batch_layers is None:
            return None
        self.n_prefilled_tokens += ran + len(prompts)  # and each prompt's last token, run with the batch
        batch = DynamicCache()
        for index, (keys, values) in enumerate(batch_layers):
            batch.update(keys, values, index)
        return batch
