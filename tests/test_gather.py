"""The Section 2 gather jobs (ctxaware.diagnosis.gather, torch-free) on hand-made per-pair csvs."""

import pandas as pd
import pytest

from ctxaware.diagnosis import ROLES, VARIANTS
from ctxaware.diagnosis.gather import (
    allocation_layer,
    summarize_templates,
    write_allocation,
    write_steering,
    write_template_study,
)


def _per_template(pair: str, recalls: dict[str, list[float]]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"pair": pair, "model": f"{pair}-model", "variant": variant, "template": f"t{i}", "score": score, "n": 9}
            for variant, scores in recalls.items()
            for i, score in enumerate(scores)
        ]
    )


def test_rows_per_length_pool_into_their_template_by_cases():
    per_length = pd.DataFrame(
        {
            "pair": "p",
            "model": "m",
            "variant": "template_prefix",
            "template": ["t1", "t1", "t2", "t2"],
            "length": [250, 2000, 250, 2000],
            "score": [1.0, 0.0, 0.5, 0.5],
            "n": [3, 1, 2, 2],
        }
    )
    table = summarize_templates(per_length)
    # t1: 3 of 4 cases, t2: 2 of 4; then the mean and sample std over the two templates
    assert table["recall_mean"].tolist() == [pytest.approx(0.625)] and table["n_templates"].tolist() == [2]
    assert table["recall_std"].tolist() == [pytest.approx(pd.Series([0.75, 0.5]).std(ddof=1))]


def test_template_study_is_mean_and_sample_std_over_templates():
    per_template = _per_template("b", {"template_prefix": [0.2, 0.4, 0.9], "base": [0.5]})
    table = summarize_templates(per_template)
    assert table["variant"].tolist() == ["template_prefix", "base"]  # first-seen order, not sorted
    first, second = table.to_dict("records")
    assert first["recall_mean"] == pytest.approx(0.5) and first["error_mean"] == pytest.approx(0.5)
    assert first["recall_std"] == pytest.approx(pd.Series([0.2, 0.4, 0.9]).std(ddof=1)) and first["n_templates"] == 3
    assert second["recall_std"] == 0.0 and second["recall_mean"] == 0.5  # one template: no spread, not NaN
    assert list(table.columns) == [
        "pair",
        "model",
        "variant",
        "recall_mean",
        "recall_std",
        "n_templates",
        "error_mean",
    ]


def test_template_study_table_and_figure_over_pairs(tmp_path):
    csvs = []
    for pair in ("b", "a"):
        csvs.append(str(tmp_path / f"{pair}.csv"))
        _per_template(pair, {variant: [0.25, 0.75] for variant in VARIANTS}).to_csv(csvs[-1], index=False)
    out_csv, out_png = tmp_path / "table7.csv", tmp_path / "figure2.png"
    table = write_template_study(csvs, str(out_csv), str(out_png))
    assert table["pair"].tolist() == ["b"] * len(VARIANTS) + ["a"] * len(VARIANTS)
    pd.testing.assert_frame_equal(pd.read_csv(out_csv), table)
    assert out_png.read_bytes().startswith(b"\x89PNG")


def _allocation(pair: str, layers: int) -> pd.DataFrame:
    rows = []
    for template in (False, True):
        for layer in range(layers):
            masses = {"user": 0.5 - 0.2 * template, "assistant": 0.2, "bos": 0.3 + 0.2 * template}
            rows.append({"chat_template": template, "layer": layer, **masses, "template_raw": 0.1 * template})
    return pd.DataFrame(rows).assign(pair=pair, model=f"{pair}-model")


def test_allocation_shows_the_configured_or_the_middle_layer_of_each_model():
    table = pd.concat([_allocation("a", 5), _allocation("b", 2)], ignore_index=True)
    middle = allocation_layer(table, None)
    assert middle.groupby("pair")["layer"].unique().map(list).to_dict() == {"a": [2], "b": [0]}
    assert len(middle) == 4 and set(middle["chat_template"]) == {False, True}
    assert set(allocation_layer(table, 1)["layer"]) == {1}
    with pytest.raises(ValueError, match=r"^config key diagnosis.allocation.layer: layer 3 is not in the model's"):
        allocation_layer(table, 3)  # model b has layers 0 and 1


def test_allocation_csv_keeps_every_layer_and_the_figure_is_drawn(tmp_path):
    paths = []
    for pair, layers in (("a", 3), ("b", 4)):
        paths.append(str(tmp_path / f"{pair}.csv"))
        _allocation(pair, layers).to_csv(paths[-1], index=False)
    out_csv, out_png = tmp_path / "allocation.csv", tmp_path / "allocation.png"
    table = write_allocation(paths, None, str(out_csv), str(out_png))
    assert len(table) == 2 * 3 + 2 * 4 and list(ROLES) == ["user", "assistant", "bos"]
    pd.testing.assert_frame_equal(pd.read_csv(out_csv), table)
    assert out_png.read_bytes().startswith(b"\x89PNG")


def test_steering_table_is_every_pairs_rows(tmp_path):
    paths = []
    for pair in ("a", "b"):
        paths.append(str(tmp_path / f"{pair}.csv"))
        pd.DataFrame({"pair": [pair] * 2, "task": ["nih", "quac"], "alpha": [1.0, 0.5], "score": [0.1, 0.2]}).to_csv(
            paths[-1], index=False
        )
    out = tmp_path / "table1.csv"
    table = write_steering(paths, str(out))
    assert table["pair"].tolist() == ["a", "a", "b", "b"] and table.index.tolist() == [0, 1, 2, 3]
    pd.testing.assert_frame_equal(pd.read_csv(out), table)


def test_the_best_alpha_is_picked_on_nih_per_pair_among_steered_rows():
    from ctxaware.diagnosis.steering import mark_best_alpha

    rows = [
        ("a", "nih", 1.0, False, 0.9),  # unsteered: never the best alpha, however good
        ("a", "nih", 0.5, True, 0.4),
        ("a", "nih", 0.1, True, 0.6),
        ("a", "quac", 0.5, True, 0.99),  # alpha is chosen on NIH only
        ("a", "quac", 0.1, True, 0.1),
        ("b", "nih", 0.5, True, 0.7),
        ("b", "nih", 0.1, True, 0.2),
    ]
    table = pd.DataFrame(rows, columns=["pair", "task", "alpha", "steered", "score"])
    marked = mark_best_alpha(table)
    assert marked["best_on_nih"].tolist() == [False, False, True, False, True, True, False]
    assert "best_on_nih" not in table  # the input is left as it was
