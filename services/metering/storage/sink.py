"""Buffered, idempotent writes of engine facts, output events and dead letters.

Contract (tiny on purpose)::

    sink = ClickHouseSink(client)
    sink.add(fact_or_output_event)          # any Fact of engine/facts.py, or an OutputEvent
    sink.add_dead_letter(rejection, topic=..., partition=..., offset=...)
    stats = sink.flush()                    # FlushStats(rows per table, seconds)

Buffers collapse by the fact's key (the last ``add`` wins), so a burst of updates to one
call costs one row. Each table insert carries one ``version`` from a process-wide clock,
``max(previous + 1, time.time_ns())``: strictly increasing, and later than anything an
earlier process wrote (as long as the wall clock does not jump back), so the latest write
always wins in the ``ReplacingMergeTree`` tables.

Commit order of :meth:`ClickHouseSink.flush`:

1. bookkeeping for the usage aggregates (only when calls, messages, interactions or
   executions are buffered): every buffered usage fact (its key and its (account,
   minute, local day) bucket) goes to ``usage_dirty`` under a fresh flush id; then every
   *stored* version of the buffered calls/interactions adds its bucket too (their start
   / origin may have moved: the old bucket must be recomputed);
2. the fact tables, one insert each, in this order: ``accounts``, ``events_raw``,
   ``calls``, ``messages``, ``interactions``, ``executions``, ``cycle_peaks``,
   ``concurrency_minute``, ``fairuse_counters``, ``output_events``, ``dead_letters``;
3. the usage aggregates (:mod:`metering.storage.usage`): the ``usage_items`` rows of
   the buffered facts, selected from the fact tables by key (tombstones at the old
   minutes of moved ones), then for the dirty buckets of ``usage_minute``,
   ``usage_hour`` and ``usage_day`` fresh sums of their items as version v2 and
   tombstones (``deleted = 1``) as version v1 < v2 for every stored row of those
   buckets, so groups that disappeared end up deleted while regrouped ones keep their
   fresh v2 row; then the flush's ``usage_dirty`` partition is dropped;
4. the buffers are cleared and ``flush`` returns.

The caller commits its Kafka offsets / state only after ``flush`` returns. A crash at any
point leaves rows that a re-run (re-consuming from the last committed offsets) rewrites
identically with higher versions, and the re-run recomputes the same buckets. One
residual case: if the process dies between steps 2 and 3 and a background merge then
collapses a call whose start moved (or an interaction whose origin moved) before the
re-run, the *old* bucket is not found again (nor its item tombstoned);
:func:`rebuild_usage` recomputes everything.

Failures: ``flush`` raises :class:`SinkUnavailable` when the storage is unreachable or
overloaded (connection errors, timeouts, too many parts ...); other errors propagate as
they are. In both cases the buffers are kept, so calling ``flush`` again re-sends them.

Local days: the daily aggregate buckets on the account's local calendar day, stored as
``local_day`` on calls, messages, interactions and executions. The sink computes it with
the account's time zone: from ``AccountFact`` s it was given, else from the ``accounts``
table (looked up once per account), else UTC. A time zone change therefore applies to
facts written after it (SPEC: configuration applies to events processed after it).

Multiple sinks: versions stay ordered within a process; across processes they are
wall-clock nanoseconds. Several processes may write to one server as long as each
account is written by one process at a time (Kafka partitions by account).
"""

from __future__ import annotations

import gc
import logging
import re
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from operator import attrgetter
from secrets import randbits
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson

from metering.engine.facts import (
    AccountFact,
    CallFact,
    CycleVoiceFact,
    ExecutionFact,
    FairUseFact,
    InteractionFact,
    MessageFact,
    MinutePeakFact,
    OutputEvent,
    PeakFact,
    RawEventFact,
)
from metering.events.decode import Rejection
from metering.storage import usage as usage_sql
from metering.storage.client import Client, StorageUnavailable, is_transient

log = logging.getLogger(__name__)

__all__ = [
    "ClickHouseSink",
    "FlushStats",
    "SinkUnavailable",
    "VersionClock",
    "rebuild_usage",
]

INSERT_SETTINGS: dict[str, Any] = {
    # Buffers are collapsed by key already; skip the per-block replacing merge on insert.
    "optimize_on_insert": 0,
}
_DAY_MS = 86_400_000
_TZ_WINDOW_MS = 900_000  # UTC offsets are cached per 15 minutes (checked at both ends)
_LOOKUP_CHUNK = 1000


class SinkUnavailable(StorageUnavailable):
    """The storage cannot take the flush now; buffers are kept, retry ``flush`` later."""


@dataclass(slots=True)
class FlushStats:
    """What one flush wrote: rows per fact table, dirty usage buckets, wall seconds."""

    rows: dict[str, int] = field(default_factory=dict)
    buckets: int = 0
    seconds: float = 0.0
    #: wall seconds per step: "dirty", each fact table, "usage"
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.rows.values())


class VersionClock:
    """Strictly increasing UInt64 versions: ``max(previous + 1, time.time_ns())``."""

    def __init__(self) -> None:
        self._last = 0
        self._lock = threading.Lock()

    def next(self) -> int:
        with self._lock:
            v = max(self._last + 1, time.time_ns())
            self._last = v
            return v


CLOCK = VersionClock()
"""The process-wide clock shared by all sinks (so one process never goes backwards)."""


# --------------------------------------------------------------------------------------
# Table layouts: how a buffered row becomes columns.

ColumnFn = Callable[[Sequence[Any]], list[Any]]


def _attr(name: str) -> ColumnFn:
    getter = attrgetter(name)

    def get(rows: Sequence[Any]) -> list[Any]:
        return list(map(getter, rows))

    return get


def _flag(name: str) -> ColumnFn:
    def get(rows: Sequence[Any]) -> list[Any]:
        return [1 if getattr(r, name) else 0 for r in rows]

    return get


def _json(name: str) -> ColumnFn:
    def get(rows: Sequence[Any]) -> list[Any]:
        return [orjson.dumps(getattr(r, name), option=orjson.OPT_SORT_KEYS).decode() for r in rows]

    return get


def _decimal(name: str) -> ColumnFn:
    def get(rows: Sequence[Any]) -> list[Any]:
        return [Decimal(getattr(r, name)) for r in rows]

    return get


def _plain(*names: str) -> list[tuple[str, ColumnFn]]:
    return [(n, _attr(n)) for n in names]


@dataclass(frozen=True, slots=True)
class _Table:
    name: str
    key: Callable[[Any], Hashable]
    columns: list[tuple[str, ColumnFn]]
    day_of: str | None = None  # attribute whose local day goes to ``local_day``

    @property
    def column_names(self) -> list[str]:
        names = [c for c, _ in self.columns]
        if self.day_of is not None:
            names.append("local_day")
        return [*names, "version"]


class _DeadLetter:
    __slots__ = (
        "account",
        "detail",
        "event_type",
        "offset",
        "original",
        "partition",
        "reason",
        "received_seq",
        "topic",
    )

    def __init__(
        self, rej: Rejection, topic: str | None, partition: int | None, offset: int | None, seq: int
    ) -> None:
        self.topic = topic or ""
        self.partition = -1 if partition is None else partition
        self.offset = -1 if offset is None else offset
        self.reason = rej.reason
        self.detail = rej.detail
        self.event_type = rej.event_type
        self.account = rej.account
        self.original = bytes(rej.raw)
        self.received_seq = seq


TABLES: dict[type, _Table] = {
    AccountFact: _Table(
        "accounts",
        attrgetter("account"),
        [*_plain("account", "timezone", "policies"), ("trunk_groups", _json("trunk_groups"))],
    ),
    RawEventFact: _Table(
        "events_raw",
        attrgetter("account", "source", "id"),
        _plain("account", "source", "id", "type", "time", "cycle", "topic", "payload"),
    ),
    CallFact: _Table(
        "calls",
        attrgetter("account", "call_id"),
        [
            *_plain(
                "account",
                "call_id",
                "cycle",
                "trunk_group",
                "capacity_group",
                "direction",
                "route_class",
                "user",
                "from_",
                "to",
                "region",
                "carrier_class",
                "local_calling_area",
                "blocked",
                "described_by",
                "started_at",
                "answered_at",
                "ended_at",
                "end_at",
                "timed_out",
                "over_capacity",
                "billable_seconds",
                "billable_minutes",
            ),
            ("deleted", _flag("deleted")),
        ],
        day_of="started_at",
    ),
    MessageFact: _Table(
        "messages",
        attrgetter("account", "source", "id"),
        _plain(
            "account",
            "source",
            "id",
            "message_id",
            "cycle",
            "time",
            "direction",
            "channel",
            "business_address",
            "remote_address",
            "segments",
            "interaction_id",
        ),
        day_of="time",
    ),
    InteractionFact: _Table(
        "interactions",
        attrgetter("account", "interaction_id"),
        [
            *_plain(
                "account",
                "interaction_id",
                "cycle",
                "channel",
                "business_address",
                "remote_address",
                "origin",
                "deadline",
                "items",
                "closed",
            ),
            ("deleted", _flag("deleted")),
        ],
        day_of="origin",
    ),
    ExecutionFact: _Table(
        "executions",
        attrgetter("account", "execution_id"),
        _plain("account", "execution_id", "flow_id", "channel", "cycle", "time", "nlp_uses"),
        day_of="time",
    ),
    PeakFact: _Table(
        "cycle_peaks",
        attrgetter("account", "cycle", "scope"),
        _plain("account", "cycle", "scope", "peak", "peak_at", "capacity"),
    ),
    MinutePeakFact: _Table(
        "concurrency_minute",
        attrgetter("account", "trunk_group", "minute"),
        _plain("account", "trunk_group", "minute", "peak", "capacity"),
    ),
    FairUseFact: _Table(
        "fairuse_counters",
        attrgetter("account", "cycle", "rule", "scope"),
        [
            *_plain(
                "account",
                "cycle",
                "rule",
                "scope",
                "num",
                "den",
                "aux",
                "value",
                "threshold",
                "status",
            ),
            ("charge_usd", _decimal("charge_usd")),
            ("deleted", _flag("deleted")),
        ],
    ),
    CycleVoiceFact: _Table(
        "cycle_voice",
        attrgetter("account", "cycle"),
        _plain(
            "account",
            "cycle",
            "attempts",
            "answered",
            "blocked",
            "timed_out",
            "over_capacity",
            "minutes_local",
            "minutes_domestic_ld",
            "minutes_toll_free",
            "minutes_international",
        ),
    ),
    OutputEvent: _Table(
        "output_events",
        attrgetter("topic", "id"),
        [*_plain("topic", "account", "id", "type", "time"), ("data", _json("data"))],
    ),
    _DeadLetter: _Table(
        "dead_letters",
        attrgetter("topic", "partition", "offset", "original", "reason"),
        _plain(
            "topic",
            "partition",
            "offset",
            "reason",
            "detail",
            "event_type",
            "account",
            "original",
            "received_seq",
        ),
    ),
}

FLUSH_ORDER: tuple[type, ...] = (
    AccountFact,
    RawEventFact,
    CallFact,
    MessageFact,
    InteractionFact,
    ExecutionFact,
    PeakFact,
    MinutePeakFact,
    FairUseFact,
    CycleVoiceFact,
    OutputEvent,
    _DeadLetter,
)
assert set(FLUSH_ORDER) == set(TABLES)

_USAGE_KEYS: tuple[tuple[type, str, str], ...] = (
    (CallFact, "call", "call_id"),
    (MessageFact, "message", "id"),
    (InteractionFact, "interaction", "interaction_id"),
    (ExecutionFact, "execution", "execution_id"),
)
"""Each usage fact type, its ``usage_dirty`` kind and key attribute (see storage/usage.py)."""
_USAGE_TYPES: tuple[type, ...] = tuple(t for t, _, _ in _USAGE_KEYS)


# --------------------------------------------------------------------------------------
# Usage aggregates (SQL in metering.storage.usage).


def rebuild_usage(
    client: Client, accounts: Iterable[str] | None = None, clock: VersionClock = CLOCK
) -> None:
    """Recompute the usage items and every usage bucket (of ``accounts``, or of all
    accounts) from the fact tables.

    For a bulk load written with ``ClickHouseSink(client, aggregate=False)``, or to repair
    aggregates after the residual crash case described in the module docstring.
    """
    if accounts is None:
        cond = "1 = 1"
    else:
        names = sorted(set(accounts))
        if not names:
            return
        cond = "account IN (" + ", ".join(_sql_str(a) for a in names) + ")"
    usage_sql.rebuild(client, cond, clock)


def _sql_str(s: str) -> str:
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _wire_type(type_name: str) -> str:
    """The type a column is sent as: ``LowCardinality(T)`` goes as ``T`` and the server
    builds the dictionary (Native input converts types: the server setting
    ``input_format_native_allow_types_conversion``, on by default). clickhouse-connect
    would build it in Python, about a fifth of a flush's Python time (cProfile); the work
    moves to ClickHouse, which does not hold the interpreter lock the engine needs."""
    m = _LOW_CARDINALITY.fullmatch(type_name)
    return m.group(1) if m else type_name


_LOW_CARDINALITY = re.compile(r"LowCardinality\((.*)\)")


# --------------------------------------------------------------------------------------
# Local days.


class _LocalDays:
    """Epoch-ms → days since 1970-01-01 of the local calendar date in a time zone."""

    def __init__(self) -> None:
        self._zones: dict[str, ZoneInfo | None] = {}
        self._offsets: dict[tuple[str, int], int] = {}

    def _zone(self, tz: str) -> ZoneInfo | None:
        if tz not in self._zones:
            try:
                self._zones[tz] = None if tz == "UTC" else ZoneInfo(tz)
            except (ZoneInfoNotFoundError, ValueError):
                log.warning("unknown time zone %r: local days computed in UTC", tz)
                self._zones[tz] = None
        return self._zones[tz]

    @staticmethod
    def _offset_ms(zone: ZoneInfo, ms: int) -> int:
        off = datetime.fromtimestamp(ms // 1000, tz=UTC).astimezone(zone).utcoffset()
        return 0 if off is None else int(off.total_seconds() * 1000)

    def day(self, tz: str, ms: int) -> int:
        zone = self._zone(tz)
        if zone is None:
            return ms // _DAY_MS
        window = ms // _TZ_WINDOW_MS
        off = self._offsets.get((tz, window))
        if off is None:
            lo = window * _TZ_WINDOW_MS
            a = self._offset_ms(zone, lo)
            if a == self._offset_ms(zone, lo + _TZ_WINDOW_MS - 1):
                if len(self._offsets) > 500_000:
                    self._offsets.clear()
                self._offsets[(tz, window)] = a
                off = a
            else:
                off = self._offset_ms(zone, ms)
        return (ms + off) // _DAY_MS


# --------------------------------------------------------------------------------------
# The sink.


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Building columns allocates millions of short-lived objects while the buffers hold
    millions of long-lived ones: full collections in between cost ~40% of a flush."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class ClickHouseSink:
    """Buffers facts/outputs/dead letters and writes them idempotently (see module doc).

    ``aggregate=False`` skips the usage aggregates (bulk loads: call :func:`rebuild_usage`
    once at the end instead). Not thread-safe: use one sink per thread.
    """

    def __init__(
        self, client: Client, *, aggregate: bool = True, clock: VersionClock = CLOCK
    ) -> None:
        self.client = client
        self.aggregate = aggregate
        self._clock = clock
        self._buffers: dict[type, dict[Hashable, Any]] = {t: {} for t in FLUSH_ORDER}
        self._route: dict[type, tuple[dict[Hashable, Any], Callable[[Any], Hashable]]] = {
            t: (self._buffers[t], TABLES[t].key) for t in FLUSH_ORDER if t is not _DeadLetter
        }
        self._contexts: dict[type, Any] = {}
        self._timezones: dict[str, str] = {}
        self._days = _LocalDays()
        self._flush_id: int | None = None

    # -- buffering ---------------------------------------------------------------------

    def add(self, item: Any) -> None:
        """Buffer a fact (any of engine/facts.py) or an OutputEvent; last one per key wins."""
        self.add_many((item,))

    def add_many(self, items: Iterable[Any]) -> None:
        """:meth:`add` for each item, in order (one lookup of the buffers per item)."""
        route = self._route
        timezones = self._timezones
        for item in items:
            try:
                buf, key = route[type(item)]
            except KeyError:
                raise TypeError(
                    "ClickHouseSink.add() takes a fact or an OutputEvent, "
                    f"not {type(item).__name__}"
                ) from None
            buf[key(item)] = item
            if type(item) is AccountFact:
                timezones[item.account] = item.timezone

    def add_dead_letter(
        self,
        rejection: Rejection,
        topic: str | None = None,
        partition: int | None = None,
        offset: int | None = None,
    ) -> None:
        """Buffer a dead letter; the same one added again (same position, or same bytes
        and reason when the position is unknown) is stored once."""
        dl = _DeadLetter(rejection, topic, partition, offset, self._clock.next())
        key = TABLES[_DeadLetter].key(dl)
        prev = self._buffers[_DeadLetter].get(key)
        if prev is not None:
            dl.received_seq = prev.received_seq
        self._buffers[_DeadLetter][key] = dl

    @property
    def pending(self) -> int:
        """Buffered rows (after collapsing by key)."""
        return sum(len(b) for b in self._buffers.values())

    # -- flushing ----------------------------------------------------------------------

    def flush(self) -> FlushStats:
        """Write everything buffered (commit order in the module docstring).

        Raises :class:`SinkUnavailable` on connection-type failures; on any failure the
        buffers are kept for the next call.
        """
        start = time.perf_counter()
        if not self.pending:
            return FlushStats(seconds=time.perf_counter() - start)
        try:
            with _gc_paused():
                stats = self._write()
        except SinkUnavailable:
            raise
        except Exception as exc:
            if is_transient(exc):
                raise SinkUnavailable(
                    f"ClickHouse unavailable, flush kept for retry: {exc}"
                ) from exc
            raise
        for buf in self._buffers.values():
            buf.clear()
        self._flush_id = None
        stats.seconds = time.perf_counter() - start
        return stats

    def _write(self) -> FlushStats:
        stats = FlushStats()
        has_usage_facts = any(self._buffers[t] for t in _USAGE_TYPES)
        usage = self.aggregate and has_usage_facts
        days: dict[type, list[int]] = {}
        if has_usage_facts:
            self._load_timezones()
            for t in _USAGE_TYPES:
                attr = TABLES[t].day_of
                assert attr is not None
                tzs = self._timezones
                day = self._days.day
                days[t] = [
                    day(tzs.get(r.account, "UTC"), getattr(r, attr))
                    for r in self._buffers[t].values()
                ]
        flush_id = 0
        if usage:
            if self._flush_id is None:
                self._flush_id = randbits(63)
            flush_id = self._flush_id
            started = time.perf_counter()
            stats.buckets = self._mark_dirty(flush_id, days)
            stats.timings["dirty"] = time.perf_counter() - started
        for t in FLUSH_ORDER:
            buf = self._buffers[t]
            if not buf:
                continue
            started = time.perf_counter()
            rows = list(buf.values())
            table = TABLES[t]
            version = self._clock.next()
            columns = [fn(rows) for _, fn in table.columns]
            if table.day_of is not None:
                columns.append(days[t])
            columns.append([version] * len(rows))
            self._insert(t, columns)
            stats.rows[table.name] = len(rows)
            stats.timings[table.name] = time.perf_counter() - started
        if usage:
            started = time.perf_counter()
            usage_sql.recompute_flush(self.client, flush_id, self._clock)
            self.client.command(f"ALTER TABLE usage_dirty DROP PARTITION {flush_id}")
            stats.timings["usage"] = time.perf_counter() - started
        return stats

    def _insert(self, t: type, columns: list[list[Any]]) -> None:
        ctx = self._contexts.get(t)
        if ctx is None:
            table = TABLES[t]
            described = self.client.create_insert_context(
                table.name, column_names=table.column_names, settings=INSERT_SETTINGS
            )
            ctx = self.client.create_insert_context(
                table.name,
                column_names=table.column_names,
                column_type_names=[_wire_type(ct.name) for ct in described.column_types],
                settings=INSERT_SETTINGS,
            )
            self._contexts[t] = ctx
        ctx.column_oriented = True
        ctx.data = columns
        try:
            self.client.data_insert(ctx)
        finally:
            ctx.data = None  # do not keep the columns alive until the next flush

    def _load_timezones(self) -> None:
        missing = sorted(
            {r.account for t in _USAGE_TYPES for r in self._buffers[t].values()}
            - self._timezones.keys()
        )
        for i in range(0, len(missing), _LOOKUP_CHUNK):
            chunk = missing[i : i + _LOOKUP_CHUNK]
            rows = self.client.query(
                "SELECT account, argMax(timezone, version) FROM accounts "
                "WHERE account IN {a:Array(String)} GROUP BY account",
                parameters={"a": chunk},
            ).result_rows
            found = {str(a): str(tz) for a, tz in rows}
            for a in chunk:
                self._timezones[a] = found.get(a) or "UTC"

    def _mark_dirty(self, flush_id: int, days: dict[type, list[int]]) -> int:
        """Step 1 of the commit order: every buffered usage fact (its key and bucket) goes
        to ``usage_dirty``, then the buckets of stored versions of the movable ones
        (:mod:`metering.storage.usage`). Returns the number of dirty (account, minute)."""
        kinds: list[str] = []
        accounts: list[str] = []
        sources: list[str] = []
        keys: list[str] = []
        minutes: list[int] = []
        day_col: list[int] = []
        buckets: set[tuple[str, int]] = set()
        for t, kind, key_attr in _USAGE_KEYS:
            attr = TABLES[t].day_of
            assert attr is not None
            with_source = t is MessageFact
            for r, d in zip(self._buffers[t].values(), days[t], strict=True):
                m = getattr(r, attr) // 60_000 * 60
                kinds.append(kind)
                accounts.append(r.account)
                sources.append(r.source if with_source else "")
                keys.append(getattr(r, key_attr))
                minutes.append(m)
                day_col.append(d)
                buckets.add((r.account, m))
        self.client.insert(
            "usage_dirty",
            [[flush_id] * len(kinds), kinds, accounts, sources, keys, minutes, day_col],
            column_names=["flush", "kind", "account", "source", "key", "minute", "day"],
            column_oriented=True,
            settings=INSERT_SETTINGS,
        )
        present = set(kinds)
        for source in usage_sql.MOVABLE:
            if source.kind in present:
                self.client.command(usage_sql.moved_sql(flush_id, source))
        return len(buckets)
