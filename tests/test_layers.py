"""Layer study (Appendix B.4, Figure 5): top-set disagreement and score RMSE between layers on a hand-made table."""

import math

import pandas as pd
import pytest

from ctxaware.layers import agreement, write_layer_agreement

# ten turns scored on three layers. Layer 1 ranks like layer 0 except that turn 3 replaces turn 2 in the top three;
# layer 2 ranks the other way round. Turn 9 has no score on layer 2 and ("x", 0) is unscored (NaN): both are dropped.
LAYER_SCORES = {
    0: [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05],
    1: [0.9, 0.8, 0.45, 0.7, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05],
    2: [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9],
}


def _long_table() -> pd.DataFrame:
    rows = [
        {"conversation_id": f"c{turn // 2}", "turn": turn % 2, "layer": layer, "score": score}
        for layer, scores in LAYER_SCORES.items()
        for turn, score in enumerate(scores)
    ]
    rows += [{"conversation_id": "x", "turn": 0, "layer": layer, "score": math.nan} for layer in LAYER_SCORES]
    return pd.DataFrame(rows).sample(frac=1.0, random_state=0)  # row order must not matter


def test_disagreement_is_the_share_of_one_layers_top_turns_missing_from_the_others():
    disagreement, rmse = agreement(_long_table(), top_fraction=1 / 3)  # 9 turns on every layer: top 3
    assert list(disagreement.index) == list(disagreement.columns) == [0, 1, 2]
    # top 3: layer 0 {0, 1, 2}; layer 1 {0, 1, 3}; layer 2 {8, 7, 6}
    expected = [[0, 1 / 3, 1], [1 / 3, 0, 1], [1, 1, 0]]
    assert disagreement.to_numpy().ravel().tolist() == pytest.approx(sum(expected, []))
    # RMSE over the nine turns scored on every layer
    for a in LAYER_SCORES:
        for b in LAYER_SCORES:
            diffs = [x - y for x, y in zip(LAYER_SCORES[a][:9], LAYER_SCORES[b][:9], strict=True)]
            assert rmse.loc[a, b] == pytest.approx(math.sqrt(sum(d * d for d in diffs) / 9))
    assert rmse.loc[0, 1] == pytest.approx(math.sqrt((0.25**2 + 0.1**2) / 9))


def test_top_fraction_sets_the_size_of_the_compared_sets():
    disagreement, _ = agreement(_long_table(), top_fraction=0.5)  # round(4.5) = 4 turns: layers 0 and 1 share 3
    assert disagreement.loc[0, 1] == pytest.approx(1 / 4) and disagreement.loc[0, 2] == pytest.approx(1.0)
    disagreement, _ = agreement(_long_table(), top_fraction=0.01)  # at least one turn: the best turn agrees
    assert disagreement.loc[0, 1] == 0.0 and disagreement.loc[1, 2] == 1.0


def test_written_table_has_one_row_per_pair_of_layers(tmp_path):
    long = tmp_path / "layers.parquet"
    _long_table().to_parquet(long)
    table = write_layer_agreement(str(long), 1 / 3, str(tmp_path / "agreement.csv"), str(tmp_path / "agreement.png"))
    written = pd.read_csv(tmp_path / "agreement.csv")
    assert list(written.columns) == ["layer_a", "layer_b", "disagreement", "rmse"]
    assert len(written) == len(table) == 9
    row = written[(written["layer_a"] == 0) & (written["layer_b"] == 1)].iloc[0]
    assert row["disagreement"] == pytest.approx(1 / 3, abs=1e-4)
    assert row["rmse"] == pytest.approx(math.sqrt((0.25**2 + 0.1**2) / 9), abs=1e-4)
    assert (tmp_path / "agreement.png").stat().st_size > 0


@pytest.mark.parametrize("truncation", ["none", "original"])
def test_the_layer_sample_is_scored_with_the_truncation_asked_for(tiny_model_dir, tmp_path, truncation):
    """score_layer_sample passes scoring.truncation on: a window inside the second response scores its visible
    tokens under original, and leaves it NaN under none."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ctxaware.chat import encode_with_spans
    from ctxaware.layers import score_layer_sample
    from ctxaware.modeling import load_model

    messages = [
        {"role": "user", "content": "Explain why the sky is blue."},
        {"role": "assistant", "content": "Sunlight scatters in the atmosphere, and blue light scatters most."},
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Paris is the capital of France."},
    ]
    _, tokenizer = load_model(tiny_model_dir)
    window = encode_with_spans(tokenizer, messages).spans[-1].start + 2
    data = tmp_path / "data.parquet"
    pq.write_table(pa.Table.from_pylist([{"id": "c", "messages": messages}]), data)
    frame = score_layer_sample(
        tiny_model_dir,
        str(data),
        str(tmp_path / "layers.parquet"),
        [0, 1],
        1,
        window,
        "none",
        64,
        truncation=truncation,
    )
    cut = frame[frame["turn"] == 1]
    assert cut["truncated"].all() and len(cut) == 2
    assert cut["score"].notna().all() if truncation == "original" else cut["score"].isna().all()
