"""Benchmark of one organism fine-tune: our training path (ctxaware.training, TRL's SFTTrainer) against a plain
PyTorch loop doing the same optimizer steps on the same collated batches, in one process.

    python benchmarks/organism_finetune.py                 # after `make run`: the run's base and ShareGPT SFT set
    python benchmarks/organism_finetune.py --run DIR       # a finished run of the embedded default elsewhere
    python benchmarks/organism_finetune.py --lm-head-loss fused   # TRL's fused LM head instead of the recipe's
    python benchmarks/organism_finetune.py --whole-job     # the whole fine-tune, before (the issue's: 600 steps,
                                                           # fused LM head, a log entry every step) and as configured

The model is the organism's base (results/models/base/organism) and the data its vanilla ShareGPT branch
(results/sft/sharegpt/vanilla.parquet), with the embedded default's `organism-full` recipe (config/config.yaml,
schema defaults filled in), cut to --steps. The plain loop is the floor: the same model, loaded the same way, the
same batches (taken from the trainer's own data loader, so collation is outside it), the model's own loss,
backward, gradient clipping, AdamW and the learning-rate schedule. Per-step times leave out the first step of each.
Prints seconds per step of each, their ratio (goal: at most 1.5x), and the trainer's set-up time (load, tokenize).
One thread each, as a workflow job gets by default (--threads to change).

--whole-job times what the `finetune` job does (ctxaware.training.finetune: set-up, every step of the recipe,
its checkpoints, the save), each variant in a fresh process: the fine-tune as the workflow ran it before the
speed work (TRL's fused LM head, logging_steps 1, the issue's 600 steps whatever the run's SFT set holds) and as
configured now, and prints their ratio.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
BEFORE_STEPS = 600  # a fine-tune before the speed work (issue 19): 9,600 conversations, 16 a step, one epoch


def organism_recipe(name: str, steps: int | None, lm_head_loss: str | None) -> dict:
    """The embedded default's recipe as the workflow sees it (schema defaults filled in), cut to `steps` (None:
    all of them, with the recipe's checkpoints)."""
    from snakemake.utils import validate

    config = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    validate(config, str(ROOT / "workflow/schemas/config.schema.yaml"))
    recipe = dict(config["recipes"][name])
    if steps is not None:
        recipe.update(max_steps=steps, save_steps=10**6)
    if lm_head_loss:
        recipe["lm_head_loss"] = lm_head_loss
    return recipe


def plain_loop(trainer, batches: list[dict]) -> list[float]:
    """The floor: forward with labels, backward, clip, AdamW, schedule, on a fresh copy of the trainer's model."""
    model = trainer.model
    model.train()
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=trainer.args.learning_rate, weight_decay=0.0
    )
    total = len(batches)
    warmup = max(1, round(trainer.args.warmup_steps * total if trainer.args.warmup_steps < 1 else 1))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))
    ends = [time.perf_counter()]
    for batch in batches:
        loss = model(**batch, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), trainer.args.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        ends.append(time.perf_counter())
    return ends


def whole_job(run: Path, dataset: str, recipe: dict, threads: int, results) -> None:
    """One fine-tune as the workflow's job runs it, in this (fresh) process: wall seconds into `results`."""
    from ctxaware.training import finetune

    torch.set_num_threads(threads)
    base, data = run / "results/models/base/organism", run / f"results/sft/{dataset}/vanilla.parquet"
    with tempfile.TemporaryDirectory() as scratch:
        started = time.perf_counter()
        log = finetune(str(base), str(data), f"{scratch}/model", f"{scratch}/checkpoints", recipe, False)
        results.put({"seconds": time.perf_counter() - started, "steps": log["global_step"]})


def compare_whole_jobs(args, run: Path) -> None:
    import multiprocessing

    configured = organism_recipe(args.recipe, None, args.lm_head_loss)
    before = dict(configured, lm_head_loss="fused", logging_steps=1, max_steps=BEFORE_STEPS)
    variants = {"before": before, "configured": configured}
    context, rows = multiprocessing.get_context("spawn"), {}
    for name, recipe in variants.items():
        results = context.Queue()
        process = context.Process(target=whole_job, args=(run, args.dataset, recipe, args.threads, results))
        process.start()
        process.join()
        rows[name] = results.get()
        print(f"  {name:10s} {rows[name]['seconds']:6.1f} s for {rows[name]['steps']} steps", flush=True)
    print(f"  configured / before: {rows['configured']['seconds'] / rows['before']['seconds']:.2f}")
    print(json.dumps(rows))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default=str(ROOT), help="a directory holding a finished embedded-default run")
    parser.add_argument("--dataset", default="sharegpt")
    parser.add_argument("--recipe", default="organism-full")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--lm-head-loss", choices=["fused", "labelled"], default=None, help="default: the recipe's")
    parser.add_argument("--whole-job", action="store_true", help="time whole fine-tunes, before and as configured")
    args = parser.parse_args()

    from transformers import TrainerCallback

    from ctxaware.training import build_trainer

    run = Path(args.run)
    base, data = run / "results/models/base/organism", run / f"results/sft/{args.dataset}/vanilla.parquet"
    if not (base / "config.json").exists() or not data.exists():
        raise SystemExit(f"no finished embedded-default run in {run} ({base}, {data}): run `make run` first")
    if args.whole_job:
        print(f"whole organism fine-tunes: {args.recipe}, {args.dataset}, {args.threads} thread(s), own process each")
        compare_whole_jobs(args, run)
        return
    torch.set_num_threads(args.threads)
    recipe = organism_recipe(args.recipe, args.steps, args.lm_head_loss)
    step_ends: list[float] = []

    class StepClock(TrainerCallback):
        def on_train_begin(self, *_, **__):
            step_ends.append(time.perf_counter())

        def on_step_end(self, *_, **__):
            step_ends.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as checkpoints:
        started = time.perf_counter()
        trainer, _, _ = build_trainer(str(base), str(data), checkpoints, recipe, False, 42, [StepClock()])
        setup_s = time.perf_counter() - started
        trainer.train()
        train_s = time.perf_counter() - step_ends[0]
        loader = trainer.get_train_dataloader()
        batches = [batch for _, batch in zip(range(args.steps), loader, strict=False)]
        floor_trainer, _, _ = build_trainer(str(base), str(data), checkpoints, recipe, False, 42)
        floor_ends = plain_loop(floor_trainer, batches)

    def per_step(ends: list[float]) -> float:
        return (ends[-1] - ends[1]) / (len(ends) - 2)  # without the first step (allocation, warm-up)

    ours, floor = per_step(step_ends), per_step(floor_ends)
    tokens = sum(int(batch["attention_mask"].sum()) for batch in batches) / len(batches)
    head = f"lm_head_loss {recipe['lm_head_loss']}, length_groups {recipe['length_groups']}"
    print(f"organism fine-tune: {args.recipe} ({head}), {args.dataset}, {args.steps} steps")
    print(f"  {tokens:.0f} tokens a step, {args.threads} thread(s); set-up (load, tokenize) {setup_s:.1f} s")
    print(f"  {'path':22s} {'ms/step':>8s} {'steps/s':>8s} {'vs floor':>8s}")
    print(f"  {'ctxaware (TRL)':22s} {ours * 1e3:8.1f} {1 / ours:8.2f} {ours / floor:7.2f}x")
    print(f"  {'plain PyTorch loop':22s} {floor * 1e3:8.1f} {1 / floor:8.2f} {1:7.2f}x")
    print(f"  whole trainer.train(): {train_s:.1f} s for {args.steps} steps")
    print(json.dumps({"ours_s_per_step": ours, "floor_s_per_step": floor, "ratio": ours / floor, "setup_s": setup_s}))


if __name__ == "__main__":
    main()
