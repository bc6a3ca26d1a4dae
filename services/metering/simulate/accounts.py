"""Simulated accounts: the SPEC section 8 YAML object and each account's traffic profile.

The YAML object (:func:`make_accounts`) only holds what the SPEC defines (timezone,
policies, trunk groups). Everything else that shapes an account's traffic (its size, mix,
answer ratio, carriers...) is an :class:`AccountProfile`, derived deterministically from
the seed and the account id by :func:`make_profile`, so the event generator can be given
the YAML back (or an edited one) and still produce the same traffic.

Trunk-group capacities are sized from the expected busy-hour load: most groups are
comfortable, some are deliberately small so that calls get blocked (and a few go through
over capacity) at busy hours.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import yaml

from metering.simulate.config import HOUR_MS, SimulationConfig

TIMEZONES: tuple[str, ...] = (
    "America/Denver",
    "America/New_York",
    "Europe/London",
    "UTC",
    "Pacific/Honolulu",
    "America/Chicago",
    "America/Los_Angeles",
    "America/Anchorage",
    "America/Phoenix",
    "America/Puerto_Rico",
)
"""Account ``i`` gets ``TIMEZONES[i % len]``: the first five are always present from 5
accounts on."""

# Home state and area codes (NPA) of an account, by time zone.
HOME: dict[str, tuple[str, tuple[int, ...]]] = {
    "America/Denver": ("CO", (303, 720, 719)),
    "America/New_York": ("NY", (212, 646, 718)),
    "Europe/London": ("NY", (917, 332)),
    "UTC": ("VA", (703, 571)),
    "Pacific/Honolulu": ("HI", (808,)),
    "America/Chicago": ("IL", (312, 773)),
    "America/Los_Angeles": ("CA", (415, 213, 628)),
    "America/Anchorage": ("AK", (907,)),
    "America/Phoenix": ("AZ", (602, 480)),
    "America/Puerto_Rico": ("PR", (787, 939)),
}

# Relative call volume by local hour of a weekday (voice and SmartFlows).
VOICE_WEEKDAY: tuple[float, ...] = (
    0.04, 0.03, 0.03, 0.03, 0.04, 0.07, 0.15, 0.40,
    0.80, 1.00, 1.00, 0.95, 0.80, 0.90, 1.00, 1.00,
    0.90, 0.65, 0.40, 0.28, 0.22, 0.15, 0.10, 0.06,
)  # fmt: skip
# Messaging is flatter and busier in the evening.
MSG_WEEKDAY: tuple[float, ...] = (
    0.10, 0.06, 0.04, 0.03, 0.03, 0.05, 0.12, 0.30,
    0.55, 0.75, 0.85, 0.90, 0.95, 0.90, 0.85, 0.85,
    0.85, 0.90, 1.00, 1.00, 0.95, 0.75, 0.45, 0.22,
)  # fmt: skip
VOICE_WEEKEND = 0.25
# A 24/7 contact centre (one account in four): busy day and night, weekends included.
ALWAYS_ON_WEEKDAY: tuple[float, ...] = (
    0.45, 0.40, 0.35, 0.35, 0.35, 0.40, 0.50, 0.70,
    0.90, 1.00, 1.00, 1.00, 0.95, 0.95, 1.00, 1.00,
    0.95, 0.90, 0.80, 0.70, 0.65, 0.60, 0.55, 0.50,
)  # fmt: skip
ALWAYS_ON_WEEKEND = 0.8
LONG_CALL_RATE = 0.01
"""Share of answered calls that are long conference calls (20 minutes to 2 hours)."""
LONG_CALL_MEAN_MS = 70 * 60_000
MSG_WEEKEND = 0.7

# Mean sizes used to turn an event budget into arrival rates.
MEAN_MESSAGES_PER_CONVERSATION = 5.1
MEAN_NLP_PER_NLP_EXECUTION = 1.4


@dataclass(frozen=True)
class AccountProfile:
    """How one account's traffic looks (not part of the SPEC's account configuration)."""

    index: int
    weight: float
    voice_share: float
    msg_share: float
    flow_share: float
    outbound_share: float
    answer_out: float
    answer_in: float
    talk_median_ms: float
    talk_sigma: float
    rboc_share: float
    ak_hi_share: float
    toll_free_in: float
    international_out: float
    lca_concentration: float
    nlp_prob: float
    user_share: float
    users: int
    dialer: bool
    always_on: bool
    legacy_trunk: bool
    home_state: str
    npas: tuple[int, ...]

    @property
    def answer_mean(self) -> float:
        return self.answer_out * self.outbound_share + self.answer_in * (1 - self.outbound_share)

    @property
    def mean_hold_ms(self) -> float:
        """Mean port holding time of a call (ring + talk, or ring until abandoned)."""
        talk = self.talk_median_ms * math.exp(self.talk_sigma**2 / 2)
        talk = (1 - LONG_CALL_RATE) * talk + LONG_CALL_RATE * LONG_CALL_MEAN_MS
        p = self.answer_mean
        return p * (11_000 + talk) + (1 - p) * 25_000

    @property
    def voice_pattern(self) -> tuple[tuple[float, ...], float]:
        """(weekday weights by local hour, weekend factor) of calls and SmartFlows."""
        if self.always_on:
            return ALWAYS_ON_WEEKDAY, ALWAYS_ON_WEEKEND
        return VOICE_WEEKDAY, VOICE_WEEKEND


def account_ids(n: int) -> list[str]:
    return [f"acct-{i + 1}" for i in range(n)]


def make_profile(
    cfg: SimulationConfig, index: int, account_id: str, timezone: str
) -> AccountProfile:
    """The traffic profile of one account (deterministic in seed, index and id)."""
    rng = random.Random(f"profile:{cfg.seed}:{index}:{account_id}")
    home_state, npas = HOME.get(timezone, ("VA", (703,)))
    voice = rng.uniform(0.45, 0.65)
    flows = rng.uniform(0.06, 0.12)
    robo = index % 7 == 5  # short calls: fails the call_completion ACD test
    return AccountProfile(
        index=index,
        weight=rng.lognormvariate(0.0, 0.5),
        voice_share=voice,
        msg_share=1.0 - voice - flows,
        flow_share=flows,
        outbound_share=rng.uniform(0.4, 0.65),
        answer_out=rng.uniform(0.80, 0.95),
        answer_in=rng.uniform(0.90, 0.97),
        talk_median_ms=(20_000.0 if robo else rng.uniform(60_000, 150_000)),
        talk_sigma=(0.7 if robo else rng.uniform(0.9, 1.2)),
        rboc_share=rng.choice((0.5, 0.65, 0.8, 0.85, 0.9)),
        ak_hi_share=(0.03 if index % 5 == 3 else 0.004),
        toll_free_in=rng.uniform(0.08, 0.3),
        international_out=rng.uniform(0.02, 0.08),
        lca_concentration=rng.choice((0.8, 0.93, 0.97, 0.99)),
        nlp_prob=rng.uniform(0.18, 0.35),
        user_share=rng.uniform(0.8, 0.95),
        users=rng.randint(5, 60),
        dialer=index % 6 == 1,
        always_on=index % 4 == 2,
        legacy_trunk=index % 4 == 3,
        home_state=home_state,
        npas=npas,
    )


# Share of an account's calls per trunk group, by bundle (redundant groups: 10% of their
# primary's share is diverted to them); an unconfigured legacy group takes 8%.
_BUNDLE_TRAFFIC = {"user": 0.55, "call_path": 0.35, "basic_port": 0.10}
LEGACY_TRUNK = "tg-legacy"


def trunk_traffic(account: Mapping[str, Any], profile: AccountProfile) -> list[tuple[str, float]]:
    """(trunk group id, share of the account's calls) for an account object."""
    groups: Mapping[str, Mapping[str, Any]] = account.get("trunk_groups") or {}
    shares: dict[str, float] = {}
    for tg, conf in groups.items():
        if conf.get("redundant_for") is None:
            shares[tg] = _BUNDLE_TRAFFIC.get(str(conf.get("bundle", "user")), 0.3)
    for tg, conf in groups.items():
        primary = conf.get("redundant_for")
        if primary is not None:
            base = shares.get(primary, 0.3)
            shares[tg] = base * 0.1
            if primary in shares:
                shares[primary] = base * 0.9
    if profile.legacy_trunk or not shares:
        shares[LEGACY_TRUNK] = 0.08 if shares else 1.0
    total = sum(shares.values())
    return [(tg, s / total) for tg, s in shares.items()]


def hour_weights(
    cfg: SimulationConfig,
    timezone: str,
    table: tuple[float, ...],
    weekend: float,
    lead_hours: int = 0,
) -> tuple[list[float], float]:
    """Diurnal weight of each UTC hour from ``lead_hours`` before the hour holding
    ``cfg.start`` (index 0) to the end of the window, and the window's weighted length in
    hours (lead hours excluded; partial first and last hours count for their part inside
    the window)."""
    zone = ZoneInfo(timezone)
    start, end = cfg.start_ms, cfg.end_ms
    weights: list[float] = []
    length = 0.0
    h = start // HOUR_MS - lead_hours
    while h * HOUR_MS < end:
        local = datetime.fromtimestamp(h * 3600, tz=UTC).astimezone(zone)
        w = table[local.hour] * (weekend if local.weekday() >= 5 else 1.0)
        lo, hi = max(start, h * HOUR_MS), min(end, (h + 1) * HOUR_MS)
        weights.append(w)
        if hi > lo:
            length += w * (hi - lo) / HOUR_MS
        h += 1
    return weights, length


def events_per_call(cfg: SimulationConfig, profile: AccountProfile) -> float:
    return cfg.cdr_share + (1 - cfg.cdr_share) * (2 + profile.answer_mean)


def account_budget(cfg: SimulationConfig, profiles: list[AccountProfile]) -> list[float]:
    """Expected valid events per account."""
    base = cfg.events / (1 + cfg.duplicate_rate + cfg.malformed_rate)
    total = sum(p.weight for p in profiles)
    return [base * p.weight / total for p in profiles]


def expected_calls(cfg: SimulationConfig, profile: AccountProfile, budget: float) -> float:
    return budget * profile.voice_share / events_per_call(cfg, profile)


# Trunk-group layouts: (id, bundle, redundant_for, small?)
_LAYOUTS: tuple[tuple[tuple[str, str, str | None, bool], ...], ...] = (
    (
        ("tg-1", "user", None, False),
        ("tg-2", "call_path", None, True),
        ("tg-2b", "call_path", "tg-2", False),
    ),
    (
        ("tg-1", "call_path", None, False),
        ("tg-1b", "call_path", "tg-1", False),
        ("tg-2", "basic_port", None, True),
    ),
    (
        ("tg-1", "user", None, False),
        ("tg-2", "call_path", None, False),
        ("tg-3", "basic_port", None, True),
    ),
    (("tg-1", "user", None, True), ("tg-2", "call_path", None, False)),
)


def _policies(index: int) -> list[str] | None:
    if index % 7 == 6:
        return None  # not written: the default (all three)
    if index % 5 == 2:
        return ["intelepeer_uc", "intelepeer_cap"]
    if index % 5 == 4:
        return ["mitel_us"]
    return ["mitel_us", "intelepeer_uc", "intelepeer_cap"]


def make_accounts(cfg: SimulationConfig) -> dict[str, Any]:
    """The accounts YAML object of SPEC section 8 (``{"accounts": {id: {...}}}``)."""
    ids = account_ids(cfg.accounts)
    tzs = [TIMEZONES[i % len(TIMEZONES)] for i in range(cfg.accounts)]
    profiles = [make_profile(cfg, i, a, tz) for i, (a, tz) in enumerate(zip(ids, tzs, strict=True))]
    budgets = account_budget(cfg, profiles)
    out: dict[str, Any] = {}
    for i, (acct, tz, profile) in enumerate(zip(ids, tzs, profiles, strict=True)):
        layout = _LAYOUTS[i % len(_LAYOUTS)]
        raw = {tg: {"bundle": bundle, "redundant_for": red} for tg, bundle, red, _ in layout}
        shares = dict(trunk_traffic({"trunk_groups": raw}, profile))
        calls = expected_calls(cfg, profile, budgets[i])
        table, weekend = profile.voice_pattern
        _, length = hour_weights(cfg, tz, table, weekend)
        peak_calls_per_hour = calls / max(length, 1e-9) * max(table)
        erlangs = peak_calls_per_hour * profile.mean_hold_ms / HOUR_MS
        groups: dict[str, Any] = {}
        for tg, bundle, red, small in layout:
            if red is not None:
                groups[tg] = {"redundant_for": red, "bundle": bundle}
                continue
            load = erlangs * (shares[tg] + sum(shares[t] for t, _, r, _ in layout if r == tg))
            if small:
                capacity = max(1, round(load * 0.85))
            else:
                capacity = max(2, math.ceil(load + 3 * math.sqrt(load) + 2))
            groups[tg] = {"capacity": capacity, "bundle": bundle}
        obj: dict[str, Any] = {"timezone": tz}
        policies = _policies(i)
        if policies is not None:
            obj["policies"] = policies
        obj["trunk_groups"] = groups
        out[acct] = obj
    return {"accounts": out}


def write_accounts(path: str | Path, accounts: Mapping[str, Any]) -> None:
    """Write the accounts object as YAML (block style, keys in generation order)."""
    text = yaml.safe_dump(dict(accounts), sort_keys=False, default_flow_style=None)
    Path(path).write_text(text, encoding="utf-8")


def load_accounts(path: str | Path) -> dict[str, Any]:
    obj = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    if not isinstance(obj, dict) or not isinstance(obj.get("accounts"), dict):
        raise ValueError(f"{path}: expected a mapping with an `accounts` mapping")
    return obj
