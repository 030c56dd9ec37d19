"""Score validity: AUROC against ground-truth labels, joined on (conversation, turn)."""

import itertools
import math
import random
import warnings

import pandas as pd
import pytest

from ctxaware.data import prepare
from ctxaware.validity import COLUMNS, auroc, labelled_scores, score_validity, write_score_validity


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


def test_auroc_edge_cases_are_exact_and_silent():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no division by an empty class
        assert math.isnan(auroc([0.1, 0.2], [True, True])) and math.isnan(auroc([0.1, 0.2], [False, False]))
        assert math.isnan(auroc([], []))
    assert auroc([0.9, 0.1], [True, False]) == 1.0  # one turn of each kind is enough
    assert auroc([0.3, 0.2, 0.1], [1, 0, 1]) == 0.5  # 0/1 labels are booleans, not positions


def test_labels_join_scores_by_conversation_and_turn_and_unscored_turns_drop():
    labels = pd.DataFrame(
        {"conversation_id": ["a", "a", "b", "c"], "turn": [0, 1, 0, 0], "context_dependent": [True, False, None, True]}
    )
    scores = pd.DataFrame(
        {"conversation_id": ["a", "a", "b", "c"], "turn": [0, 1, 0, 0], "score": [0.9, 0.2, 0.5, float("nan")]}
    )
    joined = labelled_scores(labels, scores)
    assert joined[["conversation_id", "turn", "score"]].values.tolist() == [["a", 0, 0.9], ["a", 1, 0.2]]
    assert joined["context_dependent"].dtype == bool and joined["context_dependent"].tolist() == [True, False]
    with pytest.raises(pd.errors.MergeError):  # one label per turn: a duplicated label is an error, not two rows
        labelled_scores(pd.concat([labels, labels]), scores)


def _labelled_dataset(tmp_path, labels: list[bool]) -> str:
    rows = [
        {
            "id": f"c{i}",
            "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a", "context_dependent": x}],
        }
        for i, x in enumerate(labels)
    ]
    raw = tmp_path / "raw.json"
    raw.write_text(pd.Series(rows).to_json(orient="values"))
    prepare(str(raw), "sharegpt", str(tmp_path / "d.parquet"), str(tmp_path / "d.json"))
    return str(tmp_path / "d.parquet")


def test_score_validity_table_and_figure(tmp_path):
    labels = [i % 2 == 0 for i in range(10)]
    data = _labelled_dataset(tmp_path, labels)
    # the labelled turns score higher, except one pair that is swapped
    scores = [0.9 if i % 2 == 0 else 0.1 for i in range(10)]
    scores[0], scores[1] = 0.1, 0.9
    table = pd.DataFrame({"conversation_id": [f"c{i}" for i in range(10)], "turn": 0, "score": scores})
    table.to_parquet(tmp_path / "s.parquet")
    # the layer study: layer 1 is a perfect score, layer 0 the swapped one; written layer 1 first
    perfect = table.assign(score=[0.9 if x else 0.1 for x in labels])
    pd.concat([perfect.assign(layer=1), table.assign(layer=0)]).to_parquet(tmp_path / "layers.parquet")
    # a second score, planted independent of the labels: the same values in a shuffled order
    shuffled = table.assign(score=random.Random(3).sample(scores, len(scores)))
    shuffled.to_parquet(tmp_path / "lr.parquet")
    out = write_score_validity(
        {"organism": data},
        [
            {"dataset": "organism", "method": "attention", "layer": 1, "path": str(tmp_path / "s.parquet")},
            {"dataset": "organism", "method": "likelihood_ratio", "layer": None, "path": str(tmp_path / "lr.parquet")},
        ],
        str(tmp_path / "v.csv"),
        str(tmp_path / "v.png"),
        layer_study=str(tmp_path / "layers.parquet"),
        layer_dataset="organism",
    )
    expected = brute_force_auroc(scores, labels)
    assert expected == pytest.approx(0.8)  # 16 wins and 8 ties of 25 pairs
    planted = brute_force_auroc(shuffled["score"].tolist(), labels)
    assert out.to_dict("list") == {
        "dataset": ["organism"] * 4,
        "method": ["attention", "likelihood_ratio", "attention", "attention"],
        "layer": [1, None, 0, 1],
        "negatives": ["all"] * 4,
        "auroc": pytest.approx([expected, planted, expected, 1.0]),
        "n": [10] * 4,
        "n_context_dependent": [5] * 4,
        "source": ["scores", "scores", "layer_study", "layer_study"],
    }
    lines = (tmp_path / "v.csv").read_text().splitlines()
    assert lines[0] == "dataset,method,layer,negatives,auroc,n,n_context_dependent,source"
    assert lines[1] == "organism,attention,1,all,0.8000,10,5,scores"  # the likelihood ratio has no layer
    assert lines[2] == f"organism,likelihood_ratio,,all,{planted:.4f},10,5,scores"
    assert (tmp_path / "v.png").stat().st_size > 0


def test_labelled_scores_come_back_per_dataset_and_score(tmp_path):
    data = _labelled_dataset(tmp_path, [True, False, True])
    frame = pd.DataFrame({"conversation_id": ["c0", "c1", "c2"], "turn": 0, "score": [0.7, 0.1, float("nan")]})
    frame.to_parquet(tmp_path / "s.parquet")
    rows = [{"dataset": "d", "method": "attention", "layer": 2, "path": str(tmp_path / "s.parquet")}]
    table, joined = score_validity({"d": data}, rows)
    assert list(joined) == [("d", "attention")]
    assert joined["d", "attention"][["conversation_id", "score"]].values.tolist() == [["c0", 0.7], ["c1", 0.1]]
    assert table.to_dict("records") == [
        {
            "dataset": "d",
            "method": "attention",
            "layer": 2,
            "negatives": "all",
            "auroc": 1.0,
            "n": 2,
            "n_context_dependent": 1,
            "source": "scores",
        }
    ]
    empty, nothing = score_validity({"d": data}, [])
    assert list(empty.columns) == COLUMNS and empty.empty and nothing == {}


def test_a_score_independent_of_the_labels_has_auroc_near_one_half(tmp_path):
    """A planted score drawn without looking at the labels gets AUROC 0.5 in the validity table, within sampling
    error (400 turns, 30% positive: sd ~0.03), where an informative one on the same turns gets far more."""
    rng = random.Random(7)
    labels = [rng.random() < 0.3 for _ in range(400)]
    data = _labelled_dataset(tmp_path, labels)
    ids = [f"c{i}" for i in range(len(labels))]
    noise = [rng.random() for _ in labels]
    planted = pd.DataFrame({"conversation_id": ids, "turn": 0, "score": noise})
    informative = planted.assign(score=[s + (0.5 if x else 0.0) for s, x in zip(noise, labels, strict=True)])
    planted.to_parquet(tmp_path / "planted.parquet")
    informative.to_parquet(tmp_path / "informative.parquet")
    rows = [
        {"dataset": "d", "method": method, "layer": None, "path": str(tmp_path / f"{name}.parquet")}
        for method, name in (("likelihood_ratio", "planted"), ("attention", "informative"))
    ]
    table, _ = score_validity({"d": data}, rows)
    by_method = table.set_index("method")["auroc"]
    assert by_method["likelihood_ratio"] == pytest.approx(0.5, abs=0.1)
    assert by_method["attention"] > 0.8


def test_grouped_turns_are_compared_group_by_group_beside_the_length_baseline(tmp_path):
    """A labelled set that groups its negatives (context-free, distractor) gets one row per comparison; a score
    that tracks the instruction's length separates the context-free group but not the distractors, and the
    length baseline row says so."""
    groups = ["context_dependent", "context_free", "distractor"] * 4
    rows = [
        {
            "id": f"c{i}",
            "label_group": group,
            "conversations": [
                {"from": "human", "value": "q"},
                {"from": "gpt", "value": "a", "context_dependent": group == "context_dependent"},
            ],
        }
        for i, group in enumerate(groups)
    ]
    raw = tmp_path / "raw.json"
    raw.write_text(pd.Series(rows).to_json(orient="values"))
    prepare(str(raw), "sharegpt", str(tmp_path / "d.parquet"), str(tmp_path / "d.json"))
    # long user messages for context-dependent turns and distractors, short for context-free ones
    lengths = [{"context_dependent": 120, "context_free": 20, "distractor": 118}[g] + i for i, g in enumerate(groups)]
    frame = pd.DataFrame(
        {
            "conversation_id": [f"c{i}" for i in range(len(groups))],
            "turn": 0,
            "score": [0.9 if g == "context_dependent" else 0.2 for g in groups],  # a valid score
            "n_instruction_tokens": lengths,
        }
    )
    frame.to_parquet(tmp_path / "s.parquet")
    table, _ = score_validity(
        {"real": str(tmp_path / "d.parquet")},
        [{"dataset": "real", "method": "attention", "layer": 3, "path": str(tmp_path / "s.parquet")}],
    )
    assert set(table["dataset"]) == {"real"} and set(table["source"]) == {"scores"}
    assert table["method"].tolist() == ["attention"] * 3 + ["instruction_length"] * 3
    rated = table.set_index(["method", "negatives"])
    assert rated["n"].to_dict() == {
        ("attention", "all"): 12,
        ("attention", "context_free"): 8,
        ("attention", "distractor"): 8,
        ("instruction_length", "all"): 12,
        ("instruction_length", "context_free"): 8,
        ("instruction_length", "distractor"): 8,
    }
    assert (rated.loc["attention", "auroc"] == 1.0).all()
    assert rated.loc[("instruction_length", "context_free"), "auroc"] == 1.0  # length alone separates these
    # distractors are as long (lengths 120, 123, 126, 129 in both groups): length is at chance
    assert rated.loc[("instruction_length", "distractor"), "auroc"] == 0.5
    assert rated.loc[("instruction_length", "distractor"), "layer"] is pd.NA
