"""A second run of the embedded default from scratch, in another directory, gives the same bytes.

Where a Slurm cluster answers (CI starts one), the Slurm run of tests/test_slurm.py is that second run: it is
from scratch too, and its results are compared with the local run's byte for byte on the same files, which
proves reproducibility and executor independence at once; this local repeat is then skipped (CI runs the
embedded default twice, not three times).
"""

import pytest
from smk_helpers import LOCAL_RUN, copy_workflow, differing_files, result_files, slurm_unreachable, snakemake

pytestmark = pytest.mark.workflow


def test_second_run_from_scratch_is_byte_identical(embedded_run, tmp_path):
    if slurm_unreachable() is None:
        pytest.skip("a Slurm cluster answers: its run from scratch (tests/test_slurm.py) is compared byte for byte")
    again = copy_workflow(tmp_path / "again")
    snakemake(again, *LOCAL_RUN)
    files = result_files(embedded_run)
    assert "results/tables/table4.csv" in files and "results/scores/sharegpt/tiny-sharegpt.parquet" in files
    assert "results/eval/tiny/sharegpt/vanilla/nih.generations.jsonl" in files
    assert "results/models/tiny/sharegpt/vanilla/model.safetensors" in files
    assert "results/models/tiny-qlora/sharegpt/qk-lora-indicator-0.9/adapter_model.safetensors" in files
    assert differing_files(embedded_run, again) == []
