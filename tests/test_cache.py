"""Snakemake's between-workflow output cache: a second checkout gets the seed fine-tune and the scores from it; a
reverted setting is a cache hit; profiles/slurm turns the cache on."""

import re
import shutil

import pytest
import yaml
from smk_helpers import copy_workflow, snakemake

pytestmark = pytest.mark.workflow

SCORES = "results/scores/sharegpt/tiny-sharegpt.parquet"
SHARD_LOG = "results/logs/score_turns/sharegpt/tiny-sharegpt/shard-1-of-1.log"
SEED_LOG = "results/logs/finetune/tiny/sharegpt/vanilla.log"


# the caching is what is tested, not the organism: both checkouts run a small one (a shorter pretraining and smaller
# SFT sets, 4:00 less on 2 cores), the same in both
SMALL = {"organism": {"pretraining": {"steps": 60, "warmup_steps": 10}, "sft": {"conversations": 300}}}


def small_checkout(destination):
    workdir = copy_workflow(destination)
    (workdir / "config/small.yaml").write_text(yaml.safe_dump(SMALL))
    return workdir


def test_second_checkout_takes_scores_from_the_cache_without_running_the_scorer(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    env = {"SNAKEMAKE_OUTPUT_CACHE": str(cache)}
    small = ("--configfile", "config/config.yaml", "config/small.yaml")
    first = small_checkout(tmp_path / "first")
    snakemake(first, SCORES, "--cores", "2", "--cache", *small, env=env)
    assert "scored" in (first / SHARD_LOG).read_text() and "job done" in (first / SEED_LOG).read_text()
    assert len(list(cache.iterdir())) == 3  # the organism's base and the seed model (directories), the score shard

    second = small_checkout(tmp_path / "second")
    plan = snakemake(second, SCORES, "--cores", "2", "--cache", "-n", *small, env=env).stdout
    assert plan.count("will be obtained from global between-workflow cache") == 3, plan
    result = snakemake(second, SCORES, "--cores", "2", "--cache", *small, env=env)
    assert (second / SCORES).read_bytes() == (first / SCORES).read_bytes()
    # the scorer never ran here, nor the seed model's fine-tuning or the pretraining: Snakemake only created their
    # (empty) logs
    assert (second / SHARD_LOG).read_text() == "" and (second / SEED_LOG).read_text() == ""
    assert (second / "results/logs/pretrain_organism.log").read_text() == ""
    assert "from cache" in result.stderr
    assert (second / "results/models/tiny/sharegpt/vanilla/config.json").exists()
    assert "Nothing to be done" in snakemake(second, "--cores", "2", SCORES, "-n", *small).stdout

    # the key covers the params: scores of another layer are not served from the cache
    config = (second / "config/config.yaml").read_text().replace("layer: 3", "layer: 1")
    assert "layer: 1" in config
    (second / "config/layer1.yaml").write_text(config)
    args = (SCORES, "--cores", "2", "--cache", "-n", "--configfile", "config/layer1.yaml", "config/small.yaml")
    plan = snakemake(second, *args, env=env).stdout
    assert "shard-1-of-1.parquet will be written to global between-workflow cache" in plan, plan
    assert "obtained from" not in plan


def test_reverting_a_scoring_setting_is_a_cache_hit_with_the_scorer_not_run(embedded_run, tmp_path):
    """On a copy of a finished run: score at the default layer into the cache, change the layer (the scorer runs),
    change it back: the shard comes from the cache, byte for byte, and the scorer does not run."""
    cache = tmp_path / "cache"
    cache.mkdir()
    env = {"SNAKEMAKE_OUTPUT_CACHE": str(cache)}
    workdir = copy_workflow(tmp_path / "run")
    shutil.copytree(embedded_run / "results", workdir / "results")
    if (embedded_run / ".snakemake/metadata").is_dir():
        shutil.copytree(embedded_run / ".snakemake/metadata", workdir / ".snakemake/metadata")
    shard = workdir / "results/scores/sharegpt/tiny-sharegpt/shard-1-of-1.parquet"
    default = (SCORES, "--cores", "2", "--cache")
    snakemake(workdir, *default, "--forcerun", "score_turns", env=env)  # the default layer's shard, cached
    assert "scored" in (workdir / SHARD_LOG).read_text()
    scored = shard.read_bytes()

    config = (workdir / "config/config.yaml").read_text().replace("layer: 3", "layer: 1")
    (workdir / "config/layer1.yaml").write_text(config)
    snakemake(workdir, *default, "--configfile", "config/layer1.yaml", env=env)
    assert "scored" in (workdir / SHARD_LOG).read_text() and shard.read_bytes() != scored

    plan = snakemake(workdir, *default, "-n", env=env).stdout  # back to layer 3: params changed, so planned
    assert "shard-1-of-1.parquet will be obtained from global between-workflow cache" in plan, plan
    result = snakemake(workdir, *default, env=env)
    assert (workdir / SHARD_LOG).read_text() == ""  # the scorer did not run (Snakemake only created its log)
    assert shard.read_bytes() == scored and "from cache" in result.stderr
    assert "Nothing to be done" in snakemake(workdir, SCORES, "--cores", "2", "-n").stdout


def test_slurm_profile_sends_the_judge_to_the_cpu_partition_and_plans_the_cache_when_asked(tmp_path):
    """`snakemake --profile profiles/slurm -n --cache` (the paper's grid; no cluster needed to plan): the cached
    rules write to the cache, and `judge` asks for the default (CPU) partition and no GPU; without a cache
    directory the workflow stops naming SNAKEMAKE_OUTPUT_CACHE. The profile itself leaves the cache off (its job
    steps fail on directory inputs under the Slurm executor: profiles/slurm)."""
    workdir = copy_workflow(tmp_path / "paper")
    profile = yaml.safe_load((workdir / "profiles/slurm/config.yaml").read_text())
    assert "cache" not in profile and "judge" not in profile["set-resources"]
    cache = tmp_path / "cache"
    cache.mkdir()
    args = ("--profile", "profiles/slurm", "-n", "--cache")
    plan = snakemake(workdir, *args, env={"SNAKEMAKE_OUTPUT_CACHE": str(cache)}).stdout
    jobs = re.split(r"\n(?=rule \w+:)", plan)
    cached = [block for block in jobs if "will be written to global between-workflow cache" in block]
    assert {re.match(r"rule (\w+):", block).group(1) for block in cached} == {
        "score_turns",
        "score_layers",
        "finetune",
    }
    judges = [block for block in jobs if block.startswith("rule judge:")]
    assert judges and all("slurm_partition=cpu" in block and "gpu=0" in block for block in judges)
    evaluations = [block for block in jobs if block.startswith("rule evaluate:")]
    references = [block for block in jobs if block.startswith("rule evaluate_reference:")]  # Table 4's references
    assert evaluations and references and all("slurm_partition=gpu" in block for block in evaluations + references)
    assert len(judges) == len(evaluations) + len(references)

    unset = snakemake(workdir, *args, check=False, env={"SNAKEMAKE_OUTPUT_CACHE": ""})
    assert unset.returncode != 0 and "export SNAKEMAKE_OUTPUT_CACHE=" in unset.stderr + unset.stdout
