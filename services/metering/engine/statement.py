"""The billing statement of SPEC section 9, rendered from plain figures.

:class:`StatementFacts` is what a statement is made of; the engine (in memory, for tests)
and the ClickHouse reader (``metering statement``) both fill one, and :func:`render`
turns it into the exact JSON object of the SPEC. Keeping the rendering in one place is
what makes "replay and streaming give identical statements" checkable.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from metering.engine.rules import (
    RULES,
    charge_kind,
    evaluate,
    round_ratio,
    rules_for,
    threshold_value,
)
from metering.events.decode import ms_to_rfc3339
from metering.events.models import ROUTE_CLASSES

STATEMENT_CHANNELS: tuple[str, ...] = ("voice", "sms", "whatsapp", "facebook", "api")


@dataclass(slots=True)
class Counter:
    """The raw counters of one (rule, scope)."""

    num: int = 0
    den: int = 0
    aux: int = 0


@dataclass(slots=True)
class StatementFacts:
    """Everything one (account, cycle) statement is computed from.

    ``fair_use`` maps (rule, scope) to counters and must already hold every scope the
    statement lists (the account scope of account rules, users and call_path groups).
    ``trunk_groups`` maps the capacity-owning group id to (peak, peak_at ms, capacity).
    """

    account: str
    cycle: str
    timezone: str
    policies: tuple[str, ...]
    interactions: dict[str, int] = field(default_factory=dict)
    messages: int = 0
    segments: int = 0
    attempts: int = 0
    answered: int = 0
    blocked: int = 0
    timed_out: int = 0
    over_capacity: int = 0
    minutes_by_route_class: dict[str, int] = field(default_factory=dict)
    peak: int = 0
    peak_at: int | None = None
    trunk_groups: dict[str, tuple[int, int | None, int | None]] = field(default_factory=dict)
    fair_use: dict[tuple[str, str], Counter] = field(default_factory=dict)


def render(f: StatementFacts) -> dict[str, Any]:
    """The SPEC section 9 statement object (key order as in the SPEC)."""
    minutes = {rc: f.minutes_by_route_class.get(rc, 0) for rc in ROUTE_CLASSES}
    billable = sum(minutes.values())
    by_channel = {c: f.interactions.get(c, 0) for c in STATEMENT_CHANNELS}
    wanted = set(rules_for(f.policies))
    fair_use: list[dict[str, Any]] = []
    overage = Decimal(0)
    surcharge = Decimal(0)
    for rule, scope in sorted(k for k in f.fair_use if k[0] in wanted):
        c = f.fair_use[(rule, scope)]
        ev = evaluate(rule, c.num, c.den, c.aux, billable)
        item: dict[str, Any] = {
            "rule": rule,
            "scope": scope,
            "value": ev.display_value(),
            "threshold": threshold_value(rule),
            "status": ev.status,
            "charge_usd": f"{ev.charge:.2f}",
        }
        if ev.acd_seconds is not None:
            item["acd_seconds"] = round_ratio(ev.acd_seconds)
        fair_use.append(item)
        kind = charge_kind(rule)
        if kind == "overage":
            overage += ev.charge
        elif kind == "surcharge":
            surcharge += ev.charge
    return {
        "account": f.account,
        "cycle": f.cycle,
        "timezone": f.timezone,
        "interactions": {"total": sum(by_channel.values()), "by_channel": by_channel},
        "messages": {"total": f.messages, "segments": f.segments},
        "voice": {
            "attempts": f.attempts,
            "answered": f.answered,
            "blocked": f.blocked,
            "timed_out": f.timed_out,
            "over_capacity": f.over_capacity,
            "billable_minutes": billable,
            "minutes_by_route_class": minutes,
        },
        "concurrency": {
            "peak": f.peak,
            "peak_at": None if f.peak_at is None else ms_to_rfc3339(f.peak_at),
            "trunk_groups": {
                tg: {
                    "peak": peak,
                    "peak_at": None if at is None else ms_to_rfc3339(at),
                    "capacity": cap,
                }
                for tg, (peak, at, cap) in sorted(f.trunk_groups.items())
            },
        },
        "fair_use": fair_use,
        "charges": {"overage_usd": f"{overage:.2f}", "surcharge_usd": f"{surcharge:.2f}"},
    }


__all__ = ["RULES", "STATEMENT_CHANNELS", "Counter", "StatementFacts", "render"]
