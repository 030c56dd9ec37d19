"""Evaluation tasks: each builds chat prompts and scores the generations.

TASKS is the one list of them (evaluation, wildcards, Table 4's columns); the schema's enum of
`evaluation.tasks` is checked against it by the tests."""

QA_TASKS = ("squad", "quac", "drop")
CONTEXT_TASKS = ("nih", *QA_TASKS)  # Table 4's avg is their mean
TASKS = (*CONTEXT_TASKS, "mtbench")
