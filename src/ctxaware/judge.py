"""MT-Bench judges (docs/architecture.md, Evaluation tasks): an OpenAI-compatible HTTP judge with a disk cache;
grading, summary."""

from __future__ import annotations

import hashlib
import http.client
import ipaddress
import json
import math
import os
import tempfile
import time
import urllib.error
import urllib.parse
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


# The HTTP client (_is_loopback, OpenAIJudge) is outside `make mutation`'s scope (judge parsing and cache): it is
# tested against a real server in tests/test_judge.py.
def _is_loopback(url: str) -> bool:  # pragma: no mutate block
    host = urllib.parse.urlparse(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class OpenAIJudge:  # pragma: no mutate block
    """A judge behind an OpenAI-compatible /chat/completions endpoint, greedy decoding, retried and cached."""

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str = "OPENAI_API_KEY",
        timeout_s: float = 60,
        max_retries: int = 5,
        backoff_s: float = 1.0,
        max_tokens: int = 2048,
        cache_dir: str | None = None,
    ):
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.base_url, self.model, self.api_key_env = base_url, model, api_key_env
        self.timeout_s, self.max_retries, self.backoff_s = timeout_s, max_retries, backoff_s
        self.max_tokens = max_tokens
        self.cache = JudgmentCache(cache_dir) if cache_dir else None
        self.calls = 0  # real HTTP requests, retries included

    def _headers(self) -> dict:
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env)  # read per call: keys never live in settings or on disk
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        elif not _is_loopback(self.base_url):
            # A configuration error, not a per-judgment failure: a RuntimeError that grade() lets through.
            raise RuntimeError(
                f"environment variable {self.api_key_env} is not set; it must hold the API key for {self.base_url}"
            )
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
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            request = urllib.request.Request(self.url, data=body, headers=self._headers(), method="POST")
            self.calls += 1
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    payload = response.read()
            except urllib.error.HTTPError as error:
                try:
                    excerpt = error.read(500).decode("utf-8", "replace")
                except OSError:  # the body may be cut off; the status alone decides what to do
                    excerpt = ""
                if error.code != 429 and error.code < 500:  # the request itself is wrong: retrying won't help
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
        raise JudgeError(f"judge at {self.base_url} failed after {self.max_retries + 1} attempts; last: {last_error}")


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
