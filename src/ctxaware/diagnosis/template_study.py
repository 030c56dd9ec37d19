"""NIH recall of the base model and of the instruct model without the chat template, with it and a response
prefix, and with it alone, over the Table 8 templates (paper Figure 2, Table 7)."""

from __future__ import annotations

import logging

import pandas as pd

from ctxaware.attention import ATTN_NAME
from ctxaware.diagnosis import VARIANTS
from ctxaware.diagnosis.gather import write_csv
from ctxaware.diagnosis.roles import nih_settings
from ctxaware.evaluation import nih_prompts, score_nih
from ctxaware.generation import Generator
from ctxaware.modeling import load_model


def nih_template_study(
    pair: str, models: dict, settings: dict, templates: list[str], prefix: str, variants: list[str]
) -> pd.DataFrame:
    """Table 7 / Figure 2 for one (base, instruct) pair: NIH recall per variant (of `variants`) and Table 8
    template; a role none of the variants uses is not loaded (a pair without a base model)."""
    rows = []
    for role in ("base", "instruct"):
        if not any(VARIANTS[variant][0] == role for variant in variants):
            continue
        model, tokenizer = load_model(models[role], attn_implementation=ATTN_NAME)
        generator = Generator(model, tokenizer, settings["batch_tokens"], share_prefixes=True)
        runs = [
            (variant, template, nih_settings(settings, template, use_template, prefix if with_prefix else ""))
            for variant, (variant_role, use_template, with_prefix) in VARIANTS.items()
            if variant_role == role and variant in variants
            for template in templates
        ]
        grids = [nih_prompts(generator, run, False) for _, _, run in runs]
        # one call for all of a model's grids, so that the prefix walk runs what they share once (a prompt with
        # a response prefix is its twin without one, plus the prefix)
        outputs = iter(generator.generate_ids([p for grid in grids for p in grid[2]], settings["max_new_tokens"]))
        for (variant, template, run), grid in zip(runs, grids, strict=True):
            summary, records = score_nih(run, *grid, [next(outputs) for _ in grid[2]])
            by_length = pd.DataFrame(records).groupby("length", sort=True)["score"].agg(["mean", "count"])
            for length, (score, n) in by_length.iterrows():  # one row per grid length (Figure 2 by length)
                rows.append(
                    {
                        "pair": pair,
                        "model": models[role],
                        "variant": variant,
                        "template": template,
                        "length": int(length),
                        "score": score,
                        "n": int(n),
                    }
                )
            logging.info("%s %s %s: recall %.4f", pair, variant, template, summary["score"])
        logging.info(
            "%s %s: %d prompts, %d tokens prefilled", pair, role, generator.n_generated, generator.n_prefilled_tokens
        )
        del model, generator
    return pd.DataFrame(rows)


def run_template_study(
    pair: str, models: dict, settings: dict, templates: list[str], prefix: str, variants: list[str], out: str
) -> None:
    write_csv(nih_template_study(pair, models, settings, templates, prefix, variants), out)
