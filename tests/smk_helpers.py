"""Running Snakemake on copies of the workflow, shared by the workflow, cache, reproducibility and Slurm tests."""

import itertools
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW_FILES = ["Snakefile", "workflow", "config", "resources", "envs", "profiles"]


def copy_workflow(destination: Path) -> Path:
    destination.mkdir(parents=True, exist_ok=True)
    for name in WORKFLOW_FILES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, destination / name)
        else:
            shutil.copy(source, destination / name)
    return destination


def snakemake(
    workdir: Path, *args: str, check: bool = True, env: dict | None = None, timeout: float | None = None
) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", **(env or {}))
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", *args],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-8000:]}")
    return result


def configured_grid(config: dict) -> list[tuple[str, str, str]]:
    """(dataset, model, method) of every fine-tune the config asks for."""
    return [
        (d, m, x)
        for d, m, x in itertools.product(config["datasets"], config["models"], config["methods"])
        if config["models"][m].get("datasets") is None or d in config["models"][m]["datasets"]
        if config["models"][m].get("methods") is None or x in config["models"][m]["methods"]
    ]


def planned_jobs(dry_run_output: str) -> list[tuple[str, str]]:
    """(rule, first output) of every job a dry run lists."""
    jobs = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", dry_run_output):
        match = re.match(r"(?:local)?rule (\w+):", block.strip())
        output = re.search(r"^\s+output: ([^,\s]+)", block, re.MULTILINE)
        if match and output:
            jobs.append((match.group(1), output.group(1)))
    return jobs
