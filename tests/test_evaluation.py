"""Science properties of the evaluation, independent of the embedded default's model.

- A scripted generator (the model replaced by a lookup of the right answer in the real prompt) that answers with
  the gold scores 1.0 and a wrong answer 0.0 through each task's real evaluation, record by record.
- MT-Bench: the judge (an OpenAI-compatible endpoint on this machine) sees each turn's answer and the summary is
  the mean of its ratings.
- [IND]: a tiny model fine-tuned (real TRL training) where tagged turns answer one way and untagged turns another
  flips its greedy answer when the evaluation appends [IND] to the query.
- LocalJudge (constrained): returns the rating its model's likelihoods favour.
"""

import json
import re
from pathlib import Path

import pandas as pd
import pytest
import torch
from loopback import ChatServer, chat_reply

from ctxaware import IND_TOKEN
from ctxaware.evaluation import evaluate_task
from ctxaware.generation import Generator
from ctxaware.judge import judge_questions, make_judge, summarize
from ctxaware.modeling import load_model, load_tokenizer

ROOT = Path(__file__).resolve().parents[1]
EVAL = ROOT / "resources" / "eval"
NEEDLE = "The best thing to do in San Francisco is eat a sandwich and sit in Dolores Park on a sunny day."
WRONG = "Nobody could tell from what was written."


class ScriptedGenerator(Generator):
    """The transformers Generator with the model replaced by `answer(prompt text) -> response`: prompts are built,
    batched, cached and scored by the real code; only the forward pass is scripted."""

    def __init__(self, tokenizer, answer, batch_tokens=2048):
        super().__init__(None, tokenizer, batch_tokens)
        self.answer, self.prompts = answer, []

    def context_window(self):
        return None

    def _generate_batch(self, prompts, max_new_tokens, stops, temperatures=None, sampling=None):
        texts = [self.tokenizer.decode(p) for p in prompts]
        self.prompts += texts
        return [self.answer(text) for text in texts]


def _rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (EVAL / f"{name}.jsonl").read_text().splitlines() if line.strip()]


# the gold answers and questions straight from the shipped files, in each dataset's own schema
def _squad(row):
    return row["question"], row["context"], row["answers"]["text"]


def _quac(row):
    return row["questions"][0], row["context"].removesuffix("CANNOTANSWER").strip(), row["answers"]["texts"][0]


def _drop(row):
    return row["question"], row["passage"], row["answers_spans"]["spans"]


QA = {"squad": _squad, "quac": _quac, "drop": _drop}


def _qa_settings(task: str) -> dict:
    return {
        "source": str(EVAL / f"{task}.jsonl"),
        "limit": None,
        "prompt_template": "{context}\nAnswer the question according to the above passage: {question}",
        "metric": "containment",
        "max_new_tokens": 24,
        "batch_tokens": 2048,
    }


@pytest.mark.parametrize("with_indicator", [False, True])
@pytest.mark.parametrize("task", ["squad", "quac", "drop"])
def test_qa_scores_the_gold_one_and_a_wrong_answer_zero(tiny_model_dir, task, with_indicator):
    items = [QA[task](row) for row in _rows(task)]
    gold_of = {question: golds[0] for question, _, golds in items}
    assert all(gold.lower() not in WRONG.lower() for gold in gold_of.values())
    # every other question answered with its gold (then more text, cut by the first-sentence rule)
    answered = {question for index, (question, _, _) in enumerate(items) if index % 2 == 0}

    def answer(prompt):
        question = next(q for q in gold_of if q in prompt)
        context = next(c for q, c, _ in items if q == question)
        assert context[:60] in prompt and (f"{question} {IND_TOKEN}</s>" in prompt) == with_indicator
        return f"{gold_of[question]}. And then {WRONG}" if question in answered else WRONG

    generator = ScriptedGenerator(load_tokenizer(tiny_model_dir), answer)
    summary, records = evaluate_task(task, generator, _qa_settings(task), with_indicator)
    assert len(records) == len(items) == summary["n"] and len(generator.prompts) == len(items)
    for record in records:
        question = next(q for q in gold_of if q in record["prompt"])
        assert record["score"] == (1.0 if question in answered else 0.0), record
    assert summary["score"] == pytest.approx(len(answered) / len(items))


def _nih_settings(**overrides) -> dict:
    settings = {
        "haystack": str(ROOT / "resources" / "haystack"),
        "context_buffer": 0,
        "needle": NEEDLE,
        "question": "What is the best thing to do in San Francisco?",
        "keywords": ["eat", "sandwich", "sit", "dolores", "park", "sunny", "day"],
        "min_context": 60,
        "max_context": 160,
        "n_lengths": 2,
        "n_depths": 3,
        "max_new_tokens": 16,
        "prompt_template": "assistant-document",
        "metric": "exact",
        "use_chat_template": True,
        "response_prefix": "",
        "batch_tokens": 2048,
    }
    return settings | overrides


@pytest.mark.parametrize(("response", "recall"), [(NEEDLE, 1.0), ("Eat a sandwich.", 2 / 7), (WRONG, 0.0)])
def test_nih_scores_the_keywords_of_the_answer(tiny_model_dir, response, recall):
    def answer(prompt):
        assert " ".join(NEEDLE.split()[:6]) in prompt and prompt.endswith("<|assistant|>\n")
        return response

    generator = ScriptedGenerator(load_tokenizer(tiny_model_dir), answer)
    summary, records = evaluate_task("nih", generator, _nih_settings(), False)
    assert [(r["length"], r["depth"]) for r in records] == [
        (60, 0),
        (60, 50),
        (60, 100),
        (160, 0),
        (160, 50),
        (160, 100),
    ]
    assert [r["score"] for r in records] == pytest.approx([recall] * 6)
    assert summary == {"score": pytest.approx(recall), "n": 6}


def test_nih_answers_found_only_at_some_depths_average_over_the_grid(tiny_model_dir):
    """The needle recalled only when it opens the context. In 60-token contexts the haystack's first sentence does
    not fit, so the needle backs up to the start at every depth; in 160-token ones only depth 0 opens with it."""

    def answer(prompt):
        context = prompt.split("provided document: \n", 1)[1]
        return NEEDLE if context.lstrip().startswith(NEEDLE[:30]) else WRONG

    generator = ScriptedGenerator(load_tokenizer(tiny_model_dir), answer)
    summary, records = evaluate_task("nih", generator, _nih_settings(), False)
    cells = [(r["length"], r["depth"], r["score"]) for r in records]
    assert cells == [(60, 0, 1.0), (60, 50, 1.0), (60, 100, 1.0), (160, 0, 1.0), (160, 50, 0.0), (160, 100, 0.0)]
    assert summary["score"] == pytest.approx(4 / 6)


class RatingJudge(ChatServer):
    """An OpenAI-compatible chat endpoint on this machine whose judge rates the judged answer (the one after the
    judge prompt's last assistant header) by the number it states ("rate me N")."""

    def __init__(self):
        self.prompts = []
        super().__init__(self.respond)

    def respond(self, path, headers, body):
        prompt = body["messages"][-1]["content"]
        self.prompts.append(prompt)
        judged = re.split(r"\[The Start of Assistant's Answer\]|### Assistant A:", prompt)[-1]
        numbers = re.findall(r"rate me (\d+)", judged)
        return 200, chat_reply(f"Fair. Rating: [[{numbers[-1]}]]" if numbers else "I cannot rate this.")


@pytest.fixture
def rating_judge(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    judge = RatingJudge()
    yield judge
    judge.close()


def test_mtbench_score_is_the_mean_rating_of_each_turns_answer(tiny_model_dir, rating_judge, tmp_path):
    questions = _rows("mtbench")[:4]
    # the answer to each turn asks for its own rating: 1..8 over (question, turn); the last question's second
    # answer states none, so its judgment fails and counts in no mean
    rating = {q["turns"][t]: 2 * i + t + 1 for i, q in enumerate(questions) for t in range(2)}
    silent = questions[-1]["turns"][1]

    def answer(prompt):
        question = max((q for q in rating if q in prompt), key=prompt.rindex)  # the last user turn in the prompt
        return WRONG if question == silent else f"Here it is; rate me {rating[question]}."

    settings = {
        "questions": str(EVAL / "mtbench.jsonl"),
        "limit": 4,
        "references": None,
        "max_new_tokens": 32,
        "batch_tokens": 4096,
        "answer_sampling": "greedy",
        "sampling_seed": 0,
        "sampling_top_k": 50,
        "sampling_top_p": 1.0,
    }
    judge_settings = {
        "backend": "openai",
        "base_url": rating_judge.url,
        "model": "judge",
        "api_key_env": None,
        "timeout_s": 10,
        "max_retries": 0,
        "backoff_s": 1,
        "retry_budget_s": 60,
        "cache_dir": str(tmp_path / "judgments"),
    }
    generator = ScriptedGenerator(load_tokenizer(tiny_model_dir), answer)
    summary, answered = evaluate_task("mtbench", generator, settings, False)
    assert summary == {"n": 4} and len(generator.prompts) == 8 and rating_judge.prompts == []  # no judge here
    assert [a["question_id"] for a in answered] == [q["question_id"] for q in questions]
    assert all(len(a["answers"]) == len(a["prompts"]) == 2 for a in answered)
    records = judge_questions(make_judge(judge_settings), answered)  # the judge job's work
    summary = summarize(records) | summary
    assert len(rating_judge.prompts) == 8
    assert len(list((tmp_path / "judgments").glob("*.json"))) == 8  # the judge the settings ask for, its cache
    # turn 2 is generated after the model's own first answer
    second = [p for p in generator.prompts if "rate me 1." in p]
    assert len(second) == 1 and questions[0]["turns"][1] in second[0]
    by_turn = {(r["question_id"], r["turn"]): r for r in records}
    for i, question in enumerate(questions):
        for turn in (1, 2):
            record = by_turn[(question["question_id"], turn)]
            expected = None if question["turns"][turn - 1] == silent else float(2 * i + turn)
            assert record["rating"] == expected and record["failed"] == (expected is None)
            assert record["prompt"] == question["turns"][turn - 1] and record["answer"].startswith(("Here", WRONG))
    assert summary["score_turn1"] == pytest.approx((1 + 3 + 5 + 7) / 4)
    assert summary["score_turn2"] == pytest.approx((2 + 4 + 6) / 3)
    assert summary["score"] == pytest.approx(28 / 7) and summary["n_failed"] == 1 and summary["n"] == 4


def _indicator_data(path: Path) -> str:
    """Each question twice: with [IND] the answer is "Paris.", without it "The dog."."""
    conversations = [
        {
            "id": f"{i}-{tagged}",
            "messages": [
                {
                    "role": "user",
                    "content": f"Read the passage: the fox jumps {i} times. How often?" + tagged * " [IND]",
                },
                {"role": "assistant", "content": "Paris." if tagged else "The dog."},
            ],
        }
        for i in range(12)
        for tagged in (True, False)
    ]
    pd.DataFrame(conversations).to_parquet(path)
    return str(path)


INDICATOR_RECIPE = dict(
    finetuning="full",
    learning_rate=3e-3,
    lr_scheduler="constant",
    warmup_ratio=0.0,
    global_batch_size=8,
    per_device_batch_size=8,
    max_length=128,
    epochs=30,
    max_steps=None,
    gradient_checkpointing=False,
    loss="assistant",
    save_steps=1000,
    logging_steps=1,
    lm_head_loss="fused",
    length_groups=1,
    precision="auto",
    indicator_embedding="trainable",
    lora=dict(r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "k_proj"]),
    qk_lora=dict(target_modules=["q_proj", "k_proj"], learning_rate=None),
)


def test_a_model_trained_on_tagged_turns_answers_as_tagged_when_the_query_carries_ind(tiny_model_dir, tmp_path):
    from ctxaware.training import finetune

    data = _indicator_data(tmp_path / "tagged.parquet")
    finetune(tiny_model_dir, data, str(tmp_path / "m"), str(tmp_path / "c"), INDICATOR_RECIPE, with_indicator=True)
    model, tokenizer = load_model(str(tmp_path / "m"))
    squad = tmp_path / "squad.jsonl"
    squad.write_text(
        "".join(
            json.dumps(
                {
                    "id": f"q{n}",
                    "context": f"the fox jumps {n} times.",
                    "question": "How often?",
                    "answers": {"text": ["Paris"], "answer_start": [0]},
                }  # fmt: skip
            )
            + "\n"
            for n in (20, 31, 47)  # counts it never saw
        )
    )
    settings = dict(_qa_settings("squad"), source=str(squad), prompt_template="Read the passage: {context} {question}")
    generator = Generator(model, tokenizer, batch_tokens=2048)
    scores = {}
    for with_indicator in (True, False):
        summary, records = evaluate_task("squad", generator, settings, with_indicator)
        scores[with_indicator] = summary["score"]
        expected = "Paris." if with_indicator else "The dog."
        assert [r["answer"] for r in records] == [expected] * 3, records
    assert scores == {True: 1.0, False: 0.0}


def _judge_model(base_dir: str, out: Path, logits: dict[str, float]) -> str:
    """A model whose next-token logits are the same at every position: all layers write nothing to the residual
    stream, every token embeds to the same unit vector, and the output matrix maps it to the given logits (0 for
    every token not named)."""
    model, tokenizer = load_model(base_dir)
    hidden = model.config.hidden_size
    target = torch.zeros(model.config.vocab_size)
    for text, value in logits.items():
        [token] = tokenizer(text, add_special_tokens=False)["input_ids"]
        target[token] = value
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight.zero_()
        model.model.embed_tokens.weight[:, 0] = 1.0
        model.model.norm.weight.fill_(1.0)
        model.lm_head.weight.zero_()
        model.lm_head.weight[:, 0] = target / hidden**0.5  # the normed hidden state is sqrt(hidden) e_0
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)


@pytest.mark.parametrize(
    ("favoured", "logits"), [(3, {"3": 4.0}), (8, {"8": 4.0, "3": 2.0}), (5, {"5": 4.0, "6": 3.9})]
)
def test_constrained_local_judge_returns_the_rating_its_model_favours(tiny_model_dir, tmp_path, favoured, logits):
    from ctxaware.judge import grade
    from ctxaware.local_judge import LocalJudge

    settings = {"backend": "local", "model": _judge_model(tiny_model_dir, tmp_path / "judge", logits)}
    judge = make_judge({**settings, "mode": "constrained"})  # as evaluation.mtbench.judge asks for it
    assert isinstance(judge, LocalJudge) and make_judge(settings).mode == "generate"
    question = {"question_id": 1, "category": "writing", "turns": ["Write a poem.", "Shorter."]}
    records = grade(judge, question, ["A poem.", "Short."])
    assert [r["rating"] for r in records] == [favoured, favoured] and not any(r["failed"] for r in records)
    assert records[0]["judgment"] == f"Rating: [[{favoured}]]"


def test_a_model_without_a_chat_template_is_prompted_in_the_fine_tunes_template():
    """A base model evaluated as a reference row (the organism's) has no template: it gets the Zephyr template
    every fine-tune learns; an instruct model or a fine-tune keeps its own."""
    from types import SimpleNamespace

    from ctxaware.chat import ZEPHYR_TEMPLATE
    from ctxaware.evaluation import with_chat_template

    assert with_chat_template(SimpleNamespace(chat_template=None)).chat_template == ZEPHYR_TEMPLATE
    assert with_chat_template(SimpleNamespace(chat_template="{{ own }}")).chat_template == "{{ own }}"
