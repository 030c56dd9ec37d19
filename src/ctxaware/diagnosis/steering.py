"""Post-hoc attention steering of user tokens (paper Eq. 1) at every alpha on NIH, QuAC and DROP with the chat
template (Table 1)."""

from __future__ import annotations

import logging

import pandas as pd
import torch

from ctxaware.attention import ATTN_NAME, Steering, attention_modules, num_heads, steer
from ctxaware.diagnosis.gather import write_csv
from ctxaware.diagnosis.roles import (
    encode_roles,
    last_token_attention,
    nih_cases,
    nih_settings,
    prompt_prefix,
    retrieval_heads,
)
from ctxaware.evaluation import load_task_inputs, run_nih, run_qa
from ctxaware.generation import Generator
from ctxaware.modeling import load_model
from ctxaware.tasks import nih


class SteeringGenerator(Generator):
    """Generator whose forward passes steer user tokens (Eq. 1); user tokens come from encode_roles."""

    def __init__(self, model, tokenizer, batch_tokens: int, steering: Steering | None):
        super().__init__(model, tokenizer, batch_tokens, cache_path=None, share_prefixes=False)
        self.steering = steering
        self.user: dict[tuple[int, ...], list[bool]] = {}

    def encode_chat(
        self,
        messages: list[dict],
        use_template: bool = True,
        response_prefix: str = "",
        ending: str = "generation_prompt",
    ) -> list[int]:
        ids = super().encode_chat(messages, use_template, response_prefix, ending)
        users = [m for m in messages if m["role"] == "user"]
        if len(users) != 1 or len(messages) != 1:
            raise ValueError("attention steering handles single-turn prompts only")
        role_ids, roles = encode_roles(self.tokenizer, users[0]["content"], use_template, response_prefix, ending)
        if role_ids != ids:
            raise ValueError("role tokenization differs from the generator's; cannot locate user tokens")
        self.user[tuple(ids)] = [r == "user" for r in roles]
        return ids

    def _generate_batch(self, prompts, max_new_tokens, stops, temperatures=None, sampling=None):
        if self.steering is None:
            return super()._generate_batch(prompts, max_new_tokens, stops, temperatures, sampling)
        width = max(len(p) for p in prompts)
        user = torch.zeros(len(prompts), width, dtype=torch.bool)
        for row, prompt in enumerate(prompts):  # left padding, as the batch is built
            user[row, width - len(prompt) :] = torch.tensor(self.user[tuple(prompt)])
        self.steering.user = user
        with steer(self.model, self.steering):
            return super()._generate_batch(prompts, max_new_tokens, stops, temperatures, sampling)


def steering_heads(model, tokenizer, settings: dict, prefix: str, heads: str) -> dict[int, list[int]]:
    """The heads to steer: every head, or the retrieval head of each layer (Eq. 3) on one sampled NIH prompt
    with the chat template (the middle case of the grid)."""
    layers, width = len(attention_modules(model)), num_heads(model)
    if heads == "all":
        return {layer: list(range(width)) for layer in range(layers)}
    cases = nih_cases(tokenizer, settings)
    case = cases[len(cases) // 2]
    ids, roles = encode_roles(tokenizer, case["prompt"], True, prompt_prefix(True, prefix))
    nih.check_window(len(ids), 0, getattr(model.config, "max_position_embeddings", None))
    chosen = retrieval_heads(last_token_attention(model, ids), [r == "user" for r in roles])
    return {layer: [head] for layer, head in enumerate(chosen)}


def attention_steering(
    pair: str,
    model_dir: str,
    task_settings: dict[str, dict],
    alphas: list[float],
    heads: str,
    compat: str,
    prefix: str,
) -> pd.DataFrame:
    """Table 1 for one instruct model: each task with the chat template, unsteered (alpha 1) and per alpha."""
    if heads == "retrieval" and "nih" not in task_settings:
        raise ValueError(
            "config key diagnosis.steering.heads: retrieval heads are chosen on an NIH prompt; add nih to tasks"
        )
    inputs = load_task_inputs(task_settings)  # a source that cannot load fails before the model loads
    model, tokenizer = load_model(model_dir, attn_implementation=ATTN_NAME)
    selected = steering_heads(model, tokenizer, task_settings.get("nih", {}), prefix, heads)
    rows = []
    for alpha in [1.0, *alphas]:
        steering = None
        if alpha != 1.0:
            steering = Steering(alpha, selected, len(attention_modules(model)), num_heads(model), compat)
        for task, settings in task_settings.items():
            generator = SteeringGenerator(model, tokenizer, settings["batch_tokens"], steering)
            if task == "nih":
                run = nih_settings(settings, settings["prompt_template"], True, prefix)
                summary, _ = run_nih(generator, run, False)
            else:
                summary, _ = run_qa(task, generator, settings, False, inputs[task])
            rows.append(
                {
                    "pair": pair,
                    "model": model_dir,
                    "task": task,
                    "alpha": alpha,
                    "steered": steering is not None,
                    "heads": heads,
                    "compat": compat,
                    "score": summary["score"],
                    "n": summary["n"],
                }
            )
            logging.info("%s alpha=%s %s: %.4f", pair, alpha, task, summary["score"])
    table = pd.DataFrame(rows)
    table["steered_heads"] = str({k: v for k, v in selected.items()})
    return mark_best_alpha(table)


def mark_best_alpha(table: pd.DataFrame) -> pd.DataFrame:
    """Flag the alpha with the best NIH score per pair (the paper picks alpha on NIH)."""
    table = table.copy()
    table["best_on_nih"] = False
    for pair, rows in table[table["steered"] & (table["task"] == "nih")].groupby("pair"):
        best = rows.loc[rows["score"].idxmax(), "alpha"]
        table.loc[(table["pair"] == pair) & (table["alpha"] == best) & table["steered"], "best_on_nih"] = True
    return table


def run_steering(pair: str, model_dir: str, task_settings: dict, steering: dict, prefix: str, out: str) -> None:
    table = attention_steering(
        pair, model_dir, task_settings, steering["alphas"], steering["heads"], steering["compat"], prefix
    )
    write_csv(table, out)
