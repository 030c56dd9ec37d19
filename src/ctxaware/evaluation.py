"""Run one evaluation task on one model: prompts -> batched generation -> metric -> json + generations jsonl."""

from __future__ import annotations

import json
import math
import tempfile
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from ctxaware import modeling
from ctxaware.chat import ZEPHYR_TEMPLATE, append_indicator
from ctxaware.generation import Generator
from ctxaware.judge import JUDGED_TASKS
from ctxaware.metrics import containment, containment_raw_regex, cut_answer, drop_original, keyword_recall
from ctxaware.modeling import load_model
from ctxaware.tasks import PROCEDURE_DEFAULTS, TASKS, nih, qa

BACKENDS = ("transformers", "vllm")
# a task's precision on the transformers backend: auto (modeling.default_dtype: bf16 on GPUs, fp32 on CPUs), or
# fixed (fp32: lm-eval's dtype="float", which the original's QA evaluation ran with)
DTYPES = {"auto": None, "bf16": torch.bfloat16, "fp32": torch.float32}


def user_message(content: str, with_indicator: bool) -> dict:
    """The query as the user's message; indicator models get ` [IND]` appended to every query."""
    return {"role": "user", "content": append_indicator(content) if with_indicator else content}


def _write_jsonl(path: str, records: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def nih_prompts(generator: Generator, settings: dict, with_indicator: bool) -> tuple[list[dict], list[dict], list]:
    """(cases, queries, prompt ids) of an NIH grid, checked against the model's window."""
    cases = nih.build_cases(generator.tokenizer, settings, settings["max_context"])
    queries = [user_message(c["prompt"], with_indicator) for c in cases]
    prompts = [generator.encode_chat([q], settings["use_chat_template"], settings["response_prefix"]) for q in queries]
    nih.check_window(max(map(len, prompts)), settings["max_new_tokens"], generator.context_window())
    return cases, queries, prompts


def score_nih(settings: dict, cases: list, queries: list, prompts: list, outputs: list) -> tuple[dict, list[dict]]:
    records = []
    for case, query, prompt, output in zip(cases, queries, prompts, outputs, strict=True):
        score = keyword_recall(output, settings["keywords"], settings["metric"])
        records.append(
            {**case, "prompt": query["content"], "prompt_tokens": len(prompt), "response": output, "score": score}
        )
    return {"score": _mean([r["score"] for r in records]), "n": len(records)}, records


def run_nih(generator: Generator, settings: dict, with_indicator: bool) -> tuple[dict, list[dict]]:
    cases, queries, prompts = nih_prompts(generator, settings, with_indicator)
    return score_nih(settings, cases, queries, prompts, generator.generate_ids(prompts, settings["max_new_tokens"]))


def load_task_inputs(settings_by_task: dict[str, dict]) -> dict:
    """Every task's data, read before any model loads, so a source that cannot load (a hub repository with a
    loading script, a missing package) stops the job at its start, naming the config key: QA items, MT-Bench
    questions, and the NIH haystack (checked here, tokenised per model later)."""
    from ctxaware.tasks.mtbench import load_question_source

    inputs = {}
    for task, settings in settings_by_task.items():
        if task == "nih":
            nih.load_haystack(settings["haystack"])
            inputs[task] = None
        elif task == "mtbench":
            inputs[task] = load_question_source(
                settings["questions"], settings.get("limit"), settings.get("references")
            )
        else:
            inputs[task] = qa.load_items(task, settings)
    return inputs


def run_qa(
    task: str, generator: Generator, settings: dict, with_indicator: bool, items: list[dict] | None = None
) -> tuple[dict, list[dict]]:
    metric = settings["metric"]
    if metric == "drop_original" and task != "drop":
        raise ValueError(f"config key evaluation.{task}.metric: drop_original scores DROP answers only")
    items = qa.load_items(task, settings) if items is None else items
    template = settings["prompt_template"]
    queries = [
        user_message(template.format(context=i["context"], question=i["question"]), with_indicator) for i in items
    ]
    ending = settings.get("prompt_ending", PROCEDURE_DEFAULTS["prompt_ending"])
    prompts = [generator.encode_chat([q], ending=ending) for q in queries]
    outputs = generator.generate_ids(prompts, settings["max_new_tokens"])
    cut = settings.get("answer_cut", PROCEDURE_DEFAULTS["answer_cut"])
    records = []
    for item, query, output in zip(items, queries, outputs, strict=True):
        answer = cut_answer(output, cut)
        records.append(
            {
                "id": item["id"],
                "prompt": query["content"],
                "golds": item["golds"],
                "response": output,
                "answer": answer,
                "score": qa_score(metric, answer, item),
            }
        )
    return {"score": _mean([r["score"] for r in records]), "n": len(records)}, records


def qa_score(metric: str, answer: str, item: dict) -> float:
    """containment (normalised, the paper's), raw_regex (lm-eval's case-insensitive regex) or drop_original
    (raw_regex against the first gold answer's spans, the original's DROP metric)."""
    if metric == "drop_original":
        return drop_original(answer, item["first_answer"])
    if metric == "raw_regex":
        return containment_raw_regex(answer, item["golds"])
    return containment(answer, item["golds"])


def run_mtbench(
    generator: Generator, settings: dict, with_indicator: bool, questions: list[dict] | None = None
) -> tuple[dict, list[dict]]:
    """Both turns' answers of every question (the judge runs in a job of its own, `judge.judge_answers`): one
    record per question, the question (its turns and references, for the judge prompts) with the prompts the
    model saw and its answers."""
    from ctxaware.tasks.mtbench import answer_temperature, load_question_source

    if questions is None:
        questions = load_question_source(settings["questions"], settings.get("limit"), settings.get("references"))
    # greedy, or FastChat's per-category temperatures with a seed of each prompt's own (reruns are equal)
    temperatures = [answer_temperature(q["category"], settings["answer_sampling"]) for q in questions]
    sampling = {
        "seed": settings["sampling_seed"],
        "top_k": settings["sampling_top_k"],
        "top_p": settings["sampling_top_p"],
    }
    conversations = [[] for _ in questions]
    for turn in range(2):  # both turns batched across questions; turn 2 sees the model's own first answer
        for conversation, question in zip(conversations, questions, strict=True):
            conversation.append(user_message(question["turns"][turn], with_indicator))
        prompts = [generator.encode_chat(c) for c in conversations]
        outputs = generator.generate_ids(prompts, settings["max_new_tokens"], None, temperatures, sampling)
        for conversation, output in zip(conversations, outputs, strict=True):
            conversation.append({"role": "assistant", "content": output})
    records = [
        {
            **question,
            "prompts": [m["content"] for m in conversation if m["role"] == "user"],
            "answers": [m["content"] for m in conversation if m["role"] == "assistant"],
        }
        for question, conversation in zip(questions, conversations, strict=True)
    ]
    return {"n": len(questions)}, records


def with_chat_template(tokenizer):
    """A model without a chat template of its own (a base model evaluated as a reference row, such as the
    organism's) is prompted in the Zephyr template every fine-tune learns; fine-tunes and instruct models keep
    theirs."""
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = ZEPHYR_TEMPLATE
    return tokenizer


@contextmanager
def generators(
    model_dir: str, engine: dict | None = None, work_dir: str | None = None, dtype: str = "auto"
) -> Iterator[Callable[[int, str | None], Generator]]:
    """Load model_dir once with the backend of `engine` (config `evaluation.backend` and `evaluation.vllm`), in
    `dtype` (DTYPES; vLLM's is evaluation.vllm.dtype); yields make(batch_tokens, cache_path) -> a Generator of that
    backend sharing the loaded model."""
    engine = engine or {}
    backend = engine.get("backend", "transformers")
    if dtype not in DTYPES:
        raise ValueError(f"evaluation dtype {dtype!r} is not one of {tuple(DTYPES)}")
    if backend != "transformers" and dtype != "auto":
        raise ValueError(f"evaluation dtype {dtype!r}: the vllm backend takes its dtype from evaluation.vllm.dtype")
    if backend == "transformers":
        model, tokenizer = load_model(model_dir, dtype=DTYPES[dtype])
        with_chat_template(tokenizer)
        yield lambda batch_tokens, cache_path: Generator(model, tokenizer, batch_tokens, cache_path)
    elif backend == "vllm":
        from ctxaware.vllm_backend import VLLMGenerator, import_vllm, load_vllm

        import_vllm()  # the missing-package error before any other work
        settings = engine.get("vllm") or {}
        if work_dir:
            Path(work_dir).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=work_dir, prefix="vllm-") as work:  # a merged copy, if any
            llm, tokenizer, lora_request = load_vllm(model_dir, settings, work)
            with_chat_template(tokenizer)
            chunk = settings.get("chunk_prompts", 1024)
            yield lambda batch_tokens, cache_path: VLLMGenerator(llm, tokenizer, lora_request, chunk, cache_path)
    else:
        raise ValueError(f"config key evaluation.backend: {backend!r} is not one of {BACKENDS}")


def evaluate_all(
    model_dir: str,
    settings_by_task: dict[str, dict],
    with_indicator: bool,
    out_json: dict[str, str],
    out_generations: dict[str, str],
    cache_dir: str | None = None,
    engine: dict | None = None,
    out_answers: dict[str, str] | None = None,
) -> dict[str, dict]:
    """Run every task of settings_by_task on one model (loaded once): one json + jsonl per task; a judged task
    (JUDGED_TASKS: MT-Bench) writes its answers file instead (out_answers), which the `judge` job judges.

    engine: {"backend": "transformers" | "vllm", "vllm": {...}} (config `evaluation.backend`, `evaluation.vllm`).
    """
    unknown = set(settings_by_task) - set(TASKS)
    if unknown:
        raise ValueError(f"unknown evaluation task(s) {sorted(unknown)}; expected some of {TASKS}")
    results = {}
    if (engine or {}).get("backend") == "vllm":
        from ctxaware.vllm_backend import import_vllm

        import_vllm()  # the missing-package error first
    inputs = load_task_inputs(settings_by_task)
    by_precision = defaultdict(list)  # the model loads once per precision the tasks ask for (once by default)
    for task, settings in settings_by_task.items():
        dtype = settings.get("dtype", PROCEDURE_DEFAULTS["dtype"])
        by_precision[loaded_precision(dtype, engine)].append((task, dtype))
    for tasks in by_precision.values():
        with generators(model_dir, engine, cache_dir, tasks[0][1]) as make_generator:
            for task, dtype in tasks:
                settings = settings_by_task[task]
                generator = make_generator(settings["batch_tokens"], generation_cache(cache_dir, task, dtype))
                summary, records = evaluate_task(task, generator, settings, with_indicator, inputs[task])
                results[task] = {
                    "task": task,
                    **summary,
                    "model_dir": model_dir,
                    "with_indicator": with_indicator,
                    "backend": generator.backend,
                    "n_generated": generator.n_generated,
                    "settings": settings,
                }
                if task in JUDGED_TASKS:  # the answers and everything the judge job needs, in one file
                    Path(out_answers[task]).parent.mkdir(parents=True, exist_ok=True)
                    answers = {**results[task], "questions": records}
                    text = json.dumps(answers, indent=2, ensure_ascii=False, default=str)
                    Path(out_answers[task]).write_text(text)
                    continue
                Path(out_json[task]).parent.mkdir(parents=True, exist_ok=True)
                _write_jsonl(out_generations[task], records)
                Path(out_json[task]).write_text(json.dumps(results[task], indent=2, default=str))
    return {task: results[task] for task in settings_by_task}


def loaded_precision(dtype: str, engine: dict | None = None):
    """What a task's dtype loads the model in: on the transformers backend auto is default_dtype (fp32 on a CPU, so
    an fp32 task shares auto's load there), on vLLM the dtype as named."""
    if (engine or {}).get("backend", "transformers") != "transformers" or dtype not in DTYPES:
        return dtype
    return DTYPES[dtype] or modeling.default_dtype()


def generation_cache(cache_dir: str | None, task: str, dtype: str) -> str | None:
    """A task's generation cache; a fixed precision has a file of its own, since the cache keys hold the prompts
    and decoding settings but not the weights' precision."""
    if not cache_dir:
        return None
    return str(Path(cache_dir) / (f"{task}.jsonl" if dtype == "auto" else f"{task}-{dtype}.jsonl"))


def evaluate_task(
    task: str, generator: Generator, settings: dict, with_indicator: bool, inputs=None
) -> tuple[dict, list[dict]]:
    """(summary with `score` and `n`, one record per prompt) of one task; `inputs`: its load_task_inputs."""
    if task == "nih":
        summary, records = run_nih(generator, settings, with_indicator)
    elif task == "mtbench":
        summary, records = run_mtbench(generator, settings, with_indicator, inputs)
    else:
        summary, records = run_qa(task, generator, settings, with_indicator, inputs)
    return summary, records
