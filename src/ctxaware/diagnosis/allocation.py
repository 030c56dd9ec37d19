"""Attention of the first answer token on user, assistant and BOS tokens on each layer's retrieval head, without
and with the chat template, over the NIH grid (paper Figures 3 and 4, Eq. 3)."""

from __future__ import annotations

import pandas as pd

from ctxaware.attention import ATTN_NAME
from ctxaware.diagnosis import ROLES
from ctxaware.diagnosis.gather import write_csv
from ctxaware.diagnosis.roles import (
    encode_roles,
    last_token_attentions,
    nih_cases,
    prompt_prefix,
    retrieval_heads,
    role_masses,
)
from ctxaware.modeling import load_model
from ctxaware.tasks import nih


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
    # every prompt at once, so that what the grid's prompts share (the haystack's opening) runs once
    attentions = iter(last_token_attentions(model, [ids for _, plain, chat in encoded for ids in (plain[0], chat[0])]))
    rows = []
    for case, (_, plain_roles), (_, chat_roles) in encoded:
        plain, chat = next(attentions), next(attentions)
        heads = retrieval_heads(plain, [r == "user" for r in plain_roles])
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


def run_allocation(pair: str, model_dir: str, settings: dict, prefix: str, out: str) -> None:
    per_case = attention_allocation(model_dir, settings, prefix)
    write_csv(summarize_allocation(per_case).assign(pair=pair, model=model_dir, head_selection="without_template"), out)
