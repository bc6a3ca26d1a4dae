"""Fair-use rules of SPEC section 6: thresholds, floors, warning steps, exact charges.

Every rule is evaluated from three integer counters ``(num, den, aux)``; what they hold
per rule is in :data:`RULES`. Comparisons use exact rationals (:class:`fractions.Fraction`),
never floats, and charges are exact :class:`decimal.Decimal` amounts rounded half-up to
cents. Displayed ratio values are rounded half-up to 4 decimals; the status is decided on
the exact value (a 0.69996 rboc mix shows as 0.7 but fails ``>= 0.70``).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction
from typing import Literal

Status = Literal["ok", "warning", "breach", "insufficient_data"]
CENT = Decimal("0.01")
RATIO_PLACES = Decimal("0.0001")


@dataclass(frozen=True, slots=True)
class Rule:
    """One fair-use rule.

    ``kind``: ``max`` passes when value <= threshold, ``min`` when value >= threshold.
    ``ratio``: value is num/den (0 when den is 0); otherwise value is ``num``.
    ``floor_on``: which counter the sample floor applies to (``den`` or ``aux``).
    """

    name: str
    preset: str
    scope: Literal["user", "account", "trunk_group"]
    kind: Literal["max", "min"]
    threshold: Fraction
    ratio: bool
    floor: int
    warning: bool
    counters: str


RULES: dict[str, Rule] = {
    r.name: r
    for r in (
        Rule(
            "minutes_per_user",
            "mitel_us",
            "user",
            "max",
            Fraction(2500),
            False,
            0,
            True,
            "num = local+domestic_ld billable minutes of the user's calls",
        ),
        Rule(
            "rboc_mix",
            "mitel_us",
            "account",
            "min",
            Fraction(7, 10),
            True,
            1000,
            False,
            "num = outbound rboc minutes, den = outbound rboc+itoc minutes, aux = all minutes",
        ),
        Rule(
            "call_completion",
            "mitel_us",
            "account",
            "min",
            Fraction(9, 10),
            True,
            100,
            False,
            "num = answered outbound, den = attempted outbound (non-blocked), "
            "aux = billable MILLISECONDS of answered outbound",
        ),
        Rule(
            "alaska_hawaii_share",
            "mitel_us",
            "account",
            "max",
            Fraction(1, 100),
            True,
            1000,
            True,
            "num = outbound domestic_ld AK/HI minutes, den = outbound domestic_ld minutes",
        ),
        Rule(
            "toll_free_share",
            "intelepeer_uc",
            "account",
            "max",
            Fraction(1, 10),
            True,
            1000,
            True,
            "num = toll_free minutes, den = all minutes",
        ),
        Rule(
            "local_calling_area",
            "intelepeer_uc",
            "trunk_group",
            "min",
            Fraction(9, 10),
            True,
            500,
            False,
            "num = local minutes of the largest area, den = local minutes",
        ),
        Rule(
            "bundle_sharing",
            "intelepeer_uc",
            "user",
            "max",
            Fraction(1),
            False,
            0,
            False,
            "num = most of the user's calls occupying ports at one instant",
        ),
        Rule(
            "nlp_share",
            "intelepeer_cap",
            "account",
            "max",
            Fraction(3, 10),
            True,
            100,
            True,
            "num = executions with nlp.used, den = executions",
        ),
        Rule(
            "calls_per_second",
            "intelepeer_cap",
            "account",
            "max",
            Fraction(150),
            False,
            0,
            True,
            "num = most call.started in one 1-second window",
        ),
    )
}

RULE_ORDER: tuple[str, ...] = tuple(sorted(RULES))
PRESET_RULES: dict[str, tuple[str, ...]] = {
    p: tuple(n for n in RULE_ORDER if RULES[n].preset == p)
    for p in ("mitel_us", "intelepeer_uc", "intelepeer_cap")
}
WARNING_STEP = Fraction(8, 10)
MINUTES_OVERAGE_RATE = Decimal("0.03")
SURCHARGE_RATE = Decimal("0.02")


@dataclass(frozen=True, slots=True)
class Evaluation:
    """A rule's value and verdict. ``failing`` ignores warnings; ``charge`` is exact."""

    rule: str
    value: Fraction
    status: Status
    failing: bool
    warned: bool
    charge: Decimal
    acd_seconds: Fraction | None = None

    def display_value(self) -> int | float:
        """The statement's ``value``: ints for counts and minutes, ratios to 4 places."""
        if RULES[self.rule].ratio:
            return round_ratio(self.value)
        return int(self.value)


def round_ratio(v: Fraction) -> float:
    """A ratio rounded half-up to 4 decimals (exact decimal arithmetic, then float)."""
    return float(
        (Decimal(v.numerator) / Decimal(v.denominator)).quantize(RATIO_PLACES, ROUND_HALF_UP)
    )


def threshold_value(rule: str) -> int | float:
    t = RULES[rule].threshold
    return int(t) if t.denominator == 1 else float(t)


def evaluate(rule_name: str, num: int, den: int, aux: int, account_minutes: int) -> Evaluation:
    """Evaluate one rule from its counters. ``account_minutes`` feeds the surcharges."""
    rule = RULES[rule_name]
    value = (Fraction(num, den) if den else Fraction(0)) if rule.ratio else Fraction(num)
    floor_base = den
    acd: Fraction | None = None
    if rule_name == "call_completion":
        answered = num
        acd = Fraction(aux, answered * 1000) if answered else Fraction(0)
    floor_met = floor_base >= rule.floor if rule.floor else True
    fails = value > rule.threshold if rule.kind == "max" else value < rule.threshold
    if rule_name == "call_completion" and acd is not None and not fails:
        fails = not acd > 30
    failing = floor_met and fails
    warned = floor_met and rule.warning and value >= rule.threshold * WARNING_STEP
    if not floor_met:
        status: Status = "insufficient_data"
    elif failing:
        status = "breach"
    elif warned:
        status = "warning"
    else:
        status = "ok"
    charge = Decimal(0)
    if failing:
        if rule_name == "minutes_per_user":
            charge = (Decimal(num) - Decimal(2500)) * MINUTES_OVERAGE_RATE
        elif rule_name in ("rboc_mix", "call_completion"):
            charge = Decimal(account_minutes) * SURCHARGE_RATE
    return Evaluation(
        rule_name, value, status, failing, warned, charge.quantize(CENT, ROUND_HALF_UP), acd
    )


def charge_kind(rule_name: str) -> Literal["overage", "surcharge", "none"]:
    """Which statement total a rule's charge adds to."""
    if rule_name == "minutes_per_user":
        return "overage"
    if rule_name in ("rboc_mix", "call_completion"):
        return "surcharge"
    return "none"


def rules_for(policies: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """The account's rules, in statement order (sorted by name)."""
    wanted = set(policies)
    return tuple(n for n in RULE_ORDER if RULES[n].preset in wanted)
