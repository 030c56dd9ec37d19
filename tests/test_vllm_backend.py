"""The optional vLLM backend: selection, the error when vllm is missing, and how adapters are served.

vllm is not installed here (it pulls a CUDA build of torch); what needs the package itself runs on clusters. Our
code around it (prompt chunks, order, stops, cache, engine and adapter arguments) runs against a fake of vLLM's API.
"""

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest
import torch

from ctxaware import IND_TOKEN
from ctxaware.chat import prepare_tokenizer
from ctxaware.evaluation import evaluate_all, generators
from ctxaware.generation import Generator
from ctxaware.modeling import MODEL_INFO, add_token_rows, load_model, load_tokenizer
from ctxaware.vllm_backend import VLLMGenerator, adapter_mode, lora_rank_limit, merge_adapter

HAS_VLLM = importlib.util.find_spec("vllm") is not None


def _adapter(base: str, out, with_indicator: bool) -> str:
    """A LoRA adapter saved the way training saves one (random B, so it changes the outputs)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    tokenizer = prepare_tokenizer(load_tokenizer(base), with_indicator=with_indicator)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base)
    indicator = tokenizer.convert_tokens_to_ids(IND_TOKEN) if with_indicator else None
    add_token_rows(model, len(tokenizer), [indicator] if with_indicator else [])
    config = LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=["q_proj", "v_proj"],
        init_lora_weights=False,
        task_type="CAUSAL_LM",
        trainable_token_indices={"embed_tokens": [indicator]} if with_indicator else None,
    )
    peft_model = get_peft_model(model, config)
    peft_model.save_pretrained(out, save_embedding_layers=False)
    tokenizer.save_pretrained(out)
    (out / MODEL_INFO).write_text(json.dumps({"base": base, "adapter": True, "with_indicator": with_indicator}))
    return str(out)


@pytest.mark.skipif(HAS_VLLM, reason="vllm is installed")
def test_choosing_vllm_without_it_names_the_config_key(tiny_model_dir, tmp_path):
    with pytest.raises(RuntimeError, match="config key evaluation.backend is 'vllm'.*not installed"):
        with generators(tiny_model_dir, {"backend": "vllm"}):
            pass
    out = {"nih": str(tmp_path / "nih.json")}
    with pytest.raises(RuntimeError, match="evaluation.backend"):
        evaluate_all(tiny_model_dir, {"nih": {}}, False, out, out, engine={"backend": "vllm", "vllm": {}})
    assert not (tmp_path / "nih.json").exists()


def test_transformers_is_the_default_backend_and_unknown_ones_are_named(tiny_model_dir):
    with generators(tiny_model_dir) as make:
        generator = make(64, None)
    assert type(generator) is Generator and generator.backend == "transformers"
    with generators(tiny_model_dir, {"backend": "transformers"}) as make:
        assert make(64, None).backend == "transformers"
    with pytest.raises(ValueError, match="config key evaluation.backend: 'tgi'"):
        with generators(tiny_model_dir, {"backend": "tgi"}):
            pass


def test_adapters_go_through_lora_unless_they_add_tokens(tiny_model_dir, tmp_path):
    assert adapter_mode(tiny_model_dir) == "full"
    plain = _adapter(tiny_model_dir, tmp_path / "plain", with_indicator=False)
    assert adapter_mode(plain) == "lora" and adapter_mode(plain, "merge") == "merge"
    indicator = _adapter(tiny_model_dir, tmp_path / "indicator", with_indicator=True)
    assert adapter_mode(indicator) == "merge"
    with pytest.raises(ValueError, match="evaluation.vllm.adapter.*adds tokens"):
        adapter_mode(indicator, "lora")
    with pytest.raises(ValueError, match="evaluation.vllm.adapter: 'always'"):
        adapter_mode(plain, "always")
    assert [lora_rank_limit(r) for r in (1, 4, 16, 17, 64)] == [1, 8, 16, 32, 64]
    with pytest.raises(ValueError, match="rank 1000"):
        lora_rank_limit(1000)


def test_merged_copy_computes_what_the_adapter_computes(tiny_model_dir, tmp_path):
    indicator = _adapter(tiny_model_dir, tmp_path / "indicator", with_indicator=True)
    merged = merge_adapter(indicator, str(tmp_path / "merged"))
    assert adapter_mode(merged) == "full"
    adapter_model, tokenizer = load_model(indicator)
    merged_model, merged_tokenizer = load_model(merged)
    base_model, _ = load_model(tiny_model_dir)
    add_token_rows(base_model, len(tokenizer), [tokenizer.convert_tokens_to_ids(IND_TOKEN)])
    assert len(merged_tokenizer) == len(tokenizer)
    prompt = Generator(adapter_model, tokenizer).encode_chat([{"role": "user", "content": f"Capital? {IND_TOKEN}"}])
    assert tokenizer.convert_tokens_to_ids(IND_TOKEN) in prompt
    ids = torch.tensor([prompt])
    with torch.inference_mode():
        adapter, merged_logits, base = (m(ids).logits[0] for m in (adapter_model, merged_model, base_model))
    # the merge is stored in bf16: equal to the adapter up to rounding, far from the base model without it
    assert (merged_logits - adapter).abs().max() < 0.1 * (adapter - base).abs().max()


# vLLM's API as our backend calls it (vllm.LLM, vllm.SamplingParams, vllm.lora.request.LoRARequest), faked at that
# boundary only: the fake engine's answers are a function of the prompt ids, so the tests check our code around it
# (which prompts reach the engine, in what chunks and order, how its outputs come back, cut and cached).
class FakeLLM:
    instances: list = []

    def __init__(self, **kwargs):
        self.kwargs, self.calls = kwargs, []
        FakeLLM.instances.append(self)

    def generate(self, prompts, params, lora_request=None, use_tqdm=True):
        self.calls.append({"prompts": [p["prompt_token_ids"] for p in prompts], "params": params, "lora": lora_request})
        outputs = []
        for prompt in prompts:
            ids = prompt["prompt_token_ids"]
            text = f" answer-{len(ids)}-{sum(ids)}. STOP after the stop"
            outputs.append(SimpleNamespace(prompt_token_ids=ids, outputs=[SimpleNamespace(text=text)]))
        return outputs


class FakeSamplingParams:
    def __init__(self, **kwargs):
        self.kwargs = kwargs


class FakeLoRARequest:
    def __init__(self, name, int_id, path):
        self.name, self.int_id, self.path = name, int_id, path


@pytest.fixture
def fake_vllm(monkeypatch):
    vllm = ModuleType("vllm")
    vllm.LLM, vllm.SamplingParams = FakeLLM, FakeSamplingParams
    lora, request = ModuleType("vllm.lora"), ModuleType("vllm.lora.request")
    request.LoRARequest = FakeLoRARequest
    for name, module in (("vllm", vllm), ("vllm.lora", lora), ("vllm.lora.request", request)):
        monkeypatch.setitem(sys.modules, name, module)
    FakeLLM.instances = []
    return FakeLLM


def _expected(ids) -> str:
    return f"answer-{len(ids)}-{sum(ids)}."


def test_vllm_generator_chunks_length_sorted_prompts_and_returns_them_in_order(tiny_model_dir, tmp_path, fake_vllm):
    tokenizer = load_tokenizer(tiny_model_dir)
    prompts = [[5] * n + [n] for n in (7, 2, 9, 4, 3)]  # lengths 8, 3, 10, 5, 4
    llm, cache = FakeLLM(), tmp_path / "cache.jsonl"
    request = FakeLoRARequest("adapter", 1, "/x")
    generator = VLLMGenerator(llm, tokenizer, request, chunk_prompts=2, cache_path=str(cache))
    outputs = generator.generate_ids(prompts, 12, stops=[" STOP"])
    assert outputs == [_expected(p) for p in prompts]  # in the caller's order, cut at the stop and stripped
    assert [[len(p) for p in call["prompts"]] for call in llm.calls] == [[3, 4], [5, 8], [10]]  # shortest first
    assert all(call["lora"] is request for call in llm.calls)
    params = llm.calls[0]["params"][0].kwargs
    assert params["temperature"] == 0.0 and params["max_tokens"] == 12 and params["stop"] == [" STOP"]
    assert generator.n_generated == 5 and len(cache.read_text().splitlines()) == 5  # cached after each chunk
    # a rerun with the same cache asks the engine only for the prompts it has not answered
    again = VLLMGenerator(FakeLLM(), tokenizer, request, chunk_prompts=2, cache_path=str(cache))
    more = [*prompts, [6] * 6]
    assert again.generate_ids(more, 12, stops=[" STOP"]) == [_expected(p) for p in more]
    assert again.n_generated == 1 and again.llm.calls[0]["prompts"] == [[6] * 6]
    # the transformers backend's cache entries never stand in for vLLM's, nor other decoding settings
    assert again.generate_ids(prompts[:1], 13, stops=[" STOP"]) == [_expected(prompts[0])]
    assert again.n_generated == 2


def test_vllm_engine_serves_full_models_lora_adapters_and_merged_copies(tiny_model_dir, tmp_path, fake_vllm):
    settings = {"dtype": "float16", "gpu_memory_utilization": 0.5, "tensor_parallel_size": 2, "max_model_len": 512}
    with generators(tiny_model_dir, {"backend": "vllm", "vllm": settings}, str(tmp_path / "work")) as make:
        generator = make(64, None)
    [full] = FakeLLM.instances
    assert generator.backend == "vllm" and generator.lora_request is None and generator.chunk_prompts == 1024
    assert full.kwargs == {
        "model": tiny_model_dir,
        "tokenizer": tiny_model_dir,
        "dtype": "float16",
        "gpu_memory_utilization": 0.5,
        "tensor_parallel_size": 2,
        "seed": 0,
        "max_model_len": 512,
    }
    plain = _adapter(tiny_model_dir, tmp_path / "plain", with_indicator=False)
    with generators(plain, {"backend": "vllm", "vllm": {"chunk_prompts": 7}}, str(tmp_path / "work")) as make:
        generator = make(64, None)
    lora = FakeLLM.instances[-1]
    assert lora.kwargs["model"] == tiny_model_dir and lora.kwargs["tokenizer"] == plain
    assert lora.kwargs["enable_lora"] and lora.kwargs["max_lora_rank"] == 8 and lora.kwargs["max_loras"] == 1
    assert generator.lora_request.path == str(Path(plain).resolve()) and generator.chunk_prompts == 7
    indicator = _adapter(tiny_model_dir, tmp_path / "indicator", with_indicator=True)
    with generators(indicator, {"backend": "vllm", "vllm": {}}, str(tmp_path / "work")) as make:
        generator = make(64, None)
        merged = FakeLLM.instances[-1].kwargs["model"]
        assert Path(merged).parent.parent == tmp_path / "work" and adapter_mode(merged) == "full"
        assert len(load_tokenizer(merged)) == len(load_tokenizer(indicator))
    assert generator.lora_request is None and not Path(merged).exists()  # the merged copy is temporary


def test_evaluation_through_the_vllm_backend_scores_what_the_engine_answers(tiny_model_dir, tmp_path, fake_vllm):
    """A QA task end to end with the vLLM backend: every prompt reaches the engine once and the scores are those of
    its answers (the fake answers `answer-<length>-<sum>`, which contains the gold of exactly one item)."""
    tokenizer = load_tokenizer(tiny_model_dir)
    generator = Generator(None, tokenizer)
    template = "{context} {question}"
    items = [("The river is long.", "How long?"), ("The fox is quick.", "How quick?")]
    first = template.format(context=items[0][0], question=items[0][1])
    gold = _expected(generator.encode_chat([{"role": "user", "content": first}])).removesuffix(".")
    rows = [
        {"id": f"s{i}", "context": c, "question": q, "answers": {"text": [gold if i == 0 else "absent"]}}
        for i, (c, q) in enumerate(items)
    ]
    source = tmp_path / "squad.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    settings = {
        "source": str(source),
        "prompt_template": template,
        "metric": "containment",
        "max_new_tokens": 8,
        "batch_tokens": 64,
    }
    out = {"squad": str(tmp_path / "squad.json")}
    generations = {"squad": str(tmp_path / "squad.generations.jsonl")}
    engine = {"backend": "vllm", "vllm": {"chunk_prompts": 1}}
    results = evaluate_all(tiny_model_dir, {"squad": settings}, False, out, generations, str(tmp_path / "c"), engine)
    assert results["squad"]["backend"] == "vllm" and results["squad"]["n_generated"] == 2
    assert results["squad"]["score"] == 0.5 and json.loads(Path(out["squad"]).read_text())["score"] == 0.5
    records = [json.loads(line) for line in Path(generations["squad"]).read_text().splitlines()]
    assert [r["score"] for r in records] == [1.0, 0.0]
    assert len(FakeLLM.instances[-1].calls) == 2  # one prompt per chunk
