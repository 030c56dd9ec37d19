"""MT-Bench's judge as a job of its own (issue 23): a judge that cannot be used (HTTP 500s past the retry budget,
no key) fails only the `judge` job, quickly and naming what to set; `evaluate`'s outputs stay; Table 4 rebuilds
once the judge answers. Real Snakemake runs on a copy of a finished embedded run, the grid cut to one fine-tune,
against an OpenAI-compatible judge on this machine's loopback."""

import json
import shutil
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from loopback import ChatServer, chat_reply
from smk_helpers import copy_workflow, snakemake

pytestmark = pytest.mark.workflow

RUN = "results/eval/tiny/sharegpt/vanilla"
JUDGE_LOG = "results/logs/judge/tiny/sharegpt/vanilla/mtbench.log"
TABLE4 = "results/tables/table4.csv"
KEY = "CTXAWARE_TEST_JUDGE_KEY"
EVALUATE_OUTPUTS = ["nih.json", "squad.json", "quac.json", "drop.json", "nih.generations.jsonl", "mtbench.answers.json"]


class LoopbackJudge(ChatServer):
    """A chat-completions endpoint on 127.0.0.1: HTTP 500 to everything while `failing`, else a rating of 7."""

    def __init__(self):
        self.failing, self.requests = True, []
        super().__init__(self.respond)

    def respond(self, path, headers, body):
        self.requests.append(headers.get("Authorization"))
        return (500, '{"error": "overloaded"}') if self.failing else (200, chat_reply("Fine. Rating: [[7]]"))


@pytest.fixture
def loopback_judge():
    judge = LoopbackJudge()
    yield judge
    judge.close()


def finished_copy(embedded_run: Path, destination: Path) -> Path:
    """This checkout's workflow over a copy of a finished run's results and Snakemake's records of them."""
    workdir = copy_workflow(destination)
    shutil.copytree(embedded_run / "results", workdir / "results")
    if (embedded_run / ".snakemake/metadata").is_dir():
        shutil.copytree(embedded_run / ".snakemake/metadata", workdir / ".snakemake/metadata")
    return workdir


def judged_config(workdir: Path, url: str) -> str:
    """The embedded default cut to the seed model's fine-tune (tiny, ShareGPT, vanilla; no reference row), judged
    over HTTP."""
    config = yaml.safe_load((workdir / "config/config.yaml").read_text())
    config["models"] = {"tiny": {**config["models"]["tiny"], "datasets": ["sharegpt"], "methods": ["vanilla"]}}
    config["methods"] = ["vanilla"]  # a method no model trains stops the run at start-up
    config["reference_models"] = {}
    config["evaluation"]["mtbench"]["judge"] = {
        "backend": "openai",
        "base_url": url,
        "model": "judge",
        "api_key_env": KEY,
        "max_retries": 2,
        "backoff_s": 0.05,
        "timeout_s": 5,
        "cache_dir": "results/cache/judgments-http",
    }
    (workdir / "config/judged.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return "config/judged.yaml"


def test_a_failing_judge_fails_only_its_job_and_table4_rebuilds_once_it_answers(embedded_run, tmp_path, loopback_judge):
    workdir = finished_copy(embedded_run, tmp_path / "run")
    args = (TABLE4, "--cores", "2", "--configfile", judged_config(workdir, loopback_judge.url))
    with_key = {KEY: "sk-test"}

    # 1. the judge answers HTTP 500: the judge job fails after its retries, at its first judgment
    failed = snakemake(workdir, *args, check=False, env=with_key)
    assert failed.returncode != 0
    log = (workdir / JUDGE_LOG).read_text()
    assert "HTTP 500" in log and "failed after 3 attempts" in log and "evaluation.mtbench.judge" in log, log
    assert len(loopback_judge.requests) == 3  # one judgment's attempts, then the job stopped
    assert loopback_judge.requests[0] == "Bearer sk-test"
    assert not (workdir / RUN / "mtbench.json").exists()
    evaluated = {name: (workdir / RUN / name).read_bytes() for name in EVALUATE_OUTPUTS}  # evaluate's stay

    # 2. no key (set, but empty): the run stops at start-up (onstart: a judge job is due), naming the variable,
    # before any job; and where that check is skipped (--no-hooks; or a cluster node without the key) the judge
    # job fails alone before any request, naming it
    stopped = snakemake(workdir, *args, check=False, env={KEY: ""})
    assert stopped.returncode != 0
    assert f"config key evaluation.mtbench.judge.api_key_env: the environment variable {KEY}" in (
        stopped.stdout + stopped.stderr
    )
    assert "rule judge:" not in stopped.stdout + stopped.stderr and len(loopback_judge.requests) == 3
    started = time.monotonic()
    failed = snakemake(workdir, *args, "--no-hooks", check=False, env={KEY: ""})
    assert failed.returncode != 0 and time.monotonic() - started < 120
    log = (workdir / JUDGE_LOG).read_text()
    assert f"{KEY} is not set" in log and f"export {KEY}=" in log, log
    assert len(loopback_judge.requests) == 3
    assert "rule evaluate:" not in failed.stdout + failed.stderr  # only the judge job was tried again

    # 3. the judge answers: only the judge and Table 4 run
    loopback_judge.failing = False
    done = snakemake(workdir, *args, env=with_key)
    assert "rule evaluate:" not in done.stdout + done.stderr
    assert {name: (workdir / RUN / name).read_bytes() for name in EVALUATE_OUTPUTS} == evaluated
    result = json.loads((workdir / RUN / "mtbench.json").read_text())
    n_questions = result["n"]
    assert result["score"] == 7.0 and result["n_failed"] == 0 and result["n_judgments"] == 2 * n_questions
    assert result["settings"]["judge"]["api_key_env"] == KEY and "sk-test" not in json.dumps(result)
    assert len(loopback_judge.requests) == 3 + 2 * n_questions
    table = pd.read_csv(workdir / TABLE4)
    assert table[["sft_dataset", "model", "method"]].values.tolist() == [["sharegpt", "tiny", "vanilla"]]
    assert table["mt_bench"].tolist() == [7.0]
    assert "Nothing to be done" in snakemake(workdir, *args, "-n", env=with_key).stdout
