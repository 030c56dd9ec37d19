"""Evaluation tasks: each builds chat prompts and scores the generations."""
