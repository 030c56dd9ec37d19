"""Evaluation tasks: each builds chat prompts and scores the generations.

TASKS is the one list of them (evaluation, wildcards, Table 4's columns); the schema's enum of
`evaluation.tasks` is checked against it by the tests."""

QA_TASKS = ("squad", "quac", "drop")
CONTEXT_TASKS = ("nih", *QA_TASKS)  # Table 4's avg is their mean
TASKS = (*CONTEXT_TASKS, "mtbench")

# Options of a QA task (dtype: of NIH too) that select the original's evaluation procedure (lm-eval and
# HuggingfaceTester.py in YihanWang617/context_awareness) one by one; each default is this package's own procedure.
# A task's settings carry an option only when it departs from its default, so default runs keep their params and
# result files as they were before the options existed.
PROCEDURE_DEFAULTS = {
    "prompt_ending": "generation_prompt",
    "answer_cut": "sentence",
    "golds": "answers_and_original",
    "dtype": "auto",
}
