import copy
import re

import pytest

from ctxaware.methods import (
    METHOD_PATTERN,
    TAGGING_PATTERN,
    Tagging,
    Threshold,
    canonical_number,
    check_methods,
    parse_method,
    parse_tagging,
    training_recipe,
)

RECIPE = {
    "finetuning": "full",
    "learning_rate": 2e-5,
    "epochs": 1,
    "lora": {"r": 16, "alpha": 16, "dropout": 0.05, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]},
    "qk_lora": {"target_modules": ["q_proj", "k_proj"], "learning_rate": 2e-4},
}


@pytest.mark.parametrize(
    ("name", "threshold", "score", "qk_lora", "branch"),
    [
        ("vanilla", None, None, False, "vanilla"),
        ("indicator-0.6", ("beta", 0.6, "0.6"), "attention", False, "indicator-0.6"),
        ("indicator-1", ("beta", 1.0, "1"), "attention", False, "indicator-1"),
        ("indicator-10.25", ("beta", 10.25, "10.25"), "attention", False, "indicator-10.25"),
        ("qk-lora", None, None, True, "vanilla"),
        ("qk-lora-indicator-0.7", ("beta", 0.7, "0.7"), "attention", True, "indicator-0.7"),
        ("indicator-q0.3", ("quantile", 0.3, "q0.3"), "attention", False, "indicator-q0.3"),
        ("indicator-q1", ("quantile", 1.0, "q1"), "attention", False, "indicator-q1"),
        ("indicator-lr-q0.3", ("quantile", 0.3, "q0.3"), "likelihood_ratio", False, "indicator-lr-q0.3"),
        ("qk-lora-indicator-lr-0.5", ("beta", 0.5, "0.5"), "likelihood_ratio", True, "indicator-lr-0.5"),
        ("qk-lora-indicator-q0.25", ("quantile", 0.25, "q0.25"), "attention", True, "indicator-q0.25"),
    ],
)
def test_parse_method(name, threshold, score, qk_lora, branch):
    method = parse_method(name)
    assert (method.name, method.qk_lora, method.data_branch, method.score) == (name, qk_lora, branch, score)
    assert method.with_indicator == (threshold is not None)
    expected = None if threshold is None else Threshold(*threshold)
    assert method.threshold == expected
    assert method.tagging == (None if threshold is None else Tagging(score, expected))
    assert bool(re.fullmatch(METHOD_PATTERN, name))  # the wildcard constraint accepts what the parser does
    if method.tagging:  # the tagging job reads its wildcard back into the same tagging
        text = branch.removeprefix("indicator-")
        assert method.tagging.text == text and parse_tagging(text) == method.tagging
        assert re.fullmatch(TAGGING_PATTERN, text)
    # the name is rebuilt from its parts: one name per (training, branch)
    rebuilt = ("qk-lora-" if qk_lora else "") + branch if threshold else ("qk-lora" if qk_lora else "vanilla")
    assert rebuilt == name


@pytest.mark.parametrize(
    "name",
    [
        "indicator",
        "indicator-",
        "qk-lora-vanilla",
        "lora",
        "indicator-0.6-qk-lora",
        "indicator-.6",
        "Vanilla",
        "indicator-lr",
        "indicator-lr-",
        "indicator-lrq0.3",
        "indicator-q-0.3",
        "indicator-qq0.3",
        "indicator-lr-lr-0.3",
        "indicator-x0.3",
        "lr-indicator-0.6",
        "indicator-attention-0.6",
    ],
)
def test_unknown_methods_are_refused_by_name(name):
    with pytest.raises(ValueError, match=f"^method '{re.escape(name)}': expected vanilla, indicator-<threshold>, "):
        parse_method(name)
    assert not re.fullmatch(METHOD_PATTERN, name)


@pytest.mark.parametrize(
    ("written", "canonical"),
    [
        ("indicator-0.60", "indicator-0.6"),
        ("indicator-00.6", "indicator-0.6"),
        ("qk-lora-indicator-1.0", "qk-lora-indicator-1"),
        ("indicator-010", "indicator-10"),
        ("indicator-0.0", "indicator-0"),
        ("indicator-q0.30", "indicator-q0.3"),
        ("indicator-q00.3", "indicator-q0.3"),
        ("indicator-lr-q0.30", "indicator-lr-q0.3"),
        ("qk-lora-indicator-lr-1.50", "qk-lora-indicator-lr-1.5"),
        ("indicator-q1.0", "indicator-q1"),
    ],
)
def test_a_beta_has_one_spelling(written, canonical):
    """`indicator-0.60` would train the branch of `indicator-0.6` a second time under another path."""
    with pytest.raises(ValueError, match=f"^method '{written}': write it '{canonical}' "):
        parse_method(written)
    assert not re.fullmatch(METHOD_PATTERN, written) and re.fullmatch(METHOD_PATTERN, canonical)
    with pytest.raises(ValueError, match=f"^config key methods: method '{written}': write it '{canonical}'"):
        check_methods(["vanilla", canonical, written])


def test_check_methods_parses_every_method_and_names_the_config_key():
    assert [m.name for m in check_methods(["vanilla", "qk-lora-indicator-0.6"])] == ["vanilla", "qk-lora-indicator-0.6"]
    with pytest.raises(ValueError, match=r"^config key methods: method 'lora': expected "):
        check_methods(["vanilla", "lora"])


@pytest.mark.parametrize(
    ("text", "canonical"), [("0.6", "0.6"), ("0.60", "0.6"), ("00", "0"), ("2.000", "2"), ("12.50", "12.5")]
)
def test_canonical_number(text, canonical):
    assert canonical_number(text) == canonical


def test_taggings_as_the_tagging_rule_reads_them():
    assert parse_tagging("0.6") == Tagging("attention", Threshold("beta", 0.6, "0.6"))
    assert parse_tagging("lr-q0.3") == Tagging("likelihood_ratio", Threshold("quantile", 0.3, "q0.3"))
    assert parse_tagging("lr-q0.3").threshold.number == "0.3" and parse_tagging("2.5").threshold.number == "2.5"
    assert re.fullmatch(TAGGING_PATTERN, "0.6") and not re.fullmatch(TAGGING_PATTERN, "0.60")
    assert re.fullmatch(TAGGING_PATTERN, "lr-q0.3") and not re.fullmatch(TAGGING_PATTERN, "lr-q0.30")
    with pytest.raises(ValueError, match=r"^tagging '0.60': write it '0.6' "):
        parse_tagging("0.60")
    with pytest.raises(ValueError, match=r"^tagging 'lr-0.50': write it 'lr-0.5' "):
        parse_tagging("lr-0.50")
    with pytest.raises(ValueError, match=r"^tagging 'high': expected a threshold such as 0.6 or q0.3, after lr- "):
        parse_tagging("high")
    with pytest.raises(ValueError, match=r"^tagging 'lr-': expected "):
        parse_tagging("lr-")


@pytest.mark.parametrize("name", ["indicator-q1.5", "indicator-lr-q2", "qk-lora-indicator-q1.01"])
def test_a_quantile_is_at_most_one(name):
    """A quantile is the share of turns to tag; above 1 it would tag more turns than there are."""
    with pytest.raises(ValueError, match=r"^config key methods: method '.*': quantile 'q[0-9.]+': at most 1 \(the "):
        check_methods([name])
    assert parse_method(name.replace("q1.5", "q1").replace("q2", "q1").replace("q1.01", "q1")).threshold.value == 1


def test_a_beta_on_either_score_is_not_bounded():
    assert parse_method("indicator-lr-2.5").threshold == Threshold("beta", 2.5, "2.5")
    assert parse_method("indicator-2").threshold == Threshold("beta", 2.0, "2")


def test_qk_lora_trains_only_query_and_key_with_lora():
    original = copy.deepcopy(RECIPE)
    recipe = training_recipe(RECIPE, "qk-lora-indicator-0.6")
    assert recipe["finetuning"] == "lora" and recipe["lora"]["target_modules"] == ["q_proj", "k_proj"]
    assert recipe["learning_rate"] == 2e-4 and recipe["lora"]["r"] == 16 and recipe["epochs"] == 1
    assert RECIPE == original  # the model's recipe itself is untouched
    assert training_recipe(RECIPE, "indicator-0.6") is RECIPE


def test_qk_lora_on_a_qlora_recipe_stays_4bit_and_keeps_its_rate_when_none_is_set():
    qk_lora = {"target_modules": ["q_proj", "k_proj"], "learning_rate": None}
    qlora = dict(copy.deepcopy(RECIPE), finetuning="qlora", qk_lora=qk_lora)
    recipe = training_recipe(qlora, "qk-lora")
    assert recipe["finetuning"] == "qlora" and recipe["learning_rate"] == 2e-5


def test_each_kind_and_score_is_one_entry_of_its_table(monkeypatch):
    """A further threshold kind or score enters the grammar as one entry of THRESHOLD_KINDS or SCORE_METHODS."""
    from ctxaware import methods

    monkeypatch.setitem(methods.THRESHOLD_KINDS, "rank", "top")
    monkeypatch.setitem(methods.SCORE_METHODS, "entropy", "ent")
    assert methods._read_tagging("ent-top50") == Tagging("entropy", Threshold("rank", 50.0, "top50"))
    assert methods._read_tagging("q0.30") == Tagging("attention", Threshold("quantile", 0.3, "q0.3"))
    pattern = methods._method_pattern(methods.CANONICAL_NUMBER)
    assert re.fullmatch(pattern, "qk-lora-indicator-ent-top5") and re.fullmatch(pattern, "indicator-lr-q0.3")
    assert not re.fullmatch(pattern, "indicator-ent-top5.0") and not re.fullmatch(pattern, "indicator-x0.3")
    assert methods.parse_method("indicator-ent-0.3").score == "entropy"
    with pytest.raises(ValueError, match=r"^method 'indicator-ent-top5.0': write it 'indicator-ent-top5' "):
        methods.parse_method("indicator-ent-top5.0")


def test_a_correction_of_the_quirk_ablation_rides_on_the_method_name():
    """`<method>+<correction>`: the method as written, its correction kept apart; wildcard constraints accept only
    the corrections they are given, and a name is no correction unless it is of VARIANT_NAME."""
    from ctxaware.methods import METHOD_PATTERN, split_variant, variant_pattern, with_variant

    method = parse_method("qk-lora-indicator-lr-q0.3+no-period")
    assert (method.variant, method.qk_lora, method.tagging.text, method.data_branch) == (
        "no-period",
        True,
        "lr-q0.3",
        "indicator-lr-q0.3",
    )
    assert parse_method("vanilla").variant is None and not parse_method("vanilla+cut").with_indicator
    assert split_variant("reference+cut") == ("reference", "cut") and split_variant("vanilla") == ("vanilla", None)
    assert with_variant("vanilla", None) == "vanilla" and with_variant("vanilla", "cut") == "vanilla+cut"
    pattern = variant_pattern(METHOD_PATTERN, ["cut", "no-period"])
    for name in ("vanilla", "vanilla+cut", "indicator-0.6+no-period", "qk-lora+cut"):
        assert re.fullmatch(pattern, name), name
    for name in ("vanilla+", "vanilla+other", "indicator-0.6+cut+cut", "indicator-0.60+cut", "+cut"):
        assert not re.fullmatch(pattern, name), name
    assert variant_pattern(METHOD_PATTERN, []) == f"(?:{METHOD_PATTERN})"
    for bad in ("vanilla+Cut", "vanilla+-cut", "vanilla+cut-", "indicator-0.6+a+b"):
        with pytest.raises(ValueError, match="no correction's name"):
            parse_method(bad)
    with pytest.raises(ValueError, match="expected"):
        parse_method("indicator-x+cut")
