"""Benchmark of NIH generation: the original's procedure vs ctxaware's engine, in one process, same outputs.

The grid is the embedded default's NIH grid (config/config.yaml with the schema's defaults: lengths, depths,
max_new_tokens, template, the first model's context cap) over the shipped essays of resources/haystack, on a
random-weight Llama with a byte-level BPE tokenizer (ctxaware.tiny, trained on resources/).

  (a) the original's way (LLMTest_NeedleInAHaystack, which the paper's code modified): for every (length,
      depth) the haystack files are re-read and the whole haystack tokenised twice (read_context_files counts
      its tokens, encode_and_trim cuts it), the needle placed, the prompt built and tokenised, and
      `model.generate` runs on that one prompt;
  (b) ctxaware: the haystack read and tokenised once (ctxaware.tasks.nih.build_cases), then the batched engine
      (ctxaware.generation.Generator: token-budget batches, consecutive in token order when the prompts share
      long prefixes; a prefix walk prefills every prefix they share once and each prompt's rest without padding,
      then greedy decoding of the whole left-padded batch).

It asserts that (a) and (b) produce identical outputs and prints prompts/s of each and the ratio b/a.

    python benchmarks/generation.py            # CPU, fp32: the embedded default's shape (config `organism`)
    python benchmarks/generation.py --layers 6 --hidden 256 --intermediate 688 --heads 8 --kv-heads 4
    python benchmarks/generation.py --gpu --paper-grid --repeats 1   # the real TinyLlama-1.1B shape (22 layers, hidden
                                               # 2048, 32 / 4 heads, vocab 32000), random weights, CUDA bf16,
                                               # on the paper's 20 x 20 grid up to 2000 tokens, 50 new tokens
"""

from __future__ import annotations

import argparse
import copy
import math
import tempfile
import time
from pathlib import Path

import torch
import yaml
from transformers import AutoModelForCausalLM, LlamaForCausalLM

from ctxaware.benchmarking import llama_config
from ctxaware.generation import Generator
from ctxaware.modeling import load_tokenizer
from ctxaware.tasks import nih
from ctxaware.tiny import build_tiny_model

ROOT = Path(__file__).resolve().parents[1]
TINYLLAMA = {"hidden": 2048, "intermediate": 5632, "layers": 22, "heads": 32, "kv_heads": 4, "vocab": 32000}


def embedded_config() -> dict:
    """config/config.yaml with the schema's defaults filled in, as the workflow reads it."""
    from snakemake.utils import validate

    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    validate(config, str(ROOT / "workflow" / "schemas" / "config.schema.yaml"))
    return config


def embedded_nih_settings() -> dict:
    """evaluation.nih of the embedded default, capped like the first model's job."""
    config = embedded_config()
    settings = dict(config["evaluation"]["nih"])
    model = next(iter(config["models"].values()))
    dataset = next(iter(config["datasets"].values()))
    settings["max_context"] = min(c for c in (model["nih_max_context"], dataset["nih_max_context"]) if c)
    # the shipped essays: the organism's haystack is a workflow artifact (results/organism/haystack), and this
    # benchmark times generation, not the world
    settings["haystack"] = str(ROOT / "resources" / "haystack")
    settings["batch_tokens"] = config["evaluation"]["batch_tokens"]
    return settings


def build_model(args, work: str, device: str, dtype: torch.dtype):
    """(model, tokenizer): the workflow's tokenizer (trained on resources/) and a random Llama of args' shape."""
    folders = [ROOT / "resources" / d for d in ("sft", "haystack", "eval")]
    corpus = [str(f) for folder in folders for f in sorted(folder.rglob("*")) if f.is_file()]
    build_tiny_model(work, corpus, vocab_size=min(args.vocab, 4096), hidden_size=8, intermediate_size=8, num_layers=1)
    # (the BPE vocabulary is capped: resources/ is too small a corpus for TinyLlama's 32000 merges)
    tokenizer = load_tokenizer(work)
    torch.manual_seed(0)
    config = llama_config(tokenizer, args, max_positions=4096)  # TinyLlama's 32000 rows, whatever the tokenizer has
    LlamaForCausalLM(config).save_pretrained(work)
    model = AutoModelForCausalLM.from_pretrained(work, dtype=dtype, attn_implementation="sdpa")
    if config.vocab_size > len(tokenizer):  # rows without a token would decode to nothing: never generate them
        model.generation_config.suppress_tokens = list(range(len(tokenizer), config.vocab_size))
    return model.to(device).eval(), tokenizer


def read_context_files(tokenizer, haystack_dir: str, max_context: int) -> str:
    """The original's haystack loading (LLMTest_NeedleInAHaystack's read_context_files), run once per test:
    read every file again, counting tokens by tokenising the whole text, until the longest context fits."""
    context = ""
    while len(tokenizer(context, add_special_tokens=False)["input_ids"]) < max_context:
        for file in sorted(Path(haystack_dir).glob("*.txt")):
            context += file.read_text(encoding="utf-8").replace("\n", " ")
    return context


@torch.inference_mode()
def run_original(model, tokenizer, settings: dict, period_ids: set[int]) -> list[str]:
    """The original procedure: every test re-reads the haystack files and tokenises the whole haystack twice
    (to count it, then to trim it), places the needle, builds and tokenises the prompt, and generates alone.
    The needle placement and prompt are ctxaware's, so that both sides see the same prompts."""
    device = next(model.parameters()).device
    encoder = Generator(model, tokenizer)  # only for its chat encoding, shared with (b) so prompts are equal
    template = nih.resolve_template(settings["prompt_template"])
    lengths, depths = nih.grid(
        settings["min_context"], settings["max_context"], settings["n_lengths"], settings["n_depths"]
    )
    outputs = []
    for length in lengths:
        for depth in depths:
            haystack = read_context_files(tokenizer, settings["haystack"], max(lengths))
            haystack_ids = tokenizer(haystack, add_special_tokens=False)["input_ids"]  # encode_and_trim
            needle_ids = tokenizer(" " + settings["needle"].strip() + " ", add_special_tokens=False)["input_ids"]
            budget = nih.context_budget(length, settings["context_buffer"], len(needle_ids))
            context = tokenizer.decode(nih.insert_needle(haystack_ids, needle_ids, budget, depth, period_ids))
            prompt = template.format(context=context, question=settings["question"])
            ids = encoder.encode_chat([{"role": "user", "content": prompt}], settings["use_chat_template"])
            generated = model.generate(
                torch.tensor([ids], device=device),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long, device=device),
                max_new_tokens=settings["max_new_tokens"],
                do_sample=False,
                num_beams=1,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
            outputs.append(tokenizer.decode(generated[0, len(ids) :], skip_special_tokens=True).strip())
    return outputs


def run_ours(model, tokenizer, settings: dict) -> list[str]:
    """ctxaware: build every case once, then the batched engine (no cache, so everything is generated)."""
    generator = Generator(model, tokenizer, settings["batch_tokens"])
    cases = nih.build_cases(tokenizer, settings, settings["max_context"])
    prompts = [
        generator.encode_chat([{"role": "user", "content": c["prompt"]}], settings["use_chat_template"]) for c in cases
    ]
    return generator.generate_ids(prompts, settings["max_new_tokens"])


def timed(function, device: str) -> tuple[float, list[str]]:
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = function()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    shape = embedded_config()["organism"]["pretraining"]  # default shape: the embedded default's organism
    parser.add_argument("--layers", type=int, default=shape["num_layers"])
    parser.add_argument("--hidden", type=int, default=shape["hidden_size"])
    parser.add_argument("--intermediate", type=int, default=shape["intermediate_size"])
    parser.add_argument("--heads", type=int, default=shape["num_heads"])
    parser.add_argument("--kv-heads", type=int, default=shape["num_kv_heads"])
    parser.add_argument("--vocab", type=int, default=1024)  # the organism's word-level vocabulary is ~830
    parser.add_argument("--gpu", action="store_true", help="the real TinyLlama-1.1B shape on CUDA")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], help="default: float32 (CPU), bfloat16 (GPU)")
    parser.add_argument("--repeats", type=int, default=5, help="each side's time is the best of these")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (1: on cores that other jobs share, OpenMP threads mostly wait on each other)",
    )
    parser.add_argument("--lengths", type=int, help="override the grid's number of context lengths")
    parser.add_argument("--depths", type=int, help="override the grid's number of depths")
    parser.add_argument("--max-context", type=int, help="override the grid's largest context")
    parser.add_argument("--max-new-tokens", type=int, help="override the grid's max_new_tokens")
    parser.add_argument(
        "--paper-grid", action="store_true", help="the paper's TinyLlama grid: 20 x 20, contexts 200..2000, 50 tokens"
    )
    args = parser.parse_args()
    device = "cuda" if args.gpu else "cpu"
    if args.gpu:
        if not torch.cuda.is_available():
            parser.error("--gpu needs CUDA")
        for key, value in TINYLLAMA.items():
            setattr(args, key, value)
    dtype = getattr(torch, args.dtype or ("bfloat16" if args.gpu else "float32"))
    torch.set_num_threads(args.threads)

    settings = embedded_nih_settings()
    if args.paper_grid:
        settings.update(n_lengths=20, n_depths=20, min_context=200, max_context=2000, max_new_tokens=50)
    for key, value in (
        ("n_lengths", args.lengths),
        ("n_depths", args.depths),
        ("max_context", args.max_context),
        ("max_new_tokens", args.max_new_tokens),
    ):
        if value:
            settings[key] = value
    with tempfile.TemporaryDirectory() as work:
        model, tokenizer = build_model(args, work, device, dtype)
        n_params = sum(p.numel() for p in model.parameters())
        haystack_ids = tokenizer(nih.load_haystack(settings["haystack"]), add_special_tokens=False)["input_ids"]
        period_ids = nih.sentence_end_ids(tokenizer, haystack_ids)
        n_prompts = settings["n_lengths"] * settings["n_depths"]
        print(
            f"model: {args.layers} layers, hidden {args.hidden}, {args.heads}/{args.kv_heads} heads, vocab "
            f"{model.config.vocab_size}, {n_params / 1e6:.1f}M parameters, {dtype} on {device} "
            f"({torch.get_num_threads()} threads)"
        )
        print(
            f"NIH grid: {settings['n_lengths']} lengths {settings['min_context']}..{settings['max_context']} x "
            f"{settings['n_depths']} depths = {n_prompts} prompts, {settings['max_new_tokens']} new tokens, "
            f"template {settings['prompt_template']!r}, batch_tokens {settings['batch_tokens']}"
        )
        run_ours(model, tokenizer, copy.deepcopy(settings))  # warm-up (allocator, kernels) for both sides
        best = {"original": math.inf, "ctxaware": math.inf}
        results = {}
        for _ in range(args.repeats):  # interleaved, so a noisy neighbour slows both sides alike
            for name, function in (
                ("original", lambda: run_original(model, tokenizer, settings, period_ids)),
                ("ctxaware", lambda: run_ours(model, tokenizer, settings)),
            ):
                seconds, results[name] = timed(function, device)
                best[name] = min(best[name], seconds)
    same = sum(a == b for a, b in zip(results["original"], results["ctxaware"], strict=True))
    for name in best:
        print(f"{name:>9}: {best[name]:8.3f} s  {n_prompts / best[name]:8.2f} prompts/s")
    print(f"ratio ctxaware / original: {best['original'] / best['ctxaware']:.2f}x prompts/s")
    print(f"identical outputs: {same}/{n_prompts}; e.g. {results['ctxaware'][-1]!r}")
    assert any(results["ctxaware"]), "every output is empty: nothing was compared"
    if dtype == torch.float32:  # bf16 kernels round batched and single rows differently; fp32 must agree
        assert same == n_prompts, "batched and one-at-a-time greedy outputs differ"


if __name__ == "__main__":
    main()
