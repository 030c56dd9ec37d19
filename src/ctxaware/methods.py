"""The method axis: `vanilla`, `indicator-<beta>`, `qk-lora` and `qk-lora-indicator-<beta>`.

A method names two things: the training data branch (vanilla data, or the data tagged at beta) and how the
base model is trained (the model's recipe, or LoRA on the query and key projections only: the mitigation of
the context-parametric inversion work, which leaves value and MLP weights, where facts are stored, frozen).
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass

QK_LORA = "qk-lora"
METHOD_PATTERN = r"vanilla|indicator-[0-9]+(?:\.[0-9]+)?|qk-lora|qk-lora-indicator-[0-9]+(?:\.[0-9]+)?"


@dataclass(frozen=True)
class Method:
    name: str
    beta: str | None  # as written in the name, so `indicator-0.60` finds `results/sft/{dataset}/indicator-0.60`
    qk_lora: bool

    @property
    def with_indicator(self) -> bool:
        return self.beta is not None

    @property
    def data_branch(self) -> str:
        """The SFT data this method trains on: `vanilla` or `indicator-<beta>`."""
        return "vanilla" if self.beta is None else f"indicator-{self.beta}"


def parse_method(name: str) -> Method:
    if not re.fullmatch(METHOD_PATTERN, name):
        raise ValueError(f"method {name!r}: expected vanilla, indicator-<beta>, qk-lora or qk-lora-indicator-<beta>")
    qk_lora = name.startswith(QK_LORA)
    rest = name.removeprefix(QK_LORA).removeprefix("-")
    beta = rest.removeprefix("indicator-") if rest.startswith("indicator-") else None
    return Method(name=name, beta=beta, qk_lora=qk_lora)


def training_recipe(recipe: dict, method: str) -> dict:
    """The recipe a method trains with. qk-lora: LoRA (QLoRA on a QLoRA model) on the qk_lora target modules
    only, at the qk_lora learning rate when one is set; everything else (batch, epochs, length) as the recipe."""
    if not parse_method(method).qk_lora:
        return recipe
    recipe = copy.deepcopy(recipe)
    qk = recipe["qk_lora"]
    recipe["method"] = "qlora" if recipe["method"] == "qlora" else "lora"
    recipe["lora"]["target_modules"] = list(qk["target_modules"])
    if qk["learning_rate"] is not None:
        recipe["learning_rate"] = qk["learning_rate"]
    return recipe
