"""Everything ``metering report`` shows, read from ClickHouse.

:func:`load_report` gathers, for one (account, cycle):

- the statement (``read_statement_facts`` rendered by the engine's ``render``: the exact
  object ``metering statement`` prints) and the fair-use counters it was computed from;
- daily Interactions by channel: ``interactions FINAL`` of the cycle, grouped by the local
  calendar day of their origin in the account's time zone;
- the concurrency timeline: the account's (all trunk groups) and each capacity group's
  largest concurrency per time bucket over the cycle's days with activity. The account
  timeline is a sweep over the call records (no per-minute account figure is stored);
  a capacity group's is the same sweep merged (bucket maximum) with the service's stored
  per-minute peaks (``concurrency_minute``). Both describe the same occupancy, but the
  per-minute rows are kept 3 days and the call records 60 (SPEC section 7), so a report
  of a closed cycle mostly relies on the calls;
- the evidence behind the peaks: the calls in progress at the account's billed peak
  instant and at each capacity group's peak instant (``calls FINAL``, non-blocked, not
  retracted, ``started_at <= t < effective end``);
- the basis of every fair-use charge (the counters and rates the amount is computed from).

Times are UTC epoch milliseconds throughout.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Any
from zoneinfo import ZoneInfo

from metering.engine.calendar import Calendar
from metering.engine.rules import (
    MINUTES_OVERAGE_RATE,
    SURCHARGE_RATE,
    charge_kind,
    evaluate,
    round_ratio,
)
from metering.engine.statement import render
from metering.events.decode import EPOCH, to_ms
from metering.storage.client import Client
from metering.storage.reader import account_config, list_statements, read_statement_facts

__all__ = [
    "DEFAULT_MAX_CALL_DURATION_MS",
    "MINUTES_INCLUDED",
    "CallInProgress",
    "ChargeBasis",
    "DailyInteractions",
    "FairUseRow",
    "PeakEvidence",
    "ReportData",
    "ReportNotFound",
    "Timeline",
    "bucket_size_ms",
    "calls_in_progress",
    "load_report",
    "local_midnight",
    "sweep_buckets",
]

MINUTE_MS = 60_000
DEFAULT_MAX_CALL_DURATION_MS = 14_400_000
"""SPEC section 5 default ``max_call_duration`` (a call with no end yet occupies its port
until start + this)."""
MINUTES_INCLUDED = 2500
"""Minutes per user included before the ``minutes_per_user`` overage (SPEC section 6)."""
MAX_BUCKETS = 720
BUCKET_MINUTES: tuple[int, ...] = (1, 2, 5, 10, 15, 30, 60, 120, 180, 360, 720, 1440)
ACCOUNT_SCOPE = "account"
GROUP_SCOPE = "trunk_group:"


class ReportNotFound(LookupError):
    """No statement for (account, cycle); the message says which part is unknown."""


# ------------------------------------------------------------------------------ model


@dataclass(frozen=True, slots=True)
class DailyInteractions:
    """Interactions whose origin falls on one local calendar day, by statement channel."""

    day: date
    by_channel: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.by_channel.values())


@dataclass(frozen=True, slots=True)
class Timeline:
    """Largest concurrency per bucket [t0 + i*bucket_ms, t0 + (i+1)*bucket_ms) within [t0, t1).

    ``peak``/``peak_at`` are the statement's (the billed figures), ``capacity`` the
    group's (or the account's total configured capacity); ``source`` says where the
    bucket values come from (``calls``, or ``calls+concurrency_minute``).
    """

    scope: str
    label: str
    t0: int
    t1: int
    bucket_ms: int
    values: list[int]
    peak: int
    peak_at: int | None
    capacity: int | None
    source: str

    @property
    def max_value(self) -> int:
        return max(self.values, default=0)


@dataclass(frozen=True, slots=True)
class CallInProgress:
    """One call occupying a port at an instant (a row of peak evidence)."""

    call_id: str
    trunk_group: str
    capacity_group: str
    user: str | None
    direction: str
    route_class: str
    started_at: int
    answered_at: int | None
    end_at: int | None  # effective end; None while the call has not ended
    over_capacity: bool
    timed_out: bool


@dataclass(frozen=True, slots=True)
class PeakEvidence:
    """The calls in progress at a peak instant (their number is the peak)."""

    scope: str
    label: str
    peak: int
    peak_at: int
    capacity: int | None
    calls: list[CallInProgress]


@dataclass(frozen=True, slots=True)
class ChargeBasis:
    """How one fair-use charge is computed: ``quantity`` minutes x ``rate`` = ``amount``.

    ``figures`` are the (label, value) pairs the rule was evaluated on, in reading order.
    """

    rule: str
    scope: str
    kind: str  # "overage" | "surcharge"
    quantity: int
    quantity_label: str
    rate: Decimal
    amount: Decimal
    figures: list[tuple[str, str]]


@dataclass(frozen=True, slots=True)
class FairUseRow:
    """One fair-use line of the statement, with the counters it was evaluated from."""

    rule: str
    scope: str
    value: int | float
    threshold: int | float
    status: str
    charge_usd: str
    acd_seconds: float | None
    num: int
    den: int
    aux: int
    basis: ChargeBasis | None


@dataclass(slots=True)
class ReportData:
    account: str
    cycle: str
    timezone: str
    cycle_start: int
    cycle_end: int
    statement: dict[str, Any]
    daily: list[DailyInteractions]
    timelines: list[Timeline]
    evidence: list[PeakEvidence]
    fair_use: list[FairUseRow]
    policies: tuple[str, ...]
    account_capacity: int | None
    range_start: int
    range_end: int
    notes: list[str] = field(default_factory=list)

    @property
    def charges(self) -> list[ChargeBasis]:
        return [r.basis for r in self.fair_use if r.basis is not None]


# ---------------------------------------------------------------------------- helpers


def _rows(client: Client, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in client.query(sql, parameters=params).result_rows]


def local_midnight(d: date, tz: ZoneInfo) -> int:
    """UTC ms of local midnight starting day ``d``."""
    return to_ms(datetime(d.year, d.month, d.day, tzinfo=tz).astimezone(UTC))


def _local_day(ms: int, tz: ZoneInfo) -> date:
    return (EPOCH + timedelta(milliseconds=ms)).astimezone(tz).date()


def bucket_size_ms(lo: int, hi: int, max_buckets: int = MAX_BUCKETS) -> int:
    """The smallest round bucket giving at most ``max_buckets`` buckets over [lo, hi)."""
    span = max(hi - lo, MINUTE_MS)
    for minutes in BUCKET_MINUTES:
        size = minutes * MINUTE_MS
        if -(-span // size) <= max_buckets:
            return size
    return -(-span // max_buckets)


def _n_buckets(lo: int, hi: int, size: int) -> int:
    return max(1, -(-(hi - lo) // size))


def sweep_buckets(
    intervals: Iterable[tuple[int, int]], lo: int, hi: int, size: int
) -> tuple[list[int], int, int | None]:
    """Occupancy of [start, end) intervals: the largest per bucket over [lo, hi), and the
    largest over [lo, hi) with its first instant (None when nothing occupies)."""
    events: list[tuple[int, int]] = []
    occ = 0
    for start, end in intervals:
        if end <= start or end <= lo or start >= hi:
            continue  # zero-length calls occupy nothing
        if start < lo:
            occ += 1
        else:
            events.append((start, 1))
        if end < hi:
            events.append((end, -1))
    events.sort()  # at a tie, ends (-1) before starts (+1)
    values = [0] * _n_buckets(lo, hi, size)
    peak, peak_at = (occ, lo) if occ else (0, None)

    def fill(a: int, b: int, level: int) -> None:
        """Occupancy ``level`` holds on [a, b)."""
        if level <= 0 or b <= a:
            return
        first = (a - lo) // size
        last = (b - 1 - lo) // size
        for i in range(first, min(last, len(values) - 1) + 1):
            if level > values[i]:
                values[i] = level

    t_prev = lo
    i = 0
    n = len(events)
    while i < n:
        t = events[i][0]
        fill(t_prev, t, occ)
        while i < n and events[i][0] == t:
            occ += events[i][1]
            i += 1
        if occ > peak:
            peak, peak_at = occ, t
        t_prev = t
    fill(t_prev, hi, occ)
    return values, peak, peak_at


def _bucket_minutes(rows: Iterable[tuple[int, int]], lo: int, hi: int, size: int) -> list[int]:
    values = [0] * _n_buckets(lo, hi, size)
    for minute, peak in rows:
        if lo <= minute < hi:
            i = (minute - lo) // size
            if peak > values[i]:
                values[i] = peak
    return values


# ---------------------------------------------------------------------------- queries


def _daily_interactions(
    client: Client, account: str, cycle: str, tz: str, channels: Sequence[str]
) -> list[DailyInteractions]:
    rows = _rows(
        client,
        "SELECT toDate(origin, {tz:String}) AS day, channel, count() "
        "FROM interactions FINAL "
        "WHERE account = {a:String} AND cycle = {c:String} AND deleted = 0 "
        "GROUP BY day, channel ORDER BY day, channel",
        {"a": account, "c": cycle, "tz": tz},
    )
    days: dict[date, dict[str, int]] = {}
    for day, channel, n in rows:
        d = day if isinstance(day, date) else date.fromisoformat(str(day))
        per = days.setdefault(d, dict.fromkeys(channels, 0))
        per[str(channel)] = per.get(str(channel), 0) + int(n)
    return [DailyInteractions(d, days[d]) for d in sorted(days)]


def _call_intervals(
    client: Client, account: str, lo: int, hi: int, max_ms: int
) -> list[tuple[int, int, str]]:
    """(start, effective end, capacity group) of the non-blocked calls overlapping [lo, hi)."""
    rows = _rows(
        client,
        "SELECT toUnixTimestamp64Milli(started_at) AS s, "
        "coalesce(toUnixTimestamp64Milli(end_at), s + {mx:Int64}) AS e, capacity_group "
        "FROM calls FINAL "
        "WHERE account = {a:String} AND deleted = 0 AND NOT blocked "
        "AND toUnixTimestamp64Milli(started_at) < {hi:Int64} "
        "AND coalesce(toUnixTimestamp64Milli(end_at), "
        "toUnixTimestamp64Milli(started_at) + {mx:Int64}) > {lo:Int64}",
        {"a": account, "lo": lo, "hi": hi, "mx": max_ms},
    )
    return [(int(s), int(e), str(g)) for s, e, g in rows]


def _minute_peaks(
    client: Client, account: str, lo: int, hi: int
) -> dict[str, list[tuple[int, int]]]:
    rows = _rows(
        client,
        "SELECT trunk_group, toUnixTimestamp64Milli(minute), peak "
        "FROM concurrency_minute FINAL "
        "WHERE account = {a:String} "
        "AND toUnixTimestamp64Milli(minute) >= {lo:Int64} "
        "AND toUnixTimestamp64Milli(minute) < {hi:Int64}",
        {"a": account, "lo": lo, "hi": hi},
    )
    out: dict[str, list[tuple[int, int]]] = {}
    for group, minute, peak in rows:
        out.setdefault(str(group), []).append((int(minute), int(peak)))
    return out


def calls_in_progress(
    client: Client,
    account: str,
    at: int,
    capacity_group: str | None = None,
    max_call_duration_ms: int = DEFAULT_MAX_CALL_DURATION_MS,
) -> list[CallInProgress]:
    """The non-blocked, non-retracted calls occupying a port at instant ``at``
    (``started_at <= at < effective end``), of one capacity group or of all of them."""
    group_cond = "" if capacity_group is None else "AND capacity_group = {g:String} "
    rows = _rows(
        client,
        "SELECT call_id, trunk_group, capacity_group, `user`, direction, route_class, "
        "toUnixTimestamp64Milli(started_at), toUnixTimestamp64Milli(answered_at), "
        "toUnixTimestamp64Milli(end_at), over_capacity, timed_out "
        "FROM calls FINAL "
        "WHERE account = {a:String} AND deleted = 0 AND NOT blocked " + group_cond + "AND "
        "toUnixTimestamp64Milli(started_at) <= {t:Int64} AND "
        "coalesce(toUnixTimestamp64Milli(end_at), "
        "toUnixTimestamp64Milli(started_at) + {mx:Int64}) > {t:Int64} "
        "ORDER BY started_at, call_id",
        {"a": account, "t": at, "g": capacity_group or "", "mx": max_call_duration_ms},
    )
    return [
        CallInProgress(
            call_id=str(cid),
            trunk_group=str(tg),
            capacity_group=str(cg),
            user=None if user is None else str(user),
            direction=str(direction),
            route_class=str(rc),
            started_at=int(s),
            answered_at=None if a is None else int(a),
            end_at=None if e is None else int(e),
            over_capacity=bool(over),
            timed_out=bool(tout),
        )
        for cid, tg, cg, user, direction, rc, s, a, e, over, tout in rows
    ]


def _user_minutes(
    client: Client, account: str, cycle: str, user: str
) -> dict[str, tuple[int, int]]:
    """route class -> (answered calls, billable minutes) of a user's local/domestic_ld calls."""
    rows = _rows(
        client,
        "SELECT route_class, count(), sum(billable_minutes) FROM calls FINAL "
        "WHERE account = {a:String} AND cycle = {c:String} AND deleted = 0 AND NOT blocked "
        "AND answered_at IS NOT NULL AND `user` = {u:String} "
        "AND route_class IN ('local', 'domestic_ld') GROUP BY route_class",
        {"a": account, "c": cycle, "u": user},
    )
    return {str(rc): (int(n), int(m)) for rc, n, m in rows}


# ------------------------------------------------------------------------ fair use


def _ratio_text(num: int, den: int) -> str:
    """A ratio as the statement rounds it (half-up, 4 decimals; 0 when den is 0)."""
    return f"{round_ratio(Fraction(num, den)) if den else 0.0:.4f}"


def _charge_basis(
    client: Client,
    account: str,
    cycle: str,
    rule: str,
    scope: str,
    num: int,
    den: int,
    aux: int,
    billable_minutes: int,
    charge: Decimal,
) -> ChargeBasis | None:
    kind = charge_kind(rule)
    if kind == "none" or charge == 0:
        return None
    if rule == "minutes_per_user":
        user = scope.split(":", 1)[1]
        detail = _user_minutes(client, account, cycle, user)
        calls = sum(n for n, _ in detail.values())
        figures = [
            ("local minutes", f"{detail.get('local', (0, 0))[1]:,}"),
            ("domestic LD minutes", f"{detail.get('domestic_ld', (0, 0))[1]:,}"),
            ("answered local + domestic LD calls", f"{calls:,}"),
            ("counted minutes (local + domestic LD)", f"{num:,}"),
            ("included minutes", f"{MINUTES_INCLUDED:,}"),
        ]
        return ChargeBasis(
            rule,
            scope,
            kind,
            num - MINUTES_INCLUDED,
            "minutes over the included 2,500",
            MINUTES_OVERAGE_RATE,
            charge,
            figures,
        )
    if rule == "rboc_mix":
        figures = [
            ("outbound RBOC minutes", f"{num:,}"),
            ("outbound RBOC + ITOC minutes", f"{den:,}"),
            ("RBOC share", _ratio_text(num, den)),
            ("required", "≥ 0.70"),
        ]
    else:  # call_completion
        acd = Fraction(aux, num * 1000) if num else Fraction(0)
        figures = [
            ("answered outbound calls", f"{num:,}"),
            ("attempted outbound calls (not blocked)", f"{den:,}"),
            ("answer ratio", _ratio_text(num, den)),
            ("mean billable seconds of answered outbound calls", f"{float(acd):,.1f}"),
            ("required", "ratio ≥ 0.90 and mean > 30 s"),
        ]
    return ChargeBasis(
        rule,
        scope,
        kind,
        billable_minutes,
        "billable minutes of the account (all calls)",
        SURCHARGE_RATE,
        charge,
        figures,
    )


# --------------------------------------------------------------------------- loading


def _not_found(client: Client, account: str, cycle: str) -> ReportNotFound:
    cycles = [c for a, c in list_statements(client) if a == account]
    if not cycles:
        return ReportNotFound(f"no usage stored for account {account!r}")
    return ReportNotFound(
        f"no usage for account {account!r} in cycle {cycle} "
        f"(cycles with usage: {', '.join(cycles)})"
    )


def _configured_capacity(groups: dict[str, dict[str, Any]] | None) -> int | None:
    """Total capacity of the account's configured capacity groups (None if any is unlimited
    or nothing is configured)."""
    if not groups:
        return None
    total = 0
    for conf in groups.values():
        conf = conf or {}
        if conf.get("redundant_for"):
            continue
        cap = conf.get("capacity")
        if cap is None:
            return None
        total += int(cap)
    return total


def load_report(
    client: Client,
    account: str,
    cycle: str,
    *,
    max_call_duration_ms: int = DEFAULT_MAX_CALL_DURATION_MS,
) -> ReportData:
    """Everything the report shows; :class:`ReportNotFound` when there is no statement."""
    facts = read_statement_facts(client, account, cycle)
    if facts is None:
        raise _not_found(client, account, cycle)
    statement = render(facts)
    tzname = facts.timezone
    tz = ZoneInfo(tzname)
    cal = Calendar(tzname)
    cycle_start, cycle_end = cal.cycle_bounds(cycle)
    channels = list(statement["interactions"]["by_channel"])
    billable = int(statement["voice"]["billable_minutes"])

    daily = _daily_interactions(client, account, cycle, tzname, channels)
    intervals = _call_intervals(client, account, cycle_start, cycle_end, max_call_duration_ms)
    minutes = _minute_peaks(client, account, cycle_start, cycle_end)

    # The charted range: whole local days from the first to the last activity of the cycle.
    times: list[int] = []
    for s, e, _ in intervals:
        times += [max(s, cycle_start), min(e, cycle_end) - 1]
    for rows in minutes.values():
        times += [m for m, _ in rows]
    for d in daily:
        times += [local_midnight(d.day, tz)]
    if times:
        lo = max(cycle_start, local_midnight(_local_day(min(times), tz), tz))
        hi = min(
            cycle_end,
            local_midnight(_local_day(max(times), tz) + timedelta(days=1), tz),
        )
    else:
        lo, hi = cycle_start, cycle_end
    size = bucket_size_ms(lo, hi)

    cfg = account_config(client, account)
    account_capacity = _configured_capacity(cfg.trunk_groups)
    notes: list[str] = []
    conc = statement["concurrency"]
    acc_values, _, _ = sweep_buckets(((s, e) for s, e, _ in intervals), lo, hi, size)
    timelines = [
        Timeline(
            ACCOUNT_SCOPE,
            "All trunk groups",
            lo,
            hi,
            size,
            acc_values,
            int(conc["peak"]),
            facts.peak_at,
            account_capacity,
            "calls",
        )
    ]
    for group, (peak, peak_at, capacity) in sorted(facts.trunk_groups.items()):
        # Recomputed from the call records (kept 60 days), merged with the stored per-minute
        # peaks (kept 3 days): where both exist they agree, and either may have expired.
        values, _, _ = sweep_buckets(((s, e) for s, e, g in intervals if g == group), lo, hi, size)
        source = "calls"
        stored = minutes.get(group)
        if stored:
            per_minute = _bucket_minutes(stored, lo, hi, size)
            values = [max(a, b) for a, b in zip(values, per_minute, strict=True)]
            source = "calls+concurrency_minute"
        timelines.append(
            Timeline(
                f"{GROUP_SCOPE}{group}",
                f"Trunk group {group}",
                lo,
                hi,
                size,
                values,
                peak,
                peak_at,
                capacity,
                source,
            )
        )

    evidence: list[PeakEvidence] = []
    if facts.peak_at is not None and facts.peak:
        evidence.append(
            PeakEvidence(
                ACCOUNT_SCOPE,
                "All trunk groups (billed peak)",
                facts.peak,
                facts.peak_at,
                account_capacity,
                calls_in_progress(
                    client, account, facts.peak_at, None, max_call_duration_ms=max_call_duration_ms
                ),
            )
        )
    for group, (peak, peak_at, capacity) in sorted(facts.trunk_groups.items()):
        if peak_at is None:
            continue
        evidence.append(
            PeakEvidence(
                f"{GROUP_SCOPE}{group}",
                f"Trunk group {group}",
                peak,
                peak_at,
                capacity,
                calls_in_progress(
                    client, account, peak_at, group, max_call_duration_ms=max_call_duration_ms
                ),
            )
        )

    for ev in evidence:
        if len(ev.calls) < ev.peak:
            notes.append(
                f"{ev.label}: {ev.peak - len(ev.calls):,} of the {ev.peak:,} calls of the peak "
                "are no longer stored (call records are kept 60 days)."
            )

    fair_use: list[FairUseRow] = []
    for item in statement["fair_use"]:
        rule, scope = str(item["rule"]), str(item["scope"])
        c = facts.fair_use[(rule, scope)]
        verdict = evaluate(rule, c.num, c.den, c.aux, billable)
        basis = _charge_basis(
            client, account, cycle, rule, scope, c.num, c.den, c.aux, billable, verdict.charge
        )
        fair_use.append(
            FairUseRow(
                rule=rule,
                scope=scope,
                value=item["value"],
                threshold=item["threshold"],
                status=str(item["status"]),
                charge_usd=str(item["charge_usd"]),
                acd_seconds=item.get("acd_seconds"),
                num=c.num,
                den=c.den,
                aux=c.aux,
                basis=basis,
            )
        )

    return ReportData(
        account=account,
        cycle=cycle,
        timezone=tzname,
        cycle_start=cycle_start,
        cycle_end=cycle_end,
        statement=statement,
        daily=daily,
        timelines=timelines,
        evidence=evidence,
        fair_use=fair_use,
        policies=facts.policies,
        account_capacity=account_capacity,
        range_start=lo,
        range_end=hi,
        notes=notes,
    )
