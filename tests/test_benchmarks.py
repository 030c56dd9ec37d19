"""The organism fine-tune benchmark runs on a finished embedded-default run (timings are printed, never checked)."""

import json
import subprocess
import sys

import pytest
from smk_helpers import ROOT

pytestmark = pytest.mark.workflow


def test_organism_finetune_benchmark_compares_our_path_with_the_plain_loop(embedded_run):
    result = subprocess.run(
        [sys.executable, "benchmarks/organism_finetune.py", "--run", str(embedded_run), "--steps", "4"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "plain PyTorch loop" in result.stdout and "lm_head_loss labelled" in result.stdout
    numbers = json.loads(result.stdout.strip().splitlines()[-1])
    assert numbers["ours_s_per_step"] > 0 and numbers["floor_s_per_step"] > 0 and numbers["setup_s"] > 0
