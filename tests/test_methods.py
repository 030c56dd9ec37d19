import copy
import re

import pytest

from ctxaware.methods import (
    METHOD_PATTERN,
    THRESHOLD_PATTERN,
    Threshold,
    canonical_number,
    check_methods,
    parse_method,
    parse_threshold,
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
    ("name", "beta", "qk_lora", "branch"),
    [
        ("vanilla", None, False, "vanilla"),
        ("indicator-0.6", 0.6, False, "indicator-0.6"),
        ("indicator-1", 1.0, False, "indicator-1"),
        ("indicator-10.25", 10.25, False, "indicator-10.25"),
        ("qk-lora", None, True, "vanilla"),
        ("qk-lora-indicator-0.7", 0.7, True, "indicator-0.7"),
    ],
)
def test_parse_method(name, beta, qk_lora, branch):
    method = parse_method(name)
    assert (method.name, method.qk_lora, method.data_branch) == (name, qk_lora, branch)
    assert method.with_indicator == (beta is not None)
    expected = None if beta is None else Threshold("beta", beta, branch.removeprefix("indicator-"))
    assert method.threshold == expected
    assert bool(re.fullmatch(METHOD_PATTERN, name))  # the wildcard constraint accepts what the parser does


@pytest.mark.parametrize(
    "name", ["indicator", "indicator-", "qk-lora-vanilla", "lora", "indicator-0.6-qk-lora", "indicator-.6", "Vanilla"]
)
def test_unknown_methods_are_refused_by_name(name):
    with pytest.raises(ValueError, match=f"^method '{re.escape(name)}': expected vanilla, indicator-<beta>, "):
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


def test_thresholds_as_the_tagging_rule_reads_them():
    assert parse_threshold("0.6") == Threshold("beta", 0.6, "0.6")
    assert re.fullmatch(THRESHOLD_PATTERN, "0.6") and not re.fullmatch(THRESHOLD_PATTERN, "0.60")
    with pytest.raises(ValueError, match=r"^threshold '0.60': write it '0.6' "):
        parse_threshold("0.60")
    with pytest.raises(ValueError, match=r"^threshold 'high': expected a number such as 0.6$"):
        parse_threshold("high")


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


def test_a_second_threshold_kind_is_one_entry_of_the_table(monkeypatch):
    """How a quantile threshold (`indicator-q0.3`) would enter the grammar: its prefix in THRESHOLD_KINDS."""
    from ctxaware import methods

    monkeypatch.setitem(methods.THRESHOLD_KINDS, "quantile", "q")
    assert methods._read_threshold("q0.30") == Threshold("quantile", 0.3, "q0.3")
    assert methods._read_threshold("0.3") == Threshold("beta", 0.3, "0.3")
    pattern = methods._method_pattern(methods.CANONICAL_NUMBER)
    assert re.fullmatch(pattern, "qk-lora-indicator-q0.3") and re.fullmatch(pattern, "indicator-0.3")
    assert not re.fullmatch(pattern, "indicator-q0.30") and not re.fullmatch(pattern, "indicator-x0.3")
    assert methods.parse_method("indicator-q0.3").threshold == Threshold("quantile", 0.3, "q0.3")
    with pytest.raises(ValueError, match=r"^method 'indicator-q0.30': write it 'indicator-q0.3' "):
        methods.parse_method("indicator-q0.30")
