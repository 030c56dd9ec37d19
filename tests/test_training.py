import json
import shutil

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from ctxaware import IND_TOKEN
from ctxaware.chat import encode_with_spans, prepare_tokenizer
from ctxaware.methods import training_recipe
from ctxaware.modeling import MODEL_INFO, add_token_rows, load_model, load_tokenizer
from ctxaware.training import _load_base, _peft_model, build_trainer, finetune, gradient_accumulation, launch_finetune

RECIPE = dict(
    finetuning="qlora",
    learning_rate=1e-2,
    lr_scheduler="constant",
    warmup_ratio=0.0,
    global_batch_size=4,
    per_device_batch_size=2,
    max_length=128,
    epochs=1,
    max_steps=None,
    gradient_checkpointing=False,
    precision="auto",
    loss="all",
    save_steps=100,
    logging_steps=1,
    lm_head_loss="fused",
    length_groups=1,
    indicator_embedding="trainable",
    lora=dict(r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]),
    qk_lora=dict(target_modules=["q_proj", "k_proj"], learning_rate=None),
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


def _base_with_indicator_row(base_dir, tokenizer):
    """The base model as training starts: vocabulary grown by [IND], its rows at the mean."""
    base, _ = load_model(base_dir)
    add_token_rows(base, len(tokenizer), [tokenizer.convert_tokens_to_ids(IND_TOKEN)])
    return base


def _changed_rows(after: torch.Tensor, before: torch.Tensor) -> list[int]:
    return torch.nonzero((after - before).abs().amax(dim=1) > 1e-7).flatten().tolist()


@pytest.mark.parametrize(("finetuning", "lm_head_loss"), [("qlora", "fused"), ("lora", "fused"), ("qlora", "labelled")])
def test_adapter_finetune_trains_only_the_indicator_rows_and_lora(
    tiny_model_dir, train_parquet, tmp_path, finetuning, lm_head_loss
):
    out, checkpoints = tmp_path / "model", tmp_path / "checkpoints"
    recipe = dict(RECIPE, finetuning=finetuning, lm_head_loss=lm_head_loss)
    log = finetune(tiny_model_dir, train_parquet, str(out), str(checkpoints), recipe, with_indicator=True)
    info = json.loads((out / MODEL_INFO).read_text())
    assert info["adapter"] and info["recipe"] == finetuning and log["global_step"] == 2
    assert not checkpoints.exists()  # removed once the model is saved
    adapter = load_file(out / "adapter_model.safetensors")
    lora_b = [v for k, v in adapter.items() if "lora_B" in k]
    assert lora_b and all(v.abs().max() > 0 for v in lora_b)  # LoRA B starts at zero: every one of them trained
    assert any("embed_tokens" in k and "trainable_tokens" in k for k in adapter)
    assert any("lm_head" in k and "trainable_tokens" in k for k in adapter)  # the untied output row too

    model, tokenizer = load_model(str(out))
    ind = tokenizer.convert_tokens_to_ids(IND_TOKEN)
    assert len(tokenizer) == model.get_input_embeddings().weight.shape[0] == ind + 1
    base = _base_with_indicator_row(tiny_model_dir, tokenizer)
    # among the embedding matrices exactly the [IND] rows moved (the tiny model's output embedding is untied)
    assert _changed_rows(model.get_input_embeddings().weight, base.get_input_embeddings().weight) == [ind]
    assert _changed_rows(model.lm_head.weight, base.lm_head.weight) == [ind]


@pytest.mark.parametrize("finetuning", ["lora", "full"])
def test_frozen_mean_keeps_the_indicator_rows_at_the_mean(tiny_model_dir, train_parquet, tmp_path, finetuning):
    recipe = dict(RECIPE, finetuning=finetuning, indicator_embedding="frozen_mean", learning_rate=1e-2)
    finetune(tiny_model_dir, train_parquet, str(tmp_path / "m"), str(tmp_path / "c"), recipe, with_indicator=True)
    model, tokenizer = load_model(str(tmp_path / "m"))
    ind = tokenizer.convert_tokens_to_ids(IND_TOKEN)
    base = _base_with_indicator_row(tiny_model_dir, tokenizer)
    for after, before in [(model.get_input_embeddings(), base.get_input_embeddings()), (model.lm_head, base.lm_head)]:
        torch.testing.assert_close(after.weight[ind], before.weight[ind], rtol=0, atol=0)
        torch.testing.assert_close(before.weight[ind], before.weight[:ind].mean(0))
    if finetuning == "full":  # everything else trained
        assert len(_changed_rows(model.lm_head.weight, base.lm_head.weight)) > ind // 2


def test_qk_lora_adapts_only_query_and_key_projections(tiny_model_dir, train_parquet, tmp_path):
    recipe = training_recipe(dict(RECIPE, finetuning="full"), "qk-lora-indicator-0.6")
    finetune(tiny_model_dir, train_parquet, str(tmp_path / "m"), str(tmp_path / "c"), recipe, with_indicator=True)
    adapted = {k.split(".")[-3] for k in load_file(tmp_path / "m" / "adapter_model.safetensors") if "lora_" in k}
    assert adapted == {"q_proj", "k_proj"}
    assert json.loads((tmp_path / "m" / MODEL_INFO).read_text())["recipe"] == "lora"


def _answer_nll(model, tokenizer, conversations) -> float:
    """Mean negative log-likelihood per token of the assistant answers (and the eos closing them), each answer
    after its prompt rendered with the generation prompt."""
    from ctxaware.chat import render

    total, count = 0.0, 0
    for messages in conversations:
        prompt = tokenizer(render(tokenizer, messages[:1], add_generation_prompt=True), add_special_tokens=False)
        answer = tokenizer(messages[1]["content"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        ids = torch.tensor([prompt["input_ids"] + answer])
        with torch.no_grad():
            logprobs = torch.log_softmax(model(ids).logits[0, -len(answer) - 1 : -1].float(), dim=-1)
        total -= logprobs.gather(1, ids[0, -len(answer) :, None]).sum().item()
        count += len(answer)
    return total / count


def test_full_finetune_lowers_the_nll_of_the_training_answers(tiny_model_dir, train_parquet, tmp_path):
    recipe = dict(RECIPE, finetuning="full", learning_rate=1e-2, epochs=2)
    log = finetune(tiny_model_dir, train_parquet, str(tmp_path / "m"), str(tmp_path / "c"), recipe, False)
    assert not log["adapter"] and log["global_step"] == 4
    model, tokenizer = load_model(str(tmp_path / "m"))
    base, _ = load_model(tiny_model_dir)
    conversations = [list(messages) for messages in pd.read_parquet(train_parquet)["messages"]]
    before, after = _answer_nll(base, tokenizer, conversations), _answer_nll(model, tokenizer, conversations)
    print(f"answer NLL before {before:.3f}, after {after:.3f} nats/token")
    assert after < before - 0.5
    assert IND_TOKEN not in tokenizer.get_vocab()  # vanilla models never see [IND]


def test_gradient_accumulation_keeps_the_global_batch():
    assert gradient_accumulation(128, 8, 1) == 16
    assert gradient_accumulation(128, 8, 4) == 4
    assert gradient_accumulation(64, 4, 32) == 1


MULTI_TURN = [
    {"role": "user", "content": "Read the passage: the river runs through the town. Where does it run?"},
    {"role": "assistant", "content": "Through the town."},
    {"role": "user", "content": f"And the fox? {IND_TOKEN}"},
    {"role": "assistant", "content": "It jumps over the lazy dog."},
]


# contents that also occur in the Zephyr headers: the oracle must find each after its own header
HEADER_LIKE_TURNS = [
    {"role": "user", "content": "user"},
    {"role": "assistant", "content": "assistant"},
    {"role": "user", "content": "s"},
    {"role": "assistant", "content": "a"},
]


@pytest.mark.parametrize("messages", [MULTI_TURN, HEADER_LIKE_TURNS], ids=["plain", "header-like"])
@pytest.mark.parametrize("loss", ["assistant", "all"])
def test_assistant_only_loss_masks_exactly_the_non_assistant_tokens(tiny_model_dir, tmp_path, loss, messages):
    path = tmp_path / "train.parquet"
    pd.DataFrame([{"id": "0", "messages": messages}]).to_parquet(path)
    recipe = dict(RECIPE, finetuning="full", loss=loss)
    trainer, tokenizer, _ = build_trainer(tiny_model_dir, str(path), str(tmp_path / "c"), recipe, True)
    example = trainer.train_dataset[0]
    encoded = encode_with_spans(tokenizer, messages)
    assert example["input_ids"] == encoded.input_ids
    # assistant content plus the eos that closes it: what the model must learn to generate
    expected = {i for span in encoded.spans if span.role == "assistant" for i in range(span.start, span.end + 1)}
    if loss == "all":
        expected = set(range(len(encoded.input_ids)))
    kept = {i for i, label in enumerate(example["labels"]) if label != -100}
    assert kept == expected
    assert all(example["labels"][i] == example["input_ids"][i] for i in kept)
    assert tokenizer.decode([example["input_ids"][i] for i in sorted(kept)]).count(tokenizer.eos_token) == (
        2 if loss == "assistant" else 5  # all: the system, user and assistant closings
    )


class _Preempted(RuntimeError):
    pass


def _preempt_after_first_checkpoint():
    from transformers import TrainerCallback

    class Preempt(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            raise _Preempted(f"killed after checkpoint {state.global_step}")

    return Preempt()


@pytest.mark.parametrize("finetuning", ["full", "lora"])
def test_a_run_killed_after_its_first_checkpoint_resumes_to_the_same_weights(
    tiny_model_dir, train_parquet, tmp_path, finetuning
):
    recipe = dict(RECIPE, finetuning=finetuning, epochs=2, save_steps=1, lr_scheduler="cosine", warmup_ratio=0.25)
    recipe["lora"] = dict(RECIPE["lora"], dropout=0.1)  # dropout draws random numbers: the RNG state must resume
    args = dict(base=tiny_model_dir, train_parquet=train_parquet, recipe=recipe, with_indicator=True)
    finetune(out_dir=str(tmp_path / "straight"), checkpoint_dir=str(tmp_path / "c1"), **args)

    with pytest.raises(_Preempted):
        finetune(
            out_dir=str(tmp_path / "resumed"),
            checkpoint_dir=str(tmp_path / "c2"),
            callbacks=[_preempt_after_first_checkpoint()],
            **args,
        )
    assert not (tmp_path / "resumed").exists() and (tmp_path / "c2" / "checkpoint-1").is_dir()
    log = finetune(out_dir=str(tmp_path / "resumed"), checkpoint_dir=str(tmp_path / "c2"), **args)
    assert log["resumed_from"].endswith("checkpoint-1") and log["global_step"] == 4

    straight, _ = load_model(str(tmp_path / "straight"))
    resumed, _ = load_model(str(tmp_path / "resumed"))
    base, _ = load_model(tiny_model_dir)
    straight_weights, resumed_weights = straight.state_dict(), resumed.state_dict()
    assert straight_weights.keys() == resumed_weights.keys()
    for name, weight in straight_weights.items():
        message = lambda m, name=name: f"{name}: {m}"  # noqa: E731
        torch.testing.assert_close(resumed_weights[name], weight, rtol=0, atol=1e-5, msg=message)
    q_proj = [m.model.layers[0].self_attn.q_proj.weight for m in (straight, base)]
    assert not torch.allclose(*q_proj)


def test_checkpoints_of_other_settings_are_not_resumed(tiny_model_dir, train_parquet, tmp_path):
    recipe = dict(RECIPE, finetuning="full", save_steps=1)
    args = dict(base=tiny_model_dir, train_parquet=train_parquet, with_indicator=False)
    with pytest.raises(_Preempted):
        finetune(
            out_dir=str(tmp_path / "m"), checkpoint_dir=str(tmp_path / "c"), recipe=recipe,
            callbacks=[_preempt_after_first_checkpoint()], **args,
        )  # fmt: skip
    log = finetune(
        out_dir=str(tmp_path / "m"), checkpoint_dir=str(tmp_path / "c"), recipe=dict(recipe, learning_rate=5e-3), **args
    )
    assert log["resumed_from"] is None and log["global_step"] == 2


def test_data_parallel_launch_trains_one_model_over_two_processes(tiny_model_dir, train_parquet, tmp_path):
    """torchrun with two CPU processes (gloo), as a two-GPU job would run; the global batch stays 4."""
    recipe = dict(RECIPE, finetuning="lora", per_device_batch_size=1)
    launch_finetune(
        processes=2,
        base=tiny_model_dir,
        train_parquet=train_parquet,
        out_dir=str(tmp_path / "m"),
        checkpoint_dir=str(tmp_path / "c"),
        recipe=recipe,
        with_indicator=True,
    )
    log = json.loads((tmp_path / "m" / "train_log.json").read_text())
    assert log["world_size"] == 2 and log["global_step"] == 2  # 8 conversations / global batch 4
    assert not (tmp_path / "c").exists()
    model, tokenizer = load_model(str(tmp_path / "m"))
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer)


@pytest.mark.parametrize(("family", "tied"), [("qwen2", True), ("mistral", False)])
def test_other_model_families_fine_tune_with_the_indicator(tiny_model_dir, train_parquet, tmp_path, family, tied):
    """Any Llama-, Mistral- or Qwen-style causal LM named by path works (Qwen ties its output embedding)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    tokenizer = load_tokenizer(tiny_model_dir)
    config = AutoConfig.for_model(
        family,
        vocab_size=len(tokenizer) + (7 if tied else 0),  # Qwen pads its embedding beyond the tokenizer
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=tied,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    base_dir = tmp_path / family
    AutoModelForCausalLM.from_config(config).save_pretrained(base_dir)
    tokenizer.save_pretrained(base_dir)
    finetune(str(base_dir), train_parquet, str(tmp_path / "m"), str(tmp_path / "c"), RECIPE, with_indicator=True)
    model, tokenizer = load_model(str(tmp_path / "m"))
    assert model.config.model_type == family
    ind = tokenizer.convert_tokens_to_ids(IND_TOKEN)
    base = _base_with_indicator_row(str(base_dir), tokenizer)
    assert _changed_rows(model.get_input_embeddings().weight, base.get_input_embeddings().weight) == [ind]
    assert _changed_rows(model.get_output_embeddings().weight, base.get_output_embeddings().weight) == [ind]


def test_lora_finetune_is_reproducible_whatever_the_rng_state_before(tiny_model_dir, train_parquet, tmp_path):
    recipe = dict(RECIPE, finetuning="lora")
    weights = []
    for run in range(2):
        torch.manual_seed(run)  # the state an earlier job or import left behind must not matter
        out = tmp_path / f"m{run}"
        finetune(tiny_model_dir, train_parquet, str(out), str(tmp_path / f"c{run}"), recipe, with_indicator=True)
        weights.append((out / "adapter_model.safetensors").read_bytes())
    assert weights[0] == weights[1]


def _layer_update(out_dir, init: dict) -> torch.Tensor:
    """Every decoder-layer weight's change from the base model's initial value, flattened."""
    trained = load_file(f"{out_dir}/model.safetensors")
    keys = [k for k in init if ".layers." in k]
    return torch.cat([(trained[k].float() - init[k].to(trained[k].dtype).float()).flatten() for k in keys])


def test_bf16_mixed_full_finetune_moves_the_weights_as_fp32_does(tiny_model_dir, train_parquet, tmp_path):
    """Full fine-tuning at the paper's lr 2e-5 (TinyLlama): AdamW on fp32 weights with bf16 autocast moves
    nearly every weight, as an fp32 run does; on bf16 weights (std 0.02) most updates round away."""
    init = load_file(f"{tiny_model_dir}/model.safetensors")
    recipe = dict(RECIPE, finetuning="full", learning_rate=2e-5, lr_scheduler="constant", max_steps=20)
    recipe.update(per_device_batch_size=2, global_batch_size=2)
    updates, logs = {}, {}
    for precision in ("fp32", "bf16-mixed", "bf16"):
        out = tmp_path / precision
        logs[precision] = finetune(
            tiny_model_dir,
            train_parquet,
            str(out),
            str(tmp_path / f"c-{precision}"),
            {**recipe, "precision": precision},
            False,
        )
        updates[precision] = _layer_update(out, init)
        assert json.loads((out / "train_log.json").read_text())["param_dtype"] == logs[precision]["param_dtype"]
    assert (logs["bf16-mixed"]["param_dtype"], logs["bf16-mixed"]["compute_dtype"]) == (
        "torch.float32",
        "torch.bfloat16",
    )
    assert (logs["fp32"]["param_dtype"], logs["fp32"]["compute_dtype"]) == ("torch.float32", "torch.float32")
    assert logs["bf16"]["param_dtype"] == "torch.bfloat16"

    def moved(update):
        return float((update != 0).float().mean())

    def agreement(update):  # (movement relative to fp32's, cosine with fp32's update)
        reference = updates["fp32"]
        return float(update.norm() / reference.norm()), float(
            torch.nn.functional.cosine_similarity(update, reference, 0)
        )

    assert moved(updates["fp32"]) >= 0.9
    assert moved(updates["bf16-mixed"]) >= 0.9
    ratio, cosine = agreement(updates["bf16-mixed"])
    assert 0.95 <= ratio <= 1.05 and cosine >= 0.99
    assert not torch.equal(updates["bf16-mixed"], updates["fp32"])  # the autocast really ran in bf16
    # pure bf16 fails the same bar: most weights never move, and the movement is not fp32's
    ratio, cosine = agreement(updates["bf16"])
    assert moved(updates["bf16"]) < 0.5 and ratio < 0.8 and cosine < 0.8


@pytest.mark.parametrize("finetuning", ["lora", "qlora"])
def test_bf16_mixed_adapters_train_in_fp32_with_bf16_compute(tiny_model_dir, train_parquet, tmp_path, finetuning):
    recipe = dict(RECIPE, finetuning=finetuning, precision="bf16-mixed", max_steps=2)
    trainer, _, _ = build_trainer(tiny_model_dir, train_parquet, str(tmp_path / "c"), recipe, True)
    trained = [p for p in trainer.model.parameters() if p.requires_grad]
    assert trained and all(p.dtype == torch.float32 for p in trained)  # TRL's bf16 cast of QLoRA adapters undone
    assert trainer.args.bf16  # bf16 autocast
    assert trainer.precision == {
        "precision": "bf16-mixed",
        "param_dtype": "torch.float32",
        "frozen_dtype": "torch.bfloat16" if finetuning == "lora" else "torch.float32",  # peft upcasts a 4-bit base
        "compute_dtype": "torch.bfloat16",
    }
    trainer.train()
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters() if p.requires_grad)


def test_auto_precision_is_bf16_mixed_on_a_gpu_and_fp32_on_the_cpu():
    from ctxaware.training import precision_dtypes, resolve_precision

    assert resolve_precision("auto", "cuda") == "bf16-mixed" and resolve_precision("auto", "cpu") == "fp32"
    assert resolve_precision("bf16", "cuda") == "bf16"
    assert precision_dtypes("bf16-mixed", "full") == (torch.float32, torch.bfloat16, True)
    assert precision_dtypes("bf16-mixed", "qlora") == (torch.bfloat16, torch.bfloat16, True)
    with pytest.raises(ValueError, match="config key recipes.<recipe>.precision: 'fp16'"):
        resolve_precision("fp16", "cuda")


@pytest.mark.parametrize("finetuning", ["full", "qlora"])
def test_the_labelled_positions_loss_trains_as_the_fused_lm_head_does(
    tiny_model_dir, train_parquet, tmp_path, finetuning
):
    """lm_head_loss: labelled (the LM head and cross-entropy on the labelled positions only) is the same loss as
    TRL's fused LM head: the same per-step losses and, after 4 steps, the same weights to float rounding; and it
    is really another path (not bit-equal, and without TRL's per-step entropy and token accuracy). Without
    [IND]: an adapter with a trainable [IND] row on an untied output embedding takes the logits loss anyway."""
    recipe = dict(RECIPE, finetuning=finetuning, loss="assistant", max_steps=4, per_device_batch_size=2)
    recipe.update(global_batch_size=2, learning_rate=1e-3)
    logs, weights = {}, {}
    for head in ("fused", "labelled"):
        out = tmp_path / head
        logs[head] = finetune(
            tiny_model_dir, train_parquet, str(out), str(tmp_path / f"c-{head}"), dict(recipe, lm_head_loss=head), False
        )
        name = "model.safetensors" if finetuning == "full" else "adapter_model.safetensors"
        weights[head] = load_file(str(out / name))
    losses = {head: [entry["loss"] for entry in log["log_history"] if "loss" in entry] for head, log in logs.items()}
    assert len(losses["fused"]) == 4 and losses["labelled"] == pytest.approx(losses["fused"], rel=1e-4)
    assert "mean_token_accuracy" in logs["fused"]["log_history"][0]
    assert "mean_token_accuracy" not in logs["labelled"]["log_history"][0]
    assert weights["fused"].keys() == weights["labelled"].keys()
    for key, fused in weights["fused"].items():
        torch.testing.assert_close(weights["labelled"][key], fused, rtol=1e-4, atol=1e-5)
    assert any(not torch.equal(weights["labelled"][k], fused) for k, fused in weights["fused"].items())


def test_the_labelled_positions_loss_is_the_models_own_loss(tiny_model_dir, train_parquet, tmp_path):
    """On one batch: the LM head on the labelled positions only gives the model's full-logits loss, alone and
    over a num_items_in_batch; a batch with no label is a finite zero."""
    from ctxaware.training import labelled_positions_loss

    recipe = dict(RECIPE, finetuning="full", loss="assistant", lm_head_loss="labelled")
    trainer, _, _ = build_trainer(tiny_model_dir, train_parquet, str(tmp_path / "c"), recipe, True)
    batch = next(iter(trainer.get_train_dataloader()))
    labelled = int((batch["labels"][:, 1:] != -100).sum())
    assert 0 < labelled < batch["labels"].numel() // 2  # assistant-only: most positions carry no label
    with torch.no_grad():
        full = trainer.model(**batch).loss
        torch.testing.assert_close(labelled_positions_loss(trainer.model, batch), full)
        torch.testing.assert_close(labelled_positions_loss(trainer.model, batch, 4 * labelled), full / 4)
        unlabelled = dict(batch, labels=torch.full_like(batch["labels"], -100))
        assert float(labelled_positions_loss(trainer.model, unlabelled)) == 0.0


def test_the_warmup_ratio_reaches_each_transformers_as_a_fraction():
    """transformers 4 reads a fraction from `warmup_ratio` (its int `warmup_steps` of 0.1 is no warmup),
    transformers 5 from a float `warmup_steps` below 1 (its `warmup_ratio` deprecated, then removed)."""
    import dataclasses

    from transformers import TrainingArguments
    from trl import SFTConfig

    from ctxaware.training import _checkpointing_argument, _warmup_argument

    @dataclasses.dataclass
    class Transformers4:
        warmup_steps: int = 0
        warmup_ratio: float = 0.0

    @dataclasses.dataclass
    class Transformers5Deprecating:
        warmup_steps: float = 0
        warmup_ratio: float | None = None

    @dataclasses.dataclass
    class Transformers5:
        warmup_steps: float = 0

    assert _warmup_argument(Transformers4, 0.1) == {"warmup_ratio": 0.1}
    assert _warmup_argument(Transformers5Deprecating, 0.1) == {"warmup_steps": 0.1}
    assert _warmup_argument(Transformers5, 0.1) == {"warmup_steps": 0.1}
    for installed in (TrainingArguments, SFTConfig):  # whichever transformers is installed: 10% of 200 steps
        settings = dict(output_dir="unused", use_cpu=True, bf16=False, **{_checkpointing_argument(installed): False})
        args = installed(**settings, **_warmup_argument(installed, 0.1))
        assert args.get_warmup_steps(200) == 20


def test_the_trainer_warms_up_over_its_warmup_ratio(tiny_model_dir, train_parquet, tmp_path):
    """8 conversations, global batch 4, 2 epochs: 4 steps, the first quarter (half) of them warming up from 0."""
    peak = RECIPE["learning_rate"]
    for ratio, expected in ((0.25, [0.0, 1.0, 2 / 3, 1 / 3]), (0.5, [0.0, 0.5, 1.0, 0.5])):
        recipe = dict(RECIPE, finetuning="full", epochs=2, lr_scheduler="linear", warmup_ratio=ratio)
        trainer, _, _ = build_trainer(tiny_model_dir, train_parquet, str(tmp_path / str(ratio)), recipe, False)
        trainer.train()
        rates = [entry["learning_rate"] for entry in trainer.state.log_history if "learning_rate" in entry]
        assert rates == pytest.approx([peak * share for share in expected])  # the rate each step trained with


def test_load_model_takes_the_precision_an_imported_model_records(tiny_model_dir, tmp_path):
    """imported_models.dtype: the import records it, every job's load_model computes in it unless told."""
    imported = tmp_path / "imported"
    shutil.copytree(tiny_model_dir, imported)
    assert load_model(str(imported))[0].dtype == torch.float32  # no record: the CPU's default
    (imported / MODEL_INFO).write_text(json.dumps({"imported_from": "package:x/y.gguf", "dtype": "bf16"}))
    assert load_model(str(imported))[0].dtype == torch.bfloat16
    assert load_model(str(imported), dtype=torch.float32)[0].dtype == torch.float32  # an explicit precision wins


@pytest.mark.parametrize("indicator_token", ["special", "added"])
def test_the_indicator_token_kind_reaches_the_saved_fine_tune_tokenizer(
    tiny_model_dir, train_parquet, tmp_path, indicator_token
):
    recipe = dict(RECIPE, finetuning="lora", max_steps=1, indicator_token=indicator_token)
    finetune(tiny_model_dir, train_parquet, str(tmp_path / "m"), str(tmp_path / "c"), recipe, with_indicator=True)
    # evaluation loads the fine-tune's own tokenizer: the kind of [IND] it was trained with comes with it
    model, tokenizer = load_model(str(tmp_path / "m"))
    ind = tokenizer.convert_tokens_to_ids(IND_TOKEN)
    assert tokenizer.added_tokens_decoder[ind].special == (indicator_token == "special")
    ids = tokenizer("How often? [IND]", add_special_tokens=False)["input_ids"]
    assert ids[-1] == ind
    kept = IND_TOKEN in tokenizer.decode(ids, skip_special_tokens=True)
    assert kept == (indicator_token == "added")


def test_length_groups_split_the_sorted_rows_with_the_least_padding():
    """Every row in exactly one group, groups contiguous in length order, and the padded area (rows x longest
    row per group) the least over every split into at most that many groups (brute force)."""
    import itertools

    from ctxaware.training import length_groups

    lengths = [37, 5, 90, 12, 88, 14, 41, 6, 73, 9]
    ranked = sorted(lengths)

    def area(groups):
        return sum(len(rows) * max(lengths[row] for row in rows) for rows in groups)

    for max_groups in (1, 2, 3, 4):
        groups = length_groups(lengths, max_groups)
        assert sorted(row for rows in groups for row in rows) == list(range(len(lengths)))
        assert len(groups) <= max_groups
        assert [lengths[row] for rows in groups for row in rows] == ranked
        best = min(
            sum((end - start) * ranked[end - 1] for start, end in zip((0, *cuts), (*cuts, len(ranked)), strict=True))
            for k in range(max_groups)
            for cuts in itertools.combinations(range(1, len(ranked)), k)
        )
        assert area(groups) == best
    assert area(length_groups(lengths, 3)) < area(length_groups(lengths, 1))
    assert length_groups([4], 3) == [[0]]


@pytest.fixture
def mixed_length_parquet(tmp_path):
    """Conversations of 2-40 passage words: batches with much padding."""
    conversations = [
        {
            "id": str(i),
            "messages": [
                {"role": "user", "content": "Read: " + "the fox jumps " * (1 + (7 * i) % 13) + "How often?"},
                {"role": "assistant", "content": f"{i} times, " + "again " * (i % 3)},
            ],
        }
        for i in range(16)
    ]
    path = tmp_path / "mixed.parquet"
    pd.DataFrame(conversations).to_parquet(path)
    return str(path)


def test_length_groups_give_the_batchs_loss_and_gradient(tiny_model_dir, mixed_length_parquet, tmp_path):
    """One right-padded batch of mixed lengths through the backbone in groups, each cut to its longest row: the
    loss and every gradient of the whole batch at once (float rounding), with less padding computed; a
    left-padded batch is left whole (cutting it would drop real tokens)."""
    from ctxaware.training import labelled_positions_loss, length_groups

    recipe = dict(RECIPE, finetuning="full", loss="assistant", lm_head_loss="labelled", per_device_batch_size=16)
    recipe.update(global_batch_size=16)
    trainer, _, _ = build_trainer(tiny_model_dir, mixed_length_parquet, str(tmp_path / "c"), recipe, False)
    model = trainer.model
    batch = next(iter(trainer.get_train_dataloader()))
    lengths = batch["attention_mask"].sum(dim=1).tolist()
    assert min(lengths) < max(lengths) / 2  # much padding: the groups cut it
    assert sum(len(r) * max(lengths[i] for i in r) for r in length_groups(lengths, 3)) < 0.8 * 16 * max(lengths)

    def loss_and_gradients(inputs, max_groups):
        model.zero_grad(set_to_none=True)
        loss = labelled_positions_loss(model, dict(inputs), max_groups=max_groups)
        loss.backward()
        return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    whole, whole_grads = loss_and_gradients(batch, 1)
    grouped, grouped_grads = loss_and_gradients(batch, 3)
    torch.testing.assert_close(grouped, whole)
    labelled = int((batch["labels"][:, 1:] != -100).sum())
    torch.testing.assert_close(labelled_positions_loss(model, dict(batch), 7, max_groups=3), whole * labelled / 7)
    assert grouped_grads.keys() == whole_grads.keys()
    for name, gradient in whole_grads.items():
        torch.testing.assert_close(grouped_grads[name], gradient, rtol=1e-4, atol=1e-6)

    # left padding: the same batch shifted right within its width; groups would cut real tokens, so none are made
    shift = [int(max(lengths) - n) for n in lengths]
    left = {key: torch.stack([row.roll(s) for row, s in zip(batch[key], shift, strict=True)]) for key in batch}
    left_whole, _ = loss_and_gradients(left, 1)
    left_grouped, _ = loss_and_gradients(left, 3)
    assert torch.equal(left_grouped, left_whole)
