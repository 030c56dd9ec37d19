from ctxaware.generation import GenerationCache, Generator, cut_at_stops
from ctxaware.modeling import load_model

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
