"""The metering engine: usage events in, facts and output events out (SPEC sections 1-7).

Pure and deterministic: no IO, no wall clock, no Faust. One :class:`Engine` holds the
state of many accounts; everything about one account lives in its
:class:`~metering.engine.state.AccountState`, so a streaming worker that owns an account
(its partition) can keep, snapshot and restore that state on its own.

Contract:

* :meth:`Engine.process` takes one decoded input event (and its original bytes) and
  returns ``"accepted"``, ``"duplicate"`` or ``"rejected"``. It updates the account's
  counters at once.
* :meth:`Engine.drain` finishes what depends on many events at once (interval sweeps for
  concurrency, time-outs, orphans, closing interactions, fair-use evaluation) and returns
  everything produced since the previous drain as a :class:`Batch` of facts, output events
  and rejections. Call it after every batch of input; results after a drain are final for
  the events seen.
* The statement of a cycle after all events and a final drain depends only on the *set*
  of accepted events, never on their arrival order (within the allowed lateness) or on
  where the drains fell.
"""

from __future__ import annotations

import bisect
import hashlib
import heapq
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from metering.engine.accounts import AccountConfig, default_config, resolve
from metering.engine.calendar import Calendar, calendar_for
from metering.engine.concurrency import (
    MINUTE_MS,
    CyclePeaks,
    Interval,
    cps_max,
    merge_range,
    sweep,
)
from metering.engine.facts import (
    AccountFact,
    CallFact,
    CycleVoiceFact,
    ExecutionFact,
    Fact,
    FairUseFact,
    InteractionFact,
    MessageFact,
    MinutePeakFact,
    OutputEvent,
    PeakFact,
    RawEventFact,
)
from metering.engine.rules import (
    RULES,
    charge_kind,
    evaluate,
    round_ratio,
    rules_for,
    threshold_value,
)
from metering.engine.state import (
    AccountState,
    Call,
    CycleState,
    Execution,
    Interaction,
    Peaks,
    PendingNlp,
    Piece,
)
from metering.engine.statement import Counter, StatementFacts
from metering.events.decode import Rejection, ms_to_rfc3339, to_ms
from metering.events.models import (
    EVENT_TYPE,
    AccountConfigured,
    CallAnswered,
    CallCompleted,
    CallEnded,
    CallStarted,
    InputEvent,
    MessageReceived,
    MessageSent,
    NlpUsed,
    SmartflowTriggered,
    event_type,
)

Verdict = Literal["accepted", "duplicate", "rejected"]
FAMILY = {"sms": "sms", "mms": "sms", "whatsapp": "whatsapp", "facebook": "facebook"}
FAR = 2**62
#: how far behind (watermark - allowed lateness) the live sweep keeps its checkpoint,
#: and by how much it must be able to move before it does
PREFIX_LAG_MS = 10 * 60_000
PREFIX_STEP_MS = 5 * 60_000
#: the settle frontier moves in steps of this size (fewer sweeps; calls stay a bit longer)
SETTLE_STEP_MS = 15 * 60_000
_SHELL, _NLP, _EXEC, _CLOSE, _FINAL = 1, 2, 3, 4, 5
FLAG_WARNED, FLAG_BREACHED, FLAG_FAILING = 1, 2, 4
SURCHARGE_RULES = frozenset(n for n in RULES if charge_kind(n) == "surcharge")
RATIO_RULES = frozenset(n for n, r in RULES.items() if r.ratio)


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """Time rules of the SPEC, in milliseconds."""

    allowed_lateness_ms: int = 15 * 60_000
    dedupe_horizon_ms: int = 24 * 3_600_000
    max_call_duration_ms: int = 4 * 3_600_000

    @property
    def settle_ms(self) -> int:
        """How far behind the watermark call intervals stay in memory."""
        return 2 * self.max_call_duration_ms + self.allowed_lateness_ms


@dataclass(slots=True)
class Batch:
    """What one :meth:`Engine.drain` produced, in emission order per kind."""

    facts: list[Fact] = field(default_factory=list)
    outputs: list[OutputEvent] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    #: how many of ``rejections`` are events accepted by an earlier ``process`` call
    #: (orphans, lifecycle pieces displaced by a CDR)
    retracted: int = 0
    #: accounts whose state changed in this drain (what a streaming adapter checkpoints)
    accounts: list[str] = field(default_factory=list)


def _id(*parts: object) -> str:
    return hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=12).hexdigest()


class Engine:
    """Incremental metering over many accounts (see the module docstring)."""

    def __init__(
        self,
        config: EngineConfig | None = None,
        accounts: Mapping[str, AccountConfig] | None = None,
    ) -> None:
        self.config = config or EngineConfig()
        # how long behind the watermark a (source, id) key is held (see _expire)
        self._keep = self.config.dedupe_horizon_ms + self.config.allowed_lateness_ms
        self._configs: dict[str, AccountConfig] = dict(accounts or {})
        self._states: dict[str, AccountState] = {}
        self._dirty: set[str] = set()
        self._batch = Batch()
        self._dirty_calls: dict[str, set[str]] = {}
        self._dirty_inter: dict[str, dict[str, Interaction]] = {}
        self._dirty_exec: dict[str, set[str]] = {}
        self._dirty_cycles: dict[str, set[str]] = {}
        self._cals: dict[str, Calendar] = {}
        self._ivs: dict[str, dict[str, Interval]] = {}
        self._pending: dict[str, set[str]] = {}
        self._last_cycle: tuple[AccountState, str, CycleState] | None = None
        self._handlers: dict[type, Any] = {
            CallStarted: self._call_started,
            CallAnswered: self._call_piece,
            CallEnded: self._call_piece,
            CallCompleted: self._call_completed,
            MessageSent: self._message,
            MessageReceived: self._message,
            SmartflowTriggered: self._smartflow,
            NlpUsed: self._nlp,
            AccountConfigured: self._configured,
        }

    # ----------------------------------------------------------------- accounts
    def config_of(self, account: str) -> AccountConfig:
        cfg = self._configs.get(account)
        if cfg is None:
            cfg = self._configs[account] = default_config(account)
        return cfg

    def configure(self, account: str, cfg: AccountConfig) -> None:
        """Apply a configuration (YAML or ``account.configured``); later calls win.

        What the account's events so far left pending is finished under the old
        configuration first (as a drain would), so the result does not depend on where
        the drains fell; then every cycle in memory is published again under the new one
        (its presets may list other rules, its groups other bundles and capacities)."""
        st = self._states.get(account)
        if st is not None and account in self._dirty:
            self._drain_account(st)
        self._configs[account] = cfg
        self._cals.pop(account, None)
        if st is not None:
            st.dirty_from = -FAR  # capacities may have changed: sweep everything again
            self._dirty_cycles.setdefault(account, set()).update(st.cycles)
            self._dirty.add(account)
        self._batch.facts.append(_account_fact(cfg))

    def accounts(self) -> list[str]:
        return sorted(self._states)

    def state(self, account: str) -> AccountState:
        st = self._states.get(account)
        if st is None:
            st = self._states[account] = AccountState(account=account)
            self._batch.facts.append(_account_fact(self.config_of(account)))
        return st

    def forget(self, account: str, config: AccountConfig | None = None) -> None:
        """Drop everything held about ``account`` (state, pending work, caches); its
        configuration becomes ``config`` (None: the defaults). Call it between drains, e.g.
        when a streaming worker hands the account's partition to another worker."""
        self._states.pop(account, None)
        self._dirty.discard(account)
        for per_account in (
            self._dirty_calls,
            self._dirty_inter,
            self._dirty_exec,
            self._dirty_cycles,
            self._cals,
            self._ivs,
            self._pending,
        ):
            per_account.pop(account, None)
        self._last_cycle = None
        if config is None:
            self._configs.pop(account, None)
        else:
            self._configs[account] = config

    def restore(self, state: AccountState) -> None:
        """Adopt a snapshot of one account (from a changelog)."""
        self._states[state.account] = state
        self._last_cycle = None
        self._ivs.pop(state.account, None)

    def _cycle(self, st: AccountState, cycle: str) -> CycleState:
        """The cycle's counters, marked for publishing at the next drain."""
        last = self._last_cycle
        if last is not None and last[0] is st and last[1] == cycle:
            return last[2]
        cs = st.cycles.get(cycle)
        if cs is None:
            cs = st.cycles[cycle] = CycleState()
        self._dirty_cycles.setdefault(st.account, set()).add(cycle)
        self._last_cycle = (st, cycle, cs)
        return cs

    # ----------------------------------------------------------------- intake
    def process(self, ev: InputEvent, raw: bytes, topic: str | None = None) -> Verdict:
        """Apply one validated event. Never raises on bad data: it dead-letters it."""
        account = ev.subject
        st = self._states.get(account) or self.state(account)
        t = to_ms(ev.time)
        key = f"{ev.source}\x1f{ev.id}"
        seen = st.seen
        first = seen.get(key)
        if first is not None and first + self._keep > max(st.watermark, t):
            return "duplicate"
        seen[key] = t
        st.seen_log.append((t, key))
        if t > st.watermark:
            st.watermark = t
        self._dirty.add(account)
        cal = self._cals.get(account)
        if cal is None:
            cal = self._cals[account] = calendar_for(self.config_of(account).timezone)
        cls = type(ev)
        verdict: Verdict = self._handlers[cls](st, ev, t, raw, cal)
        if verdict == "accepted":
            self._batch.facts.append(
                RawEventFact(
                    account=account,
                    source=ev.source,
                    id=ev.id,
                    type=EVENT_TYPE[cls],
                    time=t,
                    cycle=cal.cycle_of(t),
                    topic=topic,
                    payload=raw,
                )
            )
        return verdict

    def _reject(self, raw: bytes, reason: str, detail: str, etype: str, account: str) -> None:
        self._batch.rejections.append(Rejection(raw, reason, detail, etype, account))

    def _configured(
        self, st: AccountState, ev: AccountConfigured, t: int, raw: bytes, cal: Calendar
    ) -> Verdict:
        try:
            cfg = resolve(ev.subject, ev.data)
        except ValueError as exc:
            self._reject(raw, "schema", str(exc), event_type(ev), ev.subject)
            return "rejected"
        self.configure(ev.subject, cfg)
        return "accepted"

    # ----------------------------------------------------------------- calls
    def _call_started(
        self, st: AccountState, ev: CallStarted, t: int, raw: bytes, cal: Calendar
    ) -> Verdict:
        d = ev.data
        if self._final(st, d.call_id, raw, "call.started"):
            return "rejected"
        call = self._call(st, d.call_id)
        new = Piece(t, ev.source, ev.id, raw)
        if call.started is not None:
            if not self._contest(st, call.started, new, "call.started", d.call_id):
                return "rejected"
        elif call.cdr is not None:
            # a lifecycle description beats a CDR (design.md)
            if call.cdr.raw is None:
                self._lose(st, new, "call.started", d.call_id, "a CDR that is already final")
                return "rejected"
            self._lose(st, call.cdr, "call.completed", d.call_id, "lifecycle events", retract=True)
            call.cdr = None
            call.cdr_times = None
        call.started = new
        return self._redescribed(st, call, d, cal)

    def _final(self, st: AccountState, call_id: str, raw: bytes, etype: str) -> bool:
        """A description (a start or a CDR) of a call that already left memory, within
        the dedupe horizon after that: the call is described twice, and the newcomer is
        dead-lettered (``duplicate_call``) instead of counting the call again."""
        if call_id not in st.final_calls:
            return False
        self._reject(
            raw,
            "duplicate_call",
            f"call {call_id} is already described, and final (it left memory)",
            etype,
            st.account,
        )
        return True

    def _call(self, st: AccountState, call_id: str) -> Call:
        call = st.calls.get(call_id)
        if call is None:
            call = st.calls[call_id] = Call(call_id=call_id)
        return call

    def _contest(
        self, st: AccountState, incumbent: Piece, new: Piece, etype: str, call_id: str
    ) -> bool:
        """Two events of one kind for one call: the smaller (time, source, id) wins; the
        loser is dead-lettered as ``duplicate_call``. True when the newcomer wins."""
        if incumbent.raw is not None and new.key() < incumbent.key():
            self._lose(st, incumbent, etype, call_id, "an earlier event", retract=True)
            return True
        self._lose(st, new, etype, call_id, "an earlier event")
        return False

    def _lose(
        self,
        st: AccountState,
        piece: Piece,
        etype: str,
        call_id: str,
        winner: str,
        retract: bool = False,
    ) -> None:
        assert piece.raw is not None
        if retract:
            self._batch.retracted += 1
        self._reject(
            piece.raw,
            "duplicate_call",
            f"call {call_id} is already described by {winner}",
            etype,
            st.account,
        )

    def _fill(self, call: Call, account: str, d: Any, cal: Calendar) -> None:
        cfg = self.config_of(account)
        call.trunk_group = d.trunk_group
        call.group = cfg.group(d.trunk_group).owner
        call.direction = d.direction
        call.route_class = d.route_class
        call.user = d.user
        call.from_ = d.from_
        call.to = d.to
        call.region = d.region
        call.carrier_class = d.carrier_class
        call.lca = d.local_calling_area
        call.blocked = d.blocked

    def _call_piece(
        self, st: AccountState, ev: CallAnswered | CallEnded, t: int, raw: bytes, cal: Calendar
    ) -> Verdict:
        cid = ev.data.call_id
        call = self._call(st, cid)
        new = Piece(t, ev.source, ev.id, raw)
        answered = isinstance(ev, CallAnswered)
        incumbent = call.answered if answered else call.ended
        if incumbent is not None and not self._contest(st, incumbent, new, event_type(ev), cid):
            return "rejected"
        if answered:
            call.answered = new
        else:
            call.ended = new
        if call.started is None:
            # without a start (yet): an orphan, or a piece a CDR already describes
            late = self.config.max_call_duration_ms + self.config.allowed_lateness_ms
            heapq.heappush(st.expiries, (t + late, _SHELL, cid))
        else:
            self._pending_call(st, call)
        return "accepted"

    def _call_completed(
        self, st: AccountState, ev: CallCompleted, t: int, raw: bytes, cal: Calendar
    ) -> Verdict:
        d = ev.data
        if self._final(st, d.call_id, raw, "call.completed"):
            return "rejected"
        call = self._call(st, d.call_id)
        new = Piece(to_ms(ev.time), ev.source, ev.id, raw)
        if call.started is not None:
            self._lose(st, new, "call.completed", d.call_id, "lifecycle events")
            return "rejected"
        if call.cdr is not None and not self._contest(
            st, call.cdr, new, "call.completed", d.call_id
        ):
            return "rejected"
        call.cdr = new
        call.cdr_times = (
            to_ms(d.started_at),
            None if d.answered_at is None else to_ms(d.answered_at),
            to_ms(d.ended_at),
        )
        return self._redescribed(st, call, d, cal)

    def _redescribed(self, st: AccountState, call: Call, d: Any, cal: Calendar) -> Verdict:
        """A new description of ``call`` (``call.started`` data or a CDR) won: take back
        what the call contributed, copy the description's fields, settle it at the drain."""
        self._retract(st, call)
        self._fill(call, st.account, d, cal)
        self._pending_call(st, call)
        return "accepted"

    def _derive(self, call: Call, cal: Calendar) -> None:
        """The times the rules use, from the winning description (degenerate times: an end
        before the start is the start; an answer outside [start, effective end] is none)."""
        if call.started is not None:
            start = call.started.time
            answer = None if call.answered is None else call.answered.time
            end = None if call.ended is None else call.ended.time
            call.described_by = "lifecycle"
            call.key_src, call.key_id = call.started.src, call.started.id
        else:
            assert call.cdr is not None and call.cdr_times is not None
            start, answer, end = call.cdr_times
            call.described_by = "cdr"
            call.key_src, call.key_id = call.cdr.src, call.cdr.id
        if end is not None and end < start:
            end = start
        call.start, call.end = start, end
        limit = start + self.config.max_call_duration_ms
        eff_end = end if end is not None and end <= limit else limit
        call.answer = answer if answer is not None and start <= answer <= eff_end else None
        call.cycle = cal.cycle_of(start)
        if call.blocked:
            call.over = False

    def _pending_call(self, st: AccountState, call: Call) -> None:
        """The call's description changed: settle it (once) at the next drain."""
        self._pending.setdefault(st.account, set()).add(call.call_id)

    def _settle_call(self, st: AccountState, call: Call) -> None:
        """Recompute a described call's derived state and re-apply its contribution."""
        self._retract(st, call)
        before = (call.start, self.effective_end(call)) if call.start is not None else None
        self._derive(call, calendar_for(self.config_of(st.account).timezone))
        assert call.start is not None
        after = (call.start, self.effective_end(call))
        cache = self._ivs.get(st.account)
        if cache is not None:
            if call.blocked:
                cache.pop(call.call_id, None)
            else:
                cache[call.call_id] = self._interval(call)
        if before != after:
            changed = (
                after[0] if before is None or before[0] != after[0] else min(before[1], after[1])
            )
            if before is not None and before[0] != after[0]:
                changed = min(changed, before[0])
            if changed < st.dirty_from:
                st.dirty_from = changed
        maxd = self.config.max_call_duration_ms
        if call.end is None:
            call.timed_out = st.watermark >= call.start + maxd
            if not call.timed_out:
                heapq.heappush(st.timeouts, (call.start + maxd, call.call_id))
        else:
            call.timed_out = call.end - call.start > maxd
        self._contribute(st, call, 1)
        call.contributes = True
        self._dirty_calls.setdefault(st.account, set()).add(call.call_id)
        st.dirty_calls = True

    def _retract(self, st: AccountState, call: Call) -> None:
        if call.contributes:
            self._contribute(st, call, -1)
            call.contributes = False
            st.dirty_calls = True

    def effective_end(self, call: Call) -> int:
        assert call.start is not None
        limit = call.start + self.config.max_call_duration_ms
        return call.end if call.end is not None and call.end <= limit else limit

    def billable_ms(self, call: Call) -> int:
        """end - answer for answered, non-blocked calls with a known or timed-out end."""
        if call.blocked or call.answer is None or (call.end is None and not call.timed_out):
            return 0
        return max(0, self.effective_end(call) - call.answer)

    def _contribute(self, st: AccountState, call: Call, sign: int) -> None:
        c = self._cycle(st, call.cycle)
        c.attempts += sign
        if call.blocked:
            c.blocked += sign
            return
        user = call.user
        if user is not None:
            c.user_calls[user] = c.user_calls.get(user, 0) + sign
        c.group_calls[call.group] = c.group_calls.get(call.group, 0) + sign
        if call.over:
            c.over_capacity += sign
        if call.timed_out:
            c.timed_out += sign
        outbound = call.direction == "outbound"
        if outbound:
            c.out_attempts += sign
        if call.answer is None:
            return
        c.answered += sign
        if outbound:
            c.out_answered += sign
        bms = self.billable_ms(call)
        minutes = -(-bms // 60_000)
        if not bms:
            return
        rc = call.route_class
        c.minutes[rc] = c.minutes.get(rc, 0) + sign * minutes
        if outbound:
            c.out_answer_ms += sign * bms
            if call.carrier_class == "rboc":
                c.rboc += sign * minutes
            elif call.carrier_class == "itoc":
                c.itoc += sign * minutes
            if rc == "domestic_ld":
                c.out_dld += sign * minutes
                if call.region in ("AK", "HI"):
                    c.out_dld_akhi += sign * minutes
        if rc == "toll_free":
            c.toll_free += sign * minutes
        if user is not None and rc in ("local", "domestic_ld"):
            c.user_minutes[user] = c.user_minutes.get(user, 0) + sign * minutes
        if rc == "local":
            areas = c.lca.setdefault(call.group, {})
            area = call.lca or "unknown"
            areas[area] = areas.get(area, 0) + sign * minutes

    # ----------------------------------------------------------------- messaging
    def _message(
        self, st: AccountState, ev: MessageSent | MessageReceived, t: int, raw: bytes, cal: Calendar
    ) -> Verdict:
        d = ev.data
        family = FAMILY[d.channel]
        inter = self._conversation_item(st, family, d.business_address, d.remote_address, t, cal)
        c = self._cycle(st, cal.cycle_of(t))
        c.messages += 1
        c.segments += d.segments
        self._batch.facts.append(
            MessageFact(
                account=st.account,
                source=ev.source,
                id=ev.id,
                message_id=d.message_id,
                cycle=cal.cycle_of(t),
                time=t,
                direction="sent" if isinstance(ev, MessageSent) else "received",
                channel=d.channel,
                business_address=d.business_address,
                remote_address=d.remote_address,
                segments=d.segments,
                interaction_id=inter.id,
            )
        )
        return "accepted"

    def _conversation_item(
        self, st: AccountState, family: str, business: str, remote: str, t: int, cal: Calendar
    ) -> Interaction:
        """Place one item in its conversation's Interactions (SPEC section 4).

        An item before the open Interactions of its conversation (a late one) opens an
        Interaction at its time, and the items of the open Interactions after it are split
        into Interactions again from there, as if they had come in time order: some join
        the new one, the rest start from the first item at or past its deadline. Dropped
        Interactions are retracted (``interaction.closed``, reason ``merged``), new ones
        opened; ids come from the origin, so the result equals in-order processing.
        """
        key = f"{family}\x1f{business}\x1f{remote}"
        chain = st.conversations.get(key)
        if chain is None:
            chain = st.conversations[key] = []
        # the last interaction whose origin <= t
        pos = len(chain) - 1
        while pos >= 0 and chain[pos].origin > t:
            pos -= 1
        if pos >= 0 and t < chain[pos].deadline:
            inter = chain[pos]
            if len(inter.times) == inter.items:  # not restored from an older snapshot
                bisect.insort(inter.times, t)
            inter.items += 1
            inter.last_item = max(inter.last_item, t)
            self._touch_interaction(st, inter)
            return inter
        tail = chain[pos + 1 :]
        if any(x.closed or len(x.times) != x.items for x in tail):
            # a closed Interaction cannot take items any more, and one restored from an
            # older snapshot has no item times: the item opens an Interaction of its own
            inter = self._new_interaction(st, key, family, business, remote, [t], cal)
            chain.insert(pos + 1, inter)
            return inter
        times = sorted([t, *(x for old in tail for x in old.times)])
        by_origin = {old.origin: old for old in tail}
        plan: list[tuple[list[int], Interaction | None]] = []
        i = 0
        while i < len(times):
            j = bisect.bisect_left(times, cal.deadline(times[i]), i)
            group = times[i:j]
            plan.append((group, by_origin.pop(group[0], None)))
            i = j
        for gone in sorted(by_origin.values(), key=lambda x: x.origin):
            self._drop_interaction(st, gone)
        out: list[Interaction] = []
        for group, kept in plan:
            if kept is None:
                kept = self._new_interaction(st, key, family, business, remote, group, cal)
            elif kept.times != group:
                kept.times, kept.items, kept.last_item = group, len(group), group[-1]
                self._touch_interaction(st, kept)
            out.append(kept)
        chain[pos + 1 :] = out
        return next(x for x in out if x.origin <= t < x.deadline)

    def _new_interaction(
        self,
        st: AccountState,
        key: str,
        family: str,
        business: str,
        remote: str,
        times: list[int],
        cal: Calendar,
    ) -> Interaction:
        origin = times[0]
        inter = Interaction(
            id=_id(st.account, key, origin),
            channel=family,
            business=business,
            remote=remote,
            origin=origin,
            deadline=cal.deadline(origin),
            items=len(times),
            last_item=times[-1],
            cycle=cal.cycle_of(origin),
            times=times,
        )
        self._open_interaction(st, key, inter)
        return inter

    def _open_interaction(self, st: AccountState, key: str, inter: Interaction) -> None:
        c = self._cycle(st, inter.cycle)
        c.interactions[inter.channel] = c.interactions.get(inter.channel, 0) + 1
        heapq.heappush(
            st.expiries,
            (inter.deadline + self.config.allowed_lateness_ms, _CLOSE, f"{key}\x1e{inter.id}"),
        )
        self._touch_interaction(st, inter)
        self._emit(
            st.account,
            "metering.interactions",
            "interaction.opened",
            inter.origin,
            _interaction_data(inter),
            inter.id,
            0,
        )

    def _drop_interaction(self, st: AccountState, inter: Interaction) -> None:
        c = self._cycle(st, inter.cycle)
        c.interactions[inter.channel] -= 1
        inter.closed = True
        self._batch.facts.append(_interaction_fact(st.account, inter, deleted=True))
        self._dirty_inter.get(st.account, {}).pop(inter.id, None)
        self._emit(
            st.account,
            "metering.interactions",
            "interaction.closed",
            inter.origin,
            {**_interaction_data(inter), "items": inter.items, "reason": "merged"},
            inter.id,
            1,
        )

    def _touch_interaction(self, st: AccountState, inter: Interaction) -> None:
        self._dirty_inter.setdefault(st.account, {})[inter.id] = inter

    def _standalone_interaction(
        self, st: AccountState, channel: str, source: str, event_id: str, t: int, cal: Calendar
    ) -> None:
        """One Interaction per ``smartflow.triggered`` event on voice/api (SPEC section 4):
        its id comes from the event's (source, id), so two triggers of one execution are two
        Interactions in ClickHouse too."""
        inter = Interaction(
            id=_id(st.account, "trigger", source, event_id),
            channel=channel,
            business=None,
            remote=None,
            origin=t,
            deadline=t,
            items=1,
            last_item=t,
            cycle=cal.cycle_of(t),
            closed=True,
        )
        c = self._cycle(st, inter.cycle)
        c.interactions[channel] = c.interactions.get(channel, 0) + 1
        self._touch_interaction(st, inter)
        data = _interaction_data(inter)
        self._emit(st.account, "metering.interactions", "interaction.opened", t, data, inter.id, 0)
        self._emit(
            st.account,
            "metering.interactions",
            "interaction.closed",
            t,
            {**data, "items": 1, "reason": "deadline"},
            inter.id,
            1,
        )

    # ----------------------------------------------------------------- smartflows
    def _smartflow(
        self, st: AccountState, ev: SmartflowTriggered, t: int, raw: bytes, cal: Calendar
    ) -> Verdict:
        d = ev.data
        if d.execution_id not in st.executions:
            # an execution counts once, in the cycle of its trigger
            cycle = cal.cycle_of(t)
            ex = Execution(
                id=d.execution_id, flow_id=d.flow_id, channel=d.channel, time=t, cycle=cycle
            )
            c = self._cycle(st, cycle)
            c.executions += 1
            pending = st.pending_nlp.pop(d.execution_id, None)
            if pending is not None:
                ex.nlp_uses = len(pending.raws)
                c.nlp_executions += 1
            st.executions[d.execution_id] = ex
            heapq.heappush(st.expiries, (t + self.config.dedupe_horizon_ms, _EXEC, d.execution_id))
            self._dirty_exec.setdefault(st.account, set()).add(d.execution_id)
        if d.channel in FAMILY:
            assert d.business_address is not None and d.remote_address is not None
            self._conversation_item(
                st, FAMILY[d.channel], d.business_address, d.remote_address, t, cal
            )
        else:
            self._standalone_interaction(st, d.channel, ev.source, ev.id, t, cal)
        return "accepted"

    def _nlp(self, st: AccountState, ev: NlpUsed, t: int, raw: bytes, cal: Calendar) -> Verdict:
        eid = ev.data.execution_id
        ex = st.executions.get(eid)
        if ex is None:
            pending = st.pending_nlp.get(eid)
            if pending is None:
                st.pending_nlp[eid] = PendingNlp(time=t, raws=[raw])
                heapq.heappush(st.expiries, (t + self.config.dedupe_horizon_ms, _NLP, eid))
            else:
                pending.raws.append(raw)
            return "accepted"
        ex.nlp_uses += 1
        if ex.nlp_uses == 1:
            self._cycle(st, ex.cycle).nlp_executions += 1
        self._dirty_exec.setdefault(st.account, set()).add(eid)
        return "accepted"

    # ----------------------------------------------------------------- drain
    def drain(self) -> Batch:
        """Finish pending work for every account touched since the last drain."""
        touched = sorted(self._dirty)
        for account in touched:
            self._drain_account(self._states[account])
        self._dirty.clear()
        batch, self._batch = self._batch, Batch()
        batch.accounts = touched
        return batch

    def _drain_account(self, st: AccountState) -> None:
        cfg = self.config_of(st.account)
        cal = calendar_for(cfg.timezone)
        for cid in sorted(self._pending.pop(st.account, ())):
            call = st.calls.get(cid)
            if call is not None and (call.started is not None or call.cdr is not None):
                self._settle_call(st, call)
        self._expire(st)
        self._timeouts(st)
        if st.dirty_calls or st.settled_to is None or self._frontier(st) > st.settled_to:
            self._concurrency(st, cfg, cal)
            st.dirty_calls = False
        facts = self._batch.facts
        for cid in sorted(self._dirty_calls.pop(st.account, ())):
            call = st.calls.get(cid)
            if call is not None and call.start is not None:
                facts.append(self._call_fact(st.account, call))
        for inter in self._dirty_inter.pop(st.account, {}).values():
            facts.append(_interaction_fact(st.account, inter))
        for eid in sorted(self._dirty_exec.pop(st.account, ())):
            ex = st.executions.get(eid)
            if ex is not None:
                facts.append(_execution_fact(st.account, ex))
        for cycle in sorted(self._dirty_cycles.pop(st.account, ())):
            self._publish_cycle(st, cfg, cycle, st.cycles[cycle])
        # every cycle marked is published: the cache's "cached means marked" no longer
        # holds, so the next event changing a cycle must mark it again (_cycle)
        self._last_cycle = None

    def _frontier(self, st: AccountState) -> int:
        f = st.watermark - self.config.settle_ms
        return f - f % MINUTE_MS

    def _expire(self, st: AccountState) -> None:
        w = st.watermark
        log = st.seen_log
        head = st.seen_head
        # A key is held while the watermark is less than the horizon plus the allowed
        # lateness past its time (process checks that itself): a repeat that is not late
        # and lies within the horizon of the pair's time always finds it, whether or not a
        # drain came in between. Here the released keys only leave memory.
        keep = self._keep
        seen = st.seen
        while head < len(log) and log[head][0] + keep <= w:
            t, key = log[head]
            if seen.get(key) == t:  # not taken over by a later event with the pair
                del seen[key]
            head += 1
        if head > 4096 and 2 * head > len(log):
            del log[:head]
            head = 0
        st.seen_head = head
        exp = st.expiries
        while exp and exp[0][0] <= w:
            at, kind, key = heapq.heappop(exp)
            if kind == _SHELL:
                call = st.calls.get(key)
                if call is None or call.started is not None:
                    continue
                pieces = [
                    (n, p)
                    for n, p in (("call.answered", call.answered), ("call.ended", call.ended))
                    if p is not None
                    and p.raw is not None
                    and p.time + self.config.max_call_duration_ms + self.config.allowed_lateness_ms
                    <= st.watermark
                ]
                for etype, piece in pieces:
                    assert piece.raw is not None
                    self._batch.retracted += 1
                    if call.cdr is not None:
                        self._lose(st, piece, etype, key, "a CDR")
                    else:
                        self._reject(
                            piece.raw,
                            "orphan",
                            f"call {key} never started within max_call_duration "
                            "plus the allowed lateness",
                            etype,
                            st.account,
                        )
                    if piece is call.answered:
                        call.answered = None
                    else:
                        call.ended = None
                if call.cdr is None and call.answered is None and call.ended is None:
                    del st.calls[key]
            elif kind == _NLP:
                pending = st.pending_nlp.pop(key, None)
                if pending is not None:
                    for raw in pending.raws:
                        self._batch.retracted += 1
                        self._reject(
                            raw,
                            "orphan",
                            f"execution {key} was never triggered within the dedupe horizon",
                            "nlp.used",
                            st.account,
                        )
            elif kind == _FINAL:
                if st.final_calls.get(key) == at:
                    del st.final_calls[key]
            elif kind == _EXEC:
                ex = st.executions.pop(key, None)
                dirty = self._dirty_exec.get(st.account)
                if ex is not None and dirty is not None and key in dirty:
                    dirty.discard(key)
                    self._batch.facts.append(_execution_fact(st.account, ex))
            elif kind == _CLOSE:
                conv, iid = key.split("\x1e")
                chain = st.conversations.get(conv)
                if not chain:
                    continue
                for inter in chain:
                    if inter.id == iid and not inter.closed:
                        inter.closed = True
                        self._touch_interaction(st, inter)
                        self._emit(
                            st.account,
                            "metering.interactions",
                            "interaction.closed",
                            inter.deadline,
                            {
                                **_interaction_data(inter),
                                "items": inter.items,
                                "reason": "deadline",
                            },
                            inter.id,
                            1,
                        )
                while chain and chain[0].closed:
                    chain.pop(0)
                if not chain:
                    del st.conversations[conv]

    def close_idle(self, now_ms: int, accounts: Iterable[str] | None = None) -> None:
        """Close interactions whose deadline + allowed lateness has passed on the wall clock
        (for accounts whose events stopped, so their watermark no longer moves); only those
        of ``accounts`` when given."""
        late = self.config.allowed_lateness_ms
        if accounts is None:
            states: Iterable[AccountState] = self._states.values()
        else:
            states = [st for a in accounts if (st := self._states.get(a)) is not None]
        for st in states:
            for chain in st.conversations.values():
                for inter in chain:
                    if not inter.closed and inter.deadline + late <= now_ms:
                        inter.closed = True
                        self._touch_interaction(st, inter)
                        self._dirty.add(st.account)
                        self._emit(
                            st.account,
                            "metering.interactions",
                            "interaction.closed",
                            inter.deadline,
                            {
                                **_interaction_data(inter),
                                "items": inter.items,
                                "reason": "wall_clock",
                            },
                            inter.id,
                            1,
                        )

    def _timeouts(self, st: AccountState) -> None:
        maxd = self.config.max_call_duration_ms
        while st.timeouts and st.timeouts[0][0] <= st.watermark:
            _, cid = heapq.heappop(st.timeouts)
            call = st.calls.get(cid)
            if (
                call is not None
                and call.start is not None
                and call.end is None
                and not call.timed_out
                and call.start + maxd <= st.watermark
            ):
                self._settle_call(st, call)

    # ----------------------------------------------------------------- concurrency
    def _intervals(self, st: AccountState) -> list[Interval]:
        """Intervals of the account's non-blocked calls (cached per call until it changes)."""
        cache = self._ivs.get(st.account)
        if cache is None:
            cache = self._ivs[st.account] = {}
            for call in st.calls.values():
                if call.start is not None and not call.blocked:
                    cache[call.call_id] = self._interval(call)
        return list(cache.values())

    def _interval(self, call: Call) -> Interval:
        assert call.start is not None
        return Interval(
            call.start,
            self.effective_end(call),
            (call.key_src, call.key_id),
            call.group,
            call.user,
            call.call_id,
        )

    def _concurrency(self, st: AccountState, cfg: AccountConfig, cal: Calendar) -> None:
        intervals = self._intervals(st)
        all_starts = [c.start for c in st.calls.values() if c.start is not None]
        target = self._frontier(st)
        if st.settled_to is None:
            first = min((iv.start for iv in intervals), default=target)
            if all_starts:
                first = min(first, *all_starts) if len(all_starts) > 1 else all_starts[0]
            first = min(first, target)
            st.settled_to = first - first % MINUTE_MS
        minutes_until = st.watermark + 1
        if target >= st.settled_to + SETTLE_STEP_MS:
            done = sweep(
                [iv for iv in intervals if iv.end >= st.settled_to],
                st.settled_to,
                target,
                cal.cycle_of,
                cal.next_cycle_start,
                minutes_until,
            )
            cps = cps_max(
                _starts_from(all_starts, st.settled_to), st.settled_to, target, cal.cycle_of
            )
            self._apply_flags(st, cfg, done.occupied_at_start)
            for cycle, peaks in done.cycles.items():
                cs = self._cycle(st, cycle)
                cs.settled = _to_peaks(merge_range(_from_peaks(cs.settled), peaks))
            for cycle, n in cps.items():
                cs = self._cycle(st, cycle)
                cs.settled.cps = max(cs.settled.cps, n)
            self._publish_minutes(st, cfg, done.minutes, st.settled_to, target, final=True)
            st.settled_to = target
            self._evict_calls(st, target)
        # The live range [settled_to, FAR) is swept from the checkpoint (results up to
        # prefix_at) unless an interval changed before it; max-merges make the overlap with
        # already settled instants harmless.
        lo = st.settled_to
        base: dict[str, CyclePeaks] = {}
        if st.prefix_at is not None and lo <= st.prefix_at <= st.dirty_from - 1000:
            lo = st.prefix_at
            base = {c: _from_peaks(p) for c, p in st.prefix.items()}
        first_lo = lo
        minutes: dict[tuple[str, int], int] = {}
        checkpoint = st.watermark - self.config.allowed_lateness_ms - PREFIX_LAG_MS
        checkpoint -= checkpoint % MINUTE_MS
        intervals = [iv for iv in intervals if iv.end >= lo]
        starts = _starts_from(all_starts, lo)
        if checkpoint >= lo + PREFIX_STEP_MS:
            mid = sweep(
                intervals, lo, checkpoint, cal.cycle_of, cal.next_cycle_start, minutes_until
            )
            self._apply_flags(st, cfg, mid.occupied_at_start)
            _merge_into(base, mid.cycles, cps_max(starts, lo, checkpoint, cal.cycle_of))
            minutes.update(mid.minutes)
            st.prefix_at = checkpoint
            st.prefix = {c: _to_peaks(p) for c, p in base.items()}
            lo = checkpoint
        st.dirty_from = FAR
        tail = sweep(intervals, lo, FAR, cal.cycle_of, cal.next_cycle_start, minutes_until)
        self._apply_flags(st, cfg, tail.occupied_at_start)
        live = dict(base)
        _merge_into(live, tail.cycles, cps_max(starts, lo, FAR, cal.cycle_of))
        minutes.update(tail.minutes)
        for cycle in live.keys() - st.cycles.keys():
            self._cycle(st, cycle)
        for cycle, cs in st.cycles.items():
            got = live.get(cycle)
            new_live = _to_peaks(got) if got is not None else Peaks()
            if new_live != cs.live:
                cs.live = new_live
                self._dirty_cycles.setdefault(st.account, set()).add(cycle)
        self._publish_minutes(st, cfg, minutes, first_lo, minutes_until, final=False)

    def _apply_flags(self, st: AccountState, cfg: AccountConfig, occupied: dict[str, int]) -> None:
        for cid, occ in occupied.items():
            call = st.calls[cid]
            cap = cfg.capacity_of(call.group)
            over = cap is not None and occ >= cap
            if call.over != over:
                self._retract(st, call)
                call.over = over
                self._contribute(st, call, 1)
                call.contributes = True
                self._dirty_calls.setdefault(st.account, set()).add(cid)
            if over and not call.exceeded_sent:
                call.exceeded_sent = True
                assert call.start is not None
                self._emit(
                    st.account,
                    "metering.concurrency",
                    "capacity.exceeded",
                    call.start,
                    {
                        "trunk_group": call.group,
                        "call_id": cid,
                        "at": ms_to_rfc3339(call.start),
                        "occupied": occ,
                        "capacity": cap,
                        "cycle": call.cycle,
                    },
                    cid,
                    0,
                )

    def _evict_calls(self, st: AccountState, frontier: int) -> None:
        maxd = self.config.max_call_duration_ms
        dirty = self._dirty_calls.get(st.account, set())
        for cid in [
            cid
            for cid, c in st.calls.items()
            if c.start is not None
            and c.start < frontier - 1000
            and (c.end is not None or c.start + maxd <= st.watermark)
            and (c.blocked or self.effective_end(c) <= frontier)
        ]:
            call = st.calls.pop(cid)
            forget = st.watermark + self.config.dedupe_horizon_ms
            st.final_calls[cid] = forget
            heapq.heappush(st.expiries, (forget, _FINAL, cid))
            self._ivs.get(st.account, {}).pop(cid, None)
            if cid in dirty:
                dirty.discard(cid)
                self._batch.facts.append(self._call_fact(st.account, call))

    def _publish_minutes(
        self,
        st: AccountState,
        cfg: AccountConfig,
        minutes: dict[tuple[str, int], int],
        lo: int,
        hi: int,
        final: bool,
    ) -> None:
        """Publish per-minute peaks that changed; a minute of [lo, hi) published before and
        now without calls is published as 0. ``final`` minutes are forgotten afterwards."""
        sent = st.sent_minutes
        facts = self._batch.facts
        account = st.account
        for (group, minute), peak in minutes.items():
            per_group = sent.get(group)
            if per_group is None:
                per_group = sent[group] = {}
            if per_group.get(minute) != peak:
                per_group[minute] = peak
                facts.append(
                    MinutePeakFact(
                        account=account,
                        trunk_group=group,
                        minute=minute,
                        peak=peak,
                        capacity=cfg.capacity_of(group),
                    )
                )
        for group, per_group in sent.items():
            stale = [
                m for m, v in per_group.items() if v and lo <= m < hi and (group, m) not in minutes
            ]
            for m in stale:
                per_group[m] = 0
                facts.append(
                    MinutePeakFact(
                        account=account,
                        trunk_group=group,
                        minute=m,
                        peak=0,
                        capacity=cfg.capacity_of(group),
                    )
                )
            if final:
                for m in [m for m in per_group if m < hi]:
                    del per_group[m]

    # ----------------------------------------------------------------- fair use
    def counters(self, cfg: AccountConfig, cs: CycleState) -> dict[tuple[str, str], Counter]:
        """Every (rule, scope) of the account's presets with its counters (SPEC 6 and 9)."""
        out: dict[tuple[str, str], Counter] = {}
        peaks = _effective(cs)
        users = sorted(u for u, n in cs.user_calls.items() if n > 0)
        groups = sorted(
            g for g, n in cs.group_calls.items() if n > 0 and cfg.group(g).bundle == "call_path"
        )
        for rule in rules_for(cfg.policies):
            if rule == "minutes_per_user":
                for u in users:
                    out[(rule, f"user:{u}")] = Counter(cs.user_minutes.get(u, 0))
            elif rule == "bundle_sharing":
                for u in users:
                    out[(rule, f"user:{u}")] = Counter(peaks.users.get(u, 0))
            elif rule == "local_calling_area":
                for g in groups:
                    areas = cs.lca.get(g, {})
                    out[(rule, f"trunk_group:{g}")] = Counter(
                        max(areas.values(), default=0), sum(areas.values())
                    )
            elif rule == "rboc_mix":
                out[(rule, "account")] = Counter(cs.rboc, cs.rboc + cs.itoc)
            elif rule == "call_completion":
                out[(rule, "account")] = Counter(cs.out_answered, cs.out_attempts, cs.out_answer_ms)
            elif rule == "alaska_hawaii_share":
                out[(rule, "account")] = Counter(cs.out_dld_akhi, cs.out_dld)
            elif rule == "toll_free_share":
                out[(rule, "account")] = Counter(cs.toll_free, sum(cs.minutes.values()))
            elif rule == "nlp_share":
                out[(rule, "account")] = Counter(cs.nlp_executions, cs.executions)
            elif rule == "calls_per_second":
                out[(rule, "account")] = Counter(peaks.cps)
        return out

    def _publish_cycle(
        self, st: AccountState, cfg: AccountConfig, cycle: str, cs: CycleState
    ) -> None:
        account_minutes = sum(cs.minutes.values())
        facts = self._batch.facts
        m = cs.minutes
        voice = (
            cs.attempts,
            cs.answered,
            cs.blocked,
            cs.timed_out,
            cs.over_capacity,
            m.get("local", 0),
            m.get("domestic_ld", 0),
            m.get("toll_free", 0),
            m.get("international", 0),
        )
        if voice != cs.sent_voice:
            cs.sent_voice = voice
            facts.append(
                CycleVoiceFact(
                    account=st.account,
                    cycle=cycle,
                    attempts=voice[0],
                    answered=voice[1],
                    blocked=voice[2],
                    timed_out=voice[3],
                    over_capacity=voice[4],
                    minutes_local=voice[5],
                    minutes_domestic_ld=voice[6],
                    minutes_toll_free=voice[7],
                    minutes_international=voice[8],
                )
            )
        current = self.counters(cfg, cs)
        for key in [k for k in cs.sent_counters if tuple(k.split("\x1f", 1)) not in current]:
            rule, scope = key.split("\x1f", 1)
            del cs.sent_counters[key]
            facts.append(
                FairUseFact(
                    account=st.account,
                    cycle=cycle,
                    rule=rule,
                    scope=scope,
                    num=0,
                    den=0,
                    aux=0,
                    value=0.0,
                    threshold=float(threshold_value(rule)),
                    status="ok",
                    charge_usd="0.00",
                    deleted=True,
                )
            )
        for (rule, scope), c in current.items():
            key = f"{rule}\x1f{scope}"
            sent = (c.num, c.den, c.aux, account_minutes if rule in SURCHARGE_RULES else 0)
            if cs.sent_counters.get(key) == sent:
                continue
            cs.sent_counters[key] = sent
            ev = evaluate(rule, c.num, c.den, c.aux, account_minutes)
            charge = f"{ev.charge:.2f}"
            facts.append(
                FairUseFact(
                    account=st.account,
                    cycle=cycle,
                    rule=rule,
                    scope=scope,
                    num=c.num,
                    den=c.den,
                    aux=c.aux,
                    value=float(ev.display_value()),
                    threshold=float(threshold_value(rule)),
                    status=ev.status,
                    charge_usd=charge,
                )
            )
            flags = cs.sent_flags.get(key, 0)
            data: dict[str, Any] = {
                "rule": rule,
                "scope": scope,
                "cycle": cycle,
                "value": ev.display_value(),
                "threshold": threshold_value(rule),
                "status": ev.status,
                "charge_usd": charge,
            }
            if ev.acd_seconds is not None:
                data["acd_seconds"] = round_ratio(ev.acd_seconds)
            at = st.watermark
            if ev.warned and not flags & FLAG_WARNED:
                flags |= FLAG_WARNED
                self._emit(
                    st.account, "metering.fairuse", "fairuse.warning", at, data, f"{cycle}/{key}", 0
                )
            if ev.failing and not flags & FLAG_BREACHED:
                flags |= FLAG_BREACHED
                self._emit(
                    st.account, "metering.fairuse", "fairuse.breach", at, data, f"{cycle}/{key}", 0
                )
            if ev.failing:
                flags |= FLAG_FAILING
            elif flags & FLAG_FAILING:
                flags &= ~FLAG_FAILING
                if rule in RATIO_RULES:
                    self._emit(
                        st.account,
                        "metering.fairuse",
                        "fairuse.cleared",
                        at,
                        data,
                        f"{cycle}/{key}",
                        _next_version(cs, f"cleared/{key}"),
                    )
            cs.sent_flags[key] = flags
        peaks = _effective(cs)
        scopes: dict[str, tuple[int, int | None, int | None]] = {
            "account": (peaks.account[0], peaks.account[1], None)
        }
        for g, (n, g_at) in peaks.groups.items():
            scopes[f"trunk_group:{g}"] = (n, g_at, cfg.capacity_of(g))
        for scope in cs.sent_peaks.keys() - scopes.keys():
            # a group whose only calls became zero-length (or moved to another cycle)
            # carries nothing any more: its stored peak is corrected to zero
            g = scope.removeprefix("trunk_group:")
            scopes[scope] = (0, None, cfg.capacity_of(g))
        for scope, (n, at_ms, cap) in sorted(scopes.items()):
            if cs.sent_peaks.get(scope) == (n, at_ms):
                continue
            before = cs.sent_peaks.get(scope, (0, None))
            cs.sent_peaks[scope] = (n, at_ms)
            facts.append(
                PeakFact(
                    account=st.account,
                    cycle=cycle,
                    scope=scope,
                    peak=n,
                    peak_at=at_ms,
                    capacity=cap,
                )
            )
            if n != before[0] or at_ms != before[1]:
                self._emit(
                    st.account,
                    "metering.concurrency",
                    "concurrency.peak",
                    at_ms if at_ms is not None else st.watermark,
                    {
                        "scope": scope,
                        "cycle": cycle,
                        "peak": n,
                        "peak_at": None if at_ms is None else ms_to_rfc3339(at_ms),
                        "capacity": cap,
                    },
                    f"{cycle}/{scope}",
                    _next_version(cs, f"peak/{scope}"),
                )

    # ----------------------------------------------------------------- outputs
    def _emit(
        self,
        account: str,
        topic: str,
        etype: str,
        time: int,
        data: dict[str, Any],
        subject_id: str,
        version: int,
    ) -> None:
        self._batch.outputs.append(
            OutputEvent(
                topic=topic,
                account=account,
                id=_id(account, etype, subject_id, version),
                type=etype,
                time=time,
                data={**data, "version": version},
            )
        )

    def _call_fact(self, account: str, call: Call) -> CallFact:
        assert call.start is not None
        bms = self.billable_ms(call)
        final = call.end is not None or call.timed_out
        return CallFact(
            account=account,
            call_id=call.call_id,
            cycle=call.cycle,
            trunk_group=call.trunk_group,
            capacity_group=call.group,
            direction=call.direction,
            route_class=call.route_class,
            user=call.user,
            from_=call.from_,
            to=call.to,
            region=call.region,
            carrier_class=call.carrier_class,
            local_calling_area=call.lca,
            blocked=call.blocked,
            described_by=call.described_by,
            started_at=call.start,
            answered_at=call.answer,
            ended_at=call.end,
            end_at=self.effective_end(call) if final else None,
            timed_out=call.timed_out and not call.blocked,
            over_capacity=call.over,
            billable_seconds=bms // 1000,
            billable_minutes=-(-bms // 60_000),
        )

    # ----------------------------------------------------------------- statements
    def statement_facts(self, account: str, cycle: str) -> StatementFacts | None:
        """The in-memory statement figures (tests compare them with ClickHouse's)."""
        st = self._states.get(account)
        if st is None or cycle not in st.cycles:
            return None
        cfg = self.config_of(account)
        cs = st.cycles[cycle]
        peaks = _effective(cs)
        if not (
            cs.attempts
            or cs.messages
            or cs.executions
            or any(cs.interactions.values())
            or peaks.account[0]
        ):
            return None
        return StatementFacts(
            account=account,
            cycle=cycle,
            timezone=cfg.timezone,
            policies=cfg.policies,
            interactions={k: v for k, v in cs.interactions.items() if v},
            messages=cs.messages,
            segments=cs.segments,
            attempts=cs.attempts,
            answered=cs.answered,
            blocked=cs.blocked,
            timed_out=cs.timed_out,
            over_capacity=cs.over_capacity,
            minutes_by_route_class=dict(cs.minutes),
            peak=peaks.account[0],
            peak_at=peaks.account[1],
            trunk_groups={
                g: (n, at, cfg.capacity_of(g)) for g, (n, at) in peaks.groups.items() if n > 0
            },
            fair_use=self.counters(cfg, cs),
        )

    def cycles_of(self, account: str) -> list[str]:
        st = self._states.get(account)
        return sorted(st.cycles) if st is not None else []


def _starts_from(starts: list[int], lo: int) -> list[int]:
    return sorted(t for t in starts if t >= lo)


def _merge_into(
    acc: dict[str, CyclePeaks], later: dict[str, CyclePeaks], cps: dict[str, int]
) -> None:
    """Fold the peaks (and windowed starts) of a later range into ``acc``, per cycle."""
    for cycle, peaks in later.items():
        acc[cycle] = merge_range(acc[cycle], peaks) if cycle in acc else peaks
    for cycle, n in cps.items():
        cur = acc.get(cycle)
        if cur is None:
            acc[cycle] = CyclePeaks(cps=n)
        elif n > cur.cps:
            acc[cycle] = CyclePeaks(cur.account, cur.groups, cur.users, n)


def _next_version(cs: CycleState, subject: str) -> int:
    """0 for the first emission about ``subject``, then 1, 2, ... (a correction of an
    earlier emission always carries a higher version, and so a new event id)."""
    version = cs.versions.get(subject, -1) + 1
    cs.versions[subject] = version
    return version


def _effective(cs: CycleState) -> Peaks:
    merged = merge_range(_from_peaks(cs.settled), _from_peaks(cs.live))
    out = _to_peaks(merged)
    out.cps = max(cs.settled.cps, cs.live.cps)
    return out


def _from_peaks(p: Peaks) -> CyclePeaks:
    return CyclePeaks(p.account, dict(p.groups), dict(p.users), p.cps)


def _to_peaks(p: CyclePeaks) -> Peaks:
    return Peaks(account=p.account, groups=dict(p.groups), users=dict(p.users), cps=p.cps)


def _interaction_data(inter: Interaction) -> dict[str, Any]:
    return {
        "interaction_id": inter.id,
        "channel": inter.channel,
        "business_address": inter.business,
        "remote_address": inter.remote,
        "origin": ms_to_rfc3339(inter.origin),
        "deadline": ms_to_rfc3339(inter.deadline),
        "cycle": inter.cycle,
    }


def _interaction_fact(account: str, inter: Interaction, deleted: bool = False) -> InteractionFact:
    return InteractionFact(
        account=account,
        interaction_id=inter.id,
        cycle=inter.cycle,
        channel=inter.channel,
        business_address=inter.business,
        remote_address=inter.remote,
        origin=inter.origin,
        deadline=inter.deadline,
        items=inter.items,
        closed=inter.closed,
        deleted=deleted,
    )


def _execution_fact(account: str, ex: Execution) -> ExecutionFact:
    return ExecutionFact(
        account=account,
        execution_id=ex.id,
        flow_id=ex.flow_id,
        channel=ex.channel,
        cycle=ex.cycle,
        time=ex.time,
        nlp_uses=ex.nlp_uses,
    )


def _account_fact(cfg: AccountConfig) -> AccountFact:
    return AccountFact(
        account=cfg.account,
        timezone=cfg.timezone,
        policies=list(cfg.policies),
        trunk_groups={
            tg: {"capacity": g.capacity, "bundle": g.bundle, "redundant_for": g.redundant_for}
            for tg, g in cfg.data.trunk_groups.items()
        },
    )


def iter_statement_facts(engine: Engine) -> Iterable[StatementFacts]:
    for account in engine.accounts():
        for cycle in engine.cycles_of(account):
            f = engine.statement_facts(account, cycle)
            if f is not None:
                yield f
