"""The paper's Section 2 diagnosis: NIH with and without the chat template (Figure 2, Table 7), attention
allocation at the first answer token (Figures 3 and 4, Eq. 3) and post-hoc attention steering (Table 1, Eq. 1).

Models load with the instrumented attention (ctxaware.attention; plain sdpa when nothing is steered or captured,
soft-capping handled for Gemma-2)."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import torch

from ctxaware.attention import ATTN_NAME, Steering, attention_modules, capture_last, num_heads, steer
from ctxaware.chat import check_no_sentinel, render, sentinel
from ctxaware.evaluation import load_task_inputs, run_nih, run_qa
from ctxaware.generation import Generator
from ctxaware.modeling import load_model
from ctxaware.tasks import nih

ROLES = ("user", "assistant", "bos")  # template tokens are the fourth kind, excluded and renormalised away
# (variant, model role, use_chat_template, with response prefix): Table 7's columns
VARIANTS = {
    "base": ("base", False, True),
    "no_template": ("instruct", False, True),
    "template_prefix": ("instruct", True, True),
    "template_no_prefix": ("instruct", True, False),
}
PREFIX_SEPARATOR = "\n"  # between the user text and the response prefix when no template is applied


def prompt_prefix(use_template: bool, response_prefix: str) -> str:
    """What follows the user text: the prefix after the template's generation prompt, or after a newline."""
    if not response_prefix:
        return ""
    return response_prefix if use_template else PREFIX_SEPARATOR + response_prefix


def encode_roles(tokenizer, content: str, use_template: bool, prefix: str) -> tuple[list[int], list[str]]:
    """Token ids exactly as Generator.encode_chat builds them for one user message, and each token's role:
    bos, user (the message content), assistant (the response prefix) or template (role markers, system)."""
    messages = [{"role": "user", "content": content}]
    if use_template:
        # the content's place, not a search for its text, which a header may also hold ("user", "a", "\n")
        check_no_sentinel(messages)
        skeleton = render(tokenizer, [{"role": "user", "content": sentinel(0)}], add_generation_prompt=True)
        user_start = skeleton.find(sentinel(0))
        head = render(tokenizer, messages, add_generation_prompt=True)
        if user_start < 0 or head != skeleton.replace(sentinel(0), content):
            raise ValueError("chat template does not copy the message verbatim; cannot locate the user tokens")
        text, special = head + prefix, False
    else:
        head, user_start = content, 0
        text, special = content + prefix, True
    encoding = tokenizer(text, add_special_tokens=special, return_offsets_mapping=True)
    ids, offsets = encoding["input_ids"], encoding["offset_mapping"]
    roles = []
    for index, (token, (start, end)) in enumerate(zip(ids, offsets, strict=True)):
        if index == 0 and token == tokenizer.bos_token_id:
            roles.append("bos")
        elif end > start and user_start <= start < user_start + len(content):
            roles.append("user")
        elif end > start and start >= len(head):
            roles.append("assistant")
        else:
            roles.append("template")
    return list(ids), roles


def role_masses(attention: torch.Tensor, roles: list[str]) -> dict[str, torch.Tensor]:
    """Attention mass (over the last dim, the prompt's keys) on user, assistant and BOS tokens, template tokens
    excluded and the three renormalised to sum to 1; also the raw template share before renormalising."""
    attention = attention[..., : len(roles)].float()
    masks = {r: torch.tensor([role == r for role in roles]) for r in (*ROLES, "template")}
    raw = {r: attention[..., m].sum(-1) for r, m in masks.items()}
    kept = sum(raw[r] for r in ROLES)
    masses = {r: raw[r] / kept.clamp_min(1e-30) for r in ROLES}
    masses["template_raw"] = raw["template"]
    return masses


def retrieval_heads(attention: torch.Tensor, user: list[bool]) -> list[int]:
    """Paper Eq. 3: per layer, the head with the most attention on user tokens. attention: (layers, heads, keys)."""
    mask = torch.tensor(user)
    mass = attention[..., : len(user)][..., mask].sum(-1)
    return [int(h) for h in mass.argmax(-1)]


@torch.inference_mode()
def last_token_attention(model, ids: list[int]) -> torch.Tensor:
    """(layers, heads, keys): each layer's attention of the last prompt position (the first answer token)."""
    device = next(model.parameters()).device
    with capture_last(model) as capture:
        model(input_ids=torch.tensor([ids], device=device), logits_to_keep=1)
    return torch.stack([capture.last[m.layer_idx][0] for m in attention_modules(model)])


def nih_cases(tokenizer, settings: dict) -> list[dict]:
    return nih.build_cases(tokenizer, settings, settings["max_context"])


def attention_allocation(model_dir: str, settings: dict, response_prefix: str) -> pd.DataFrame:
    """Per NIH case and layer: the retrieval head (Eq. 3, chosen without the template, as the paper does) and
    its renormalised attention on user, assistant and BOS tokens without and with the chat template."""
    model, tokenizer = load_model(model_dir, attn_implementation=ATTN_NAME)
    cases = nih_cases(tokenizer, settings)
    encoded = [
        (
            case,
            encode_roles(tokenizer, case["prompt"], False, prompt_prefix(False, response_prefix)),
            encode_roles(tokenizer, case["prompt"], True, prompt_prefix(True, response_prefix)),
        )
        for case in cases
    ]
    longest = max(len(ids) for _, (plain_ids, _), (chat_ids, _) in encoded for ids in (plain_ids, chat_ids))
    nih.check_window(longest, 0, getattr(model.config, "max_position_embeddings", None))  # one forward, no generation
    rows = []
    for case, (plain_ids, plain_roles), (chat_ids, chat_roles) in encoded:
        plain = last_token_attention(model, plain_ids)
        heads = retrieval_heads(plain, [r == "user" for r in plain_roles])
        chat = last_token_attention(model, chat_ids)
        for template, attention, roles in ((False, plain, plain_roles), (True, chat, chat_roles)):
            masses = role_masses(attention, roles)
            for layer, head in enumerate(heads):
                rows.append(
                    {
                        "case": case["id"],
                        "chat_template": template,
                        "layer": layer,
                        "head": head,
                        **{k: float(v[layer, head]) for k, v in masses.items()},
                    }
                )
    return pd.DataFrame(rows)


def summarize_allocation(per_case: pd.DataFrame) -> pd.DataFrame:
    """Mean masses over the NIH grid per (template, layer)."""
    return (
        per_case.groupby(["chat_template", "layer"], as_index=False)[[*ROLES, "template_raw"]]
        .mean()
        .assign(n_cases=per_case.groupby(["chat_template", "layer"]).size().to_numpy())
    )


class SteeringGenerator(Generator):
    """Generator whose forward passes steer user tokens (Eq. 1); user tokens come from encode_roles."""

    def __init__(self, model, tokenizer, batch_tokens: int, steering: Steering | None):
        super().__init__(model, tokenizer, batch_tokens, cache_path=None, share_prefixes=False)
        self.steering = steering
        self.user: dict[tuple[int, ...], list[bool]] = {}

    def encode_chat(self, messages: list[dict], use_template: bool = True, response_prefix: str = "") -> list[int]:
        ids = super().encode_chat(messages, use_template, response_prefix)
        users = [m for m in messages if m["role"] == "user"]
        if len(users) != 1 or len(messages) != 1:
            raise ValueError("attention steering handles single-turn prompts only")
        role_ids, roles = encode_roles(self.tokenizer, users[0]["content"], use_template, response_prefix)
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


def nih_settings(settings: dict, template: str, use_template: bool, prefix: str) -> dict:
    return {
        **settings,
        "prompt_template": nih.resolve_template(template),
        "use_chat_template": use_template,
        "response_prefix": prompt_prefix(use_template, prefix),
    }


def nih_template_study(pair: str, models: dict, settings: dict, templates: list[str], prefix: str) -> pd.DataFrame:
    """Table 7 / Figure 2 for one (base, instruct) pair: NIH recall per variant and Table 8 template."""
    rows = []
    for role in ("base", "instruct"):
        model, tokenizer = load_model(models[role], attn_implementation=ATTN_NAME)
        generator = Generator(model, tokenizer, settings["batch_tokens"], share_prefixes=True)
        for variant, (variant_role, use_template, with_prefix) in VARIANTS.items():
            if variant_role != role:
                continue
            for template in templates:
                run = nih_settings(settings, template, use_template, prefix if with_prefix else "")
                summary, _ = run_nih(generator, run, False)
                rows.append({"pair": pair, "model": models[role], "variant": variant, "template": template, **summary})
                logging.info("%s %s %s: recall %.4f", pair, variant, template, summary["score"])
        del model, generator
    return pd.DataFrame(rows)


def summarize_templates(per_template: pd.DataFrame) -> pd.DataFrame:
    """Mean and (sample) standard deviation of recall over the templates; error = 1 - recall (Figure 2)."""
    grouped = per_template.groupby(["pair", "model", "variant"], sort=False)["score"]
    table = grouped.agg(recall_mean="mean", recall_std="std", n_templates="count").reset_index()
    table["recall_std"] = table["recall_std"].fillna(0.0)
    table["error_mean"] = 1 - table["recall_mean"]
    return table


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


def write_csv(frame: pd.DataFrame, path: str) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)


def concat_csvs(paths: list[str]) -> pd.DataFrame:
    return pd.concat([pd.read_csv(p) for p in paths], ignore_index=True)


# Workflow entry points: one per-pair job writes a csv, one gather job writes the table and figure.


def run_template_study(pair: str, models: dict, settings: dict, templates: list[str], prefix: str, out: str) -> None:
    write_csv(nih_template_study(pair, models, settings, templates, prefix), out)


def run_allocation(pair: str, model_dir: str, settings: dict, prefix: str, out: str) -> None:
    per_case = attention_allocation(model_dir, settings, prefix)
    write_csv(summarize_allocation(per_case).assign(pair=pair, model=model_dir, head_selection="without_template"), out)


def run_steering(pair: str, model_dir: str, task_settings: dict, steering: dict, prefix: str, out: str) -> None:
    table = attention_steering(
        pair, model_dir, task_settings, steering["alphas"], steering["heads"], steering["compat"], prefix
    )
    write_csv(table, out)


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


VARIANT_LABELS = {
    "base": "pretrained",
    "no_template": "instruct, w/o chat template",
    "template_prefix": "instruct, w/ chat template",
    "template_no_prefix": "instruct, w/ chat template, w/o response prefix",
}
VARIANT_COLORS = {
    "base": "tab:green",
    "no_template": "tab:blue",
    "template_prefix": "tab:red",
    "template_no_prefix": "tab:orange",
}


def write_template_study(per_pair_csvs: list[str], out_csv: str, out_png: str) -> pd.DataFrame:
    """Table 7 (mean and std of recall over the Table 8 templates) and Figure 2 (recall error bars per pair)."""
    table = summarize_templates(concat_csvs(per_pair_csvs))
    write_csv(table, out_csv)
    plt = _figure()
    pairs = list(dict.fromkeys(table["pair"]))
    figure, axis = plt.subplots(figsize=(max(5.5, 2.0 + 1.6 * len(pairs)), 3.8))
    width = 0.8 / len(VARIANTS)
    for offset, variant in enumerate(VARIANTS):
        rows = table[table["variant"] == variant].set_index("pair").reindex(pairs)
        positions = [i + (offset - (len(VARIANTS) - 1) / 2) * width for i in range(len(pairs))]
        axis.bar(
            positions,
            rows["error_mean"],
            width,
            yerr=rows["recall_std"],
            color=VARIANT_COLORS[variant],
            label=VARIANT_LABELS[variant],
            capsize=2,
        )
    axis.set_xticks(range(len(pairs)), pairs)
    axis.set_ylabel("NIH recall error (1 - recall)")
    axis.set_title("NIH recall error, mean over Table 8 templates (Figure 2)", fontsize=9)
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(out_png, dpi=120)
    plt.close(figure)
    return table


def allocation_layer(table: pd.DataFrame, layer: int | None) -> pd.DataFrame:
    """Rows of one layer per pair: the configured one, or each model's middle layer."""
    chosen = []
    for _, rows in table.groupby("pair", sort=False):
        pick = layer if layer is not None else int(rows["layer"].max()) // 2
        if pick not in set(rows["layer"]):
            raise ValueError(f"config key diagnosis.allocation.layer: layer {pick} is not in the model's layers")
        chosen.append(rows[rows["layer"] == pick])
    return pd.concat(chosen, ignore_index=True)


def write_allocation(per_pair_csvs: list[str], layer: int | None, out_csv: str, out_png: str) -> pd.DataFrame:
    """All layers to the csv; Figure 3 (change with the template) and Figure 4 (allocation) on one layer."""
    table = concat_csvs(per_pair_csvs)
    write_csv(table, out_csv)
    shown = allocation_layer(table, layer)
    pairs = list(dict.fromkeys(shown["pair"]))
    plt = _figure()
    figure, (change, full) = plt.subplots(1, 2, figsize=(max(9.0, 4.0 + 2.4 * len(pairs)), 3.8))
    colors = {"user": "tab:blue", "assistant": "tab:orange", "bos": "tab:gray"}
    for index, pair in enumerate(pairs):
        rows = shown[shown["pair"] == pair].set_index("chat_template")
        delta = rows.loc[True, list(ROLES)] - rows.loc[False, list(ROLES)]
        for offset, role in enumerate(ROLES):
            change.bar(
                index + (offset - 1) * 0.25, delta[role], 0.25, color=colors[role], label=role if not index else None
            )
        for side, template in enumerate((False, True)):
            bottom = 0.0
            x = 2 * index + side
            for role in ROLES:
                value = float(rows.loc[template, role])
                full.bar(x, value, 0.8, bottom=bottom, color=colors[role], label=role if x == 0 else None)
                bottom += value
    change.axhline(0, color="black", linewidth=0.8)
    change.set_xticks(range(len(pairs)), pairs)
    change.set_ylabel("attention change with chat template")
    change.set_title("Figure 3: change in allocation", fontsize=9)
    change.legend(fontsize=7)
    full.set_xticks(range(2 * len(pairs)), [f"{p}\n{t}" for p in pairs for t in ("w/o tmpl", "w/ tmpl")], fontsize=7)
    full.set_ylabel("attention share (renormalised)")
    full.set_title("Figure 4: allocation at the first answer token", fontsize=9)
    full.legend(fontsize=7)
    layers = ", ".join(f"{p}: layer {int(shown[shown['pair'] == p]['layer'].iloc[0])}" for p in pairs)
    figure.suptitle(f"retrieval head per prompt (Eq. 3); {layers}", fontsize=8)
    figure.tight_layout()
    figure.savefig(out_png, dpi=120)
    plt.close(figure)
    return table


def write_steering(per_pair_csvs: list[str], out_csv: str) -> pd.DataFrame:
    """Table 1: every (pair, task, alpha) row; the compat mode and steered heads are columns of every row."""
    table = concat_csvs(per_pair_csvs)
    write_csv(table, out_csv)
    return table
