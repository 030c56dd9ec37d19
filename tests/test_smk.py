"""ctxaware.smk.job, the frame of every workflow script: its log, and torch limited to the job's threads."""

import subprocess
import sys
import textwrap

import pytest

SCRIPT = """
import sys, types
{before}
from ctxaware.smk import job

snakemake = types.SimpleNamespace(threads={threads}, log=[{log!r}])
with job(snakemake):
    imported_by_job = "torch" in sys.modules
    import torch

    print("torch before the body:", imported_by_job, "threads:", torch.get_num_threads())
"""


@pytest.mark.parametrize(("before", "imported"), [("", False), ("import torch", True)])
@pytest.mark.parametrize("threads", [1, 2])
def test_a_job_runs_torch_on_its_threads_without_importing_it(tmp_path, before, imported, threads):
    """A light job never pays torch's import; a heavy one gets the job's threads whether its script imported
    torch before the job or imports it inside."""
    log = tmp_path / "job.log"
    script = textwrap.dedent(SCRIPT.format(before=before, threads=threads, log=str(log)))
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path)
    text = log.read_text()
    assert f"torch before the body: {imported} threads: {threads}" in text
    assert "job done:" in text  # wall time and peak memory close the log
