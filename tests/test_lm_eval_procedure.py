"""The QA options that select the original's evaluation procedure (lm-eval in YihanWang617/context_awareness at
124b797), each on a small hand-made input: the prompt's ending, the answer's cut, QuAC's golds and the precision.

The expected values are the original's own code's output, run outside this repository on the same inputs and
kept here as literals: HFLM.wrap_chat_template (lm-evaluation-harness/lm_eval/models/huggingface.py l.785-829)
and generate_until's post-hoc cut (l.1361-1365), extracted with ast and run unchanged; QuAC's doc_to_text and
process_results with contains_score (lm_eval/tasks/quac/task.py)."""

import json

import pytest
import torch
import yaml
from smk_helpers import ROOT
from test_plan import plan_of

from ctxaware import evaluation, modeling
from ctxaware.chat import ZEPHYR_TEMPLATE
from ctxaware.evaluation import evaluate_all, generators, run_qa
from ctxaware.generation import Generator
from ctxaware.modeling import load_tokenizer
from ctxaware.tasks import PROCEDURE_DEFAULTS, QA_TASKS
from ctxaware.tasks.qa import load_items

TEMPLATE = "{context}\nAnswer the question according to the above passage: {question}"
ITEM = {
    "id": "sb50",
    "context": "Super Bowl 50 was won by the Denver Broncos.",
    "question": "Who won Super Bowl 50?",
    "golds": ["Denver Broncos"],
}
USER = f"{ITEM['context']}\nAnswer the question according to the above passage: {ITEM['question']} [IND]"
# the chat template of the original's fine-tunes (TinyLlama/recipes/llama-2/config_qlora_vicuna_processed.yaml l.22)
RECIPE_TEMPLATE = (
    "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + "
    "eos_token }}\n{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n"
    "{% endif %}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}"
)
# wrap_chat_template's output for USER (SQuAD/DROP pass it as a string, QuAC as a one-element list: the same)
LM_EVAL_PROMPTS = {
    "zephyr": f"<s><|system|>\n</s>\n<|user|>\n{USER}</s>\n<|assistant|>",
    "recipe": f"<|system|>\n</s>\n<|user|>\n{USER}</s>\n<|assistant|>",
}
# generate_until's cut at the QA tasks' until [". "] and the EOS text "</s>" (lm-eval column), and first_sentence
RESPONSES = {
    "The answer is 3.5 percent. It rose.": ("The answer is 3.5 percent", "The answer is 3.5 percent."),
    "Paris! The capital of France is Paris. ok": ("Paris! The capital of France is Paris", "Paris!"),
    "Who knows?\nIt was Denver Broncos. yes": ("Who knows?\nIt was Denver Broncos", "Who knows?"),
    "He won in 1998.\nThen 2001. again": ("He won in 1998.\nThen 2001", "He won in 1998."),
}


class ScriptedGenerator(Generator):
    """The transformers Generator with the forward pass replaced by `answer(prompt text)`."""

    def __init__(self, tokenizer, answer):
        super().__init__(None, tokenizer, 2048)
        self.answer, self.prompts = answer, []

    def _generate_batch(self, prompts, max_new_tokens, stops, temperatures=None, sampling=None):
        texts = [self.tokenizer.decode(p) for p in prompts]
        self.prompts += texts
        return [self.answer(text) for text in texts]


def _settings(**options) -> dict:
    return {"prompt_template": TEMPLATE, "metric": "containment", "max_new_tokens": 24, **options}


@pytest.mark.parametrize("template", ["zephyr", "recipe"])
def test_prompt_ending_lm_eval_is_lm_evals_chat_rendering_without_the_generation_prompts_newline(
    tiny_model_dir, template
):
    tokenizer = load_tokenizer(tiny_model_dir)
    tokenizer.chat_template = {"zephyr": ZEPHYR_TEMPLATE, "recipe": RECIPE_TEMPLATE}[template]
    prompts = {}
    for ending in ("generation_prompt", "lm_eval"):
        generator = ScriptedGenerator(tokenizer, lambda prompt: "Denver Broncos.")
        run_qa("squad", generator, _settings(prompt_ending=ending), True, [ITEM])
        prompts[ending] = generator.prompts[0]
    assert prompts["lm_eval"] == LM_EVAL_PROMPTS[template]
    assert prompts["generation_prompt"] == LM_EVAL_PROMPTS[template] + "\n"  # today's: the template's own
    ids = {
        e: ScriptedGenerator(tokenizer, None).encode_chat([{"role": "user", "content": USER}], ending=e)
        for e in prompts
    }
    assert ids["generation_prompt"][: len(ids["lm_eval"])] == ids["lm_eval"]  # only the last newline differs
    assert tokenizer.decode(ids["generation_prompt"][len(ids["lm_eval"]) :]) == "\n"


def test_an_unknown_prompt_ending_is_an_error(tiny_model_dir):
    with pytest.raises(ValueError, match="prompt ending 'newline'"):
        ScriptedGenerator(load_tokenizer(tiny_model_dir), None).encode_chat(
            [{"role": "user", "content": "q"}], ending="newline"
        )


@pytest.mark.parametrize("cut, column", [("lm_eval", 0), ("sentence", 1)])
def test_answer_cut_lm_eval_keeps_the_text_before_the_first_period_and_space(tiny_model_dir, cut, column):
    responses = list(RESPONSES)
    items = [{**ITEM, "id": str(i), "question": f"Question {i}?"} for i in range(len(responses))]

    def answer(prompt):
        return next(responses[i] for i, item in enumerate(items) if item["question"] in prompt)

    generator = ScriptedGenerator(load_tokenizer(tiny_model_dir), answer)
    _, records = run_qa("squad", generator, _settings(answer_cut=cut), False, items)
    assert [r["answer"] for r in records] == [RESPONSES[r][column] for r in responses]
    assert [r["response"] for r in records] == responses  # the whole response is kept either way
    # the gold follows a "?" and a newline: lm-eval's answer holds it, the first sentence does not
    assert records[2]["score"] == {"lm_eval": 1.0, "sentence": 0.0}[cut]


# a QuAC row in the hub's schema whose original answer ("It snowed") is not among its annotated answers
QUAC_ROW = {
    "dialogue_id": "C_1",
    "wikipedia_page_title": "Denver",
    "background": "A city.",
    "context": "It snowed in May. CANNOTANSWER",
    "questions": ["When did it snow?"],
    "answers": {"texts": [["in May"]], "answer_starts": [[3]]},
    "orig_answers": {"texts": ["It snowed"], "answer_starts": [0]},
}
# the original's QUAC.process_results(QUAC_ROW, [response])["contains"]
QUAC_CONTAINS = {"It snowed": 0, "in May": 1, "It snowed in May": 1}


@pytest.mark.parametrize("golds", ["answers", "answers_and_original"])
def test_quac_golds_answers_are_the_annotated_answers_the_original_scored(tiny_model_dir, tmp_path, golds):
    source = tmp_path / "quac.jsonl"
    source.write_text(json.dumps(QUAC_ROW) + "\n")
    settings = {**_settings(golds=golds), "source": str(source), "answer_cut": "lm_eval"}
    items = load_items("quac", settings)
    assert items[0]["golds"] == {"answers": ["in May"], "answers_and_original": ["in May", "It snowed"]}[golds]
    scores = {}
    for response in QUAC_CONTAINS:
        generator = ScriptedGenerator(load_tokenizer(tiny_model_dir), lambda prompt, r=response: r)
        scores[response] = run_qa("quac", generator, settings, False, items)[1][0]["score"]
    if golds == "answers":
        assert scores == {r: float(c) for r, c in QUAC_CONTAINS.items()}
    else:  # the original answer counts too
        assert scores == {r: 1.0 for r in QUAC_CONTAINS}


def test_quac_golds_is_an_error_on_other_tasks(tmp_path):
    with pytest.raises(ValueError, match="evaluation.squad.golds: 'answers' applies to QuAC only"):
        load_items("squad", {"source": str(ROOT / "resources/eval/squad.jsonl"), "golds": "answers"})


@pytest.mark.parametrize(
    "dtype, expected", [("auto", torch.bfloat16), ("bf16", torch.bfloat16), ("fp32", torch.float32)]
)
def test_dtype_is_the_precision_the_qa_model_is_loaded_in(tiny_model_dir, monkeypatch, dtype, expected):
    monkeypatch.setattr(modeling, "default_dtype", lambda device=None: torch.bfloat16)  # auto as on a GPU
    with generators(tiny_model_dir, dtype=dtype) as make:
        assert make(2048, None).model.dtype == expected


def load_tokenizer_stub():
    return type("Tokenizer", (), {"chat_template": ZEPHYR_TEMPLATE})()


@pytest.mark.parametrize("device_dtype", [torch.bfloat16, torch.float32])
def test_the_model_loads_once_per_precision_the_tasks_ask_for_each_with_its_own_cache(
    monkeypatch, tmp_path, device_dtype
):
    """On a GPU (auto is bf16) the fp32 tasks load the model apart; on a CPU auto is fp32, and one load serves all."""
    monkeypatch.setattr(modeling, "default_dtype", lambda device=None: device_dtype)
    loads, runs = [], []

    def load_model(path, dtype=None):
        loads.append(dtype)
        return torch.nn.Linear(1, 1).to(dtype or torch.float32), load_tokenizer_stub()

    def evaluate_task(task, generator, settings, with_indicator, inputs=None):
        runs.append((task, loads[-1], generator.cache.path.name))
        return {"score": 1.0, "n": 1}, []

    monkeypatch.setattr(evaluation, "load_model", load_model)
    monkeypatch.setattr(evaluation, "evaluate_task", evaluate_task)
    monkeypatch.setattr(evaluation, "load_task_inputs", lambda settings: dict.fromkeys(settings))
    settings = {
        "squad": {"batch_tokens": 64, "dtype": "fp32"},
        "nih": {"batch_tokens": 64},
        "drop": {"batch_tokens": 64, "dtype": "fp32"},
    }
    out = {task: str(tmp_path / f"{task}.json") for task in settings}
    gens = {task: str(tmp_path / f"{task}.jsonl") for task in settings}
    results = evaluate_all("model", settings, False, out, gens, cache_dir=str(tmp_path / "cache"))
    cpu = device_dtype == torch.float32
    assert loads == ([torch.float32] if cpu else [torch.float32, None])
    assert runs == [
        ("squad", torch.float32, "squad-fp32.jsonl"),
        *([("nih", torch.float32, "nih.jsonl")] if cpu else []),  # the default's cache file as before
        ("drop", torch.float32, "drop-fp32.jsonl"),
        *([] if cpu else [("nih", None, "nih.jsonl")]),
    ]
    assert list(results) == list(settings)


def test_a_fixed_dtype_on_vllm_is_an_error_naming_its_own_key():
    with pytest.raises(ValueError, match="evaluation.vllm.dtype"):
        with generators("model", {"backend": "vllm"}, dtype="fp32"):
            pass


def test_the_options_defaults_are_todays_procedure_and_stay_out_of_the_params():
    schema = yaml.safe_load((ROOT / "workflow/schemas/config.schema.yaml").read_text())
    options = schema["definitions"]["qa_task"]["properties"]
    assert {option: options[option]["default"] for option in PROCEDURE_DEFAULTS} == PROCEDURE_DEFAULTS
    default = plan_of().evaluation_settings("small", "sharegpt")
    assert not any(option in default[task] for task in QA_TASKS for option in PROCEDURE_DEFAULTS)
    original = {"prompt_ending": "lm_eval", "answer_cut": "lm_eval", "golds": "answers", "dtype": "fp32"}

    def choose(config):
        config["evaluation"]["quac"].update(original)
        config["diagnosis"] = {"pairs": {"p": {"base": "org/base", "instruct": "org/chat"}}}

    chosen = plan_of(change=choose)
    assert {option: chosen.evaluation_settings("small", "sharegpt")["quac"][option] for option in original} == original
    # steering loads its pair's models itself (in the default precision) and takes the other options as they are
    steering = chosen.steering_tasks("p")["quac"]
    assert "dtype" not in steering and steering["answer_cut"] == "lm_eval"


def test_nih_runs_in_the_models_precision_else_the_tasks_and_auto_stays_out_of_the_params(monkeypatch, tmp_path):
    """Issue 22 (b): the original ran NIH in bf16 for Llama-2/3 and in fp32 for the others, TinyLlama's fine-tunes
    among them (LLMTest_NeedleInAHaystack/HuggingfaceTester.py l.41-43 at context_awareness@124b797):
    evaluation.nih.dtype, and a model's own models.<m>.nih_dtype over it."""
    schema = yaml.safe_load((ROOT / "workflow/schemas/config.schema.yaml").read_text())
    assert schema["properties"]["evaluation"]["properties"]["nih"]["properties"]["dtype"]["default"] == "auto"
    assert "dtype" not in plan_of().evaluation_settings("small", "sharegpt")["nih"]  # the default's params as before

    def choose(config):
        config["evaluation"].update(tasks=["nih", "squad"], nih={"dtype": "bf16"})
        config["models"]["small"]["nih_dtype"] = "fp32"
        config["diagnosis"] = {"pairs": {"p": {"base": "org/base", "instruct": "org/chat"}}}

    chosen = plan_of(change=choose)
    settings = chosen.evaluation_settings("small", "sharegpt")
    assert settings["nih"]["dtype"] == "fp32" and "dtype" not in settings["squad"]
    assert chosen.evaluation_settings("big", "wizardlm")["nih"]["dtype"] == "bf16"  # the task's
    assert "dtype" not in chosen.diagnosis_nih("p")  # Section 2 loads its pairs itself, in the default precision
    assert (
        "dtype"
        not in plan_of(change=lambda c: c["models"]["small"].update(nih_dtype="auto")).evaluation_settings(
            "small", "sharegpt"
        )["nih"]
    )

    loads = []

    def load_model(path, dtype=None):
        loads.append(dtype)
        return torch.nn.Linear(1, 1).to(dtype or torch.float32), load_tokenizer_stub()

    monkeypatch.setattr(modeling, "default_dtype", lambda device=None: torch.bfloat16)  # auto as on a GPU
    monkeypatch.setattr(evaluation, "load_model", load_model)
    monkeypatch.setattr(evaluation, "evaluate_task", lambda *args, **kwargs: ({"score": 1.0, "n": 1}, []))
    monkeypatch.setattr(evaluation, "load_task_inputs", lambda settings: dict.fromkeys(settings))
    out = {task: str(tmp_path / f"{task}.json") for task in settings}
    gens = {task: str(tmp_path / f"{task}.jsonl") for task in settings}
    evaluate_all("model", settings, False, out, gens)
    assert loads == [torch.float32, None]  # NIH in fp32, SQuAD in the default (auto)
