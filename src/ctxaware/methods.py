"""The method axis (Table 4's `method` column): the one grammar of method names, branch names and wildcards.

    method    = "vanilla" | "qk-lora" | ["qk-lora-"] "indicator-" threshold
    branch    = "vanilla" | "indicator-" threshold  the SFT data a method trains on (as prepared, or tagged)
    threshold = kind prefix + number                 kinds: THRESHOLD_KINDS (beta: a score cutoff, no prefix)

`vanilla` and `qk-lora` train on the vanilla branch. qk-lora trains LoRA on the query and key projections only (the
mitigation of the context-parametric inversion work, which leaves value and MLP weights, where facts are
stored, frozen); without it the model's recipe trains. A number has one spelling (no leading zeros, no
trailing zeros after the point: `0.6`, never `0.60`), so one threshold is one branch of paths.

The schema defers to this module: `check_methods` validates `methods` at start-up and the wildcard constraints
are METHOD_PATTERN and THRESHOLD_PATTERN. Extending the grammar: a second threshold kind is one entry of
THRESHOLD_KINDS (its prefix in names; `Threshold.kind` tells the tagging job which it is); a second score would be
a table like it whose names the branch writes before the threshold, and a field of Method.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from decimal import Decimal

QK_LORA = "qk-lora"
VANILLA = "vanilla"
INDICATOR = "indicator-"
THRESHOLD_KINDS = {"beta": ""}  # kind -> its prefix in names: beta 0.6 is `indicator-0.6`

NUMBER = r"[0-9]+(?:\.[0-9]+)?"  # what a config may write
CANONICAL_NUMBER = r"(?:0|[1-9][0-9]*)(?:\.[0-9]*[1-9])?"  # its one spelling


def _threshold_pattern(number: str) -> str:
    return "|".join(re.escape(prefix) + number for prefix in THRESHOLD_KINDS.values())


def _method_pattern(number: str) -> str:
    return f"{VANILLA}|{QK_LORA}|(?:{QK_LORA}-)?{INDICATOR}(?:{_threshold_pattern(number)})"


THRESHOLD_PATTERN = _threshold_pattern(CANONICAL_NUMBER)
METHOD_PATTERN = _method_pattern(CANONICAL_NUMBER)
GRAMMAR = "vanilla, indicator-<beta>, qk-lora or qk-lora-indicator-<beta>"


@dataclass(frozen=True)
class Threshold:
    kind: str  # a key of THRESHOLD_KINDS
    value: float
    text: str  # as in names and paths: `0.6`


@dataclass(frozen=True)
class Method:
    name: str
    threshold: Threshold | None  # None: the vanilla branch
    qk_lora: bool

    @property
    def with_indicator(self) -> bool:
        return self.threshold is not None

    @property
    def data_branch(self) -> str:
        """The SFT data this method trains on: `vanilla` or `indicator-<threshold>`."""
        return VANILLA if self.threshold is None else INDICATOR + self.threshold.text


def canonical_number(text: str) -> str:
    """`0.60` -> `0.6`, `01` -> `1`, `2.0` -> `2`: the spelling names and paths use."""
    return format(Decimal(text).normalize(), "f")


def _read_threshold(text: str) -> Threshold:
    """The threshold a text writes, in any spelling of its number; `text` of the result is the canonical one."""
    for kind, prefix in THRESHOLD_KINDS.items():
        number = text.removeprefix(prefix)
        if text.startswith(prefix) and re.fullmatch(NUMBER, number):
            return Threshold(kind, float(number), prefix + canonical_number(number))
    raise ValueError(f"threshold {text!r}: expected a number such as 0.6")


def _one_spelling(written: str, canonical: str) -> str:
    return f"{written!r}: write it {canonical!r} (one spelling, so one branch per threshold)"


def parse_threshold(text: str) -> Threshold:
    """`0.6` -> the beta 0.6. A second spelling of a number (`0.60`) is refused, naming the one to write."""
    threshold = _read_threshold(text)
    if threshold.text != text:
        raise ValueError("threshold " + _one_spelling(text, threshold.text))
    return threshold


def parse_method(name: str) -> Method:
    if not re.fullmatch(_method_pattern(NUMBER), name):
        raise ValueError(f"method {name!r}: expected {GRAMMAR}")
    qk_lora = name.startswith(QK_LORA)
    branch = name.removeprefix(QK_LORA).removeprefix("-") or VANILLA
    if branch == VANILLA:
        return Method(name, None, qk_lora)
    written = branch.removeprefix(INDICATOR)
    threshold = _read_threshold(written)
    if threshold.text != written:
        raise ValueError("method " + _one_spelling(name, name.removesuffix(written) + threshold.text))
    return Method(name, threshold, qk_lora)


def check_methods(names: list[str]) -> list[Method]:
    """The config's `methods`, each parsed; an error names the config key and the method."""
    try:
        return [parse_method(name) for name in names]
    except ValueError as error:
        raise ValueError(f"config key methods: {error}") from None


def training_recipe(recipe: dict, method: str) -> dict:
    """The recipe a method trains with. qk-lora: LoRA (QLoRA on a QLoRA recipe) on the qk_lora target modules
    only, at the qk_lora learning rate when one is set; everything else (batch, epochs, length) as the recipe."""
    if not parse_method(method).qk_lora:
        return recipe
    recipe = copy.deepcopy(recipe)
    qk = recipe["qk_lora"]
    recipe["finetuning"] = "qlora" if recipe["finetuning"] == "qlora" else "lora"
    recipe["lora"]["target_modules"] = list(qk["target_modules"])
    if qk["learning_rate"] is not None:
        recipe["learning_rate"] = qk["learning_rate"]
    return recipe
