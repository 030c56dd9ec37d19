"""The embedded default through a real Slurm cluster with a profile derived from profiles/slurm.

Needs a running cluster reachable with sbatch/scontrol, e.g. the single-node one `.ci/run` starts with
../shared/tools/local-slurm.sh (partitions cpu and gpu, fake gres GPUs, accounting through slurmdbd). Without
one the test is skipped, unless CTXAWARE_REQUIRE_SLURM=1 (set by .ci/run), which turns the skip into a failure.
"""

import collections
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from smk_helpers import ROOT, copy_workflow, differing_files, planned_jobs, result_files, slurm_unreachable, snakemake

pytestmark = [pytest.mark.slurm, pytest.mark.workflow]

GPU_STAGES = {
    "score": ["score_turns", "score_layers"],
    "finetune": ["finetune"],
    "evaluate": [
        *("evaluate", "evaluate_reference", "evaluate_correction", "nih_template_study", "attention_allocation"),
        *("attention_steering", "real_language_set"),
    ],
}
GPU_RULES = {rule for rules in GPU_STAGES.values() for rule in rules}  # judge is not one: a light CPU job
LOCAL_RULES = {"all", "vanilla_sft"}
RUN_TIMEOUT_S = 3600


def _run(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def _cluster() -> dict:
    """Partitions, default partition, GPUs and whether accounting (sacct) works; skip or fail without one."""
    reason = slurm_unreachable()
    if reason:
        message = f"{reason}; start one with ../shared/tools/local-slurm.sh up (see .ci/run)"
        if os.environ.get("CTXAWARE_REQUIRE_SLURM") == "1":
            pytest.fail(message)
        pytest.skip(message)
    partitions = {}
    for line in _run("sinfo", "-h", "-o", "%P|%G").stdout.split():
        name, gres = line.split("|")
        partitions[name.rstrip("*")] = (name.endswith("*"), gres)
    default = next(name for name, (is_default, _) in partitions.items() if is_default)
    has_gpus = any("gpu" in gres for _, gres in partitions.values())
    accounting = _run("sacct", "-n", "-X", "-o", "JobID", "-S", "now").returncode == 0
    return {"partitions": set(partitions), "default": default, "gpus": has_gpus, "accounting": accounting}


def slurm_profile(cluster: dict) -> tuple[dict, dict]:
    """profiles/slurm with the cluster's own partitions (a name it lacks -> its default partition), without the
    paper config, sacct or squeue as status command, a short first status poll and kept per-job Slurm logs."""
    profile = yaml.safe_load((ROOT / "profiles/slurm/config.yaml").read_text())
    profile.pop("configfile")  # the embedded default instead of the paper's grid

    def local(partition: str) -> str:
        return partition if partition in cluster["partitions"] else cluster["default"]

    profile["default-resources"]["slurm_partition"] = local(profile["default-resources"]["slurm_partition"])
    profile["default-resources"].pop("slurm_account", None)
    for settings in profile["set-resources"].values():
        settings["slurm_partition"] = local(settings["slurm_partition"])
    if not cluster["accounting"]:
        profile["slurm-status-command"] = "squeue"  # the plugin's default, sacct, would wait for ever
    profile["slurm-init-seconds-before-status-checks"] = 2  # the default first poll comes after 40 s
    profile["slurm-keep-successful-logs"] = True
    return profile, {rule: local(s["slurm_partition"]) for rule, s in profile["set-resources"].items()}


def slurm_config(cluster: dict) -> dict:
    """The embedded default with the paper's resource requests (config/paper.yaml), cut to the one small node:
    GPU stages keep gpu (fake gres GPUs on the CI node), every job 1 CPU like the local run (so the numbers are
    the same) and at most 3 GB."""
    config = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    paper = yaml.safe_load((ROOT / "config/paper.yaml").read_text())["resources"]
    config["resources"] = {
        stage: {
            "mem_mb": min(request["mem_mb"], 3000),
            "runtime": request["runtime"],
            "cpus_per_task": 1,
            "gpu": request.get("gpu", 0) if cluster["gpus"] else 0,
        }
        for stage, request in paper.items()
    }
    return config


@pytest.fixture(scope="module")
def slurm_run(tmp_path_factory):
    cluster = _cluster()
    workdir = copy_workflow(tmp_path_factory.mktemp("slurm"))
    profile, gpu_partitions = slurm_profile(cluster)
    (workdir / "profiles/slurm-ci").mkdir()
    (workdir / "profiles/slurm-ci/config.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
    (workdir / "config/slurm-ci.yaml").write_text(yaml.safe_dump(slurm_config(cluster), sort_keys=False))
    args = ("--profile", "profiles/slurm-ci", "--configfile", "config/slurm-ci.yaml")
    env = {}  # no between-workflow cache: its job steps fail on directory inputs (profiles/slurm)
    planned = collections.Counter(rule for rule, _ in planned_jobs(snakemake(workdir, *args, "-n", env=env).stdout))
    try:
        result = snakemake(workdir, *args, check=False, timeout=RUN_TIMEOUT_S, env=env)
    except subprocess.TimeoutExpired as error:
        output = (error.stderr or b"").decode(errors="replace") if isinstance(error.stderr, bytes) else error.stderr
        _cancel(output or "")
        raise
    if result.returncode != 0:
        _cancel(result.stderr)
        raise AssertionError(f"Slurm run failed:\n{result.stdout[-3000:]}\n{result.stderr[-12000:]}")
    return {
        "workdir": workdir,
        "cluster": cluster,
        "planned": planned,
        "gpu_partitions": gpu_partitions,
        "default_partition": profile["default-resources"]["slurm_partition"],
        "log": result.stderr,
        "env": env,
    }


def _slurm_ids(log: str) -> list[str]:
    return re.findall(r"has been submitted with SLURM jobid (\d+)", log)


def _cancel(log: str) -> None:
    """Cancel what this run submitted and may have left behind (never anyone else's jobs)."""
    ids = _slurm_ids(log)
    if ids:
        subprocess.run(["scancel", *ids], capture_output=True)


def _jobs_by_rule(workdir: Path) -> dict[str, str]:
    """Slurm job id -> rule, from the per-job logs the plugin writes (.snakemake/slurm_logs/rule_<rule>/...),
    each the output of the Snakemake job step that ran that rule inside the Slurm job."""
    jobs = {}
    for log in (workdir / ".snakemake/slurm_logs").rglob("*.log"):
        rule = next(part for part in log.relative_to(workdir).parts if part.startswith("rule_")).removeprefix("rule_")
        text = log.read_text()
        assert f"(Rule: {rule})" in text and "1 of 1 steps (100%) done" in text, (log, text[-2000:])
        jobs[log.stem] = rule
    return jobs


def test_every_cluster_job_went_through_sbatch(slurm_run):
    workdir = slurm_run["workdir"]
    submitted = _slurm_ids(slurm_run["log"])
    by_rule = _jobs_by_rule(workdir)
    assert sorted(by_rule) == sorted(submitted)  # one Slurm log per submitted job
    counts = collections.Counter(by_rule.values())
    expected = {rule: n for rule, n in slurm_run["planned"].items() if rule not in LOCAL_RULES}
    assert counts == expected
    # MT-Bench's judge, one per evaluation (the reference rows' too), on the default (CPU) partition below
    assert counts["judge"] == counts["evaluate"] + counts["evaluate_reference"]
    if not slurm_run["cluster"]["accounting"]:
        return
    rows = subprocess.run(
        ["sacct", "-n", "-X", "-P", "-j", ",".join(submitted), "-o", "JobID,State,Partition,AllocTRES"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    accounted = {}
    for row in rows:
        job_id, state, partition, tres = row.split("|")
        accounted[job_id] = (state, partition, tres)
    assert set(accounted) == set(submitted)
    for job_id, (state, partition, tres) in accounted.items():
        rule = by_rule[job_id]
        assert state == "COMPLETED", (rule, job_id, state)
        if rule in GPU_RULES and slurm_run["cluster"]["gpus"]:
            assert "gres/gpu=1" in tres, (rule, tres)
            assert partition == slurm_run["gpu_partitions"][rule], (rule, partition)
        else:
            assert "gres/gpu" not in tres, (rule, tres)
            assert partition == slurm_run["default_partition"], (rule, partition)
        assert "cpu=1," in tres and "mem=3000M" in tres, (rule, tres)


def test_slurm_run_gives_the_local_results(slurm_run, embedded_run):
    """The run from scratch through Slurm reproduces the local run byte for byte: prepared data, scores, tagged
    data, every evaluation (generations included), the tables and every model's weights. It is also the suite's
    reproducibility run (tests/test_reproducible.py skips where this one runs)."""
    workdir = slurm_run["workdir"]
    files = result_files(embedded_run)
    assert "results/tables/table4.csv" in files and "results/scores/sharegpt/tiny-sharegpt.parquet" in files
    assert "results/models/tiny-qlora/sharegpt/qk-lora-indicator-0.9/adapter_model.safetensors" in files
    assert any(f.endswith(".generations.jsonl") for f in files)
    assert differing_files(embedded_run, workdir) == []


def test_slurm_run_leaves_nothing_to_do(slurm_run):
    args = ("--profile", "profiles/slurm-ci", "--configfile", "config/slurm-ci.yaml", "-n")
    assert "Nothing to be done" in snakemake(slurm_run["workdir"], *args, env=slurm_run["env"]).stdout
