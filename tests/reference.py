"""Independent brute-force reference model of SPEC sections 1-6 and 9 (the test oracle).

It takes every accepted event at once, in any order, and recomputes every statement from
scratch with the most literal reading of the SPEC: no incremental state, no running
counters, concurrency by counting the calls that occupy each candidate instant. Property
tests compare the streaming engine against it. Only the output formatting is shared with
the engine (:func:`metering.engine.statement.render` and :func:`metering.engine.rules.evaluate`,
which it calls); everything else is computed here.

Readings of the SPEC taken here where it is open (design.md "Interpretations" is followed
where it decides; the rest is listed so the engine can align):

* Dedupe (SPEC 2): one event is kept per (source, id), the first in list (arrival) order.
  Under the SPEC 3 precondition (every event within the allowed lateness) a repeat always
  falls inside the 24 h horizon, so ``dedupe_horizon_ms`` and ``allowed_lateness_ms`` do
  not change the final statements; they are accepted for signature parity only.
* ``account.configured`` events are ignored (configuration comes from ``accounts``) and do
  not move the watermark.
* Call description (SPEC 2 + design "Lifecycle wins over CDR"): a (subject, call_id) with
  at least one ``call.started`` is described by lifecycle events and its CDRs are dropped;
  otherwise by its CDR. Among several of one kind (started, answered, ended, CDR) the one
  with the smallest (time, source, id) is kept. answered/ended without a start or a CDR
  are orphans and ignored.
* Degenerate times (a generator should not produce them): an end earlier than the start
  is taken as the start (zero-length call); an answer outside [start, effective end] is
  ignored (the call is unanswered).
* A call with no end is timed out when start + max_call_duration <= the account's
  watermark (its largest event time). Otherwise it is still in progress: it occupies
  [start, start + max_call_duration) for concurrency, is not timed out, counts as
  answered if it has an answer, and has no billable time (minutes, ms) yet.
* ``call_completion``'s ``aux`` is the exact sum of billable *milliseconds* of answered
  outbound calls (as rules.RULES now documents); minutes use ceil on milliseconds.
* ``nlp_share``: an execution is a distinct ``execution_id`` among ``smartflow.triggered``
  of the account, counted in the cycle of its first trigger; it has NLP when any
  ``nlp.used`` of the account carries that ``execution_id`` (at any time).
* ``redundant_for`` chains are followed to the group that is not redundant for another.
* A statement exists for every cycle holding a call start (blocked included), a message,
  an execution (where it is counted) or an Interaction's origin of the account, or reached
  by a non-blocked call's interval (the lead's choice: a call carried over a cycle boundary
  is billed as that cycle's peak). A trigger of an execution counted in an earlier cycle,
  on a messaging channel, only adds an item to a conversation: alone, it makes no
  statement (design.md, "Which cycles have a statement").
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from metering.engine.rules import rules_for
from metering.engine.statement import Counter, StatementFacts, render
from metering.events.decode import to_ms
from metering.events.models import (
    AccountConfigured,
    AccountData,
    CallAnswered,
    CallCompleted,
    CallEnded,
    CallStarted,
    MessageReceived,
    MessageSent,
    NlpUsed,
    SmartflowTriggered,
)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
SECOND_MS = 1000
MINUTE_MS = 60_000
DAY_MS = 86_400_000
FAMILY = {"sms": "sms", "mms": "sms", "whatsapp": "whatsapp", "facebook": "facebook"}
MINUTE_ROUTES = ("local", "domestic_ld")  # minutes_per_user (SPEC 6)


# --- SPEC 1: time -------------------------------------------------------------------------


def local_dt(ms: int, tz: ZoneInfo) -> datetime:
    return (EPOCH + timedelta(milliseconds=ms)).astimezone(tz)


def local_midnight_ms(d: date, tz: ZoneInfo) -> int:
    """UTC ms of local midnight starting day ``d`` (zoneinfo fold=0 in gaps/overlaps)."""
    return to_ms(datetime(d.year, d.month, d.day, tzinfo=tz))


def cycle_of(ms: int, tz: ZoneInfo) -> str:
    """SPEC 1: the calendar month, in the account's zone, holding the instant."""
    t = local_dt(ms, tz)
    return f"{t.year:04d}-{t.month:02d}"


def cycle_bounds(cycle: str, tz: ZoneInfo) -> tuple[int, int]:
    """SPEC 1: [local midnight of the 1st, local midnight of next month's 1st)."""
    y, m = int(cycle[:4]), int(cycle[5:])
    nxt = date(y + (m == 12), m % 12 + 1, 1)
    return local_midnight_ms(date(y, m, 1), tz), local_midnight_ms(nxt, tz)


def deadline_of(origin: int, tz: ZoneInfo) -> int:
    """SPEC 4: end of the origin's local calendar day plus 24 absolute hours."""
    day = local_dt(origin, tz).date()
    return local_midnight_ms(day + timedelta(days=1), tz) + DAY_MS


def key(e: Any) -> tuple[int, str, str]:
    """SPEC 3: processing order (event time, source, id)."""
    return (to_ms(e.time), e.source, e.id)


# --- SPEC 5: calls ------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    call_id: str
    order: tuple[int, str, str]  # (start, source, id) of the event carrying the start
    start: int
    answer: int | None  # None: unanswered
    end: int  # effective end: the call occupies [start, end)
    ended: bool  # False: still in progress at the watermark
    timed_out: bool
    blocked: bool
    owner: str  # trunk group owning the capacity (SPEC 5 "capacity group")
    direction: str
    route_class: str
    user: str | None
    region: str | None
    carrier_class: str
    area: str  # local_calling_area, "unknown" when absent (SPEC 6)

    @property
    def billable_ms(self) -> int:
        """SPEC 5: end - answer; zero when unanswered (and while in progress)."""
        if self.blocked or self.answer is None or not self.ended:
            return 0
        return self.end - self.answer

    @property
    def minutes(self) -> int:
        return -(-self.billable_ms // MINUTE_MS)  # ceil


def owner_of(tg: str, cfg: AccountData) -> str:
    """SPEC 5: a group ``redundant_for`` another shares the other's capacity."""
    seen = {tg}
    while tg in cfg.trunk_groups and cfg.trunk_groups[tg].redundant_for is not None:
        tg = cfg.trunk_groups[tg].redundant_for  # type: ignore[assignment]
        if tg in seen:
            break
        seen.add(tg)
    return tg


def capacity_of(owner: str, cfg: AccountData) -> int | None:
    """SPEC 8: an unconfigured group has unlimited (None) capacity and bundle ``user``."""
    return cfg.trunk_groups[owner].capacity if owner in cfg.trunk_groups else None


def bundle_of(owner: str, cfg: AccountData) -> str:
    return cfg.trunk_groups[owner].bundle if owner in cfg.trunk_groups else "user"


def build_calls(evs: list[Any], cfg: AccountData, watermark: int, max_ms: int) -> list[Call]:
    """Correlate one account's (sorted) call events by call_id (SPEC 2) into calls."""
    by_call: dict[str, dict[type, list[Any]]] = defaultdict(lambda: defaultdict(list))
    for e in evs:
        if isinstance(e, CallStarted | CallAnswered | CallEnded | CallCompleted):
            by_call[e.data.call_id][type(e)].append(e)  # evs sorted: [0] is the smallest
    calls = []
    for call_id, g in by_call.items():
        if g[CallStarted]:  # lifecycle description wins over a CDR (design.md)
            carrier = g[CallStarted][0]
            d = carrier.data
            start = to_ms(carrier.time)
            answer = to_ms(g[CallAnswered][0].time) if g[CallAnswered] else None
            end = to_ms(g[CallEnded][0].time) if g[CallEnded] else None
        elif g[CallCompleted]:  # a CDR stands for the three lifecycle events (SPEC 2)
            carrier = g[CallCompleted][0]
            d = carrier.data
            start = to_ms(d.started_at)
            answer = None if d.answered_at is None else to_ms(d.answered_at)
            end = to_ms(d.ended_at)
        else:
            continue  # orphan lifecycle events: dead-lettered, never a call
        if end is not None and end < start:
            end = start
        limit = start + max_ms
        if end is not None and end <= limit:
            eff, ended, timed_out = end, True, False
        elif end is not None or limit <= watermark:  # SPEC 5: longer than max, or no end
            eff, ended, timed_out = limit, True, True
        else:  # no end yet and the max duration not reached: in progress
            eff, ended, timed_out = limit, False, False
        if answer is not None and not start <= answer <= eff:
            answer = None
        calls.append(
            Call(
                call_id=call_id,
                order=(start, carrier.source, carrier.id),
                start=start,
                answer=answer,
                end=eff,
                ended=ended,
                timed_out=timed_out,
                blocked=d.blocked,
                owner=owner_of(d.trunk_group, cfg),
                direction=d.direction,
                route_class=d.route_class,
                user=d.user,
                region=d.region,
                carrier_class=d.carrier_class,
                area=d.local_calling_area if d.local_calling_area is not None else "unknown",
            )
        )
    return calls


def occupying(calls: list[Call], t: int) -> int:
    """SPEC 5: calls occupying a port at instant t, half-open [start, end)."""
    return sum(1 for c in calls if c.start <= t < c.end)


def peak_in(calls: list[Call], lo: int, hi: int) -> tuple[int, int | None]:
    """Largest occupancy at an instant of [lo, hi) and the first instant it is reached.

    Occupancy is piecewise constant and changes only at starts and ends, so checking the
    cycle start and every start/end inside the cycle, in time order, is exhaustive.
    """
    instants = {lo}
    instants |= {c.start for c in calls if lo <= c.start < hi}
    instants |= {c.end for c in calls if lo <= c.end < hi}
    best, at = 0, None
    for t in sorted(instants):
        n = occupying(calls, t)
        if n > best:
            best, at = n, t
    return best, at


def over_capacity(calls: list[Call], cfg: AccountData) -> set[str]:
    """SPEC 5: in (start, source, id) order, a call starting while its capacity group
    already has ``capacity`` earlier calls occupying is over capacity (and occupies)."""
    ordered = sorted((c for c in calls if not c.blocked), key=lambda c: c.order)
    over = set()
    for i, c in enumerate(ordered):
        cap = capacity_of(c.owner, cfg)
        if cap is None:
            continue
        earlier = [p for p in ordered[:i] if p.owner == c.owner]
        if occupying(earlier, c.start) >= cap:
            over.add(c.call_id)
    return over


# --- SPEC 4: interactions -----------------------------------------------------------------


def interaction_origins(evs: list[Any], tz: ZoneInfo) -> list[tuple[int, str]]:
    """(origin, statement channel) of every Interaction of one account (sorted events)."""
    origins: list[tuple[int, str]] = []
    items: dict[tuple[str, str, str], list[int]] = defaultdict(list)
    for e in evs:
        t = to_ms(e.time)
        if isinstance(e, MessageSent | MessageReceived):
            d = e.data
            items[(FAMILY[d.channel], d.business_address, d.remote_address)].append(t)
        elif isinstance(e, SmartflowTriggered):
            sf = e.data
            if sf.channel in FAMILY:  # a conversation item on a messaging channel
                conv = (FAMILY[sf.channel], sf.business_address or "", sf.remote_address or "")
                items[conv].append(t)
            else:  # voice / api: one Interaction each
                origins.append((t, sf.channel))
    for (family, _, _), times in items.items():
        deadline: int | None = None
        for t in times:  # already in time order
            if deadline is None or t >= deadline:  # t >= deadline opens a new one
                origins.append((t, family))
                deadline = deadline_of(t, tz)
    return origins


# --- one account --------------------------------------------------------------------------


def account_statements(
    account: str, cfg: AccountData, evs: list[Any], max_ms: int
) -> dict[str, dict[str, Any]]:
    tz = ZoneInfo(cfg.timezone)
    watermark = max(to_ms(e.time) for e in evs)
    calls = build_calls(evs, cfg, watermark, max_ms)
    nonblocked = [c for c in calls if not c.blocked]  # the only calls occupying ports
    over = over_capacity(calls, cfg)
    origins = interaction_origins(evs, tz)
    messages = [e for e in evs if isinstance(e, MessageSent | MessageReceived)]
    triggers = [e for e in evs if isinstance(e, SmartflowTriggered)]
    executions: dict[str, int] = {}  # execution_id -> time of its first trigger
    for e in triggers:
        executions.setdefault(e.data.execution_id, to_ms(e.time))
    with_nlp = {e.data.execution_id for e in evs if isinstance(e, NlpUsed)}
    wanted = set(rules_for(tuple(cfg.policies)))

    cycles = {cycle_of(c.start, tz) for c in calls}
    cycles |= {cycle_of(to_ms(e.time), tz) for e in messages}
    # a cycle with an execution (counted where its first trigger is) or an Interaction; a
    # later trigger of the same execution on a messaging channel is only a conversation
    # item, which may belong to an Interaction of the cycle before
    cycles |= {cycle_of(t, tz) for t in executions.values()}
    cycles |= {cycle_of(t, tz) for t, _ in origins}
    # a call spanning a cycle boundary occupies (and is billed as a peak) in both cycles,
    # so a cycle it reaches has a statement even when nothing starts in it
    for c in calls:
        if not c.blocked and c.end > c.start:
            cycles.add(cycle_of(c.end - 1, tz))
    out = {}
    for cycle in sorted(cycles):
        lo, hi = cycle_bounds(cycle, tz)
        started = [c for c in calls if lo <= c.start < hi]  # a call counts where it starts
        nb = [c for c in started if not c.blocked]
        f = StatementFacts(account, cycle, cfg.timezone, tuple(cfg.policies))

        # SPEC 4: interactions in the cycle of their origin; messages by their own time
        f.interactions = {}
        for origin, channel in origins:
            if lo <= origin < hi:
                f.interactions[channel] = f.interactions.get(channel, 0) + 1
        msgs = [e for e in messages if lo <= to_ms(e.time) < hi]
        f.messages = len(msgs)
        f.segments = sum(e.data.segments for e in msgs)

        # SPEC 5: counts over calls started in the cycle
        f.attempts = len(started)
        f.blocked = sum(c.blocked for c in started)
        f.answered = sum(c.answer is not None for c in nb)
        f.timed_out = sum(c.timed_out for c in nb)
        f.over_capacity = sum(c.call_id in over for c in nb)
        f.minutes_by_route_class = {}
        for c in nb:
            rc = c.route_class
            f.minutes_by_route_class[rc] = f.minutes_by_route_class.get(rc, 0) + c.minutes

        # SPEC 5: peaks over every call occupying an instant of the cycle
        f.peak, f.peak_at = peak_in(nonblocked, lo, hi)
        f.trunk_groups = {}
        for owner in sorted({c.owner for c in nonblocked}):
            peak, at = peak_in([c for c in nonblocked if c.owner == owner], lo, hi)
            if peak >= 1:
                f.trunk_groups[owner] = (peak, at, capacity_of(owner, cfg))

        # SPEC 6: fair-use counters (num, den, aux) as documented in rules.RULES
        fu: dict[tuple[str, str], Counter] = {}

        def minutes(pred: Callable[[Call], bool], nb: list[Call] = nb) -> int:
            return sum(c.minutes for c in nb if pred(c))

        out_c = [c for c in nb if c.direction == "outbound"]
        for user in sorted({c.user for c in nb if c.user is not None}):
            scope = f"user:{user}"

            def user_minute(c: Call, u: str = user) -> bool:
                return c.user == u and c.route_class in MINUTE_ROUTES

            mpu = minutes(user_minute)
            fu[("minutes_per_user", scope)] = Counter(mpu)
            bundle, _ = peak_in([c for c in nonblocked if c.user == user], lo, hi)
            fu[("bundle_sharing", scope)] = Counter(bundle)
        all_minutes = minutes(lambda c: True)
        rboc = minutes(lambda c: c.direction == "outbound" and c.carrier_class == "rboc")
        itoc = minutes(lambda c: c.direction == "outbound" and c.carrier_class == "itoc")
        fu[("rboc_mix", "account")] = Counter(rboc, rboc + itoc, all_minutes)
        answered_out = [c for c in out_c if c.answer is not None]
        fu[("call_completion", "account")] = Counter(
            len(answered_out), len(out_c), sum(c.billable_ms for c in answered_out)
        )
        dld = [c for c in out_c if c.route_class == "domestic_ld"]
        fu[("alaska_hawaii_share", "account")] = Counter(
            sum(c.minutes for c in dld if c.region in ("AK", "HI")), sum(c.minutes for c in dld)
        )
        fu[("toll_free_share", "account")] = Counter(
            minutes(lambda c: c.route_class == "toll_free"), all_minutes
        )
        for owner in sorted({c.owner for c in nb if bundle_of(c.owner, cfg) == "call_path"}):
            by_area: dict[str, int] = defaultdict(int)
            for c in nb:
                if c.owner == owner and c.route_class == "local":
                    by_area[c.area] += c.minutes
            fu[("local_calling_area", f"trunk_group:{owner}")] = Counter(
                max(by_area.values(), default=0), sum(by_area.values())
            )
        execs = [x for x, t in executions.items() if lo <= t < hi]
        fu[("nlp_share", "account")] = Counter(sum(x in with_nlp for x in execs), len(execs))
        starts = [c.start for c in started]  # blocked included
        cps = max((sum(t <= s < t + SECOND_MS for s in starts) for t in starts), default=0)
        fu[("calls_per_second", "account")] = Counter(cps)
        f.fair_use = {k: v for k, v in fu.items() if k[0] in wanted}
        out[cycle] = render(f)
    return out


def reference_statements(
    events: list[Any],
    accounts: dict[str, AccountData],
    *,
    max_call_duration_ms: int = 4 * 3600 * 1000,
    allowed_lateness_ms: int = 900_000,
    dedupe_horizon_ms: int = 86_400_000,
) -> dict[tuple[str, str], dict[str, Any]]:
    """Every (account, cycle) statement (SPEC 9) of the decoded, accepted ``events``."""
    del allowed_lateness_ms, dedupe_horizon_ms  # see the module docstring
    kept: dict[tuple[str, str], Any] = {}
    for e in events:  # SPEC 2: a repeated (source, id) is ignored
        if not isinstance(e, AccountConfigured):
            kept.setdefault((e.source, e.id), e)
    by_account: dict[str, list[Any]] = defaultdict(list)
    for e in sorted(kept.values(), key=key):  # SPEC 3: (time, source, id) order
        by_account[e.subject].append(e)
    result = {}
    for account, evs in by_account.items():
        cfg = accounts.get(account) or AccountData()
        for cycle, statement in account_statements(account, cfg, evs, max_call_duration_ms).items():
            result[(account, cycle)] = statement
    return result
