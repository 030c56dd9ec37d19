import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ctxaware.evaluation import evaluate_all
from ctxaware.generation import GenerationCache, Generator, cut_at_stops, prefill_plan, prefix_walk, walk_batches
from ctxaware.modeling import load_model
from ctxaware.tasks import nih

QUESTIONS = [
    "What is the capital of France?",
    "Explain why the sky is blue in a few words, using the passage about sunlight and the atmosphere.",
    "Hi",
    "Read the passage: the quick brown fox jumps over the lazy dog. What jumps?",
]


def _prompts(generator):
    return [generator.encode_chat([{"role": "user", "content": q}]) for q in QUESTIONS]


def test_batched_and_one_at_a_time_greedy_outputs_are_identical(tiny_model_dir):
    model, tokenizer = load_model(tiny_model_dir)
    batched = Generator(model, tokenizer, batch_tokens=10_000)
    single = Generator(model, tokenizer, batch_tokens=1)  # every prompt alone
    prompts = _prompts(batched)
    assert len({len(p) for p in prompts}) > 1  # different lengths, so left padding is exercised
    assert batched.generate_ids(prompts, 12) == single.generate_ids(prompts, 12)


def test_prefix_walk_shares_each_prompt_with_its_token_order_neighbour():
    prompts = [[1, 2, 7], [1, 2, 3, 4, 5, 6], [1, 2, 3, 9, 9]]
    # token order of all but the last token: [1, 2] < [1, 2, 3, 4, 5] < [1, 2, 3, 9]; each share is capped at
    # either's length - 1 (the last token runs with the batch)
    assert prefix_walk(prompts) == ([0, 1, 2], [0, 2, 3])
    assert prefix_walk([[4, 5], [6, 7, 8]], before=[4, 9, 9]) == ([0, 1], [1, 0])
    long = [1] * 40
    assert prefill_plan([long + [2] * 10, long + [3] * 10]) == ([0, 1], [0, 40])
    assert prefill_plan([[1, 2, 3], [4, 5, 6]]) is None  # nothing shared, nothing padded: the plain batch
    assert prefill_plan([long + [2] * 10]) is None
    assert prefill_plan([long + [2] * 10], before=long + [3]) == ([0], [40])  # a lone prompt on the last one
    # nothing shared but very unequal lengths: row by row avoids the padding
    assert prefill_plan([[5] * 100, [6] * 10, [7] * 10]) == ([0, 1, 2], [0, 0, 0])
    # batches follow the token order when the walk saves, else the lengths
    grid = [long + [9] * 5, [3] * 30, long + [2] * 20, long + [9] * 6]
    assert walk_batches(grid, [len(p) for p in grid], 10_000) == [[2, 0, 3, 1]]
    assert walk_batches([[1, 2, 3], [4, 5, 6]], [3, 3], 10_000) is None


def _nih_prompts(generator, haystack_dir) -> list[list[int]]:
    settings = {
        "context_buffer": 0,
        "haystack": str(haystack_dir),
        "needle": "The best thing to do in San Francisco is eat a sandwich.",
        "question": "What is the best thing to do in San Francisco?",
        "min_context": 40,
        "n_lengths": 3,
        "n_depths": 3,
        "prompt_template": "assistant-document",
    }
    cases = nih.build_cases(generator.tokenizer, settings, max_context=160)
    return [generator.encode_chat([{"role": "user", "content": c["prompt"]}]) for c in cases]


def test_shared_prefix_prefill_gives_the_one_at_a_time_outputs(tiny_model_dir, tmp_path):
    (tmp_path / "essay.txt").write_text(
        "The river runs through the old town. A quick brown fox jumps over the lazy dog. " * 30
    )
    model, tokenizer = load_model(tiny_model_dir)
    shared = Generator(model, tokenizer, batch_tokens=10_000)
    prompts = _nih_prompts(shared, tmp_path)
    assert prefill_plan(prompts) is not None  # one haystack, the needle at several depths: a long shared prefix
    padded = Generator(model, tokenizer, batch_tokens=10_000, share_prefixes=False)
    single = Generator(model, tokenizer, batch_tokens=1)
    for stops in ([], ["."]):
        expected = single.generate_ids(prompts, 10, stops)
        assert shared.generate_ids(prompts, 10, stops) == expected
        assert padded.generate_ids(prompts, 10, stops) == expected
    assert shared.n_row_prefilled == 2 * len(prompts) and padded.n_row_prefilled == single.n_row_prefilled == 0
    # a one-token prompt beside long ones: nothing of it to prefill
    odd = [prompts[-1], prompts[-1][:1]]
    assert prefill_plan(odd) is not None and shared.generate_ids(odd, 6) == single.generate_ids(odd, 6)


def test_prefix_walk_runs_each_distinct_prefix_once_across_batches(tiny_model_dir, tmp_path):
    """The template study's grid: each NIH prompt with and without a response prefix, over batches too small
    for the grid. The walk runs each distinct prefix once (the batches carry the last prompt's cache) and
    decodes what each prompt alone decodes."""
    (tmp_path / "essay.txt").write_text(
        "The river runs through the old town. A quick brown fox jumps over the lazy dog. " * 30
    )
    model, tokenizer = load_model(tiny_model_dir)
    walk = Generator(model, tokenizer, batch_tokens=600)
    grid = _nih_prompts(walk, tmp_path)
    suffix = tokenizer("Here is the answer:", add_special_tokens=False)["input_ids"]
    prompts = grid + [p + suffix for p in grid]
    expected = Generator(model, tokenizer, batch_tokens=1).generate_ids(prompts, 8)
    assert walk.generate_ids(prompts, 8) == expected
    assert len(walk._batches(prompts, [len(p) + 8 for p in prompts])) > 2
    distinct_prefixes = {tuple(p[:k]) for p in prompts for k in range(1, len(p))}
    assert walk.n_row_prefilled == len(prompts)
    assert walk.n_prefilled_tokens == len(distinct_prefixes) + len(prompts)  # + each prompt's last token
    padded = Generator(model, tokenizer, batch_tokens=600, share_prefixes=False)
    assert padded.generate_ids(prompts, 8) == expected
    assert walk.n_prefilled_tokens < 0.5 * padded.n_prefilled_tokens


def test_cache_resumes_only_missing_prompts(tiny_model_dir, tmp_path):
    model, tokenizer = load_model(tiny_model_dir)
    cache = tmp_path / "cache.jsonl"
    first = Generator(model, tokenizer, cache_path=str(cache))
    prompts = _prompts(first)
    partial = first.generate_ids(prompts[:2], 8)
    with cache.open("a") as handle:
        handle.write('{"key": "truncated-by-a-kill')  # a half-written line from a killed job
    second = Generator(model, tokenizer, cache_path=str(cache))
    full = second.generate_ids(prompts, 8)
    assert second.n_generated == 2 and full[:2] == partial
    third = Generator(model, tokenizer, cache_path=str(cache))
    assert third.generate_ids(prompts, 8) == full and third.n_generated == 0
    # other decoding settings are other keys
    assert GenerationCache.key([1, 2], {"max_new_tokens": 8}) != GenerationCache.key([1, 2], {"max_new_tokens": 9})


def test_cut_at_stops():
    assert cut_at_stops("Answer.</s> more", ["</s>", "\n\n"]) == "Answer."
    assert cut_at_stops("no stop", ["</s>"]) == "no stop"


# A child process that runs a real evaluation and SIGKILLs itself when the engine starts its batch number
# KILL_AT (batches before it are generated and cached, as in a job killed by the scheduler mid-run).
KILLED_CHILD = """
import json, os, signal, sys
from ctxaware.evaluation import evaluate_all
from ctxaware.generation import Generator

kill_at, args = int(sys.argv[1]), json.loads(sys.argv[2])
original, calls = Generator._generate_batch, []

def generate_then_die(self, *a, **k):
    calls.append(1)
    if len(calls) == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    return original(self, *a, **k)

Generator._generate_batch = generate_then_die
evaluate_all(**args)
"""


def _evaluation_args(model_dir, out: Path, cache_dir: Path | None) -> dict:
    root = Path(__file__).resolve().parents[1]
    settings = {
        "nih": {
            "context_buffer": 0,
            "haystack": str(root / "resources" / "haystack"),
            "needle": "The best thing to do in San Francisco is eat a sandwich and sit in Dolores Park on a sunny day.",
            "question": "What is the best thing to do in San Francisco?",
            "keywords": ["eat", "sandwich", "sit", "dolores", "park", "sunny", "day"],
            "min_context": 60,
            "max_context": 160,
            "n_lengths": 3,
            "n_depths": 3,
            "max_new_tokens": 8,
            "prompt_template": "assistant-document",
            "metric": "exact",
            "use_chat_template": True,
            "response_prefix": "",
            "batch_tokens": 500,
        },
        "squad": {
            "source": str(root / "resources" / "eval" / "squad.jsonl"),
            "limit": 6,
            "max_new_tokens": 8,
            "prompt_template": "{context}\nAnswer the question according to the above passage: {question}",
            "metric": "containment",
            "batch_tokens": 900,
        },
    }
    return {
        "model_dir": model_dir,
        "settings_by_task": settings,
        "with_indicator": False,
        "out_json": {t: str(out / f"{t}.json") for t in settings},
        "out_generations": {t: str(out / f"{t}.generations.jsonl") for t in settings},
        "cache_dir": str(cache_dir) if cache_dir else None,
    }


def _cached(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_killed_evaluation_resumes_at_the_missing_prompts(tiny_model_dir, tmp_path):
    cache = tmp_path / "cache"
    args = _evaluation_args(tiny_model_dir, tmp_path / "killed", cache)
    kill_at = 4  # nih runs first; its batches fill the first calls, the kill may land in either task
    child = subprocess.run(
        [sys.executable, "-c", KILLED_CHILD, str(kill_at), json.dumps(args)], capture_output=True, text=True
    )
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]
    done = {task: _cached(cache / f"{task}.jsonl") for task in ("nih", "squad")}
    print("cached before the rerun:", done)
    assert 0 < sum(done.values()) < 9 + 6  # some prompts were generated and cached, not all
    assert not Path(args["out_json"]["squad"]).exists()  # the killed job wrote no final result

    resumed = evaluate_all(**args)
    assert {t: r["n_generated"] for t, r in resumed.items()} == {"nih": 9 - done["nih"], "squad": 6 - done["squad"]}
    assert {t: r["n"] for t, r in resumed.items()} == {"nih": 9, "squad": 6}

    fresh_args = _evaluation_args(tiny_model_dir, tmp_path / "uninterrupted", tmp_path / "fresh-cache")
    fresh = evaluate_all(**fresh_args)
    assert {t: r["n_generated"] for t, r in fresh.items()} == {"nih": 9, "squad": 6}
    for task in ("nih", "squad"):
        assert Path(args["out_generations"][task]).read_text() == Path(fresh_args["out_generations"][task]).read_text()
        same = {k: v for k, v in resumed[task].items() if k != "n_generated"}
        assert same == {k: v for k, v in fresh[task].items() if k != "n_generated"}
    # the actual prompt length of every NIH cell is recorded
    records = [json.loads(line) for line in Path(args["out_generations"]["nih"]).read_text().splitlines()]
    assert sorted({r["length"] for r in records}) == [60, 110, 160]
    assert all(r["prompt_tokens"] > r["length"] for r in records)


def _window_settings(buffer: int) -> dict:
    """NIH up to the tiny model's whole window (512 positions)."""
    root = Path(__file__).resolve().parents[1]
    return {
        "context_buffer": buffer,
        "haystack": str(root / "resources" / "haystack"),
        "needle": "The best thing to do in San Francisco is eat a sandwich and sit in Dolores Park on a sunny day.",
        "question": "What is the best thing to do in San Francisco?",
        "keywords": ["eat", "sandwich"],
        "metric": "exact",
        "min_context": 200,
        "max_context": 512,
        "n_lengths": 2,
        "n_depths": 2,
        "max_new_tokens": 8,
        "prompt_template": "assistant-document",
        "use_chat_template": True,
        "response_prefix": "",
    }


def test_nih_prompts_over_the_window_fail_before_generating_and_the_buffer_makes_room(tiny_model_dir):
    from ctxaware.evaluation import run_nih

    model, tokenizer = load_model(tiny_model_dir)
    assert model.config.max_position_embeddings == 512
    generator = Generator(model, tokenizer)
    with pytest.raises(ValueError, match=r"config key evaluation.nih.context_buffer: the longest NIH prompt .* 512"):
        run_nih(generator, _window_settings(buffer=0), False)
    assert generator.n_generated == 0  # nothing ran past the window
    summary, records = run_nih(generator, _window_settings(buffer=100), False)
    assert summary["n"] == 4 and generator.n_generated == 4
    assert max(r["prompt_tokens"] for r in records) + 8 <= 512


def test_section2_nih_prompts_over_the_window_fail_before_any_forward(tiny_model_dir):
    from ctxaware.diagnosis.allocation import attention_allocation
    from ctxaware.diagnosis.template_study import nih_template_study

    settings = {**_window_settings(buffer=0), "batch_tokens": 4096}
    with pytest.raises(ValueError, match="config key evaluation.nih.context_buffer"):
        attention_allocation(tiny_model_dir, settings, "Here is")
    with pytest.raises(ValueError, match="config key evaluation.nih.context_buffer"):
        nih_template_study(
            "tiny", {"base": tiny_model_dir, "instruct": tiny_model_dir}, settings, ["context"], "", ["base"]
        )


SAMPLING = {"seed": 0, "top_k": 50, "top_p": 1.0}


def test_sampler_draws_from_the_tempered_top_k_distribution():
    """The Gumbel-max draw of SeededSampler follows softmax(logits / T) restricted to the top k."""
    import torch

    from ctxaware.generation import SeededSampler

    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0]])
    temperature, draws = 0.7, 20_000
    sampler = SeededSampler([temperature], [123], top_k=3, top_p=1.0, device="cpu")
    counts = torch.zeros(5)
    for _ in range(draws):
        counts[sampler(None, logits).argmax()] += 1
    expected = torch.softmax(torch.tensor([2.0, 1.0, 0.5]) / temperature, -1)
    assert counts[3:].sum() == 0  # outside the top 3: never drawn
    assert torch.allclose(counts[:3] / draws, expected, atol=0.015)
    nucleus = SeededSampler([1.0], [5], top_k=0, top_p=0.5, device="cpu")
    assert {int(nucleus(None, logits).argmax()) for _ in range(200)} == {0}  # token 0 alone holds p > 0.5
    greedy = SeededSampler([0.0], [1], top_k=3, top_p=1.0, device="cpu")
    assert torch.equal(greedy(None, logits), logits)


def test_seeded_sampling_is_equal_across_reruns_batches_and_resumes(tiny_model_dir, tmp_path):
    model, tokenizer = load_model(tiny_model_dir)
    batched = Generator(model, tokenizer, batch_tokens=10_000, cache_path=str(tmp_path / "cache.jsonl"))
    prompts = _prompts(batched)
    temperatures = [1.5, 0.0, 1.5, 1.5]
    sampled = batched.generate_ids(prompts, 16, None, temperatures, SAMPLING)
    single = Generator(model, tokenizer, batch_tokens=1)  # every prompt alone, in other company
    assert single.generate_ids(prompts, 16, None, temperatures, SAMPLING) == sampled
    resumed = Generator(model, tokenizer, batch_tokens=10_000)
    assert resumed.generate_ids(prompts[2:], 16, None, temperatures[2:], SAMPLING) == sampled[2:]
    # the greedy row is the greedy answer; a sampled row differs from it at this temperature
    greedy = Generator(model, tokenizer).generate_ids(prompts, 16)
    assert sampled[1] == greedy[1] and sampled != greedy
    other_seed = Generator(model, tokenizer).generate_ids(prompts, 16, None, temperatures, {**SAMPLING, "seed": 1})
    assert other_seed != sampled and other_seed[1] == sampled[1]
    # the cache keys on the sampling settings: the greedy run did not read the sampled answers back
    cached = GenerationCache(str(tmp_path / "cache.jsonl"))
    assert len(cached.entries) == 4
    rerun = Generator(model, tokenizer, cache_path=str(tmp_path / "cache.jsonl"))
    assert rerun.generate_ids(prompts, 16, None, temperatures, SAMPLING) == sampled and rerun.n_generated == 0
    assert rerun.generate_ids(prompts, 16) == greedy and rerun.n_generated == 3  # the greedy row was cached
