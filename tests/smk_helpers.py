"""Running Snakemake on copies of the workflow, shared by the workflow, cache, reproducibility and Slurm tests."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from ctxaware.plan import Plan

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


def configured_plan(config_file: Path) -> Plan:
    """The workflow's plan of a config file, validated against the schema (defaults filled in) as the Snakefile
    does it."""
    from snakemake.utils import validate

    config = yaml.safe_load(Path(config_file).read_text())
    validate(config, str(ROOT / "workflow/schemas/config.schema.yaml"))
    return Plan(config)


def indicator_methods(config: dict) -> tuple[str, str]:
    """The embedded default's indicator branch of the full fine-tunes and of the qk-lora model."""
    methods = [m for model in config["models"].values() for m in model["methods"] or config["methods"]]
    return next(m for m in methods if m.startswith("indicator-")), next(
        m for m in methods if m.startswith("qk-lora-ind")
    )


def planned_jobs(dry_run_output: str) -> list[tuple[str, str]]:
    """(rule, first output) of every job a dry run lists."""
    jobs = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", dry_run_output):
        match = re.match(r"(?:local)?rule (\w+):", block.strip())
        output = re.search(r"^\s+output: ([^,\s]+)", block, re.MULTILINE)
        if match and output:
            jobs.append((match.group(1), output.group(1)))
    return jobs
