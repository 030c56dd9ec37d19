"""Running Snakemake on copies of the workflow, shared by the workflow, cache, reproducibility and Slurm tests."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from ctxaware.paper_test import LOCAL_RUN_ENV, WORKFLOW_FILES, copy_workflow  # noqa: F401 (the tests' import)
from ctxaware.plan import Plan

ROOT = Path(__file__).resolve().parents[1]
# a local run of the embedded default as `make run` does it on 2 cores: the pretraining, alone on the critical
# path, on both (its weights do not depend on the thread count)
LOCAL_RUN = ("--cores", "2", "--set-threads", "pretrain_organism=2")


def snakemake(
    workdir: Path, *args: str, check: bool = True, env: dict | None = None, timeout: float | None = None
) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", **(env or {}))
    if "--profile" not in args:  # a local run
        env.update(LOCAL_RUN_ENV)
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


# what a run from scratch must reproduce byte for byte: every result file, and the models' weights (their logs
# hold run times)
COMPARED = ["results/data", "results/scores", "results/sft", "results/eval", "results/tables"]


def files_under(folder: Path) -> list[Path]:
    """Every file under folder, following linked folders: the between-workflow cache (profiles/slurm) leaves its
    rules' outputs as links into the cache, whose contents Path.rglob skips (Python 3.11)."""
    return [Path(root, name) for root, _, names in os.walk(folder, followlinks=True) for name in names]


def result_files(workdir: Path) -> list[str]:
    """The files of a finished run that a second run from scratch must reproduce, relative to workdir (cached
    outputs, links into the cache, included)."""
    files = [path for folder in COMPARED for path in files_under(workdir / folder) if path.is_file()]
    files += [path for path in files_under(workdir / "results/models") if path.name.endswith(".safetensors")]
    return sorted(str(path.relative_to(workdir)) for path in files if not path.name.startswith("."))


def differing_files(run: Path, again: Path) -> list[str]:
    """The result files of `run` that `again` lacks or holds with other bytes (and any `again` has besides)."""
    files, others = result_files(run), result_files(again)
    extra = sorted(set(others) - set(files))
    return extra + [f for f in files if f not in others or (again / f).read_bytes() != (run / f).read_bytes()]


def _tool_output(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def slurm_unreachable() -> str | None:
    """Why no Slurm cluster can take the workflow's jobs here, or None when one answers."""
    if not all(shutil.which(tool) for tool in ("sbatch", "scontrol", "sinfo", "squeue")):
        return "Slurm client tools (sbatch, scontrol, sinfo, squeue) are not on PATH"
    ping = _tool_output("scontrol", "ping")
    if ping.returncode != 0 or "UP" not in ping.stdout:
        return "no Slurm controller answers `scontrol ping`"
    return None


def planned_jobs(dry_run_output: str) -> list[tuple[str, str]]:
    """(rule, first output) of every job a dry run lists."""
    jobs = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", dry_run_output):
        match = re.match(r"(?:local)?rule (\w+):", block.strip())
        output = re.search(r"^\s+output: ([^,\s]+)", block, re.MULTILINE)
        if match and output:
            jobs.append((match.group(1), output.group(1)))
    return jobs


def planned_inputs(dry_run_output: str) -> dict[str, list[str]]:
    """{first output: inputs} of every job a dry run lists."""
    inputs = {}
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", dry_run_output):
        output = re.search(r"^\s+output: ([^,\s]+)", block, re.MULTILINE)
        listed = re.search(r"^\s+input: (.+)$", block, re.MULTILINE)
        if output:
            inputs[output.group(1)] = listed.group(1).split(", ") if listed else []
    return inputs
