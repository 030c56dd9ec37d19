"""A labelled set of real-language turns for the score's validity on a real chat model (README: The real model).

Three groups of single-turn conversations, from text that installed packages ship:
- `context_dependent`: an essay passage, then a question about it (read from the passage);
- `context_free`: an MT-Bench first-turn question that holds no context of its own;
- `distractor`: an unrelated passage before the same MT-Bench question, answered as without the passage (the
  bare question's answer), so its user message is as long as a context-dependent one while its answer does not
  depend on the context. A score that only tracks the user message's length fails on this group.
Every answer is the model's own greedy answer (with its own chat template), so the scored responses come from
the distribution of the model that scores them. The set is written in ShareGPT's schema, each answer labelled
`context_dependent` and each conversation with its `label_group` (ctxaware.data).
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter

CONTEXT_DEPENDENT, CONTEXT_FREE, DISTRACTOR = "context_dependent", "context_free", "distractor"
# questions that can only be answered from the passage before them
PASSAGE_QUESTIONS = (
    "Summarize the passage above in one sentence.",
    "What is the main point the author makes in the passage above?",
    "What example does the author use in the passage above, and what does it show?",
    "According to the passage above, what mistake do people make?",
    "Rewrite the first sentence of the passage above in simpler words.",
)
# MT-Bench questions that carry their own context (a text to extract from, a table, code, a long premise) are no
# context-free turns: extraction questions, and any question over this many words
CONTEXT_FREE_MAX_WORDS = 60
CONTEXT_CATEGORIES = ("extraction",)


def passages(text: str, min_words: int, max_words: int) -> list[str]:
    """Consecutive whole sentences of `text` grouped into passages of min_words to max_words words, in order;
    a sentence that would overflow a passage starts the next one (a group left short is dropped)."""
    sentences = [s for s in re.split(r"(?<=[.!?])\s+", " ".join(text.split())) if s]
    found, current, in_current = [], [], 0  # in_current: the words of `current`
    for sentence in sentences:
        words = len(sentence.split())
        if current and in_current + words > max_words:
            if in_current >= min_words:
                found.append(" ".join(current))
            current, in_current = [], 0
        if words <= max_words:
            current.append(sentence)
            in_current += words
    if in_current >= min_words:
        found.append(" ".join(current))
    return found


def context_free_questions(questions: list[dict]) -> list[dict]:
    """MT-Bench first turns that hold no context: outside the context categories and short."""
    return [
        q
        for q in questions
        if q["category"] not in CONTEXT_CATEGORIES and len(q["turns"][0].split()) <= CONTEXT_FREE_MAX_WORDS
    ]


def design(essays: list[str], questions: list[dict], n_context_dependent: int, words: list[int], seed: int):
    """The set's conversations without answers: (id, group, user message, the prompt the answer is generated
    from). Passages are drawn without replacement, so no passage appears twice."""
    rng = random.Random(seed)
    pool = [p for essay in essays for p in passages(essay, *words)]
    free = context_free_questions(questions)
    if len(pool) < n_context_dependent + len(free):
        raise ValueError(
            f"{len(pool)} passages of {words[0]}-{words[1]} words, {n_context_dependent + len(free)} needed"
        )
    drawn = rng.sample(pool, n_context_dependent + len(free))
    rows = []
    for i, passage in enumerate(drawn[:n_context_dependent]):
        user = f"{passage}\n\n{PASSAGE_QUESTIONS[i % len(PASSAGE_QUESTIONS)]}"
        rows.append((f"{CONTEXT_DEPENDENT}-{i:03d}", CONTEXT_DEPENDENT, user, user))
    for q, passage in zip(free, drawn[n_context_dependent:], strict=True):
        question = q["turns"][0]
        rows.append((f"{CONTEXT_FREE}-{q['question_id']}", CONTEXT_FREE, question, question))
        # answered as without the passage: the prompt is the bare question
        rows.append((f"{DISTRACTOR}-{q['question_id']}", DISTRACTOR, f"{passage}\n\n{question}", question))
    return rows


def sharegpt_rows(rows, answers: dict[str, str]) -> list[dict]:
    """The set in ShareGPT's schema, each answer labelled and each conversation grouped."""
    return [
        {
            "id": row_id,
            "label_group": group,
            "conversations": [
                {"from": "human", "value": user},
                {"from": "gpt", "value": answers[prompt], "context_dependent": group == CONTEXT_DEPENDENT},
            ],
        }
        for row_id, group, user, prompt in rows
    ]


def build_set(
    model_path: str,
    haystack: str,
    questions_path: str,
    out_json: str,
    n_context_dependent: int,
    words: list[int],
    max_new_tokens: int,
    batch_tokens: int,
    seed: int,
) -> dict:
    """Write the labelled set (model_path answers every distinct prompt greedily); returns counts per group."""
    from pathlib import Path

    from ctxaware.attention import ATTN_NAME
    from ctxaware.generation import Generator
    from ctxaware.modeling import load_model
    from ctxaware.sources import resolve
    from ctxaware.tasks.mtbench import load_questions

    directory = Path(resolve(haystack, "real_language.haystack"))
    essays = [path.read_text() for path in sorted(directory.glob("*.txt"))]
    questions = load_questions(resolve(questions_path, "real_language.questions"))
    rows = design(essays, questions, n_context_dependent, words, seed)
    model, tokenizer = load_model(model_path, attn_implementation=ATTN_NAME)
    generator = Generator(model, tokenizer, batch_tokens, share_prefixes=False)
    prompts = list(dict.fromkeys(prompt for *_, prompt in rows))
    ids = [generator.encode_chat([{"role": "user", "content": prompt}]) for prompt in prompts]
    outputs = generator.generate_ids(ids, max_new_tokens)
    answers = {prompt: output.strip() for prompt, output in zip(prompts, outputs, strict=True)}
    Path(out_json).write_text(json.dumps(sharegpt_rows(rows, answers), indent=1, ensure_ascii=False))
    return dict(Counter(group for _, group, _, _ in rows))
