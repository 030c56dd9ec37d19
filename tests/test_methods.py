import copy

import pytest

from ctxaware.methods import parse_method, training_recipe

RECIPE = {
    "method": "full",
    "learning_rate": 2e-5,
    "epochs": 1,
    "lora": {"r": 16, "alpha": 16, "dropout": 0.05, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]},
    "qk_lora": {"target_modules": ["q_proj", "k_proj"], "learning_rate": 2e-4},
}


@pytest.mark.parametrize(
    ("name", "beta", "qk_lora", "branch"),
    [
        ("vanilla", None, False, "vanilla"),
        ("indicator-0.6", "0.6", False, "indicator-0.6"),
        ("indicator-0.60", "0.60", False, "indicator-0.60"),
        ("qk-lora", None, True, "vanilla"),
        ("qk-lora-indicator-0.7", "0.7", True, "indicator-0.7"),
    ],
)
def test_parse_method(name, beta, qk_lora, branch):
    method = parse_method(name)
    assert (method.name, method.beta, method.qk_lora, method.data_branch) == (name, beta, qk_lora, branch)
    assert method.with_indicator == (beta is not None)


@pytest.mark.parametrize("name", ["indicator", "indicator-", "qk-lora-vanilla", "lora", "indicator-0.6-qk-lora"])
def test_unknown_methods_are_refused_by_name(name):
    with pytest.raises(ValueError, match=f"method '{name}'"):
        parse_method(name)


def test_qk_lora_trains_only_query_and_key_with_lora():
    original = copy.deepcopy(RECIPE)
    recipe = training_recipe(RECIPE, "qk-lora-indicator-0.6")
    assert recipe["method"] == "lora" and recipe["lora"]["target_modules"] == ["q_proj", "k_proj"]
    assert recipe["learning_rate"] == 2e-4 and recipe["lora"]["r"] == 16 and recipe["epochs"] == 1
    assert RECIPE == original  # the model's recipe itself is untouched
    assert training_recipe(RECIPE, "indicator-0.6") is RECIPE


def test_qk_lora_on_a_qlora_recipe_stays_4bit_and_keeps_its_rate_when_none_is_set():
    qk_lora = {"target_modules": ["q_proj", "k_proj"], "learning_rate": None}
    qlora = dict(copy.deepcopy(RECIPE), method="qlora", qk_lora=qk_lora)
    recipe = training_recipe(qlora, "qk-lora")
    assert recipe["method"] == "qlora" and recipe["learning_rate"] == 2e-5
