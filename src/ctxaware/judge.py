"""MT-Bench judges (docs/architecture.md, Evaluation tasks): an OpenAI-compatible HTTP judge with a disk cache;
grading, summary; `judge_answers`, the workflow's `judge` job on the answers `evaluate` generated. Torch-free
(only the `local` judge imports it), so the judge job is a light CPU job."""

from __future__ import annotations

import hashlib
import http.client
import json
import math
import os
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Protocol

from ctxaware.metrics import normalize_answer, parse_rating
from ctxaware.tasks.mtbench import judge_messages, judge_prompt_name


class Judge(Protocol):
    def judge(self, messages: list[dict]) -> str:
        """The judge's raw text for OpenAI-style chat messages."""
        ...


class JudgeError(RuntimeError):
    """A judgment that could not be obtained; grade() records it as failed, never as a number."""


class JudgeUnavailable(RuntimeError):
    """The judge itself cannot be used (no key, key rejected, no such endpoint, still failing after the retry
    budget): not one judgment's failure but the job's. grade() lets it through, so the judge job stops at once,
    naming what to set, instead of recording every judgment as failed (a NaN MT-Bench score)."""


JUDGE_KEY = "evaluation.mtbench.judge"
# the tasks scored by a judge in a job of their own (`judge`, a CPU job): `evaluate` writes their answers
JUDGED_TASKS = ("mtbench",)


class JudgmentCache:
    """One JSON file per judgment, named by the sha256 of the model and messages; safe against killed runs."""

    def __init__(self, directory: str):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def key(model: str, messages: list[dict]) -> str:
        blob = json.dumps({"model": model, "messages": messages}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    def get(self, key: str) -> dict | None:
        try:
            return json.loads((self.directory / f"{key}.json").read_bytes())  # JSON is UTF-8
        except (FileNotFoundError, ValueError):  # a foreign half-written file (bad JSON or UTF-8) is just a miss
            return None

    def put(self, key: str, value: dict) -> None:
        # Write a temporary file in the same directory, then rename: the final file is whole or absent.
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=f".{key}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(json.dumps(value, ensure_ascii=False).encode())
            os.replace(tmp, self.directory / f"{key}.json")
        except BaseException:
            Path(tmp).unlink()  # mkstemp made it and nothing else removes it
            raise


# The HTTP client (OpenAIJudge) is outside `make mutation`'s scope (judge parsing and cache): it is tested against a
# real server in tests/test_judge.py and through the workflow's judge job in tests/test_judge_rule.py.
class OpenAIJudge:  # pragma: no mutate block
    """A judge behind an OpenAI-compatible /chat/completions endpoint, greedy decoding, retried and cached."""

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str | None = "OPENAI_API_KEY",
        timeout_s: float = 60,
        max_retries: int = 5,
        backoff_s: float = 1.0,
        retry_budget_s: float = 60.0,
        max_tokens: int = 2048,
        cache_dir: str | None = None,
    ):
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.base_url, self.model, self.api_key_env = base_url, model, api_key_env
        self.timeout_s, self.max_retries, self.backoff_s = timeout_s, max_retries, backoff_s
        self.retry_budget_s = retry_budget_s
        self.max_tokens = max_tokens
        self.cache = JudgmentCache(cache_dir) if cache_dir else None
        self.calls = 0  # real HTTP requests, retries included

    def check_key(self) -> None:
        """A named key variable must be set (api_key_env null: no key is sent, for a server without
        authentication); checked before any request, so a job without its key fails at once."""
        if self.api_key_env is not None and not os.environ.get(self.api_key_env):
            raise JudgeUnavailable(
                f"environment variable {self.api_key_env} is not set (or empty): export {self.api_key_env}=<the API "
                f"key of {self.base_url}> where the judge job runs (config key {JUDGE_KEY}.api_key_env names the "
                "variable; null sends no key, for a server without authentication)"
            )

    def _headers(self) -> dict:
        headers = {"Content-Type": "application/json"}
        self.check_key()
        if self.api_key_env is not None:  # read per call: keys never live in settings or on disk
            headers["Authorization"] = f"Bearer {os.environ[self.api_key_env]}"
        return headers

    def judge(self, messages: list[dict]) -> str:
        key = JudgmentCache.key(self.model, messages)
        if self.cache and (hit := self.cache.get(key)) is not None:
            return hit["judgment"]
        text = self._request(messages)
        if self.cache:
            self.cache.put(key, {"messages": messages, "judgment": text, "model": self.model})
        return text

    def _request(self, messages: list[dict]) -> str:
        body = json.dumps(
            {"model": self.model, "messages": messages, "temperature": 0, "max_tokens": self.max_tokens}
        ).encode()
        last_error = ""
        started = time.monotonic()
        attempts = 0
        for attempt in range(self.max_retries + 1):
            if attempt:
                wait = self.backoff_s * 2 ** (attempt - 1)
                if time.monotonic() - started + wait > self.retry_budget_s:
                    break  # no retry past the budget: an unreachable judge fails the job in seconds
                time.sleep(wait)
            request = urllib.request.Request(self.url, data=body, headers=self._headers(), method="POST")
            self.calls += 1
            attempts += 1
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    payload = response.read()
            except urllib.error.HTTPError as error:
                try:
                    excerpt = error.read(500).decode("utf-8", "replace")
                except OSError:  # the body may be cut off; the status alone decides what to do
                    excerpt = ""
                if error.code in (401, 403):  # the key: no judgment will work, and retrying won't help
                    variable = self.api_key_env or f"{JUDGE_KEY}.api_key_env"
                    raise JudgeUnavailable(
                        f"judge {self.url} answered HTTP {error.code} ({excerpt.strip()}): set {variable} to a "
                        "key this endpoint accepts"
                    ) from None
                if error.code == 404:
                    raise JudgeUnavailable(
                        f"judge {self.url} answered HTTP 404 ({excerpt.strip()}): check {JUDGE_KEY}.base_url "
                        f"({self.base_url}) and {JUDGE_KEY}.model ({self.model})"
                    ) from None
                if error.code != 429 and error.code < 500:  # this request is wrong: a failed judgment
                    raise JudgeError(f"judge {self.url} answered HTTP {error.code}: {excerpt}") from None
                last_error = f"HTTP {error.code}: {excerpt}"
                continue
            except (OSError, http.client.HTTPException) as error:  # URLError, timeouts, dropped connections
                last_error = f"{type(error).__name__}: {error}"
                continue
            try:
                content = json.loads(payload)["choices"][0]["message"]["content"]
            except (ValueError, KeyError, IndexError, TypeError) as error:
                content = error
            if not isinstance(content, str):  # malformed reply: a server bug that a retry would repeat
                excerpt = payload[:500].decode("utf-8", "replace")
                raise JudgeError(f"judge {self.url} sent no text content ({content!r}): {excerpt}")
            return content
        raise JudgeUnavailable(
            f"judge at {self.base_url} failed after {attempts} attempts in {time.monotonic() - started:.1f} s; "
            f"last: {last_error}. The judge must be reachable from the judge job (a CPU job): check "
            f"{JUDGE_KEY}.base_url and the network, or give it more time with {JUDGE_KEY}.max_retries, "
            f"retry_budget_s and timeout_s; judgments already made are cached and kept"
        )


def reference_rating(answer: str, reference: str) -> float:
    """1-10 against a reference answer: 10 when the normalised reference is contained in the normalised answer,
    otherwise 1 + 8 x the share of the reference's words the answer has (right form, wrong fact: in between;
    empty or unrelated: 1)."""
    wanted, given = normalize_answer(reference), normalize_answer(answer)
    if wanted and wanted in given:
        return 10.0
    words = wanted.split()
    present = set(given.split())
    return 1.0 + 8.0 * (sum(w in present for w in words) / len(words) if words else 0.0)


class ReferenceJudge:
    """A deterministic judge for questions whose answers can be checked against references (the model
    organism's knowledge questions): each turn is rated by reference_rating against its reference. A question
    without a reference for the turn is a failed judgment, never a number."""

    model = "reference"

    def judge_turn(self, question: dict, answers: list[str], turn: int) -> str:
        references = question.get("reference") or []
        if len(references) < turn:
            raise JudgeError(f"question {question['question_id']}: no reference answer for turn {turn}")
        rating = reference_rating(answers[turn - 1], references[turn - 1])
        return f"Compared with the reference answer {references[turn - 1]!r}. Rating: [[{rating:g}]]"

    def judge(self, messages: list[dict]) -> str:  # the Judge protocol; grade() calls judge_turn
        raise JudgeError("the reference judge rates answers against references, not judge prompts")


def grade(judge: Judge, question: dict, answers: list[str]) -> list[dict]:
    """Ratings of both turns' answers; an unparsable judgment or a JudgeError is recorded as failed. Judges
    with `judge_turn` (the reference judge) rate the answers directly instead of reading a judge prompt."""
    records = []
    for turn in (1, 2):
        error = None
        try:
            if hasattr(judge, "judge_turn"):
                text = judge.judge_turn(question, answers, turn)
            else:
                text = judge.judge(judge_messages(question, answers, turn))
        except JudgeError as exc:
            text, error = "", str(exc)
        rating = parse_rating(text)  # None for the empty text of a failed request
        records.append(
            {
                "question_id": question["question_id"],
                "turn": turn,
                "category": question["category"],
                "judge_prompt": judge_prompt_name(question, turn),
                "rating": rating,
                "judgment": text,
                "failed": rating is None,
                "error": error,
            }
        )
    return records


def summarize(records: list[dict]) -> dict:
    """Mean rating over non-failed judgments, overall and per turn (NaN where there are none)."""

    def mean(turns: tuple[int, ...]) -> float:
        ratings = [r["rating"] for r in records if r["turn"] in turns and not r["failed"]]
        return sum(ratings) / len(ratings) if ratings else math.nan

    return {
        "score": mean((1, 2)),
        "score_turn1": mean((1,)),
        "score_turn2": mean((2,)),
        "n_judgments": len(records),
        "n_failed": sum(r["failed"] for r in records),
    }


def make_judge(settings: dict):
    """The judge of evaluation.mtbench.judge: an OpenAI-compatible endpoint, a local transformers model, or the
    deterministic reference judge."""
    if settings["backend"] == "local":
        from ctxaware.local_judge import LocalJudge

        return LocalJudge(settings["model"], settings.get("mode", "generate"))
    if settings["backend"] == "reference":
        return ReferenceJudge()
    return OpenAIJudge(
        base_url=settings["base_url"],
        model=settings["model"],
        api_key_env=settings["api_key_env"],
        timeout_s=settings["timeout_s"],
        max_retries=settings["max_retries"],
        backoff_s=settings["backoff_s"],
        retry_budget_s=settings["retry_budget_s"],
        cache_dir=settings.get("cache_dir"),
    )


def public_settings(judge: dict | None) -> dict | None:
    """Judge settings without anything secret (keys are only ever read from the environment)."""
    return None if judge is None else {k: v for k, v in judge.items() if "key" not in k.lower() or k.endswith("_env")}


def judge_questions(judge, answered: list[dict]) -> list[dict]:
    """One judged record per (question, turn) of the answers `evaluate` generated (`generation_record`s): the
    grade() record with the prompt the model saw and its answer."""
    records = []
    for question in answered:
        for record in grade(judge, question, question["answers"]):
            turn = record["turn"]
            records.append({**record, "prompt": question["prompts"][turn - 1], "answer": question["answers"][turn - 1]})
    return records


def judge_answers(answers_path: str, settings: dict, out_json: str, out_generations: str) -> dict:
    """The workflow's `judge` job: judge the answers file `evaluate` wrote (its summary and one record per question)
    and write the task's result json (the summary, the judge's means, the settings with the judge's) and the
    judged records. The judge is checked before any request (a missing key fails at once); a judge that cannot
    be used raises JudgeUnavailable, failing this job only."""
    answers = json.loads(Path(answers_path).read_text(encoding="utf-8"))
    judge = make_judge(settings)
    if isinstance(judge, OpenAIJudge):
        judge.check_key()
    records = judge_questions(judge, answers.pop("questions"))
    result = {
        "task": answers["task"],
        **summarize(records),
        **{key: value for key, value in answers.items() if key != "task"},
        "settings": {**answers["settings"], "judge": public_settings(settings)},
    }
    Path(out_json).parent.mkdir(parents=True, exist_ok=True)
    with open(out_generations, "w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    Path(out_json).write_text(json.dumps(result, indent=2, default=str))
    return result
