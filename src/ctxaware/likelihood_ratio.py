"""Likelihood-ratio context-dependency score of every assistant turn, computed with a seed model.

s(Y_m) = mean NLL of the response given its instruction alone - mean NLL of the response given its context,
in nats per response token; `ctxaware.without_context` defines both inputs. Larger means the context makes the
response more likely, i.e. more context-dependent, as with the attention score (Eq. 2); a turn with no context to
remove scores exactly 0 and is marked `no_context`. The mean per token, not the sum, keeps short and long
responses on one scale (as Eq. 2's mean over response tokens does), so a quantile over turns is not a ranking by
response length.

Both inputs are rendered, tokenized and truncated as the attention scorer does it (`scoring.plan_conversation`:
the same template, max_length and `truncated` flag); the response tokens are the assistant content tokens (the
attention scorer's rows; its `compat` quirks concern Eq. 2 only). With the context, every turn of a conversation
comes from one forward over the whole conversation (causal: turn m's response sees exactly the conversation up
to it); without it, from one sequence per turn. Only the logits of response tokens are formed.
"""

from __future__ import annotations

import math

import pandas as pd
import torch

from ctxaware.batching import token_budget_batches
from ctxaware.scoring import RECORD_COLUMNS, plan_conversation, shard_batches
from ctxaware.without_context import without_context

LR_COLUMNS = [*RECORD_COLUMNS, "no_context"]  # the score table's columns, and the turns tagging never selects


@torch.inference_mode()
def mean_nlls(model, sequences: list[tuple[list[int], list[list[int]]]], batch_tokens: int, pad_token_id: int):
    """For each (token ids, row sets) sequence, the mean negative log-likelihood of the tokens at each row set
    given the tokens before them (NaN for an empty set), in token-budget batches with right padding."""
    device = next(model.parameters()).device
    decoder, head = model.get_decoder(), model.get_output_embeddings()
    softcap = getattr(model.config, "final_logit_softcapping", None)  # Gemma-2 caps its logits
    results: list[list[float]] = [[] for _ in sequences]
    for batch in token_budget_batches([len(ids) for ids, _ in sequences], batch_tokens):
        longest = max(len(sequences[i][0]) for i in batch)
        input_ids = torch.full((len(batch), longest), pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), longest), dtype=torch.long)
        for row, index in enumerate(batch):
            ids = sequences[index][0]
            input_ids[row, : len(ids)] = torch.tensor(ids)
            attention_mask[row, : len(ids)] = 1
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        hidden = decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
        for row, index in enumerate(batch):
            row_sets = sequences[index][1]
            positions = torch.tensor([p for rows in row_sets for p in rows], dtype=torch.long, device=device)
            if positions.numel() and int(positions.min()) < 1:
                raise ValueError("a response token at position 0 has no context to be predicted from")
            logits = head(hidden[row, positions - 1]).float()  # the logits at p - 1 predict the token at p
            if softcap:
                logits = torch.tanh(logits / softcap) * softcap
            nll = -torch.log_softmax(logits, dim=-1).gather(-1, input_ids[row, positions][:, None])[:, 0]
            offset = 0
            for rows in row_sets:
                values = nll[offset : offset + len(rows)]
                offset += len(rows)
                results[index].append(float(values.mean()) if len(rows) else math.nan)
    return results


def score_conversations(
    model,
    tokenizer,
    conversations: list[dict],
    max_length: int = 2047,
    batch_tokens: int = 16384,
    shard: int = 0,
    n_shards: int = 1,
    instruction: str = "last_turn",
    split: str | None = None,
) -> pd.DataFrame:
    """One row per assistant turn of this shard's conversations, in the conversations' order
    (`conversation_index` keeps that order across shards).

    Conversations are batched as the attention scorer batches them, and those batches are dealt to shards; a
    batch's turns without their context are batched among themselves. Every computation thus depends on its
    batch alone, never on the number of shards: gathered shards equal one-shard scoring bit for bit. A shard
    builds the plans of its own batches only, one batch at a time (`scoring.shard_batches`).
    """
    pad = tokenizer.pad_token_id
    records = []
    for batch in shard_batches(tokenizer, conversations, max_length, batch_tokens, shard, n_shards):
        members = [plan_conversation(tokenizer, conversations[i], max_length) for i in batch]
        with_context = mean_nlls(model, [(p.input_ids, [t.rows for t in p.turns]) for p in members], batch_tokens, pad)
        alone, inputs_of = [], {}  # the scored turns' inputs without their context
        for member, index in enumerate(batch):
            inputs = without_context(conversations[index]["messages"], instruction, split)
            inputs_of[member] = inputs
            for turn, messages in zip(members[member].turns, inputs, strict=True):
                if messages is not None and turn.rows:
                    conversation = {"id": members[member].conversation_id, "messages": messages}
                    alone.append(((member, turn.index), plan_conversation(tokenizer, conversation, max_length)))
        nlls = mean_nlls(model, [(plan.input_ids, [plan.turns[-1].rows]) for _, plan in alone], batch_tokens, pad)
        without = {key: (plan.turns[-1], nll[0]) for (key, plan), nll in zip(alone, nlls, strict=True)}
        for member, plan in enumerate(members):
            for turn, nll, messages in zip(plan.turns, with_context[member], inputs_of[member], strict=True):
                alone_turn, alone_nll = without.get((member, turn.index), (None, math.nan))
                truncated = turn.truncated or (alone_turn is not None and alone_turn.truncated)
                if truncated or not turn.rows:
                    score = math.nan
                elif messages is None:
                    score = 0.0  # nothing removed: the two inputs are one
                else:
                    score = alone_nll - nll
                records.append(
                    {
                        "conversation_id": plan.conversation_id,
                        "turn": turn.index,
                        "score": score,
                        "n_response_tokens": len(turn.rows),
                        "truncated": truncated,
                        "n_instruction_tokens": turn.n_instruction_tokens,
                        "no_context": messages is None,
                    }
                )
    order = {str(c["id"]): i for i, c in enumerate(conversations)}
    frame = pd.DataFrame.from_records(records, columns=LR_COLUMNS)
    frame.insert(0, "conversation_index", frame["conversation_id"].map(order).astype("int64"))
    return frame.sort_values(["conversation_index", "turn"], kind="stable").reset_index(drop=True)


def score_file(
    seed_model: str,
    data_parquet: str,
    out_parquet: str,
    instruction: str = "last_turn",
    split: str | None = None,
    max_length: int = 2047,
    batch_tokens: int = 16384,
    shard: int = 0,
    n_shards: int = 1,
) -> pd.DataFrame:
    """Score (one shard of) a prepared dataset: the contract table (one row per assistant turn, with
    `no_context`), plus `conversation_index`, which orders the shards' rows."""
    from ctxaware.data import read_conversations
    from ctxaware.modeling import load_model

    model, tokenizer = load_model(seed_model, attn_implementation="sdpa")
    conversations = read_conversations(data_parquet)
    table = score_conversations(
        model, tokenizer, conversations, max_length, batch_tokens, shard, n_shards, instruction, split
    )
    table.to_parquet(out_parquet, index=False)
    print(
        f"shard {shard + 1}/{n_shards}: likelihood ratio of {len(table)} assistant turns of {len(conversations)} "
        f"conversations; {int(table['truncated'].sum())} truncated, {int(table['no_context'].sum())} without context "
        f"to remove; mean score {table['score'].mean():.4f}"
    )
    return table
