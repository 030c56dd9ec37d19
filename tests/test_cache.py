"""Snakemake's between-workflow output cache: a second checkout gets the seed fine-tune and the scores from it."""

import pytest
from smk_helpers import copy_workflow, snakemake

pytestmark = pytest.mark.workflow

SCORES = "results/scores/sharegpt/tiny-sharegpt.parquet"
SHARD_LOG = "results/logs/score_turns/sharegpt/tiny-sharegpt/shard-1-of-1.log"
SEED_LOG = "results/logs/finetune/tiny/sharegpt/vanilla.log"


def test_second_checkout_takes_scores_from_the_cache_without_running_the_scorer(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    env = {"SNAKEMAKE_OUTPUT_CACHE": str(cache)}
    first = copy_workflow(tmp_path / "first")
    snakemake(first, SCORES, "--cores", "2", "--cache", env=env)
    assert "scored" in (first / SHARD_LOG).read_text() and "job done" in (first / SEED_LOG).read_text()
    assert len(list(cache.iterdir())) == 3  # the organism's base and the seed model (directories), the score shard

    second = copy_workflow(tmp_path / "second")
    plan = snakemake(second, SCORES, "--cores", "2", "--cache", "-n", env=env).stdout
    assert plan.count("will be obtained from global between-workflow cache") == 3, plan
    result = snakemake(second, SCORES, "--cores", "2", "--cache", env=env)
    assert (second / SCORES).read_bytes() == (first / SCORES).read_bytes()
    # the scorer never ran here, nor the seed model's fine-tuning or the pretraining: Snakemake only created their
    # (empty) logs
    assert (second / SHARD_LOG).read_text() == "" and (second / SEED_LOG).read_text() == ""
    assert (second / "results/logs/pretrain_organism.log").read_text() == ""
    assert "from cache" in result.stderr
    assert (second / "results/models/tiny/sharegpt/vanilla/config.json").exists()
    assert "Nothing to be done" in snakemake(second, "--cores", "2", SCORES, "-n").stdout

    # the key covers the params: scores of another layer are not served from the cache
    config = (second / "config/config.yaml").read_text().replace("layer: 3", "layer: 1")
    assert "layer: 1" in config
    (second / "config/layer1.yaml").write_text(config)
    args = (SCORES, "--cores", "2", "--cache", "-n", "--configfile", "config/layer1.yaml")
    plan = snakemake(second, *args, env=env).stdout
    assert "shard-1-of-1.parquet will be written to global between-workflow cache" in plan, plan
    assert "obtained from" not in plan
