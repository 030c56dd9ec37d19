"""Token-budget batching, shared by the scorer and the generation engine (standard library only)."""

from __future__ import annotations


def token_budget_batches(lengths: list[int], batch_tokens: int, order: list[int] | None = None) -> list[list[int]]:
    """Indices grouped so that (longest sequence x batch size) stays within the budget, over length-sorted input
    (or consecutive runs of `order`)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i]) if order is None else order
    batches, current, longest = [], [], 0
    for index in order:
        longest_if_added = max(longest, lengths[index])
        if current and longest_if_added * (len(current) + 1) > batch_tokens:
            batches.append(current)
            current, longest_if_added = [], lengths[index]
        current.append(index)
        longest = longest_if_added
    if current:
        batches.append(current)
    return batches
