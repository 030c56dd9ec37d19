"""Layer study (paper Appendix B.4, Figure 5): score a sample of turns on many layers in one forward and
compare the top-scored subsets and the scores between every pair of layers."""

from __future__ import annotations

import random

import numpy as np
import pandas as pd


def score_layer_sample(
    seed_model: str,
    data_parquet: str,
    out_parquet: str,
    layers: list[int] | None,
    sample: int,
    max_length: int,
    compat: str,
    batch_tokens: int,
    seed: int = 0,
    truncation: str = "none",
) -> pd.DataFrame:
    """Long table (conversation_id, turn, layer, score, ...) of `sample` random conversations."""
    from ctxaware.data import read_conversations
    from ctxaware.modeling import load_model
    from ctxaware.scoring import score_conversations

    model, tokenizer = load_model(seed_model)
    conversations = read_conversations(data_parquet)
    chosen = sorted(random.Random(seed).sample(range(len(conversations)), min(sample, len(conversations))))
    layers = layers if layers is not None else list(range(len(model.get_decoder().layers)))
    frame = score_conversations(
        model,
        tokenizer,
        [conversations[i] for i in chosen],
        layers,
        max_length,
        compat,
        batch_tokens,
        truncation=truncation,
    )
    frame.to_parquet(out_parquet, index=False)
    return frame


def agreement(long: pd.DataFrame, top_fraction: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(disagreement, rmse) matrices over layers.

    disagreement[l, l'] = share of the top-`top_fraction` turns of layer l that are not in layer l''s top set
    (both sets have the same size, so the measure is symmetric); rmse over turns scored on both layers.
    """
    wide = long.dropna(subset=["score"]).pivot_table(
        index=["conversation_id", "turn"], columns="layer", values="score", aggfunc="first"
    )
    wide = wide.dropna()
    layers = list(wide.columns)
    k = max(1, int(round(top_fraction * len(wide))))
    top = {layer: set(wide[layer].nlargest(k).index) for layer in layers}
    disagreement = pd.DataFrame(
        [[len(top[a] - top[b]) / k for b in layers] for a in layers], index=layers, columns=layers
    )
    values = wide.to_numpy()
    rmse = np.sqrt(((values[:, :, None] - values[:, None, :]) ** 2).mean(axis=0))
    return disagreement, pd.DataFrame(rmse, index=layers, columns=layers)


def write_layer_agreement(layers_parquet: str, top_fraction: float, out_csv: str, out_png: str) -> pd.DataFrame:
    from ctxaware.figures import heatmaps

    disagreement, rmse = agreement(pd.read_parquet(layers_parquet), top_fraction)
    table = (
        pd.concat(
            {
                "disagreement": disagreement.stack(),
                "rmse": rmse.stack(),
            },
            axis=1,
        )
        .rename_axis(["layer_a", "layer_b"])
        .reset_index()
    )
    table.to_csv(out_csv, index=False, float_format="%.4f")
    heatmaps(
        {f"top-{top_fraction:.0%} disagreement": disagreement, "score RMSE": rmse},
        out_png,
        "layer",
    )
    return table
