"""The diagnosis prompts and the role of each of their tokens; the first answer token's attention; Eq. 3."""

from __future__ import annotations

import torch

from ctxaware.attention import attention_modules, capture_last
from ctxaware.chat import free_marks, render, render_lm_eval, sentinel
from ctxaware.diagnosis import ROLES
from ctxaware.tasks import nih

PREFIX_SEPARATOR = "\n"  # between the user text and the response prefix when no template is applied


def prompt_prefix(use_template: bool, response_prefix: str) -> str:
    """What follows the user text: the prefix after the template's generation prompt, or after a newline."""
    if not response_prefix:
        return ""
    return response_prefix if use_template else PREFIX_SEPARATOR + response_prefix


def encode_roles(
    tokenizer, content: str, use_template: bool, prefix: str, ending: str = "generation_prompt"
) -> tuple[list[int], list[str]]:
    """Token ids exactly as Generator.encode_chat builds them for one user message (with the prompt `ending`),
    and each token's role: bos, user (the message content), assistant (the response prefix) or template (role
    markers, system)."""

    def rendered(messages: list[dict]) -> str:
        if ending == "lm_eval":
            return render_lm_eval(tokenizer, messages)
        return render(tokenizer, messages, add_generation_prompt=True)

    messages = [{"role": "user", "content": content}]
    if use_template:
        # the content's place, not a search for its text, which a header may also hold ("user", "a", "\n")
        head = rendered(messages)
        marker = sentinel(0, free_marks(head))
        skeleton = rendered([{"role": "user", "content": marker}])
        user_start = skeleton.find(marker)
        if user_start < 0 or head != skeleton.replace(marker, content):
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


@torch.inference_mode()
def last_token_attentions(model, prompts: list[list[int]]) -> list[torch.Tensor]:
    """last_token_attention of each prompt, every prefix the prompts share run once (generation.prefix_walk):
    in token order each prompt runs on its predecessor's cache cut to their shared prefix, all but its last
    token without capture, then the last token with it. Models whose cache cannot be cut run each whole."""
    from ctxaware.generation import kv_cache_name, prefill_on, prefix_walk

    device = next(model.parameters()).device
    attentions: list[torch.Tensor | None] = [None] * len(prompts)
    previous = None
    for index, length in zip(*prefix_walk(prompts), strict=True):
        cache = prefill_on(model, prompts[index], previous, length, device)
        if cache is None:
            return [last_token_attention(model, ids) for ids in prompts]
        previous = [(layer.keys, layer.values) for layer in cache.layers]
        last = torch.tensor([prompts[index][-1:]], device=device)
        with capture_last(model) as capture:
            model(input_ids=last, **{kv_cache_name(): cache}, logits_to_keep=1)
        attentions[index] = torch.stack([capture.last[m.layer_idx][0] for m in attention_modules(model)])
    return attentions


def nih_cases(tokenizer, settings: dict) -> list[dict]:
    return nih.build_cases(tokenizer, settings, settings["max_context"])


def nih_settings(settings: dict, template: str, use_template: bool, prefix: str) -> dict:
    return {
        **settings,
        "prompt_template": nih.resolve_template(template),
        "use_chat_template": use_template,
        "response_prefix": prompt_prefix(use_template, prefix),
    }
