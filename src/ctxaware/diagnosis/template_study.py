"""NIH recall of the base model and of the instruct model without the chat template, with it and a response
prefix, and with it alone, over the Table 8 templates (paper Figure 2, Table 7)."""

from __future__ import annotations

import logging

import pandas as pd

from ctxaware.attention import ATTN_NAME
from ctxaware.diagnosis import VARIANTS
from ctxaware.diagnosis.gather import write_csv
from ctxaware.diagnosis.roles import nih_settings
from ctxaware.evaluation import run_nih
from ctxaware.generation import Generator
from ctxaware.modeling import load_model


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


def run_template_study(pair: str, models: dict, settings: dict, templates: list[str], prefix: str, out: str) -> None:
    write_csv(nih_template_study(pair, models, settings, templates, prefix), out)
