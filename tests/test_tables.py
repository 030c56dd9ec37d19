"""Table 4 from the evaluation JSONs and Table 3 from the scores, on hand-made results."""

import json
import math

import pandas as pd
import pytest

from ctxaware.tables import TABLE4_COLUMNS, table3_frame, table4_frame, write_table3, write_table4

ROWS = [
    {"sft_dataset": "sharegpt", "model": "tiny", "method": "vanilla"},
    {"sft_dataset": "sharegpt", "model": "tiny", "method": "indicator-0.6"},
    {"sft_dataset": "ultrachat", "model": "tiny", "method": "vanilla"},  # its DROP result is missing
]
# (model, dataset, method) -> task -> score
SCORES = {
    ("tiny", "sharegpt", "vanilla"): {"nih": 0.25, "squad": 0.5, "quac": 0.125, "drop": 0.0625, "mtbench": 3.5},
    ("tiny", "sharegpt", "indicator-0.6"): {"nih": 1.0, "squad": 0.75, "quac": 0.5, "drop": 0.25, "mtbench": 6},
    ("tiny", "ultrachat", "vanilla"): {"nih": 0.5, "squad": 0.25, "quac": 0.75, "mtbench": 2.25},
    ("other", "sharegpt", "vanilla"): {"nih": 0.9},  # a result no row asks for
}


def _rows(root, rows=ROWS) -> list[dict]:
    """The rows with their `results` as the workflow hands them over: {task: evaluation json} per row."""
    results = {}
    for (model, dataset, method), tasks in SCORES.items():
        for task, score in tasks.items():
            path = root / "results" / "eval" / model / dataset / method / f"{task}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"task": task, "score": score, "n": 9}))
            results.setdefault((dataset, model, method), {})[task] = str(path)
    return [{**row, "results": results[(row["sft_dataset"], row["model"], row["method"])]} for row in rows]


EXPECTED = [
    ["sharegpt", "tiny", "vanilla", 0.25, 0.5, 0.125, 0.0625, (0.25 + 0.5 + 0.125 + 0.0625) / 4, 3.5],
    ["sharegpt", "tiny", "indicator-0.6", 1.0, 0.75, 0.5, 0.25, 0.625, 6.0],
    ["ultrachat", "tiny", "vanilla", 0.5, 0.25, 0.75, math.nan, math.nan, 2.25],  # avg needs all four tasks
]


def test_table4_puts_each_evaluation_in_its_row_and_column(tmp_path):
    frame = table4_frame(_rows(tmp_path))
    expected = pd.DataFrame(EXPECTED, columns=TABLE4_COLUMNS)
    assert list(frame.columns) == TABLE4_COLUMNS
    pd.testing.assert_frame_equal(frame, expected)


def test_written_table4_csv_markdown_and_latex(tmp_path):
    paper = tmp_path / "paper.csv"
    paper.write_text("sft_dataset,model,method,nih,mt_bench\nsharegpt,tiny,vanilla,0.9,5.5\n")
    out = {suffix: tmp_path / f"table4.{suffix}" for suffix in ("csv", "md", "tex")}
    frame = write_table4(_rows(tmp_path), out["csv"], out["md"], out["tex"], str(paper))
    pd.testing.assert_frame_equal(frame, pd.DataFrame(EXPECTED, columns=TABLE4_COLUMNS))
    assert out["csv"].read_text().splitlines() == [
        ",".join(TABLE4_COLUMNS),
        "sharegpt,tiny,vanilla,0.2500,0.5000,0.1250,0.0625,0.2344,3.5000",
        "sharegpt,tiny,indicator-0.6,1.0000,0.7500,0.5000,0.2500,0.6250,6.0000",
        "ultrachat,tiny,vanilla,0.5000,0.2500,0.7500,,,2.2500",
    ]
    markdown = out["md"].read_text().splitlines()
    header = [cell.strip() for cell in markdown[0].strip("|").split("|")]
    assert header == [*TABLE4_COLUMNS, "paper_nih", "paper_mt_bench"]  # the paper's values beside ours
    first = [cell.strip() for cell in markdown[2].strip("|").split("|")]
    assert first[:4] == ["sharegpt", "tiny", "vanilla", "0.2500"] and first[-2:] == ["0.9000", "5.5000"]
    assert [cell.strip() for cell in markdown[3].strip("|").split("|")][-2:] == ["nan", "nan"]
    assert out["md"].read_text().endswith(" |\n")
    latex = [line.strip() for line in out["tex"].read_text().splitlines()]
    assert latex[0] == r"\begin{tabular}{lllrrrrrrrr}" and latex[-1] == r"\end{tabular}"
    header = "sft dataset & model & method & nih & squad & quac & drop & avg & mt bench & paper nih & paper mt bench"
    assert latex[2] == header + r" \\"
    assert latex[4:7] == [
        r"sharegpt & tiny & vanilla & 0.2500 & 0.5000 & 0.1250 & 0.0625 & 0.2344 & 3.5000 & 0.9000 & 5.5000 \\",
        r"sharegpt & tiny & indicator-0.6 & 1.0000 & 0.7500 & 0.5000 & 0.2500 & 0.6250 & 6.0000 & -- & -- \\",
        r"ultrachat & tiny & vanilla & 0.5000 & 0.2500 & 0.7500 & -- & -- & 2.2500 & -- & -- \\",
    ]


def test_latex_escapes_names_and_a_paper_table_needs_its_keys(tmp_path):
    out = {suffix: tmp_path / f"table4.{suffix}" for suffix in ("csv", "md", "tex")}
    rows = [{"sft_dataset": "wizard_lm", "model": "tiny&co", "method": "vanilla", "results": {}}]
    write_table4(rows, out["csv"], out["md"], out["tex"])
    assert r"wizard\_lm & tiny\&co & vanilla & -- &" in out["tex"].read_text()
    paper = tmp_path / "paper.csv"
    paper.write_text("nih\n0.9\n")
    with pytest.raises(ValueError, match=r"report.paper_table4: .*paper.csv has no column sft_dataset, model, method$"):
        write_table4(rows, out["csv"], out["md"], out["tex"], str(paper))
    paper.write_text("sft_dataset,model,method,mt_bench\nwizard_lm,tiny&co,vanilla,5.0\n")  # any value columns
    write_table4(rows, out["csv"], out["md"], out["tex"], str(paper))
    assert r"wizard\_lm & tiny\&co & vanilla & -- & -- & -- & -- & -- & -- & 5.0000 \\" in out["tex"].read_text()


def test_table4_without_a_paper_table(tmp_path):
    out = {suffix: tmp_path / f"table4.{suffix}" for suffix in ("csv", "md", "tex")}
    write_table4(_rows(tmp_path, ROWS[:1]), out["csv"], out["md"], out["tex"])
    header = [cell.strip() for cell in out["md"].read_text().splitlines()[0].strip("|").split("|")]
    assert header == TABLE4_COLUMNS and "paper" not in out["tex"].read_text()


def test_table3_is_the_share_of_turns_above_each_beta(tmp_path):
    scores = {
        "sharegpt": [0.2, 0.55, 0.65, 0.75, 0.9, math.nan, 0.6, 0.1],  # NaN: a truncated turn, never tagged
        "ultrachat": [0.7, 0.8],
    }
    paths = {}
    for dataset, values in scores.items():
        paths[dataset] = str(tmp_path / f"{dataset}.parquet")
        pd.DataFrame({"conversation_id": [str(i) for i in range(len(values))], "turn": 0, "score": values}).to_parquet(
            paths[dataset]
        )
    frame = table3_frame(paths, [0.5, 0.6, 0.7])
    assert frame.to_dict("records") == [
        {"dataset": "sharegpt", "beta": 0.5, "ratio": 5 / 8},
        {"dataset": "sharegpt", "beta": 0.6, "ratio": 3 / 8},  # 0.6 itself is not above beta
        {"dataset": "sharegpt", "beta": 0.7, "ratio": 2 / 8},
        {"dataset": "ultrachat", "beta": 0.5, "ratio": 1.0},
        {"dataset": "ultrachat", "beta": 0.6, "ratio": 1.0},
        {"dataset": "ultrachat", "beta": 0.7, "ratio": 0.5},
    ]
    out = tmp_path / "table3.csv"
    written = write_table3(paths, [0.5, 0.6], str(out))
    assert list(written.columns) == ["dataset", "beta", "ratio"]
    assert out.read_text().splitlines() == [
        "dataset,beta,ratio",
        "sharegpt,0.5000,0.6250",
        "sharegpt,0.6000,0.3750",
        "ultrachat,0.5000,1.0000",
        "ultrachat,0.6000,1.0000",
    ]


def test_table3_adds_quantile_and_likelihood_ratio_taggings_by_the_tagging_rule(tmp_path):
    attention = tmp_path / "attention.parquet"
    pd.DataFrame({"conversation_id": list("abcd"), "turn": 0, "score": [0.9, 0.7, 0.7, 0.2]}).to_parquet(attention)
    lr = tmp_path / "lr.parquet"
    pd.DataFrame(
        {
            "conversation_id": list("abcd"),
            "turn": 0,
            "score": [2.0, 0.0, 1.0, math.nan],
            "no_context": [False, True, False, False],
        }
    ).to_parquet(lr)
    taggings = [
        {"dataset": "other", "tagging": "lr-q1", "scores": str(lr)},  # another dataset's row
        {"dataset": "sharegpt", "tagging": "q0.5", "scores": str(attention)},  # quota 2 would split the 0.7 tie
        {"dataset": "sharegpt", "tagging": "lr-q0.5", "scores": str(lr)},  # 2 eligible turns: quota 1
        {"dataset": "sharegpt", "tagging": "lr-0.5", "scores": str(lr)},
    ]
    out = tmp_path / "table3.csv"
    frame = write_table3({"sharegpt": str(attention)}, [0.6], str(out), taggings)
    assert out.read_text().splitlines() == [
        "dataset,beta,ratio,score,threshold",
        "sharegpt,0.6000,0.7500,attention,0.6",
        "sharegpt,,0.2500,attention,q0.5",
        "sharegpt,,0.2500,likelihood_ratio,q0.5",
        "sharegpt,0.5000,0.5000,likelihood_ratio,0.5",
    ]
    assert list(frame["score"]) == ["attention", "attention", "likelihood_ratio", "likelihood_ratio"]


def test_table3_of_no_datasets_has_its_columns():
    frame = table3_frame({}, [0.5])
    assert list(frame.columns) == ["dataset", "beta", "ratio"] and frame.empty


@pytest.mark.parametrize(("task", "column"), [("nih", "nih"), ("quac", "quac"), ("mtbench", "mt_bench")])
def test_table4_takes_the_coordinates_from_the_row_not_the_path(tmp_path, task, column):
    path = tmp_path / "anywhere" / "score.json"  # nothing in the path says which row or task it is
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"score": 0.5}))
    frame = table4_frame([{"sft_dataset": "d", "model": "m", "method": "qk-lora", "results": {task: str(path)}}])
    assert frame.loc[0, ["sft_dataset", "model", "method"]].tolist() == ["d", "m", "qk-lora"]
    assert frame.loc[0, column] == 0.5
    assert frame.drop(columns=[column]).iloc[0, 3:].isna().all()


def test_table4_has_the_evaluate_only_rows_and_the_threshold_ablation_leaves_them_out(tmp_path):
    """A reference row (a named model evaluated as it is: sft_dataset `-`, method `reference`) is a row of
    Table 4 like any other; it has no threshold, so the ablation figure draws the fine-tunes only."""
    from ctxaware.figures import threshold_ablation

    path = tmp_path / "results/eval/chat/none/reference/nih.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"task": "nih", "score": 0.8264, "n": 9}))
    reference = {"sft_dataset": "-", "model": "chat", "method": "reference", "results": {"nih": str(path)}}
    out = {suffix: tmp_path / f"table4.{suffix}" for suffix in ("csv", "md", "tex")}
    frame = write_table4([reference, *_rows(tmp_path)], out["csv"], out["md"], out["tex"])
    assert frame.iloc[0].tolist()[:4] == ["-", "chat", "reference", 0.8264] and frame.iloc[0].isna().sum() == 5
    pd.testing.assert_frame_equal(frame.iloc[1:].reset_index(drop=True), pd.DataFrame(EXPECTED, columns=TABLE4_COLUMNS))
    drawn = threshold_ablation(str(out["csv"]), str(tmp_path / "ablation.png"))
    assert drawn["method"].tolist() == ["vanilla", "indicator-0.6", "vanilla"]
    assert (tmp_path / "ablation.png").stat().st_size > 0


def test_the_quirk_ablation_table_gives_each_corrected_rows_change_against_its_published_row(tmp_path):
    """The quirk ablation's rows (`+<correction>` in a coordinate) against the published rows they correct: each
    column's change, corrected minus published, and the mean per correction; the threshold figure leaves them
    out."""
    from ctxaware.figures import threshold_ablation
    from ctxaware.tables import quirk_ablation

    columns = ["sft_dataset", "model", "method", "nih", "squad", "quac", "drop", "mt_bench"]
    rows = [
        ("-", "chat", "reference", 0.5, 0.4, 0.3, 0.2, 6.0),
        ("-", "chat", "reference+cut", 0.5, 0.45, 0.3, 0.2, 6.0),
        ("sharegpt", "small", "vanilla", 0.8, 0.6, 0.5, 0.4, 5.0),
        ("sharegpt", "small", "indicator-0.6", 0.9, 0.7, 0.5, 0.4, 5.5),
        ("sharegpt", "small", "indicator-0.6+period", 0.85, 0.7, 0.6, 0.4, 5.5),
        ("sharegpt", "small", "vanilla+cut", 0.8, 0.7, 0.5, 0.4, 5.0),
        ("sharegpt+filtered", "small", "vanilla", 0.7, 0.6, 0.5, 0.4, 4.0),
        ("sharegpt", "small+qlora", "indicator-0.6", 0.9, 0.6, 0.5, 0.4, math.nan),
    ]
    table = pd.DataFrame(rows, columns=columns)
    table.insert(7, "avg", table[["nih", "squad", "quac", "drop"]].mean(axis=1))
    table.to_csv(tmp_path / "table4.csv", index=False)
    out_csv, out_md = tmp_path / "quirk.csv", tmp_path / "quirk.md"
    corrections = ["cut", "period", "filtered", "qlora"]
    frame = quirk_ablation(str(tmp_path / "table4.csv"), str(out_csv), str(out_md), corrections)
    assert frame[["correction", "sft_dataset", "model", "method"]].values.tolist() == [
        ["cut", "-", "chat", "reference"],
        ["period", "sharegpt", "small", "indicator-0.6"],
        ["cut", "sharegpt", "small", "vanilla"],
        ["filtered", "sharegpt", "small", "vanilla"],
        ["qlora", "sharegpt", "small", "indicator-0.6"],
    ]
    assert frame["squad"].round(4).tolist() == [0.05, 0.0, 0.1, 0.0, -0.1]
    assert frame["nih"].round(4).tolist() == [0.0, -0.05, 0.0, -0.1, 0.0]
    assert frame["avg"].round(4).tolist() == [0.0125, 0.0125, 0.025, -0.025, -0.025]
    assert frame["mt_bench"].tolist()[:4] == [0.0, 0.0, 0.0, -1.0] and math.isnan(frame["mt_bench"].iloc[4])
    assert pd.read_csv(out_csv).shape == (5, 10)
    summary = out_md.read_text().splitlines()
    assert [line.split("|")[1].strip() for line in summary[2:]] == ["cut", "period", "filtered", "qlora"]
    assert summary[2].split("|")[2].strip() == "2" and "+0.0750" in summary[2]  # two rows, mean squad change
    drawn = threshold_ablation(str(tmp_path / "table4.csv"), str(tmp_path / "ablation.png"))
    assert drawn["method"].tolist() == ["vanilla", "indicator-0.6"]
    # a corrected row without its published row cannot be read against it
    table[table["method"] != "vanilla"].to_csv(tmp_path / "partial.csv", index=False)
    with pytest.raises(ValueError, match="no published row"):
        quirk_ablation(str(tmp_path / "partial.csv"), str(out_csv), str(out_md), ["cut"])
