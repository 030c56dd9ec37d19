"""Fine-tuning with TRL's SFTTrainer: full, LoRA or QLoRA (bitsandbytes nf4), with an optional [IND] token."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from ctxaware import IND_TOKEN
from ctxaware.chat import DEFAULT_INDICATOR_TOKEN, prepare_tokenizer, with_system
from ctxaware.modeling import MODEL_INFO, add_token_rows, default_device, load_tokenizer

PRECISIONS = ("auto", "bf16-mixed", "fp32", "bf16")


def _world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def _local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def data_parallel_processes(gpus: int | None) -> int:
    """One training process per GPU the job was given (and can see); 1 (in-process) on CPU or one GPU."""
    if not gpus or not torch.cuda.is_available():
        return 1
    return max(1, min(int(gpus), torch.cuda.device_count()))


def gradient_accumulation(global_batch: int, per_device_batch: int, world_size: int) -> int:
    """Steps to accumulate so the global batch holds whatever number of devices the job got."""
    return max(1, round(global_batch / (per_device_batch * world_size)))


def resolve_precision(precision: str, device: str) -> str:
    """A recipe's precision on this device: auto is bf16-mixed on a GPU and fp32 on the CPU."""
    if precision not in PRECISIONS:
        raise ValueError(f"config key recipes.<recipe>.precision: {precision!r} is not one of {PRECISIONS}")
    if precision == "auto":
        return "bf16-mixed" if device == "cuda" else "fp32"
    return precision


def precision_dtypes(precision: str, finetuning: str) -> tuple[torch.dtype, torch.dtype, bool]:
    """(dtype the base weights load in, compute dtype, bf16 autocast or not) of a resolved precision.

    bf16-mixed: what DeepSpeed/AMP bf16 training does, trained weights and optimizer state in fp32 with bf16
    autocast (a full fine-tune loads fp32; a LoRA/QLoRA base is frozen, so it loads in bf16 and only its
    adapters, which peft keeps in fp32, are trained); fp32: everything fp32; bf16: the weights themselves in
    bf16 (AdamW on bf16 weights loses most updates at small learning rates: only when asked)."""
    if precision == "fp32":
        return torch.float32, torch.float32, False
    if precision == "bf16":
        return torch.bfloat16, torch.bfloat16, False
    return (torch.float32 if finetuning == "full" else torch.bfloat16), torch.bfloat16, True


def _load_base(base: str, recipe: dict, device: str):
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    precision = resolve_precision(recipe["precision"], device)
    weights_dtype, compute_dtype, _ = precision_dtypes(precision, recipe["finetuning"])
    kwargs = {"dtype": weights_dtype}
    if recipe["finetuning"] == "qlora":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute_dtype,
        )
        # each data-parallel process holds its own quantized copy on its own GPU
        kwargs["device_map"] = {"": device if device == "cpu" else _local_rank()}
    return AutoModelForCausalLM.from_pretrained(base, **kwargs)


def _module_name(model, module) -> str:
    return next(name for name, candidate in model.named_modules() if candidate is module)


def indicator_rows(model) -> list[str]:
    """Modules holding an [IND] row: the input embedding and, unless tied to it, the output embedding."""
    names = [_module_name(model, model.get_input_embeddings())]
    output = model.get_output_embeddings()
    if output is not None and output.weight is not model.get_input_embeddings().weight:
        names.append(_module_name(model, output))
    return names


def _peft_model(model, recipe: dict, indicator_id: int | None):
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    lora = recipe["lora"]
    if recipe["finetuning"] == "qlora":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=recipe["gradient_checkpointing"])
    train_indicator = indicator_id is not None and recipe["indicator_embedding"] == "trainable"
    config = LoraConfig(
        r=lora["r"],
        lora_alpha=lora["alpha"],
        lora_dropout=lora["dropout"],
        target_modules=lora["target_modules"],
        task_type="CAUSAL_LM",
        # the new [IND] rows must learn: peft trains just those rows (input and untied output embedding),
        # every other row stays frozen
        trainable_token_indices=({name: [indicator_id] for name in indicator_rows(model)} if train_indicator else None),
    )
    return get_peft_model(model, config)


def cast_trained_parameters(model, precision: str) -> None:
    """The trained weights (a full model's, or the LoRA and [IND]-row adapters) in fp32 whatever the frozen
    base's dtype, as mixed precision keeps them; in bf16 only under precision bf16. TRL's SFTTrainer casts a
    quantized model's adapters to bf16 (the QLoRA paper's choice): this undoes it before the optimizer exists."""
    trained_dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    for parameter in model.parameters():
        if parameter.requires_grad and parameter.dtype != trained_dtype:
            parameter.data = parameter.data.to(trained_dtype)


def freeze_rows(model, token_id: int) -> None:
    """Keep one token's embedding rows (input and untied output) where they are under full fine-tuning: their
    gradient is zeroed, so AdamW without weight decay leaves them exactly at their initial (mean) value."""
    for name in indicator_rows(model):
        weight = model.get_submodule(name).weight

        def zero_row(grad, token_id=token_id):
            return grad.index_fill(0, torch.tensor([token_id], device=grad.device), 0.0)

        weight.register_hook(zero_row)


def length_groups(lengths: list[int], max_groups: int) -> list[list[int]]:
    """The rows (indices into lengths) in at most max_groups groups of similar lengths, shortest first: the
    contiguous split of the rows sorted by length with the least padded area (sum of rows x longest row)."""
    order = sorted(range(len(lengths)), key=lambda row: lengths[row])
    sorted_lengths = [lengths[row] for row in order]
    n = len(order)

    @functools.cache
    def best(start: int, groups: int) -> tuple[int, tuple[int, ...]]:  # (area, group ends) of rows start..n-1
        whole = ((n - start) * sorted_lengths[-1], (n,))
        if groups == 1:
            return whole
        splits = []
        for end in range(start + 1, n):
            area, ends = best(end, groups - 1)
            splits.append(((end - start) * sorted_lengths[end - 1] + area, (end, *ends)))
        return min([whole, *splits])

    ends = best(0, max_groups)[1] if n else ()
    return [order[start:end] for start, end in zip((0, *ends[:-1]), ends, strict=True)]


def labelled_positions_loss(model, inputs: dict, num_items_in_batch=None, max_groups: int = 1) -> torch.Tensor:
    """transformers' causal-LM loss (next-token cross-entropy summed over the labelled positions, divided by
    num_items_in_batch or else their count) with the LM head applied to the labelled positions only: the
    backbone runs on the whole batch, the (positions x vocabulary) logits only where a label is (a fifth of the
    organism's padded positions under the assistant-only loss). Called on the unwrapped model (see below).

    max_groups > 1 (recipe `length_groups`): a right-padded batch runs through the backbone in up to that many
    groups of rows of similar lengths, each cut to its longest row. The same rows, positions and sum of losses
    (real tokens never attend to the pads after them), so the same step to float rounding; on the CPU, where the
    cost follows the padded area, the organism's batches (1.57x their real tokens) come to 1.07-1.12x."""
    labels = inputs["labels"]
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model  # under peft
    backbone_inputs = {key: value for key, value in inputs.items() if key != "labels"}
    mask = inputs.get("attention_mask")
    batch, width = labels.shape
    groups = [list(range(batch))]
    if max_groups > 1 and mask is not None:
        lengths = mask.sum(dim=1)
        right_padded = torch.equal(mask.bool(), torch.arange(width, device=mask.device) < lengths[:, None])
        if right_padded:
            groups = length_groups(lengths.tolist(), max_groups)
    total, labelled_count = 0.0, 0
    for rows in groups:
        group_inputs, group_labels = backbone_inputs, labels
        if len(groups) > 1:
            index = torch.tensor(rows, device=labels.device)
            cut = int(lengths[index].max())
            group_inputs = {
                key: value[index, :cut] if torch.is_tensor(value) and value.shape[:2] == (batch, width) else value
                for key, value in backbone_inputs.items()
            }
            group_labels = labels[index, :cut]
        hidden = causal_lm.base_model(**group_inputs).last_hidden_state[:, :-1]
        targets = group_labels[:, 1:].to(hidden.device)
        labelled = targets != -100
        logits = causal_lm.get_output_embeddings()(hidden[labelled]).float()
        total = total + torch.nn.functional.cross_entropy(logits, targets[labelled], reduction="sum")
        labelled_count = labelled_count + labelled.sum()  # a tensor: no device sync per step on a GPU
    return total / (labelled_count.clamp(min=1) if num_items_in_batch is None else num_items_in_batch)


def _model_loss_trainer(sft_trainer, labelled_only: bool, max_groups: int = 1):
    """The loss of the model's own forward (labels already masked by TRL's dataset preparation, assistant-only
    included) instead of TRL's fused LM head, which multiplies by `lm_head.weight` directly and so would bypass
    (and never train) peft's trainable [IND] row on an untied output embedding. labelled_only (recipe
    `lm_head_loss: labelled`): the same loss with the LM head on the labelled positions only, where the model
    is not wrapped for data parallelism (a wrapper's forward must run for its gradient hooks; else the full
    logits). TRL's per-step entropy and token accuracy are not computed on either path."""
    from transformers import Trainer

    class ModelLossSFTTrainer(sft_trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            inputs["use_cache"] = False
            if labelled_only and not return_outputs and model is self.accelerator.unwrap_model(model):
                return labelled_positions_loss(model, inputs, num_items_in_batch, max_groups)
            return Trainer.compute_loss(
                self, model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
            )

    return ModelLossSFTTrainer


def build_trainer(
    base: str,
    train_parquet: str,
    checkpoint_dir: str,
    recipe: dict,
    with_indicator: bool,
    seed: int = 42,
    callbacks: list | None = None,
):
    """(trainer, tokenizer, model info) for one fine-tune, before any step is taken."""
    import pandas as pd
    from datasets import Dataset
    from peft.utils.other import TrainableTokensWrapper
    from transformers import set_seed
    from trl import SFTConfig, SFTTrainer

    # seeded before the adapter exists: LoRA's random init must not depend on what ran earlier in the process
    set_seed(seed)
    device = default_device()
    # the saved tokenizer carries the kind of [IND] token (special or added) to every later load of the fine-tune
    indicator_token = recipe.get("indicator_token", DEFAULT_INDICATOR_TOKEN)
    tokenizer = prepare_tokenizer(load_tokenizer(base), with_indicator=with_indicator, indicator_token=indicator_token)
    frame = pd.read_parquet(train_parquet)
    dataset = Dataset.from_list([{"messages": with_system(list(messages))} for messages in frame["messages"]])

    model = _load_base(base, recipe, device)
    indicator_id = tokenizer.convert_tokens_to_ids(IND_TOKEN) if with_indicator else None
    add_token_rows(model, len(tokenizer), [indicator_id] if with_indicator else [])
    adapter = recipe["finetuning"] in ("lora", "qlora")
    if adapter:
        model = _peft_model(model, recipe, indicator_id)
    elif indicator_id is not None and recipe["indicator_embedding"] == "frozen_mean":
        freeze_rows(model, indicator_id)

    per_device = recipe["per_device_batch_size"]
    precision = resolve_precision(recipe["precision"], device)
    _, compute_dtype, autocast = precision_dtypes(precision, recipe["finetuning"])
    args = SFTConfig(
        output_dir=checkpoint_dir,
        max_length=recipe["max_length"],
        per_device_train_batch_size=per_device,
        gradient_accumulation_steps=gradient_accumulation(recipe["global_batch_size"], per_device, _world_size()),
        learning_rate=recipe["learning_rate"],
        lr_scheduler_type=recipe["lr_scheduler"],
        **_warmup_argument(SFTConfig, recipe["warmup_ratio"]),
        num_train_epochs=recipe["epochs"],
        max_steps=recipe.get("max_steps") or -1,
        **{_checkpointing_argument(SFTConfig): recipe["gradient_checkpointing"]},
        assistant_only_loss=recipe["loss"] == "assistant",
        bf16=autocast,  # bf16 autocast over fp32 trained weights (bf16-mixed)
        use_cpu=device == "cpu",
        seed=seed,
        data_seed=seed,
        save_strategy="steps",
        save_steps=recipe["save_steps"],
        save_total_limit=2,
        logging_steps=recipe["logging_steps"],  # train_log.json's log_history: loss and learning rate
        report_to="none",
        disable_tqdm=True,
        packing=False,
        dataset_num_proc=None,
        optim="adamw_torch",
        weight_decay=0.0,  # also what keeps a frozen_mean row exactly at the mean
        ddp_find_unused_parameters=False,  # every trainable parameter takes part in each forward
    )
    trainer_class = SFTTrainer
    labelled_only = recipe["lm_head_loss"] == "labelled"
    if labelled_only or (adapter and isinstance(model.get_output_embeddings(), TrainableTokensWrapper)):
        trainer_class = _model_loss_trainer(SFTTrainer, labelled_only, recipe["length_groups"])
    trainer = trainer_class(
        model=model, args=args, train_dataset=dataset, processing_class=tokenizer, callbacks=callbacks
    )
    info = {
        "base": base,
        "recipe": recipe["finetuning"],
        "adapter": adapter,
        "with_indicator": with_indicator,
        "indicator_token_id": indicator_id,
    }
    cast_trained_parameters(trainer.model, precision)
    trainer.precision = {"precision": precision, **parameter_dtypes(trainer.model), "compute_dtype": str(compute_dtype)}
    return trainer, tokenizer, info


def _checkpointing_argument(config_class) -> str:
    """transformers 5 renamed TrainingArguments' gradient_checkpointing (still taken, with a warning) to
    activation_checkpointing."""
    names = {field.name for field in dataclasses.fields(config_class)}
    return "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"


def _warmup_argument(config_class, ratio: float) -> dict:
    """The recipe's warmup_ratio as the installed TrainingArguments reads a fraction of the total steps.

    transformers 5 types `warmup_steps` as a float and reads one below 1 as that fraction (its `warmup_ratio`
    deprecated, then gone); transformers 4 types it an int (0.1 would be a 0.1-step warmup, i.e. none) and
    reads the fraction from `warmup_ratio`. A ratio of 1 has no fractional spelling in transformers 5, which
    the schema rules out.
    """
    fields = {field.name: field for field in dataclasses.fields(config_class)}
    if "warmup_ratio" in fields and fields["warmup_steps"].type in (int, "int"):
        return {"warmup_ratio": float(ratio)}
    return {"warmup_steps": float(ratio)}


def parameter_dtypes(model) -> dict:
    """The dtypes of the trained parameters (param_dtype) and of the frozen floating-point ones."""

    def names(params):
        return ",".join(sorted({str(p.dtype) for p in params})) or None

    floating = [p for p in model.parameters() if p.dtype.is_floating_point]
    return {
        "param_dtype": names(p for p in floating if p.requires_grad),
        "frozen_dtype": names(p for p in floating if not p.requires_grad),
    }


def finetune(
    base: str,
    train_parquet: str,
    out_dir: str,
    checkpoint_dir: str,
    recipe: dict,
    with_indicator: bool,
    seed: int = 42,
    callbacks: list | None = None,
) -> dict:
    """Train and save a model (full weights or adapter) with its tokenizer, MODEL_INFO and train_log.json.

    Checkpoints go to checkpoint_dir (outside the rule's outputs) so a killed job resumes from the last one.
    Under torchrun every process calls this; the first one writes the outputs.
    """
    settings = _checkpoint_settings(base, recipe, with_indicator, seed, _world_size())
    last = _resumable_checkpoint(checkpoint_dir, settings)
    trainer, tokenizer, info = build_trainer(
        base, train_parquet, checkpoint_dir, recipe, with_indicator, seed, callbacks
    )
    started = time.time()
    result = trainer.train(resume_from_checkpoint=last)
    log = {
        **info,
        "resumed_from": last,
        "world_size": _world_size(),
        "train_runtime_s": time.time() - started,
        "global_step": result.global_step,
        "train_loss": result.training_loss,
        "n_conversations": len(trainer.train_dataset),
        **trainer.precision,
        "hyperparameters": recipe,
        "seed": seed,
        "log_history": trainer.state.log_history,
    }
    if not trainer.is_world_process_zero():
        return log

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if info["adapter"]:
        # the [IND] rows are saved by their trainable-token adapter (or are the mean row, rebuilt at load
        # time), so the adapter need not carry whole embedding matrices
        trainer.model.save_pretrained(out, save_embedding_layers=False)
    else:
        trainer.model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / MODEL_INFO).write_text(json.dumps(info, indent=2))
    (out / "train_log.json").write_text(json.dumps(log, indent=2, default=str))
    shutil.rmtree(checkpoint_dir, ignore_errors=True)  # the model is saved; a later rerun starts afresh
    return log


def launch_finetune(processes: int = 1, **kwargs) -> None:
    """finetune() in this process, or data-parallel in `processes` processes under torchrun (one per GPU)."""
    if processes <= 1:
        finetune(**kwargs)
        return
    # stale checkpoints are dropped here, once, so the processes never race to delete them
    settings = _checkpoint_settings(
        kwargs["base"], kwargs["recipe"], kwargs["with_indicator"], kwargs.get("seed", 42), processes
    )
    _resumable_checkpoint(kwargs["checkpoint_dir"], settings)
    with tempfile.TemporaryDirectory() as scratch:
        spec = Path(scratch) / "finetune.json"
        spec.write_text(json.dumps(kwargs))
        command = [
            sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
            "-m", "ctxaware.training", str(spec),
        ]  # fmt: skip
        subprocess.run(command, check=True)


def _checkpoint_settings(base: str, recipe: dict, with_indicator: bool, seed: int, world_size: int) -> dict:
    """What a checkpoint must match to be resumed (a different number of processes changes the batches)."""
    return {"base": base, "recipe": recipe, "indicator": with_indicator, "seed": seed, "world_size": world_size}


def _resumable_checkpoint(checkpoint_dir: str, settings: dict) -> str | None:
    """The last checkpoint of an interrupted run with the same settings; stale checkpoints are discarded."""
    from transformers.trainer_utils import get_last_checkpoint

    directory = Path(checkpoint_dir)
    stamp = directory / "settings.json"
    wanted = json.dumps(settings, sort_keys=True, default=str)
    if directory.is_dir() and stamp.exists() and stamp.read_text() != wanted:
        shutil.rmtree(directory)
    elif directory.is_dir() and not stamp.exists():
        shutil.rmtree(directory)  # checkpoints of unknown provenance
    directory.mkdir(parents=True, exist_ok=True)
    if _local_rank() == 0:
        stamp.write_text(wanted)
    return get_last_checkpoint(str(directory))


if __name__ == "__main__":  # one data-parallel process started by launch_finetune
    finetune(**json.loads(Path(sys.argv[1]).read_text()))
