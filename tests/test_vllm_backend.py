"""The optional vLLM backend: selection, the error when vllm is missing, and how adapters are served.

vllm is not installed here (it pulls a CUDA build of torch); what needs the package itself runs on clusters.
"""

import importlib.util
import json

import pytest
import torch

from ctxaware import IND_TOKEN
from ctxaware.chat import prepare_tokenizer
from ctxaware.evaluation import evaluate_all, generators
from ctxaware.generation import Generator
from ctxaware.modeling import MODEL_INFO, add_token_rows, load_model, load_tokenizer
from ctxaware.vllm_backend import adapter_mode, lora_rank_limit, merge_adapter

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
