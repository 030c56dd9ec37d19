"""The method axis (Table 4's `method` column): the one grammar of method names, branch names and wildcards.

    method    = "vanilla" | "qk-lora" | ["qk-lora-"] "indicator-" tagging
    branch    = "vanilla" | "indicator-" tagging      the SFT data a method trains on (as prepared, or tagged)
    tagging   = [score "-"] threshold                 the turns a tagged branch selects: a score and a threshold
    score     = short name in SCORE_METHODS           none: the paper's attention score (Eq. 2); "lr": likelihood ratio
    threshold = kind prefix + number                  kinds: THRESHOLD_KINDS (beta: a score cutoff, no prefix;
                                                      quantile "q": the top share of turns by score)

`indicator-0.6` is the paper's branch (attention score above 0.6), `indicator-q0.3` the top 30% of turns by the
attention score, `indicator-lr-q0.3` the top 30% by the likelihood-ratio score, `indicator-lr-0.5` the turns whose
likelihood-ratio score is above 0.5. The score is part of the name, so branches of both scores coexist in one run
and Table 4's method column says which score tagged a row.

A name may end in `+<correction>` (`indicator-0.6+no-period`, `vanilla+sentence-cut`): a branch of the quirk
ablation (config `ablation`, `ctxaware.plan`), the method as the published procedure runs it but with that one
correction. This module only reads the suffix off (`split_variant`); the plan says which stages it changes.

`vanilla` and `qk-lora` train on the vanilla branch. qk-lora trains LoRA on the query and key projections only (the
mitigation of the context-parametric inversion work, which leaves value and MLP weights, where facts are
stored, frozen); without it the model's recipe trains. A number has one spelling (no leading zeros, no
trailing zeros after the point: `0.6`, never `0.60`), so one tagging is one branch of paths; a quantile is at
most 1.

The schema defers to this module: `check_methods` validates `methods` at start-up and the wildcard constraints
are METHOD_PATTERN and TAGGING_PATTERN. Extending the grammar: a threshold kind is one entry of THRESHOLD_KINDS
(its prefix in names; `Threshold.kind` tells `tagging.cutoff` which it is), a score one entry of SCORE_METHODS (its
short name in branch and scorer names) and of the scorer that computes it (`ctxaware.plan.Plan.score_settings`).
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from decimal import Decimal

QK_LORA = "qk-lora"
VANILLA = "vanilla"
INDICATOR = "indicator-"
REFERENCE = "reference"  # Table 4's method of an evaluate-only row: a named existing model, no fine-tune
ATTENTION = "attention"
LIKELIHOOD_RATIO = "likelihood_ratio"
# score -> its short name, written before the threshold in branch names (`indicator-lr-q0.3`) and after the seed
# model's name in scorer names (`tiny-sharegpt-lr`); the paper's score has none, so its names are the paper's
SCORE_METHODS = {ATTENTION: "", LIKELIHOOD_RATIO: "lr"}
BETA, QUANTILE = "beta", "quantile"
THRESHOLD_KINDS = {BETA: "", QUANTILE: "q"}  # kind -> its prefix in names: beta 0.6 is `indicator-0.6`

# `<name>+<correction>`: a branch of the quirk ablation (config ablation); a correction's name is of VARIANT_NAME
VARIANT_MARK = "+"
VARIANT_NAME = r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?"

NUMBER = r"[0-9]+(?:\.[0-9]+)?"  # what a config may write
CANONICAL_NUMBER = r"(?:0|[1-9][0-9]*)(?:\.[0-9]*[1-9])?"  # its one spelling


def split_variant(name: str) -> tuple[str, str | None]:
    """`indicator-0.6+no-period` -> (`indicator-0.6`, `no-period`); a name without a correction -> (name, None)."""
    base, mark, variant = name.partition(VARIANT_MARK)
    return base, (variant if mark else None)


def with_variant(name: str, variant: str | None) -> str:
    """The name of `name`'s branch under the correction `variant` (None: the published procedure's, `name`)."""
    return name if variant is None else f"{name}{VARIANT_MARK}{variant}"


def variant_pattern(pattern: str, variants) -> str:
    """A wildcard constraint: `pattern`, optionally followed by `+` and one of `variants`."""
    names = "|".join(re.escape(variant) for variant in variants)
    return f"(?:{pattern})" + (f"(?:{re.escape(VARIANT_MARK)}(?:{names}))?" if names else "")


def score_prefix(score: str) -> str:
    """What a score writes before the threshold in a branch name: `lr-`, or nothing for the attention score."""
    short = SCORE_METHODS[score]
    return f"{short}-" if short else ""


def _alternatives(prefixes) -> str:
    return "(?:" + "|".join(re.escape(prefix) for prefix in prefixes) + ")"


def _tagging_pattern(number: str) -> str:
    scores = _alternatives(score_prefix(score) for score in SCORE_METHODS)
    return scores + _alternatives(THRESHOLD_KINDS.values()) + number


def _method_pattern(number: str) -> str:
    return f"{VANILLA}|{QK_LORA}|(?:{QK_LORA}-)?{INDICATOR}{_tagging_pattern(number)}"


TAGGING_PATTERN = _tagging_pattern(CANONICAL_NUMBER)
METHOD_PATTERN = _method_pattern(CANONICAL_NUMBER)
GRAMMAR = (
    "vanilla, indicator-<threshold>, qk-lora or qk-lora-indicator-<threshold>, a threshold being <beta> or "
    "q<quantile>, after lr- for the likelihood-ratio score"
)


@dataclass(frozen=True)
class Threshold:
    kind: str  # a key of THRESHOLD_KINDS
    value: float
    text: str  # as in names and paths: `0.6`, `q0.3`

    @property
    def number(self) -> str:
        """The number as written in the name (`0.3` of `q0.3`): exact, unlike `value`."""
        return self.text.removeprefix(THRESHOLD_KINDS[self.kind])


@dataclass(frozen=True)
class Tagging:
    """Which turns a tagged branch selects: those of `threshold` on `score`."""

    score: str  # a key of SCORE_METHODS
    threshold: Threshold

    @property
    def text(self) -> str:
        """As in names and paths: `0.6`, `lr-q0.3`."""
        return score_prefix(self.score) + self.threshold.text


@dataclass(frozen=True)
class Method:
    name: str
    tagging: Tagging | None  # None: the vanilla branch
    qk_lora: bool
    variant: str | None = None  # the quirk ablation's correction (`+<correction>` in the name); None: published

    @property
    def with_indicator(self) -> bool:
        return self.tagging is not None

    @property
    def threshold(self) -> Threshold | None:
        return None if self.tagging is None else self.tagging.threshold

    @property
    def score(self) -> str | None:
        """The score the method's tags come from; None for the vanilla branch."""
        return None if self.tagging is None else self.tagging.score

    @property
    def data_branch(self) -> str:
        """The SFT data this method trains on: `vanilla` or `indicator-<tagging>`."""
        return VANILLA if self.tagging is None else INDICATOR + self.tagging.text


def canonical_number(text: str) -> str:
    """`0.60` -> `0.6`, `01` -> `1`, `2.0` -> `2`: the spelling names and paths use."""
    return format(Decimal(text).normalize(), "f")


def _read_threshold(text: str) -> Threshold | None:
    """The threshold a text writes, in any spelling of its number (`text` of the result is the canonical one);
    None when it writes none."""
    for kind, prefix in THRESHOLD_KINDS.items():
        number = text.removeprefix(prefix)
        if text.startswith(prefix) and re.fullmatch(NUMBER, number):
            threshold = Threshold(kind, float(number), prefix + canonical_number(number))
            if kind == QUANTILE and threshold.value > 1:
                raise ValueError(f"quantile {text!r}: at most 1 (the share of turns to tag)")
            return threshold
    return None


def _read_tagging(text: str) -> Tagging:
    """The score and threshold a text writes (`lr-q0.3`), in any spelling of its number: the score whose prefix
    the text starts with (the attention score has none)."""
    score = next((s for s in SCORE_METHODS if SCORE_METHODS[s] and text.startswith(score_prefix(s))), ATTENTION)
    threshold = _read_threshold(text.removeprefix(score_prefix(score)))
    if threshold is None:
        raise ValueError(
            f"tagging {text!r}: expected a threshold such as 0.6 or q0.3, after lr- for the likelihood ratio"
        )
    return Tagging(score, threshold)


def _one_spelling(written: str, canonical: str) -> str:
    return f"{written!r}: write it {canonical!r} (one spelling, so one branch per threshold)"


def parse_tagging(text: str) -> Tagging:
    """`0.6` -> beta 0.6 on the attention score; `lr-q0.3` -> the top 30% by the likelihood ratio. A second
    spelling of a number (`0.60`) is refused, naming the one to write."""
    tagging = _read_tagging(text)
    if tagging.text != text:
        raise ValueError("tagging " + _one_spelling(text, tagging.text))
    return tagging


def parse_method(name: str) -> Method:
    """The method a name writes; a `+<correction>` suffix (the quirk ablation's) is kept in `variant`."""
    base, variant = split_variant(name)
    if variant is not None:
        if not re.fullmatch(VARIANT_NAME, variant):
            raise ValueError(f"method {name!r}: {variant!r} is no correction's name ({VARIANT_NAME})")
        parsed = parse_method(base)
        return Method(name, parsed.tagging, parsed.qk_lora, variant)
    if not re.fullmatch(_method_pattern(NUMBER), name):
        raise ValueError(f"method {name!r}: expected {GRAMMAR}")
    qk_lora = name.startswith(QK_LORA)
    branch = name.removeprefix(QK_LORA).removeprefix("-") or VANILLA
    if branch == VANILLA:
        return Method(name, None, qk_lora)
    written = branch.removeprefix(INDICATOR)
    try:
        tagging = _read_tagging(written)
    except ValueError as error:
        raise ValueError(f"method {name!r}: {error}") from None
    if tagging.text != written:
        raise ValueError("method " + _one_spelling(name, name.removesuffix(written) + tagging.text))
    return Method(name, tagging, qk_lora)


def check_methods(names: list[str]) -> list[Method]:
    """The config's `methods`, each parsed; an error names the config key and the method."""
    try:
        methods = [parse_method(name) for name in names]
    except ValueError as error:
        raise ValueError(f"config key methods: {error}") from None
    for method in methods:
        if method.variant is not None:
            raise ValueError(
                f"config key methods: {method.name!r}: a correction's branches come from config key ablation, "
                f"not from methods (write {split_variant(method.name)[0]!r})"
            )
    return methods


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
