"""The organism's tokenizer (word level over the world's vocabulary) and the pretraining of its base model on plain
text (no chat template), saved with save_pretrained so every later stage loads it like a hub model."""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import time
from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from ctxaware.tiny import ROLE_HEADERS, SPECIAL_TOKENS, chat_tokenizer  # single-token headers: crisp role spans


def _normalizer():
    return normalizers.Lowercase()


def _pre_tokenizer():
    return pre_tokenizers.Whitespace()  # words and runs of punctuation; newlines are just whitespace


def words_of(texts: Iterable[str]) -> set[str]:
    """The word-level tokens of the texts, as the tokenizer will split them."""
    normalizer, pre_tokenizer = _normalizer(), _pre_tokenizer()
    words: set[str] = set()
    for text in texts:
        words.update(word for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    return words


def build_tokenizer(words: Iterable[str]) -> PreTrainedTokenizerFast:
    """A word-level tokenizer: one token per word of the world (names, cities, template words), <unk> otherwise;
    text is lower-cased; plain encoding starts with <s>; decoding joins words with spaces."""
    specials = SPECIAL_TOKENS + ROLE_HEADERS
    vocab = {token: index for index, token in enumerate(specials + sorted(set(words) - set(specials)))}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.normalizer = _normalizer()
    tokenizer.pre_tokenizer = _pre_tokenizer()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", vocab["<s>"])]
    )
    tokenizer.add_special_tokens(specials)
    return chat_tokenizer(tokenizer)


def encode_documents(
    tokenizer, documents: list[list[tuple[str, bool]]], max_length: int, answer_weight: float, other_weight: float
) -> list[tuple[list[int], list[float]]]:
    """Token ids and per-token loss weights of each document: <s> segments </s>; answer segments (and the
    closing </s>) weigh answer_weight, the rest other_weight; cut to max_length."""
    # every segment in one batch call of the Rust tokenizer, on its own threads (a job turns them off for the forks
    # some libraries make later; none follows here): the same ids as one call each through transformers (a test
    # checks), 7.7 s -> 4.5 s -> 2.5 s for the embedded default's 32,000 documents on 2 cores
    texts = [text for segments in documents for text, _ in segments]
    with _tokenizer_threads():
        encodings = tokenizer.backend_tokenizer.encode_batch(texts, add_special_tokens=False)
    pieces = iter(encoding.ids for encoding in encodings)
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    encoded = []
    for segments in documents:
        ids, weights = [bos], [0.0]
        for _, is_answer in segments:
            piece = next(pieces)
            ids += piece
            weights += [answer_weight if is_answer else other_weight] * len(piece)
        ids.append(eos)
        weights.append(answer_weight)
        encoded.append((ids[:max_length], weights[:max_length]))
    return encoded


@contextlib.contextmanager
def _tokenizer_threads():
    previous = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "true"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("TOKENIZERS_PARALLELISM")
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = previous


def length_batches(lengths: list[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Batches of similar lengths (less padding) in random order: shuffle, sort within pools, cut, shuffle."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    pool = batch_size * 32
    batches = []
    for start in range(0, len(order), pool):
        chunk = sorted(order[start : start + pool], key=lambda i: lengths[i])
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def model_config(tokenizer, settings: dict) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=settings["hidden_size"],
        intermediate_size=settings["intermediate_size"],
        num_hidden_layers=settings["num_layers"],
        num_attention_heads=settings["num_heads"],
        num_key_value_heads=settings["num_kv_heads"],
        max_position_embeddings=settings["max_position_embeddings"],
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )


def pretrain(
    out_dir: str,
    tokenizer,
    documents: list[list[tuple[str, bool]]],
    settings: dict,
    seed: int,
    log_every: int = 100,
) -> dict:
    """Train a small Llama from scratch on the documents (one pass, weighted next-token loss) and save it with
    its tokenizer. settings: model shape (hidden_size, intermediate_size, num_layers, num_heads, num_kv_heads,
    max_position_embeddings) and training (batch_size, learning_rate, warmup_steps, max_length,
    answer_weight, other_weight)."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    model = LlamaForCausalLM(model_config(tokenizer, settings))
    model.train()
    data = encode_documents(
        tokenizer, documents, settings["max_length"], settings["answer_weight"], settings["other_weight"]
    )
    batches = length_batches([len(ids) for ids, _ in data], settings["batch_size"], rng)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings["learning_rate"], betas=(0.9, 0.95), weight_decay=0.0)
    total, warmup = len(batches), settings["warmup_steps"]

    def rate(step: int) -> float:  # linear warm-up, cosine down to a tenth
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, rate)
    history, started, running = [], time.time(), 0.0
    for step, batch in enumerate(batches):
        width = max(len(data[i][0]) for i in batch)
        ids = torch.full((len(batch), width), tokenizer.pad_token_id, dtype=torch.long)
        weights = torch.zeros((len(batch), width))
        for row, index in enumerate(batch):
            tokens, token_weights = data[index]
            ids[row, : len(tokens)] = torch.tensor(tokens)
            weights[row, : len(tokens)] = torch.tensor(token_weights)
        # right padding: real tokens never see the pads that follow them, whose weight is 0
        logits = model(input_ids=ids).logits[:, :-1]
        losses = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="none"
        ).view(len(batch), width - 1)
        target_weights = weights[:, 1:]
        loss = (losses * target_weights).sum() / target_weights.sum().clamp_min(1e-8)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        running += loss.item()
        if (step + 1) % log_every == 0 or step + 1 == total:
            n = (step % log_every) + 1
            history.append({"step": step + 1, "loss": running / n, "elapsed_s": round(time.time() - started, 1)})
            print(
                f"step {step + 1}/{total}: weighted loss {running / n:.4f} ({time.time() - started:.0f} s)", flush=True
            )
            running = 0.0
    model.eval()
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    log = {
        "parameters": sum(p.numel() for p in model.parameters()),
        "vocab_size": len(tokenizer),
        "documents": len(data),
        "tokens": sum(len(ids) for ids, _ in data),
        "steps": total,
        "train_runtime_s": round(time.time() - started, 1),
        "settings": settings,
        "seed": seed,
        "history": history,
    }
    (Path(out_dir) / "pretrain_log.json").write_text(json.dumps(log, indent=1))
    return log
