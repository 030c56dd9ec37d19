"""Fine-tuning with TRL's SFTTrainer: full, LoRA or QLoRA (bitsandbytes nf4), with an optional [IND] token."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import torch

from ctxaware import IND_TOKEN
from ctxaware.chat import prepare_tokenizer, with_system
from ctxaware.modeling import MODEL_INFO, default_device, load_tokenizer, resize_embeddings_with_mean

RECIPES = ("full", "lora", "qlora")


def _world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def gradient_accumulation(global_batch: int, per_device_batch: int, world_size: int) -> int:
    """Steps to accumulate so the global batch holds whatever number of devices the job got."""
    return max(1, round(global_batch / (per_device_batch * world_size)))


def _load_base(base: str, recipe: dict, device: str):
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    compute_dtype = torch.bfloat16 if device == "cuda" else torch.float32
    kwargs = {"dtype": compute_dtype}
    if recipe["method"] == "qlora":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute_dtype,
        )
        kwargs["device_map"] = {"": device if device == "cpu" else torch.cuda.current_device()}
    return AutoModelForCausalLM.from_pretrained(base, **kwargs)


def _peft_model(model, recipe: dict, indicator_id: int | None):
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    lora = recipe["lora"]
    if recipe["method"] == "qlora":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=recipe["gradient_checkpointing"])
    config = LoraConfig(
        r=lora["r"],
        lora_alpha=lora["alpha"],
        lora_dropout=lora["dropout"],
        target_modules=lora["target_modules"],
        task_type="CAUSAL_LM",
        # the new [IND] row must learn: peft trains just that embedding row, the rest stays frozen
        trainable_token_indices=(
            {"embed_tokens": [indicator_id]}
            if indicator_id is not None and recipe["indicator_embedding"] == "trainable"
            else None
        ),
    )
    return get_peft_model(model, config)


def finetune(
    base: str,
    train_parquet: str,
    out_dir: str,
    checkpoint_dir: str,
    recipe: dict,
    with_indicator: bool,
    seed: int = 42,
) -> dict:
    """Train and save a model (full weights or adapter) with its tokenizer, MODEL_INFO and train_log.json.

    Checkpoints go to checkpoint_dir (outside the rule's outputs) so a killed job resumes from the last one.
    """
    import pandas as pd
    from datasets import Dataset
    from transformers import set_seed
    from trl import SFTConfig, SFTTrainer

    # before the adapter is built: LoRA's A matrices are drawn from the global RNG when get_peft_model runs,
    # and the Trainer only seeds later, so without this two runs of the same branch train different adapters
    set_seed(seed)
    device = default_device()
    tokenizer = prepare_tokenizer(load_tokenizer(base), with_indicator=with_indicator)
    frame = pd.read_parquet(train_parquet)
    records = [{"messages": with_system(list(messages))} for messages in frame["messages"]]
    dataset = Dataset.from_list(records)

    model = _load_base(base, recipe, device)
    resize_embeddings_with_mean(model, len(tokenizer))
    indicator_id = tokenizer.convert_tokens_to_ids(IND_TOKEN) if with_indicator else None
    adapter = recipe["method"] in ("lora", "qlora")
    if adapter:
        model = _peft_model(model, recipe, indicator_id)

    per_device = recipe["per_device_batch_size"]
    args = SFTConfig(
        output_dir=checkpoint_dir,
        max_length=recipe["max_length"],
        per_device_train_batch_size=per_device,
        gradient_accumulation_steps=gradient_accumulation(recipe["global_batch_size"], per_device, _world_size()),
        learning_rate=recipe["learning_rate"],
        lr_scheduler_type=recipe["lr_scheduler"],
        warmup_steps=recipe["warmup_ratio"],  # a float below 1 is a fraction of the total steps
        num_train_epochs=recipe["epochs"],
        max_steps=recipe.get("max_steps") or -1,
        gradient_checkpointing=recipe["gradient_checkpointing"],
        assistant_only_loss=recipe["loss"] == "assistant",
        bf16=device == "cuda",
        use_cpu=device == "cpu",
        seed=seed,
        data_seed=seed,
        save_strategy="steps",
        save_steps=recipe["save_steps"],
        save_total_limit=2,
        logging_steps=1,
        report_to="none",
        disable_tqdm=True,
        packing=False,
        dataset_num_proc=None,
        optim="adamw_torch",
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    last = _resumable_checkpoint(checkpoint_dir, {"base": base, "recipe": recipe, "indicator": with_indicator})
    started = time.time()
    result = trainer.train(resume_from_checkpoint=last)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if adapter:
        # the [IND] row is saved by its trainable-token adapter (or is the mean row, rebuilt at load time),
        # so the adapter need not carry whole embedding matrices
        trainer.model.save_pretrained(out, save_embedding_layers=False)
    else:
        trainer.model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    info = {
        "base": base,
        "recipe": recipe["method"],
        "adapter": adapter,
        "with_indicator": with_indicator,
        "indicator_token_id": indicator_id,
    }
    (out / MODEL_INFO).write_text(json.dumps(info, indent=2))
    log = {
        **info,
        "resumed_from": last,
        "train_runtime_s": time.time() - started,
        "global_step": result.global_step,
        "train_loss": result.training_loss,
        "n_conversations": len(records),
        "hyperparameters": recipe,
        "seed": seed,
        "log_history": trainer.state.log_history,
    }
    (out / "train_log.json").write_text(json.dumps(log, indent=2, default=str))
    shutil.rmtree(checkpoint_dir, ignore_errors=True)  # the model is saved; a later rerun starts afresh
    return log


def _resumable_checkpoint(checkpoint_dir: str, settings: dict) -> str | None:
    """The last checkpoint of an interrupted run with the same settings; stale checkpoints are discarded."""
    from transformers.trainer_utils import get_last_checkpoint

    directory = Path(checkpoint_dir)
    stamp = directory / "settings.json"
    wanted = json.dumps(settings, sort_keys=True, default=str)
    if directory.is_dir() and (not stamp.exists() or stamp.read_text() != wanted):
        shutil.rmtree(directory)
    directory.mkdir(parents=True, exist_ok=True)
    stamp.write_text(wanted)
    return get_last_checkpoint(str(directory))
