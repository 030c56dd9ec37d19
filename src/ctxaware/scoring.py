"""Context-dependency score (paper Eq. 2) of every assistant turn, computed with a seed model.

s(Y_m) = mean over response tokens y of max over heads h of sum over user tokens x of Att_h(y, x), on one layer.
Fast path: the forward stops at the scored layer (layers below it run the fast attention kernel), and that
layer's attention probabilities are formed only for response rows. `reference_scores` is the brute-force
`output_attentions=True` computation the fast path is tested against.
"""

from __future__ import annotations

import math
import sys
import weakref
from dataclasses import dataclass

import pandas as pd
import torch

from ctxaware.batching import token_budget_batches
from ctxaware.chat import encode_with_spans, token_length

SCORE_COLUMNS = ["conversation_id", "turn", "score", "n_response_tokens", "truncated"]  # the contract
RECORD_COLUMNS = [*SCORE_COLUMNS, "n_instruction_tokens"]


@dataclass
class Turn:
    index: int  # 0-based index among the conversation's assistant turns
    rows: list[int]  # token positions whose attention is averaged
    truncated: bool
    n_instruction_tokens: int  # content tokens of the user message this turn answers (Figure 6)


@dataclass
class Plan:
    conversation_id: str
    input_ids: list[int]
    user_mask: list[bool]  # columns that count as user context (causality limits each row to turns 1..m)
    turns: list[Turn]


_SEPARATORS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _separator_ids(tokenizer) -> set[int]:
    """Newline, BOS and EOS token ids: the original excluded them from the user set.

    Found once per tokenizer over its vocabulary, not once per conversation (datasets have ~10^5 of them).
    """
    if tokenizer not in _SEPARATORS:
        texts = {i: tokenizer.decode([i]) for i in range(len(tokenizer))}
        newline = {i for i, text in texts.items() if "\n" in text and not text.strip()}
        _SEPARATORS[tokenizer] = (newline | {tokenizer.bos_token_id, tokenizer.eos_token_id}) - {None}
    return _SEPARATORS[tokenizer]


TRUNCATION_MODES = ("none", "original")


def _original_scored_turns(spans, n: int) -> dict[int, bool]:
    """The assistant turns the original scored in a window of n tokens (analyse_dataset/utils.py@124b797
    l.63-77), each with whether its rows ran to the window's end. It matched whole header token sequences, paired
    each visible response but the last with the next user header (zip(response[:-1], human[1:])), and scored the
    last visible response, to the window's end (`[response_start:]`), only when no user header follows it: a
    response header cut by the window hides its turn, and the last complete response before a whole user header
    is dropped too."""
    assistants = [span for span in spans if span.role == "assistant"]
    visible = [k for k, span in enumerate(assistants) if span.start <= n]  # the whole header is in the window
    if not visible:
        return {}
    last = assistants[visible[-1]]
    user_header_after = any(span.role == "user" and last.start < span.start <= n for span in spans)
    scored = dict.fromkeys(visible[:-1], False)
    if not user_header_after:
        scored[visible[-1]] = True
    return scored


def plan_conversation(
    tokenizer, conversation: dict, max_length: int, compat: str = "none", truncation: str = "none"
) -> Plan:
    """Token ids, user columns and response rows of one conversation.

    compat="none": user = user-message content tokens; response = assistant content tokens.
    compat="original", as the original implementation counted them (it matched the header token sequences and
    zeroed them): user = the system and user segments without their headers, minus newline/BOS/EOS tokens;
    response = the assistant segment without its header, i.e. the content and the closing up to the next
    header (Zephyr: eos and newline).

    truncation="none": a response the window (max_length) cuts has no rows (its score is NaN).
    truncation="original", as the original scored a truncated conversation (`_original_scored_turns`): a cut
    response scores its visible tokens (under compat="original" the last scored response runs to the window's end,
    a cut next user header included, as the original's `[response_start:]`), and the last complete response
    before a whole user header with no response header after it has no rows. The user columns are compat's: the
    original's differ only after its last scored row (cut headers at the window's end), where no scored row sees
    them. Not reproduced: where no response is left, the original gave turn 0 the score -1 (utils.py l.131-132);
    here every turn is NaN.
    """
    if truncation not in TRUNCATION_MODES:
        raise ValueError(f"scoring truncation {truncation!r} is not one of {TRUNCATION_MODES}")
    encoded = encode_with_spans(tokenizer, conversation["messages"], max_length=max_length)
    n = len(encoded.input_ids)
    user_mask = [False] * n
    excluded = _separator_ids(tokenizer) if compat == "original" else set()
    scored = _original_scored_turns(encoded.spans, n) if truncation == "original" else None
    turns: list[Turn] = []
    instruction_tokens = 0
    for span in encoded.spans:
        # the original's spans run from the content to the next header; ours are the content alone
        end = span.segment_end if compat == "original" else span.end
        if span.role == "user":
            instruction_tokens = span.end - span.start
        if span.role == "user" or (compat == "original" and span.role == "system"):
            for position in range(span.start, min(end, n)):
                if encoded.input_ids[position] not in excluded:
                    user_mask[position] = True
        elif span.role == "assistant":
            index, truncated = len(turns), end > n
            if scored is None:
                rows = [] if truncated else list(range(span.start, end))
            elif index not in scored:
                rows = []
            else:  # the original's segment of the last visible response ran to the window's end
                stop = n if compat == "original" and scored[index] else min(end, n)
                rows = list(range(span.start, stop))
            turns.append(Turn(index, rows, truncated, instruction_tokens))
    return Plan(str(conversation["id"]), encoded.input_ids, user_mask, turns)


class _StopForward(Exception):
    pass


def _capture_layer_inputs(model, input_ids, attention_mask, layers: list[int]) -> dict:
    """Run the decoder only up to the deepest requested layer; return each layer's input hidden states."""
    decoder = model.get_decoder()
    captured = {}
    deepest = max(layers)

    def hook_for(layer_index):
        def hook(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            captured[layer_index] = (hidden, kwargs["position_embeddings"])
            if layer_index == deepest:
                raise _StopForward

        return hook

    handles = [decoder.layers[i].register_forward_pre_hook(hook_for(i), with_kwargs=True) for i in sorted(set(layers))]
    try:
        decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    except _StopForward:
        pass
    finally:
        for handle in handles:
            handle.remove()
    return captured


def _queries_and_keys(layer, hidden, position_embeddings):
    """Post-RoPE queries (B, H, T, D) and keys repeated to H heads (grouped-query attention)."""
    attention = layer.self_attn
    normed = layer.input_layernorm(hidden)
    batch, length, _ = normed.shape
    head_dim = attention.head_dim
    queries = attention.q_proj(normed).view(batch, length, -1, head_dim)
    keys = attention.k_proj(normed).view(batch, length, -1, head_dim)
    if hasattr(attention, "q_norm"):  # Qwen3-style per-head norms come before RoPE
        queries, keys = attention.q_norm(queries), attention.k_norm(keys)
    queries, keys = queries.transpose(1, 2), keys.transpose(1, 2)
    apply_rotary = sys.modules[type(attention).__module__].apply_rotary_pos_emb
    cos, sin = position_embeddings
    queries, keys = apply_rotary(queries, keys, cos, sin)
    repeat = queries.shape[1] // keys.shape[1]
    return queries, keys.repeat_interleave(repeat, dim=1), attention.scaling


def user_mass_per_row(queries, keys, scaling, rows, user_mask) -> torch.Tensor:
    """max over heads of the attention mass on user columns, for the given query rows of one sequence."""
    length = user_mask.shape[0]
    logits = torch.einsum("hrd,hkd->hrk", queries[:, rows].float(), keys[:, :length].float()) * scaling
    causal = torch.arange(length, device=rows.device)[None, :] > rows[:, None]
    logits = logits.masked_fill(causal[None], float("-inf"))
    probabilities = torch.softmax(logits, dim=-1)
    return (probabilities * user_mask[None, None].float()).sum(-1).amax(dim=0)


def shard_batches(
    tokenizer, conversations: list[dict], max_length: int, batch_tokens: int, shard: int = 0, n_shards: int = 1
) -> list[list[int]]:
    """This shard's batches (conversation indices): token-budget batches formed over all conversations, dealt to
    shards round-robin. Batching needs only each conversation's plan length, which is computed without building
    its plan, so a shard builds the plans of its own batches alone."""
    lengths = [token_length(tokenizer, c["messages"], max_length) for c in conversations]
    return token_budget_batches(lengths, batch_tokens)[shard::n_shards]


@torch.inference_mode()
def score_plans(
    model,
    plans: list[Plan],
    layers: list[int],
    batch_tokens: int,
    pad_token_id: int,
    shard: int = 0,
    n_shards: int = 1,
) -> list[dict]:
    """Scores of every assistant turn for each layer: records with a `layer` field.

    Batches are formed over all plans and then dealt to shards, so a conversation is computed in the same
    batch whatever the number of shards: gathered shards equal one-shard scoring bit for bit.
    """
    records = []
    for batch in token_budget_batches([len(p.input_ids) for p in plans], batch_tokens)[shard::n_shards]:
        records += score_batch(model, [plans[i] for i in batch], layers, pad_token_id)
    return records


@torch.inference_mode()
def score_batch(model, members: list[Plan], layers: list[int], pad_token_id: int) -> list[dict]:
    """The records of one batch of plans, computed in one padded forward."""
    device = next(model.parameters()).device
    records = []
    longest = max(len(p.input_ids) for p in members)
    input_ids = torch.full((len(members), longest), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(members), longest), dtype=torch.long)
    for row, plan in enumerate(members):  # right padding keeps positions 0..n-1 for every sequence
        input_ids[row, : len(plan.input_ids)] = torch.tensor(plan.input_ids)
        attention_mask[row, : len(plan.input_ids)] = 1
    captured = _capture_layer_inputs(model, input_ids.to(device), attention_mask.to(device), layers)
    decoder = model.get_decoder()
    for layer_index in layers:
        hidden, position_embeddings = captured[layer_index]
        queries, keys, scaling = _queries_and_keys(decoder.layers[layer_index], hidden, position_embeddings)
        for row, plan in enumerate(members):
            user_mask = torch.tensor(plan.user_mask, device=device)
            all_rows = [q for turn in plan.turns for q in turn.rows]
            masses = (
                user_mass_per_row(
                    queries[row], keys[row], scaling, torch.tensor(all_rows, device=device), user_mask
                ).tolist()
                if all_rows
                else []
            )
            offset = 0
            for turn in plan.turns:
                values = masses[offset : offset + len(turn.rows)]
                offset += len(turn.rows)
                records.append(_record(plan, turn, layer_index, values))
    return records


def _record(plan: Plan, turn: Turn, layer: int, values: list[float]) -> dict:
    return {
        "conversation_id": plan.conversation_id,
        "turn": turn.index,
        "layer": layer,
        "score": float(sum(values) / len(values)) if values else math.nan,
        "n_response_tokens": len(turn.rows),
        "truncated": turn.truncated,
        "n_instruction_tokens": turn.n_instruction_tokens,
    }


def score_conversations(
    model,
    tokenizer,
    conversations: list[dict],
    layers: list[int],
    max_length: int = 2047,
    compat: str = "none",
    batch_tokens: int = 16384,
    shard: int = 0,
    n_shards: int = 1,
    truncation: str = "none",
) -> pd.DataFrame:
    """Long table: one row per (assistant turn, layer) of this shard's conversations, in the conversations'
    order (`conversation_index` keeps that order across shards). Plans are built one batch at a time, for this
    shard's batches only (`shard_batches`), so memory does not grow with the dataset's plans; the batches are
    those of one-shard scoring, so gathered shards equal it bit for bit."""
    n_layers = len(model.get_decoder().layers)
    bad = [layer for layer in layers if not 0 <= layer < n_layers]
    if bad:
        raise ValueError(f"scoring layer(s) {bad} out of range: the seed model has {n_layers} layers")
    records = []
    for batch in shard_batches(tokenizer, conversations, max_length, batch_tokens, shard, n_shards):
        members = [plan_conversation(tokenizer, conversations[i], max_length, compat, truncation) for i in batch]
        records += score_batch(model, members, layers, tokenizer.pad_token_id)
    order = {str(c["id"]): i for i, c in enumerate(conversations)}
    frame = pd.DataFrame.from_records(records, columns=[*RECORD_COLUMNS, "layer"])
    frame.insert(0, "conversation_index", frame["conversation_id"].map(order).astype("int64"))
    return frame.sort_values(["conversation_index", "turn", "layer"], kind="stable").reset_index(drop=True)


@torch.inference_mode()
def reference_scores(
    model, tokenizer, conversations, layer, max_length=2047, compat="none", truncation="none"
) -> list[float]:
    """Brute force: full forward with output_attentions (eager model), one conversation at a time."""
    device = next(model.parameters()).device
    scores = []
    for conversation in conversations:
        plan = plan_conversation(tokenizer, conversation, max_length, compat, truncation)
        output = model(torch.tensor([plan.input_ids], device=device), output_attentions=True)
        attention = output.attentions[layer][0].float()  # (heads, T, T)
        user = torch.tensor(plan.user_mask, device=device)
        for turn in plan.turns:
            if not turn.rows:
                scores.append(math.nan)
                continue
            mass = attention[:, turn.rows][:, :, user].sum(-1).amax(dim=0)
            scores.append(float(mass.mean()))
    return scores


def score_file(
    seed_model: str,
    data_parquet: str,
    out_parquet: str,
    layer: int,
    max_length: int = 2047,
    compat: str = "none",
    batch_tokens: int = 16384,
    shard: int = 0,
    n_shards: int = 1,
    truncation: str = "none",
) -> pd.DataFrame:
    """Score (one shard of) a prepared dataset with the seed model on one layer: the contract table (one row per
    assistant turn), plus `conversation_index`, which orders the shards' rows, and n_instruction_tokens."""
    from ctxaware.data import read_conversations
    from ctxaware.modeling import load_model

    model, tokenizer = load_model(seed_model, attn_implementation="sdpa")
    conversations = read_conversations(data_parquet)
    long = score_conversations(
        model, tokenizer, conversations, [layer], max_length, compat, batch_tokens, shard, n_shards, truncation
    )
    table = long[["conversation_index", *RECORD_COLUMNS]]
    table.to_parquet(out_parquet, index=False)
    print(
        f"shard {shard + 1}/{n_shards}: scored {len(table)} assistant turns of {len(conversations)} conversations; "
        f"{int(table['truncated'].sum())} truncated; mean score {table['score'].mean():.4f}"
    )
    return table


def gather_scores(shard_parquets: list[str], out_parquet: str) -> pd.DataFrame:
    """Shards back in the conversations' order: the same table one-shard scoring writes."""
    frame = pd.concat([pd.read_parquet(path) for path in shard_parquets], ignore_index=True)
    frame = frame.sort_values(["conversation_index", "turn"], kind="stable").drop(columns="conversation_index")
    frame = frame.reset_index(drop=True)
    frame.to_parquet(out_parquet, index=False)
    return frame
