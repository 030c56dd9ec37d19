"""Score validity: AUROC against ground-truth labels, joined on (conversation, turn)."""

import itertools
import math
import random

import pandas as pd
import pytest

from ctxaware.data import prepare
from ctxaware.validity import auroc, labelled_scores, write_score_validity


def brute_force_auroc(scores, labels):
    """P(score of a positive > score of a negative) + half the ties, over every pair."""
    pairs = [(p, n) for p, n in itertools.product(range(len(scores)), repeat=2) if labels[p] and not labels[n]]
    wins = sum(1.0 if scores[p] > scores[n] else 0.5 if scores[p] == scores[n] else 0.0 for p, n in pairs)
    return wins / len(pairs)


def test_auroc_matches_the_pairwise_definition_with_ties():
    rng = random.Random(0)
    for _ in range(20):
        scores = [rng.choice([0.1, 0.2, 0.5, 0.5, 0.9]) for _ in range(15)]
        labels = [rng.random() < 0.4 for _ in range(15)]
        if 0 < sum(labels) < len(labels):
            assert auroc(scores, labels) == pytest.approx(brute_force_auroc(scores, labels))
    assert auroc([0.9, 0.8, 0.1], [True, True, False]) == 1.0
    assert auroc([0.1, 0.2, 0.9], [True, True, False]) == 0.0
    assert math.isnan(auroc([0.1, 0.2], [True, True]))


def test_labels_join_scores_by_conversation_and_turn_and_unscored_turns_drop():
    labels = pd.DataFrame(
        {"conversation_id": ["a", "a", "b", "c"], "turn": [0, 1, 0, 0], "context_dependent": [True, False, None, True]}
    )
    scores = pd.DataFrame(
        {"conversation_id": ["a", "a", "b", "c"], "turn": [0, 1, 0, 0], "score": [0.9, 0.2, 0.5, float("nan")]}
    )
    joined = labelled_scores(labels, scores)
    assert joined[["conversation_id", "turn", "score"]].values.tolist() == [["a", 0, 0.9], ["a", 1, 0.2]]


def test_score_validity_table_and_figure(tmp_path):
    rows = [
        {
            "id": f"c{i}",
            "conversations": [
                {"from": "human", "value": "q"},
                {"from": "gpt", "value": "a", "context_dependent": i % 2 == 0},
            ],
        }
        for i in range(10)
    ]
    raw = tmp_path / "raw.json"
    raw.write_text(pd.Series(rows).to_json(orient="values"))
    prepare(str(raw), "sharegpt", str(tmp_path / "d.parquet"), str(tmp_path / "d.json"))
    # the labelled turns score higher, except one pair that is swapped
    scores = [0.9 if i % 2 == 0 else 0.1 for i in range(10)]
    scores[0], scores[1] = 0.1, 0.9
    table = pd.DataFrame({"conversation_id": [f"c{i}" for i in range(10)], "turn": 0, "score": scores})
    table.to_parquet(tmp_path / "s.parquet")
    study = pd.concat([table.assign(layer=layer) for layer in (0, 1)])
    study.to_parquet(tmp_path / "layers.parquet")
    # a second score, planted independent of the labels: the same values in a shuffled order
    shuffled = table.assign(score=random.Random(3).sample(scores, len(scores)))
    shuffled.to_parquet(tmp_path / "lr.parquet")
    out = write_score_validity(
        {"organism": str(tmp_path / "d.parquet")},
        [
            {"dataset": "organism", "method": "attention", "layer": 1, "path": str(tmp_path / "s.parquet")},
            {"dataset": "organism", "method": "likelihood_ratio", "layer": None, "path": str(tmp_path / "lr.parquet")},
        ],
        str(tmp_path / "v.csv"),
        str(tmp_path / "v.png"),
        layer_study=str(tmp_path / "layers.parquet"),
        layer_dataset="organism",
    )
    assert list(out.columns[:5]) == ["dataset", "method", "layer", "auroc", "n"]
    expected = brute_force_auroc(scores, [i % 2 == 0 for i in range(10)])
    assert expected == pytest.approx(0.8)  # 16 wins and 8 ties of 25 pairs
    assert out["method"].tolist() == ["attention", "likelihood_ratio", "attention", "attention"]
    assert out["auroc"].tolist() == pytest.approx(
        [expected, brute_force_auroc(shuffled["score"].tolist(), [i % 2 == 0 for i in range(10)]), expected, expected]
    )
    assert out["n"].tolist() == [10, 10, 10, 10] and out["layer"].tolist()[2:] == [0, 1]
    assert pd.isna(out["layer"].iloc[1])  # the likelihood ratio has no layer
    written = pd.read_csv(tmp_path / "v.csv")
    assert written["layer"].isna().tolist() == [False, True, False, False]
    assert (tmp_path / "v.png").stat().st_size > 0


def test_a_score_independent_of_the_labels_has_auroc_near_one_half():
    """A planted score drawn without looking at the labels: AUROC 0.5 within sampling error (n = 4000, sd ~0.009)."""
    rng = random.Random(7)
    labels = [rng.random() < 0.3 for _ in range(4000)]
    scores = [rng.random() for _ in labels]
    assert auroc(scores, labels) == pytest.approx(0.5, abs=0.03)
    informative = [s + (0.5 if label else 0.0) for s, label in zip(scores, labels, strict=True)]
    assert auroc(informative, labels) > 0.8
