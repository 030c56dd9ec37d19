"""Needle in a haystack (design.md §3): a needle at a sentence boundary in a haystack of a given token length."""

from __future__ import annotations

from pathlib import Path

# The paper's Table 8: the four NIH prompt templates. The first is the original code's (design.md §3) and the one
# behind the paper's main results; the table's text lost its line breaks, so the other three take the first's
# (context on its own line, a blank line before the question).
NIH_TEMPLATES = {
    "assistant-document": "You are a helpful AI assistant that answers a question using only the provided document: "
    "\n{context}\n\nQuestion: {question}",
    "assistant-context": "You are a helpful AI assistant that answers a question using only the provided context: "
    "\n{context}\n\nQuestion: {question}",
    "document": "Document: \n{context}\n\nAnswer the question according to the provided document: {question}",
    "context": "Context: \n{context}\n\nAnswer the question according to the provided context: {question}",
}
DEFAULT_TEMPLATE = "assistant-document"


def resolve_template(value: str, key: str = "evaluation.nih.prompt_template") -> str:
    """A Table 8 template by name, or a literal template holding {context} and {question}."""
    if value in NIH_TEMPLATES:
        return NIH_TEMPLATES[value]
    missing = [field for field in ("{context}", "{question}") if field not in value]
    if missing:
        raise ValueError(
            f"config key {key}: {value!r} is neither a named template ({', '.join(NIH_TEMPLATES)}) "
            f"nor a template with {' and '.join(missing)}"
        )
    return value


def load_haystack(directory: str) -> str:
    """Concatenation of the directory's .txt files in sorted order (the original read Paul Graham's essays)."""
    files = sorted(Path(directory).glob("*.txt"))
    if not files:
        raise FileNotFoundError(f"NIH haystack directory {directory} has no .txt files")
    return "".join(f.read_text(encoding="utf-8") for f in files)


def grid(min_length: int, max_length: int, n_lengths: int, n_depths: int) -> tuple[list[int], list[int]]:
    """round(linspace(min, max, n)) context lengths and round(linspace(0, 100, n)) depth percents."""
    import numpy as np  # imported here: the Snakefile imports this module for its templates, numpy-free

    lengths = np.round(np.linspace(min_length, max_length, n_lengths)).astype(int).tolist()
    depths = np.round(np.linspace(0, 100, n_depths)).astype(int).tolist()
    return lengths, depths


def sentence_end_ids(tokenizer, ids: list[int]) -> set[int]:
    """Token ids that end a sentence (their text ends with a period): insertion points for the needle."""
    return {i for i in set(ids) if tokenizer.decode([i]).rstrip().endswith(".")}


def insert_needle(
    haystack_ids: list[int], needle_ids: list[int], length: int, depth_percent: int, period_ids: set[int]
) -> list[int]:
    """Context of `length` tokens (needle included) with the needle after the sentence end nearest before depth."""
    context = haystack_ids[: max(0, length - len(needle_ids))]
    if len(context) < length - len(needle_ids):
        raise ValueError(f"haystack has {len(haystack_ids)} tokens, fewer than the {length} the NIH grid needs")
    # unlike the original (which appended the needle mid-sentence at 100%), every depth backs up to a boundary
    point = int(len(context) * min(depth_percent, 100) / 100)
    while point > 0 and context[point - 1] not in period_ids:  # back up to a sentence boundary
        point -= 1
    return context[:point] + needle_ids + context[point:]


def build_cases(tokenizer, settings: dict, max_context: int) -> list[dict]:
    """One case per grid cell: length, depth and the user message with the needle placed."""
    haystack_ids = tokenizer(load_haystack(settings["haystack_dir"]), add_special_tokens=False)["input_ids"]
    needle_ids = tokenizer(" " + settings["needle"].strip() + " ", add_special_tokens=False)["input_ids"]
    period_ids = sentence_end_ids(tokenizer, haystack_ids)
    lengths, depths = grid(settings["min_context"], max_context, settings["n_lengths"], settings["n_depths"])
    template = resolve_template(settings["prompt_template"])
    cases = []
    for length in lengths:
        for depth in depths:
            context_ids = insert_needle(haystack_ids, needle_ids, length, depth, period_ids)
            context = tokenizer.decode(context_ids)
            prompt = template.format(context=context, question=settings["question"])
            cases.append({"id": f"len{length}-depth{depth}", "length": length, "depth": depth, "prompt": prompt})
    return cases
