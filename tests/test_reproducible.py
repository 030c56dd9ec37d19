"""Two runs of the embedded default from scratch, in different directories, give the same bytes."""

import pytest
from smk_helpers import copy_workflow, snakemake

pytestmark = pytest.mark.workflow

COMPARED = ["results/data", "results/scores", "results/sft", "results/eval", "results/tables"]


def result_files(workdir):
    """Every result file, and the fine-tuned models' weights (their logs hold run times)."""
    files = [path for folder in COMPARED for path in (workdir / folder).rglob("*") if path.is_file()]
    files += list((workdir / "results/models").rglob("*.safetensors"))
    return sorted(str(path.relative_to(workdir)) for path in files if not path.name.startswith("."))


def test_second_run_from_scratch_is_byte_identical(embedded_run, tmp_path):
    again = copy_workflow(tmp_path / "again")
    snakemake(again, "--cores", "2")
    files = result_files(embedded_run)
    assert "results/tables/table4.csv" in files and "results/scores/sharegpt/tiny-sharegpt.parquet" in files
    assert "results/eval/tiny/sharegpt/vanilla/nih.generations.jsonl" in files
    assert "results/models/tiny/sharegpt/vanilla/model.safetensors" in files
    assert "results/models/tiny-qlora/sharegpt/qk-lora-indicator-0.9/adapter_model.safetensors" in files
    assert result_files(again) == files
    differing = [f for f in files if (again / f).read_bytes() != (embedded_run / f).read_bytes()]
    assert differing == []
