import json

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from ctxaware import IND_TOKEN
from ctxaware.chat import prepare_tokenizer
from ctxaware.modeling import MODEL_INFO, load_model, load_tokenizer
from ctxaware.training import _load_base, _peft_model, finetune, gradient_accumulation

RECIPE = dict(
    method="qlora",
    learning_rate=1e-2,
    lr_scheduler="constant",
    warmup_ratio=0.0,
    global_batch_size=4,
    per_device_batch_size=2,
    max_length=128,
    epochs=1,
    max_steps=None,
    gradient_checkpointing=False,
    loss="all",
    save_steps=100,
    indicator_embedding="trainable",
    lora=dict(r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]),
)


@pytest.fixture
def train_parquet(tmp_path):
    conversations = [
        {
            "id": str(i),
            "messages": [
                {"role": "user", "content": f"Read the passage: the fox jumps {i} times. How often? {IND_TOKEN}"},
                {"role": "assistant", "content": f"{i} times."},
            ],
        }
        for i in range(8)
    ]
    path = tmp_path / "train.parquet"
    pd.DataFrame(conversations).to_parquet(path)
    return str(path)


def test_indicator_is_one_special_token(tiny_model_dir):
    tokenizer = prepare_tokenizer(load_tokenizer(tiny_model_dir), with_indicator=True)
    ids = tokenizer("What is it? [IND]", add_special_tokens=False)["input_ids"]
    assert ids[-1] == tokenizer.convert_tokens_to_ids(IND_TOKEN)
    assert tokenizer.convert_ids_to_tokens(ids).count(IND_TOKEN) == 1


def test_qlora_modules_are_bitsandbytes_4bit(tiny_model_dir):
    import bitsandbytes as bnb

    model = _load_base(tiny_model_dir, RECIPE, "cpu")
    assert isinstance(model.model.layers[0].self_attn.q_proj, bnb.nn.Linear4bit)
    assert model.model.layers[0].mlp.down_proj.weight.quant_state.quant_type == "nf4"
    peft_model = _peft_model(model, RECIPE, indicator_id=None)
    assert isinstance(peft_model.base_model.model.model.layers[0].self_attn.q_proj.base_layer, bnb.nn.Linear4bit)


@pytest.mark.parametrize("method", ["qlora", "lora"])
def test_adapter_finetune_trains_adapter_and_indicator_row(tiny_model_dir, train_parquet, tmp_path, method):
    out, checkpoints = tmp_path / "model", tmp_path / "checkpoints"
    recipe = dict(RECIPE, method=method)
    log = finetune(tiny_model_dir, train_parquet, str(out), str(checkpoints), recipe, with_indicator=True)
    info = json.loads((out / MODEL_INFO).read_text())
    assert info["adapter"] and info["recipe"] == method and log["global_step"] == 2
    assert not checkpoints.exists()  # removed once the model is saved
    adapter = load_file(out / "adapter_model.safetensors")
    assert any("lora_A" in k for k in adapter) and any("trainable_tokens" in k for k in adapter)
    model, tokenizer = load_model(str(out))
    assert len(tokenizer) == model.get_input_embeddings().weight.shape[0]
    base, _ = load_model(tiny_model_dir)
    ind = tokenizer.convert_tokens_to_ids(IND_TOKEN)
    mean_row = base.get_input_embeddings().weight.mean(0)
    assert not torch.allclose(model.get_input_embeddings().weight[ind], mean_row, atol=1e-4)


def test_full_finetune_saves_a_loadable_model(tiny_model_dir, train_parquet, tmp_path):
    recipe = dict(RECIPE, method="full", learning_rate=1e-3)
    log = finetune(tiny_model_dir, train_parquet, str(tmp_path / "m"), str(tmp_path / "c"), recipe, False)
    assert log["train_loss"] > 0 and not log["adapter"]
    model, tokenizer = load_model(str(tmp_path / "m"))
    base, _ = load_model(tiny_model_dir)
    assert not torch.allclose(model.lm_head.weight, base.lm_head.weight)
    assert IND_TOKEN not in tokenizer.get_vocab()  # vanilla models never see [IND]


def test_gradient_accumulation_keeps_the_global_batch():
    assert gradient_accumulation(128, 8, 1) == 16
    assert gradient_accumulation(128, 8, 4) == 4
    assert gradient_accumulation(64, 4, 32) == 1


def test_lora_finetune_is_reproducible_whatever_the_rng_state_before(tiny_model_dir, train_parquet, tmp_path):
    recipe = dict(RECIPE, method="lora")
    weights = []
    for run in range(2):
        torch.manual_seed(run)  # the state an earlier job or import left behind must not matter
        out = tmp_path / f"m{run}"
        finetune(tiny_model_dir, train_parquet, str(out), str(tmp_path / f"c{run}"), recipe, with_indicator=True)
        weights.append((out / "adapter_model.safetensors").read_bytes())
    assert weights[0] == weights[1]
