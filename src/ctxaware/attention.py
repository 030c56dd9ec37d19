"""Attention instrumentation on real transformers models: user-token steering (paper Eq. 1) and capture of the
last position's attention distribution (paper Eq. 3, Figures 3 and 4).

Both run in one attention function registered with transformers' AttentionInterface under ATTN_NAME (its mask
is sdpa's). Without an active Steering or Capture on a module it is plain sdpa.

Steering (Eq. 1): on a steered head, attention to every key that is not a user token (template and role tokens,
BOS, the response prefix, generated tokens) is multiplied by alpha and the row renormalised. Adding log(alpha)
to those keys' logits before the softmax is exactly that: softmax(s + log(alpha) 1_notU) = alpha^1_notU e^s / Z.

compat="none": every layer's steering is independent, each steered head sees alpha.
compat="original": the original implementation added the bias to one mask tensor shared by all layers, in
place, so a layer also applied every earlier layer's edits: head h of layer k sees alpha^c, c = the number of
layers <= k that steer head h (alpha^(k+1) when every layer steers it). Reproduced here by that exponent.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

# no "sdpa" in the name: transformers refuses any sdpa-named attention for models without sdpa support (Gemma-2:
# its soft-capping), which steered_attention computes itself
ATTN_NAME = "ctxaware_steerable"
COMPAT_MODES = ("none", "original")


@dataclass
class Steering:
    """alpha on the non-user keys of the given heads; heads: {layer: [head, ...]}.

    user: (batch, prompt_width) bool, True on user tokens, aligned with the (left-padded) prompt; keys beyond
    prompt_width (generated tokens) are non-user.
    """

    alpha: float
    heads: dict[int, list[int]]
    num_layers: int
    num_heads: int
    compat: str = "none"
    user: torch.Tensor | None = None
    exponents: dict[int, torch.Tensor] = field(init=False)

    def __post_init__(self):
        if self.compat not in COMPAT_MODES:
            raise ValueError(f"steering compat {self.compat!r} is not one of {COMPAT_MODES}")
        if not 0 < self.alpha <= 1:
            raise ValueError(f"steering alpha {self.alpha} must lie in (0, 1]")
        self.exponents = steering_exponents(self.heads, self.num_layers, self.num_heads, self.compat)


def steering_exponents(
    heads: dict[int, list[int]], num_layers: int, num_heads: int, compat: str
) -> dict[int, torch.Tensor]:
    """Per layer, the power of alpha each head's non-user keys get (see the module docstring)."""
    exponents, running = {}, torch.zeros(num_heads)
    for layer in range(num_layers):
        own = torch.zeros(num_heads)
        own[list(heads.get(layer, []))] = 1.0
        running = running + own
        exponents[layer] = own if compat == "none" else running.clone()
    return exponents


@dataclass
class Capture:
    """Records, per layer, the attention of the last query position: {layer: (batch, heads, keys)} float32."""

    last: dict[int, torch.Tensor] = field(default_factory=dict)


def _bool_mask(attention_mask, batch: int, q_len: int, k_len: int, device) -> torch.Tensor:
    """(batch or 1, 1, q, k) True where attention is allowed."""
    if attention_mask is None:
        q = torch.arange(q_len, device=device)[:, None] + (k_len - q_len)
        return (torch.arange(k_len, device=device)[None, :] <= q)[None, None]
    if attention_mask.dtype == torch.bool:
        return attention_mask[..., :k_len]
    return attention_mask[..., :k_len] > torch.finfo(attention_mask.dtype).min / 2


def steered_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """sdpa with the module's Steering bias and Capture (both optional)."""
    steering: Steering | None = getattr(module, "_ctxaware_steering", None)
    capture: Capture | None = getattr(module, "_ctxaware_capture", None)
    layer = module.layer_idx
    exponent = None if steering is None else steering.exponents.get(layer)
    if exponent is not None and not bool(exponent.any()):
        exponent = None
    softcap = kwargs.get("softcap")
    if exponent is None and capture is None and softcap is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    batch, num_heads, q_len, _ = query.shape
    groups = getattr(module, "num_key_value_groups", 1)
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    k_len = key.shape[2]
    allowed = _bool_mask(attention_mask, batch, q_len, k_len, query.device)
    bias = torch.zeros(allowed.shape, dtype=query.dtype, device=query.device).masked_fill(
        ~allowed, torch.finfo(query.dtype).min
    )
    if exponent is not None:
        user = steering.user
        if user is None:
            raise ValueError("steering has no user-token mask for this batch")
        non_user = torch.ones(batch, k_len, dtype=torch.bool, device=query.device)
        width = min(user.shape[1], k_len)
        non_user[:, :width] = ~user[:, :width].to(query.device)
        log_alpha = math.log(steering.alpha) * exponent.to(query.device, query.dtype)  # (heads,)
        bias = bias + log_alpha[None, :, None, None] * non_user[:, None, None, :].to(query.dtype)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    if softcap is not None:  # Gemma-2: logits soft-capped before the mask, which sdpa cannot do
        logits = torch.tanh((query @ key.transpose(2, 3)) * scale / softcap) * softcap + bias
        weights = torch.softmax(logits.float(), dim=-1)
        if capture is not None:
            capture.last[layer] = weights[:, :, -1].detach().cpu()
        output = weights.to(value.dtype) @ value
        return output.transpose(1, 2).contiguous(), None
    if capture is not None:
        logits = (query[:, :, -1:].float() @ key.float().transpose(2, 3)) * scale + bias[:, :, -1:].float()
        capture.last[layer] = torch.softmax(logits, dim=-1)[:, :, 0].detach().cpu()
    output = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=bias, dropout_p=dropout, scale=scaling
    )
    return output.transpose(1, 2).contiguous(), None


AttentionInterface.register(ATTN_NAME, steered_attention)
AttentionMaskInterface.register(ATTN_NAME, sdpa_mask)


def attention_modules(model) -> list:
    """The self-attention module of every decoder layer, in layer order."""
    modules = [m for m in model.modules() if hasattr(m, "layer_idx") and hasattr(m, "num_key_value_groups")]
    return sorted(modules, key=lambda m: m.layer_idx)


def num_heads(model) -> int:
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return config.num_attention_heads


def instrument(model) -> None:
    """Route the model's attention through steered_attention (sdpa when nothing is active)."""
    if model.config._attn_implementation != ATTN_NAME:
        model.set_attn_implementation(ATTN_NAME)


@contextlib.contextmanager
def steer(model, steering: Steering) -> Iterator[Steering]:
    """Apply `steering` to every forward pass inside the block (set steering.user for each batch)."""
    instrument(model)
    modules = attention_modules(model)
    for module in modules:
        module._ctxaware_steering = steering
    try:
        yield steering
    finally:
        for module in modules:
            module._ctxaware_steering = None


@contextlib.contextmanager
def capture_last(model) -> Iterator[Capture]:
    """Record the last position's attention of every layer during the forward passes inside the block."""
    instrument(model)
    capture = Capture()
    modules = attention_modules(model)
    for module in modules:
        module._ctxaware_capture = capture
    try:
        yield capture
    finally:
        for module in modules:
            module._ctxaware_capture = None
