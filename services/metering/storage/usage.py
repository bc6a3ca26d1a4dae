"""How the usage tiers (``usage_minute``, ``usage_hour``, ``usage_day``) derive from the
fact tables: SQL shared by the sink, :func:`rebuild_usage` and migration 5.

Two steps, both recomputations from stored rows, hence idempotent:

1. **items**: every call, message, Interaction and execution contributes one row to
   ``usage_items`` at its minute (``ORDER BY (account, minute, kind, key)``), holding its
   dimensions and its per-row measures (``calls`` 1, ``answered`` 0/1, billable minutes
   if answered, ...). The row is selected from the fact table (``FINAL``, non-deleted)
   by the fact's primary key, so finding it costs a key lookup. A call or Interaction
   whose start / origin moved leaves a row at its old minute: that row gets a tombstone
   (``deleted = 1``, a lower version than the fresh rows).
2. **tiers**: a dirty bucket (account + minute, hour or local day) is summed from the
   ``usage_items`` rows in it (a primary-key range of ``usage_items``), written as
   fresh rows (version v2), then every stored row of those buckets gets a tombstone with
   v1 < v2, so groups that disappeared end up deleted while regrouped ones keep their
   fresh row.

So a flush reads what it touches, not the history of the accounts it touches (before
migration 5 the tiers were summed from the fact tables, ordered by key rather than by
time: every flush read all of its accounts' facts, and flushes slowed down as the month
went on).

Dirty sets come from ``usage_dirty`` (one partition per flush, written by the sink):
rows of kind ``call``, ``message``, ``interaction``, ``execution`` name a buffered fact
(``key``; ``source`` too for messages) and its bucket; rows of kind ``old-call`` /
``old-interaction`` name a bucket where a stored version of such a fact sat.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from metering.storage.client import Client

ITEMS_TABLE = "usage_items"
USAGE_TABLES: dict[str, str] = {"minute": "usage_minute", "hour": "usage_hour", "day": "usage_day"}
USAGE_DIMS = (
    "account",
    "bucket",
    "kind",
    "channel",
    "direction",
    "route_class",
    "region",
    "trunk_group",
    "user",
)
USAGE_MEASURES = (
    "calls",
    "answered",
    "blocked",
    "timed_out",
    "over_capacity",
    "billable_minutes",
    "billable_seconds",
    "messages",
    "segments",
    "interactions",
    "executions",
    "nlp_executions",
)
ITEM_DIMS = ("channel", "direction", "route_class", "region", "trunk_group", "user")
ITEM_COLUMNS = (
    "account",
    "minute",
    "local_day",
    "kind",
    "key",
    *ITEM_DIMS,
    *USAGE_MEASURES,
    "deleted",
    "version",
)
ITEMS_DDL = (
    f"CREATE TABLE IF NOT EXISTS {ITEMS_TABLE} ("
    "account String, minute DateTime('UTC'), local_day Date, "
    "kind LowCardinality(String), key String, "
    "channel LowCardinality(String), direction LowCardinality(String), "
    "route_class LowCardinality(String), region LowCardinality(String), "
    "trunk_group String, `user` String, "
    + ", ".join(f"{m} UInt64" for m in USAGE_MEASURES)
    + ", deleted UInt8, version UInt64"
    ") ENGINE = ReplacingMergeTree(version, deleted) "
    "PARTITION BY toYYYYMM(minute) ORDER BY (account, minute, kind, key)"
)
"""``usage_items`` without its TTL (the schema adds the retention)."""

_ANSWERED = "answered_at IS NOT NULL AND NOT blocked"


@dataclass(frozen=True, slots=True)
class Source:
    """One fact table feeding the usage tiers."""

    table: str
    kind: str  # usage kind, also the ``usage_dirty`` kind of its buffered facts
    time: str  # the column placing a row in its minute
    key: str  # ``usage_items.key`` expression
    lookup: str  # fact-table key columns matched against ``usage_dirty`` (after account)
    dirty_key: str  # the matching ``usage_dirty`` columns
    dims: tuple[str, str, str, str, str, str]  # channel, direction, route_class, region, tg, user
    measures: dict[str, str]  # per-row expressions; absent measures are 0
    where: str


SOURCES: tuple[Source, ...] = (
    Source(
        "calls",
        "call",
        "started_at",
        "call_id",
        "call_id",
        "key",
        (
            "'voice'",
            "direction",
            "route_class",
            "ifNull(region, '')",
            "trunk_group",
            "ifNull(`user`, '')",
        ),
        {
            "calls": "1",
            "answered": f"toUInt64({_ANSWERED})",
            "blocked": "toUInt64(blocked)",
            "timed_out": "toUInt64(timed_out AND NOT blocked)",
            "over_capacity": "toUInt64(over_capacity AND NOT blocked)",
            "billable_minutes": f"if({_ANSWERED}, billable_minutes, 0)",
            "billable_seconds": f"if({_ANSWERED}, billable_seconds, 0)",
        },
        "deleted = 0",
    ),
    Source(
        "messages",
        "message",
        "time",
        "concat(source, '\\x1f', id)",
        "source, id",
        "source, key",
        ("channel", "direction", "''", "''", "''", "''"),
        {"messages": "1", "segments": "toUInt64(segments)"},
        "1 = 1",
    ),
    Source(
        "interactions",
        "interaction",
        "origin",
        "interaction_id",
        "interaction_id",
        "key",
        ("channel", "''", "''", "''", "''", "''"),
        {"interactions": "1"},
        "deleted = 0",
    ),
    Source(
        "executions",
        "execution",
        "time",
        "execution_id",
        "execution_id",
        "key",
        ("channel", "''", "''", "''", "''", "''"),
        {"executions": "1", "nlp_executions": "toUInt64(nlp_uses > 0)"},
        "1 = 1",
    ),
)

MOVABLE: tuple[Source, ...] = tuple(s for s in SOURCES if s.table in ("calls", "interactions"))
"""Facts whose start / origin can change (their stored versions may sit in other minutes)."""


class Clock(Protocol):
    def next(self) -> int: ...


def _cols(names: Iterable[str]) -> str:
    return ", ".join(f"`{c}`" for c in names)


# ----------------------------------------------------------------------------- items


def items_insert_sql(source: Source, version: int, condition: str) -> str:
    """``usage_items`` rows of the facts of ``source`` matching ``condition``."""
    exprs = [
        "account",
        f"toStartOfMinute({source.time})",
        "local_day",
        f"'{source.kind}'",
        source.key,
        *source.dims,
        *(source.measures.get(m, "0") for m in USAGE_MEASURES),
        "0",
        str(version),
    ]
    return (
        f"INSERT INTO {ITEMS_TABLE} ({_cols(ITEM_COLUMNS)}) SELECT {', '.join(exprs)} "
        f"FROM {source.table} FINAL WHERE {source.where} AND {condition}"
    )


def items_backfill_sql() -> list[str]:
    """Migration 5: the items of every stored fact (version 1: any later write wins)."""
    return [items_insert_sql(s, 1, "1 = 1") for s in SOURCES]


def _dirty(flush: int) -> str:
    return f"FROM usage_dirty WHERE flush = {flush}"


def flush_items_sql(flush: int, v_tomb: int, v_fresh: int) -> list[str]:
    """Step 1 for one flush: tombstones at the old minutes of moved facts, then the fresh
    items of every buffered fact (looked up by primary key)."""
    old_kinds = ", ".join(f"'old-{s.kind}'" for s in MOVABLE)
    out = [
        f"INSERT INTO {ITEMS_TABLE} (account, minute, local_day, kind, key, deleted, version) "
        f"SELECT account, minute, day, substring(kind, 5), key, 1, {v_tomb} "
        f"{_dirty(flush)} AND kind IN ({old_kinds})"
    ]
    out.extend(items_insert_sql(s, v_fresh, _buffered(s, flush)) for s in SOURCES)
    return out


def _buffered(source: Source, flush: int) -> str:
    """Rows of ``source``'s fact table whose key the flush buffered (a key lookup)."""
    sub = f"{_dirty(flush)} AND kind = '{source.kind}'"
    return (
        f"account IN (SELECT account {sub}) "
        f"AND (account, {source.lookup}) IN (SELECT account, {source.dirty_key} {sub})"
    )


def moved_sql(flush: int, source: Source) -> str:
    """The minutes where stored versions of the flush's facts of the movable ``source``
    sit (every version, no ``FINAL``), as ``old-<kind>`` rows of ``usage_dirty``. Run
    before the facts are written."""
    return (
        "INSERT INTO usage_dirty (flush, kind, account, key, minute, day) "
        f"SELECT {flush}, 'old-{source.kind}', account, {source.key}, "
        f"toStartOfMinute({source.time}), local_day "
        f"FROM {source.table} WHERE {_buffered(source, flush)}"
    )


# ----------------------------------------------------------------------------- tiers


def _bucket(gran: str) -> str:
    if gran == "minute":
        return "toDateTime64(minute, 3, 'UTC')"
    if gran == "hour":
        return "toDateTime64(toStartOfHour(minute), 3, 'UTC')"
    return "local_day"


def tier_select_sql(gran: str, version: int, items_condition: str) -> str:
    """The fresh rows of tier ``gran`` summed from the live items matching the condition."""
    group = ["account", _bucket(gran), "kind", *(f"`{d}`" for d in ITEM_DIMS)]
    exprs = [*group, *(f"sum({m})" for m in USAGE_MEASURES), "0", str(version)]
    return (
        f"SELECT {', '.join(exprs)} FROM {ITEMS_TABLE} FINAL "
        f"WHERE deleted = 0 AND {items_condition} GROUP BY {', '.join(group)}"
    )


def tier_insert_sql(gran: str, version: int, items_condition: str) -> str:
    cols = _cols((*USAGE_DIMS, *USAGE_MEASURES, "deleted", "version"))
    return f"INSERT INTO {USAGE_TABLES[gran]} ({cols}) " + tier_select_sql(
        gran, version, items_condition
    )


def tier_tombstone_sql(gran: str, version: int, tier_condition: str) -> str:
    """Tombstones for every live stored row of tier ``gran`` matching the condition."""
    zeros = ", ".join("0" for _ in USAGE_MEASURES)
    cols = _cols((*USAGE_DIMS, *USAGE_MEASURES, "deleted", "version"))
    table = USAGE_TABLES[gran]
    return (
        f"INSERT INTO {table} ({cols}) SELECT {_cols(USAGE_DIMS)}, {zeros}, 1, {version} "
        f"FROM {table} FINAL WHERE deleted = 0 AND {tier_condition}"
    )


def dirty_items_condition(gran: str, flush: int) -> str:
    """Items in the flush's dirty buckets of tier ``gran``: the per-account bucket test
    plus a range of ``minute`` (the items' primary key after account) bounding the read."""
    sub = _dirty(flush)
    if gran == "minute":
        cond = f"(account, minute) IN (SELECT account, minute {sub})"
        lo, hi = f"(SELECT min(minute) {sub})", f"(SELECT max(minute) {sub})"
    elif gran == "hour":
        cond = f"(account, toStartOfHour(minute)) IN (SELECT account, toStartOfHour(minute) {sub})"
        lo = f"(SELECT toStartOfHour(min(minute)) {sub})"
        hi = f"(SELECT toStartOfHour(max(minute)) + INTERVAL 3599 SECOND {sub})"
    else:
        # a local day lies within [day - 14 h, day + 38 h) in UTC; a day of margin each side
        cond = f"(account, local_day) IN (SELECT account, day {sub})"
        lo = f"(SELECT toDateTime(min(day), 'UTC') - INTERVAL 1 DAY {sub})"
        hi = f"(SELECT toDateTime(max(day), 'UTC') + INTERVAL 2 DAY {sub})"
    return f"account IN (SELECT account {sub}) AND minute >= {lo} AND minute <= {hi} AND {cond}"


def dirty_tier_condition(gran: str, flush: int) -> str:
    """Stored rows of tier ``gran`` in the flush's dirty buckets."""
    sub = _dirty(flush)
    if gran == "minute":
        cond = f"(account, bucket) IN (SELECT account, toDateTime64(minute, 3, 'UTC') {sub})"
    elif gran == "hour":
        cond = (
            "(account, bucket) IN "
            f"(SELECT account, toDateTime64(toStartOfHour(minute), 3, 'UTC') {sub})"
        )
    else:
        cond = f"(account, bucket) IN (SELECT account, day {sub})"
    return f"account IN (SELECT account {sub}) AND {cond}"


def _tiers(
    client: Client,
    items_condition: Callable[[str], str],
    tier_condition: Callable[[str], str],
    clock: Clock,
) -> None:
    for gran in USAGE_TABLES:
        v_tomb = clock.next()
        v_fresh = clock.next()
        client.command(tier_insert_sql(gran, v_fresh, items_condition(gran)))
        client.command(tier_tombstone_sql(gran, v_tomb, tier_condition(gran)))


# ----------------------------------------------------------------------------- entry points


def recompute_flush(client: Client, flush: int, clock: Clock) -> None:
    """Steps 1 and 2 for the buckets and facts ``usage_dirty`` holds under ``flush`` (the
    facts are written already)."""
    v_tomb = clock.next()
    v_fresh = clock.next()
    for sql in flush_items_sql(flush, v_tomb, v_fresh):
        client.command(sql)
    _tiers(
        client,
        lambda g: dirty_items_condition(g, flush),
        lambda g: dirty_tier_condition(g, flush),
        clock,
    )


def rebuild(client: Client, condition: str, clock: Clock) -> None:
    """Recompute the items and every tier bucket of the accounts matching ``condition``
    (on ``account``) from the fact tables."""
    v_tomb = clock.next()
    v_fresh = clock.next()
    zeros = ", ".join("0" for _ in USAGE_MEASURES)
    keep = ("account", "minute", "local_day", "kind", "key", *ITEM_DIMS)
    client.command(
        f"INSERT INTO {ITEMS_TABLE} ({_cols(ITEM_COLUMNS)}) "
        f"SELECT {_cols(keep)}, {zeros}, 1, {v_tomb} FROM {ITEMS_TABLE} FINAL "
        f"WHERE deleted = 0 AND {condition}"
    )
    for s in SOURCES:
        client.command(items_insert_sql(s, v_fresh, condition))
    _tiers(client, lambda _g: condition, lambda _g: condition, clock)
