"""The ClickHouse schema as an ordered list of versioned migrations.

Rules for migrations (append-only history):

- Never edit a migration that may have been applied somewhere; add a new one with the
  next version (``migrate`` logs a warning when an applied migration's checksum changed).
- Every statement must be idempotent (``CREATE TABLE IF NOT EXISTS``,
  ``ALTER TABLE ... ADD COLUMN IF NOT EXISTS``, ``MODIFY TTL`` ...): a migration that
  failed half way is simply re-run, and two processes migrating at once do no harm.
- Write portable SQL (a ClickHouse server and the embedded chDB run the same statements).

Storage conventions (see also :mod:`metering.storage.sink`):

- Every table holding facts is a ``ReplacingMergeTree(version)`` whose ``ORDER BY`` is
  the fact's key, so re-inserting a fact is idempotent; the row with the highest
  ``version`` wins. Retractable things (calls, interactions, usage rows) add
  ``deleted UInt8`` as the engine's ``is_deleted`` column: ``FINAL`` drops them, and
  queries also filter ``deleted = 0`` explicitly.
- Readers use ``FINAL`` (or ``argMax(..., version)``). Conditions on non-key columns must
  stay in ``WHERE`` (ClickHouse applies them after the ``FINAL`` merge).
- A ``PARTITION BY`` may only depend on values that never change for a key (replacing
  works within a partition only). Hence only immutable things are partitioned by time:
  raw events and messages by the event's month, usage rows and per-minute peaks by the
  bucket (part of their key). Calls and interactions are not partitioned (their start /
  origin can be corrected).
- Times are ``DateTime64(3, 'UTC')`` (epoch milliseconds from the facts). ``local_day``
  columns hold the account's local calendar day, computed by the sink with the account's
  time zone at write time; the daily usage table buckets on it.

Retention (SPEC section 7, migration 2) is a ClickHouse ``TTL`` per table, on the time the
row describes (``toDateTime(...)`` of it, so older servers accept the expression too):

================================================  =========================================
table                                             rows deleted once
================================================  =========================================
``usage_minute``, ``concurrency_minute``          bucket / minute is 3 days old
``usage_hour``                                    bucket is 14 days old
``usage_day``                                     local day is 90 days old
``usage_items`` (what the tiers are summed from)  minute is 91 days old
``calls``                                         ``started_at`` is 60 days old
``events_raw``                                    ``call.*`` events: 60 days; others: 3 years
``messages``, ``interactions``, ``executions``    ``time`` / ``origin`` is 3 years old
``output_events``                                 ``time`` is 3 years old
``cycle_peaks``, ``fairuse_counters``             3 years after the cycle's last day
``accounts``, ``dead_letters``                    never (configuration; evidence of bad input)
================================================  =========================================

Statements have no table of their own: the reader derives them from the fact tables. Their
interactions, messages, peaks and fair-use parts live 3 years; their voice part comes from
``calls`` and therefore only for cycles whose calls are still within the 60 days.

TTL deletes happen in merges (ClickHouse checks at most every ``merge_with_ttl_timeout``,
4 hours by default; ``OPTIMIZE TABLE ... FINAL`` forces one), never at query time;
``ALTER ... MODIFY TTL`` on a populated table starts a mutation removing the rows already
expired (synchronous in chDB, a background mutation on a server). Tables
partitioned by month lose rows by rewriting parts rather than dropping whole partitions;
calls and interactions are not partitioned (see above), so their TTL always rewrites.
Loading data older than these limits (a replay of an old log, tests with fixed dates)
therefore needs :func:`set_retention` (``False``) after :func:`migrate`, or the rows
disappear at the next merge.

The daily tier outlives the call records it is derived from (90 versus 60 days): a
recomputation of a day whose calls have expired (``rebuild_usage`` over all data, or a
call fact arriving for such a day) would replace that day's call aggregates with what is
left of the calls, so recomputations must stay within the last 60 days.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

from metering.storage.client import Client
from metering.storage.usage import ITEMS_DDL, items_backfill_sql

log = logging.getLogger(__name__)

MIGRATIONS_TABLE = "schema_migrations"

_T = "DateTime64(3, 'UTC')"
_USAGE_DIMS = (
    "account String, {bucket}, kind LowCardinality(String), channel LowCardinality(String), "
    "direction LowCardinality(String), route_class LowCardinality(String), "
    "region LowCardinality(String), trunk_group String, `user` String"
)
_USAGE_MEASURES = (
    "calls UInt64, answered UInt64, blocked UInt64, timed_out UInt64, over_capacity UInt64, "
    "billable_minutes UInt64, billable_seconds UInt64, messages UInt64, segments UInt64, "
    "interactions UInt64, executions UInt64, nlp_executions UInt64"
)
_USAGE_KEY = "(account, bucket, kind, channel, direction, route_class, region, trunk_group, `user`)"


def _usage_table(name: str, bucket_type: str) -> str:
    dims = _USAGE_DIMS.format(bucket=f"bucket {bucket_type}")
    return (
        f"CREATE TABLE IF NOT EXISTS {name} ({dims}, {_USAGE_MEASURES}, "
        "deleted UInt8, version UInt64) "
        "ENGINE = ReplacingMergeTree(version, deleted) "
        f"PARTITION BY toYYYYMM(bucket) ORDER BY {_USAGE_KEY}"
    )


_CYCLE_END = "toDate(concat(CAST(cycle AS String), '-01')) + INTERVAL 1 MONTH"
"""First day after a ``YYYY-MM`` cycle (UTC date; the cycle ends at local midnight)."""


def _ttl(time_expr: str, interval: str) -> str:
    """A TTL delete rule: rows go once ``time_expr`` is older than ``interval``."""
    return f"{time_expr} + INTERVAL {interval}"


RETENTION: dict[str, str] = {
    # Real-time (per-minute) analytics: 3 days.
    "usage_minute": _ttl("toDateTime(bucket)", "3 DAY"),
    "concurrency_minute": _ttl("toDateTime(minute)", "3 DAY"),
    # Hourly: 14 days. Daily: 90 days (bucket is the account's local day).
    "usage_hour": _ttl("toDateTime(bucket)", "14 DAY"),
    "usage_day": _ttl("bucket", "90 DAY"),
    # Call records: 60 days from the call's start; the raw call events likewise (from
    # their own time); every other raw event is a platform usage record.
    "calls": _ttl("toDateTime(started_at)", "60 DAY"),
    "events_raw": f"{_ttl('toDateTime(time)', '60 DAY')} DELETE WHERE type LIKE 'call.%', "
    f"{_ttl('toDateTime(time)', '3 YEAR')}",
    # Platform usage records: 3 years.
    "messages": _ttl("toDateTime(time)", "3 YEAR"),
    "interactions": _ttl("toDateTime(origin)", "3 YEAR"),
    "executions": _ttl("toDateTime(time)", "3 YEAR"),
    "output_events": _ttl("toDateTime(time)", "3 YEAR"),
    # Cycle-level records (peaks, fair-use counters, voice counts): 3 years after the
    # cycle ends.
    "cycle_peaks": _ttl(_CYCLE_END, "3 YEAR"),
    "fairuse_counters": _ttl(_CYCLE_END, "3 YEAR"),
    "cycle_voice": _ttl(_CYCLE_END, "3 YEAR"),
    # What the usage tiers are summed from: as long as the daily tier, plus a day.
    "usage_items": _ttl("minute", "91 DAY"),
}
"""The retention TTL of each table (SPEC section 7), as set by the migrations."""


@dataclass(frozen=True, slots=True)
class Migration:
    """One schema step: ``statements`` run in order, each idempotent."""

    version: int
    name: str
    statements: list[str]

    @property
    def checksum(self) -> str:
        text = "\n;\n".join(" ".join(s.split()) for s in self.statements)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


MIGRATIONS: list[Migration] = [
    Migration(
        1,
        "fact tables, usage aggregates, outputs and dead letters",
        [
            # Raw accepted input events (key: account, source, id). A (source, id) pair
            # always carries the same event, hence the same time: partitioning by its
            # month is safe.
            f"""CREATE TABLE IF NOT EXISTS events_raw (
                account String, source String, id String,
                type LowCardinality(String), time {_T}, cycle LowCardinality(String),
                topic LowCardinality(Nullable(String)), payload String,
                version UInt64
            ) ENGINE = ReplacingMergeTree(version)
            PARTITION BY toYYYYMM(time)
            ORDER BY (account, source, id)""",
            # CallFact (key: account, call_id).
            f"""CREATE TABLE IF NOT EXISTS calls (
                account String, call_id String, cycle LowCardinality(String),
                trunk_group String, capacity_group String,
                direction LowCardinality(String), route_class LowCardinality(String),
                `user` Nullable(String), from_ Nullable(String), `to` Nullable(String),
                region LowCardinality(Nullable(String)), carrier_class LowCardinality(String),
                local_calling_area Nullable(String), blocked Bool,
                described_by LowCardinality(String),
                started_at {_T}, answered_at Nullable({_T}), ended_at Nullable({_T}),
                end_at Nullable({_T}), timed_out Bool, over_capacity Bool,
                billable_seconds UInt64, billable_minutes UInt64,
                local_day Date,
                deleted UInt8, version UInt64
            ) ENGINE = ReplacingMergeTree(version, deleted)
            ORDER BY (account, call_id)""",
            # MessageFact (key: account, source, id); immutable time, partitioned by month.
            f"""CREATE TABLE IF NOT EXISTS messages (
                account String, source String, id String, message_id String,
                cycle LowCardinality(String), time {_T},
                direction LowCardinality(String), channel LowCardinality(String),
                business_address String, remote_address String, segments UInt32,
                interaction_id String, local_day Date,
                version UInt64
            ) ENGINE = ReplacingMergeTree(version)
            PARTITION BY toYYYYMM(time)
            ORDER BY (account, source, id)""",
            # InteractionFact (key: account, interaction_id); origin and cycle can move.
            f"""CREATE TABLE IF NOT EXISTS interactions (
                account String, interaction_id String, cycle LowCardinality(String),
                channel LowCardinality(String),
                business_address Nullable(String), remote_address Nullable(String),
                origin {_T}, deadline {_T}, items UInt32, closed Bool,
                local_day Date,
                deleted UInt8, version UInt64
            ) ENGINE = ReplacingMergeTree(version, deleted)
            ORDER BY (account, interaction_id)""",
            # ExecutionFact (key: account, execution_id).
            f"""CREATE TABLE IF NOT EXISTS executions (
                account String, execution_id String, flow_id String,
                channel LowCardinality(String), cycle LowCardinality(String), time {_T},
                nlp_uses UInt32, local_day Date,
                version UInt64
            ) ENGINE = ReplacingMergeTree(version)
            ORDER BY (account, execution_id)""",
            # PeakFact (key: account, cycle, scope).
            f"""CREATE TABLE IF NOT EXISTS cycle_peaks (
                account String, cycle LowCardinality(String), scope String,
                peak UInt32, peak_at Nullable({_T}), capacity Nullable(UInt32),
                version UInt64
            ) ENGINE = ReplacingMergeTree(version)
            ORDER BY (account, cycle, scope)""",
            # MinutePeakFact (key: account, trunk_group, minute).
            f"""CREATE TABLE IF NOT EXISTS concurrency_minute (
                account String, trunk_group String, minute {_T},
                peak UInt32, capacity Nullable(UInt32),
                version UInt64
            ) ENGINE = ReplacingMergeTree(version)
            PARTITION BY toYYYYMM(minute)
            ORDER BY (account, trunk_group, minute)""",
            # FairUseFact (key: account, cycle, rule, scope).
            """CREATE TABLE IF NOT EXISTS fairuse_counters (
                account String, cycle LowCardinality(String), rule LowCardinality(String),
                scope String, num Int64, den Int64, aux Int64,
                value Float64, threshold Float64, status LowCardinality(String),
                charge_usd Decimal(18, 2),
                version UInt64
            ) ENGINE = ReplacingMergeTree(version)
            ORDER BY (account, cycle, rule, scope)""",
            # AccountFact (key: account). trunk_groups is the JSON object of SPEC section 8.
            """CREATE TABLE IF NOT EXISTS accounts (
                account String, timezone String, policies Array(String),
                trunk_groups String,
                version UInt64
            ) ENGINE = ReplacingMergeTree(version)
            ORDER BY account""",
            # OutputEvent (key: topic, id; ids are deterministic). data is JSON text.
            f"""CREATE TABLE IF NOT EXISTS output_events (
                topic LowCardinality(String), account String, id String,
                type LowCardinality(String), time {_T}, data String,
                version UInt64
            ) ENGINE = ReplacingMergeTree(version)
            ORDER BY (topic, id)""",
            # Dead letters. Key: the Kafka position when known (topic '' / partition -1 /
            # offset -1 otherwise) plus the hash of the original bytes and the reason, so
            # re-inserting the same dead letter is idempotent either way.
            """CREATE TABLE IF NOT EXISTS dead_letters (
                topic String, `partition` Int64, `offset` Int64,
                original_hash UInt64 DEFAULT cityHash64(original),
                reason LowCardinality(String), detail String,
                event_type LowCardinality(Nullable(String)), account Nullable(String),
                original String, received_seq UInt64,
                version UInt64
            ) ENGINE = ReplacingMergeTree(version)
            ORDER BY (topic, `partition`, `offset`, original_hash, reason)""",
            # Usage aggregates, derived by the sink from the fact tables.
            _usage_table("usage_minute", _T),
            _usage_table("usage_hour", _T),
            _usage_table("usage_day", "Date"),
            # Sink scratch space: the (account, minute, day) buckets touched by one flush
            # and the keys whose earlier versions may sit in other buckets. One partition
            # per flush, dropped when the flush completes; the TTL collects leftovers of
            # crashed flushes.
            """CREATE TABLE IF NOT EXISTS usage_dirty (
                flush UInt64, kind LowCardinality(String), account String, key String,
                minute DateTime('UTC'), day Date,
                created DateTime DEFAULT now()
            ) ENGINE = MergeTree
            PARTITION BY flush
            ORDER BY (flush, kind, account, key)
            TTL created + INTERVAL 1 DAY
            SETTINGS ttl_only_drop_parts = 1""",
        ],
    ),
    Migration(
        2,
        "retention (SPEC section 7): TTL per tier",
        [
            f"ALTER TABLE {table} MODIFY TTL {RETENTION[table]}"
            for table in RETENTION
            if table not in ("cycle_voice", "usage_items")  # created with their TTL later
        ],
    ),
    Migration(
        3,
        "Insights dimensions: caller and called party of messages",
        [
            # Calls carry from_/to already; a message's parties follow from its direction
            # (sent: business -> remote). ALIAS columns: nothing stored, nothing to write.
            "ALTER TABLE messages ADD COLUMN IF NOT EXISTS from_ String "
            "ALIAS if(direction = 'sent', business_address, remote_address)",
            "ALTER TABLE messages ADD COLUMN IF NOT EXISTS `to` String "
            "ALIAS if(direction = 'sent', remote_address, business_address)",
        ],
    ),
    Migration(
        4,
        "statements outlive call records: per-cycle voice counts, retractable fair-use scopes",
        [
            # Call records are kept 60 days, statements 3 years: the statement's voice
            # figures are stored per cycle instead of being aggregated from `calls`.
            f"""CREATE TABLE IF NOT EXISTS cycle_voice (
                account String, cycle LowCardinality(String),
                attempts UInt64, answered UInt64, blocked UInt64, timed_out UInt64,
                over_capacity UInt64, minutes_local UInt64, minutes_domestic_ld UInt64,
                minutes_toll_free UInt64, minutes_international UInt64, version UInt64
            ) ENGINE = ReplacingMergeTree(version) ORDER BY (account, cycle)
            TTL {RETENTION["cycle_voice"]}""",
            "ALTER TABLE fairuse_counters ADD COLUMN IF NOT EXISTS deleted UInt8 DEFAULT 0",
        ],
    ),
    Migration(
        5,
        "usage items: tiers summed per bucket from a time-ordered table, not from the facts",
        [
            f"{ITEMS_DDL} TTL {RETENTION['usage_items']}",
            "ALTER TABLE usage_dirty ADD COLUMN IF NOT EXISTS source String DEFAULT '' "
            "AFTER account",
            # the items of the facts stored so far (a no-op on a fresh database)
            *items_backfill_sql(),
        ],
    ),
]


def _validate(migrations: list[Migration]) -> None:
    versions = [m.version for m in migrations]
    if versions != sorted(set(versions)) or (versions and versions[0] < 1):
        raise ValueError(f"migration versions must be unique, positive and increasing: {versions}")


_validate(MIGRATIONS)


def _ensure_migrations_table(client: Client) -> None:
    client.command(
        f"""CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} (
            version UInt32, name String, checksum String, applied_at {_T}
        ) ENGINE = ReplacingMergeTree(applied_at)
        ORDER BY version"""
    )


def applied_migrations(client: Client) -> dict[int, str]:
    """Applied migration versions and their checksums (empty when none)."""
    _ensure_migrations_table(client)
    rows = client.query(
        f"SELECT version, argMax(checksum, applied_at) FROM {MIGRATIONS_TABLE} GROUP BY version"
    ).result_rows
    return {int(v): str(c) for v, c in rows}


def migrate(client: Client, migrations: list[Migration] | None = None) -> list[int]:
    """Apply the migrations not yet recorded, in order; return the versions applied now.

    Each migration is recorded in ``schema_migrations`` after all its statements ran, so
    a failure leaves it unrecorded and the next call re-runs it (statements are
    idempotent).
    """
    todo = MIGRATIONS if migrations is None else migrations
    _validate(todo)
    applied = applied_migrations(client)
    known = {m.version for m in todo}
    newer = sorted(v for v in applied if v not in known)
    if newer:
        log.warning("database has migrations this code does not know: %s", newer)
    done: list[int] = []
    for m in todo:
        if m.version in applied:
            if applied[m.version] != m.checksum:
                log.warning(
                    "migration %d (%s) changed since it was applied; add a new migration instead",
                    m.version,
                    m.name,
                )
            continue
        for statement in m.statements:
            client.command(statement)
        client.command(
            f"INSERT INTO {MIGRATIONS_TABLE} (version, name, checksum, applied_at) "
            "SELECT {v:UInt32}, {n:String}, {c:String}, now64(3)",
            parameters={"v": m.version, "n": m.name, "c": m.checksum},
        )
        log.info("applied migration %d: %s", m.version, m.name)
        done.append(m.version)
    return done


def set_retention(client: Client, enabled: bool) -> None:
    """Switch the retention TTLs of the tables in :data:`RETENTION` off or back on.

    Off: TTL merges are stopped and every retention TTL is removed from its table
    (``ALTER TABLE ... REMOVE TTL``). The removal is stored in the table definitions, so
    it also holds when the database is opened again later: stopping TTL merges alone
    lasts only for the process, and merges that run while chDB loads a directory could
    still delete old rows (seen: usage_hour rows of an old replay gone on reopen).
    On: the TTLs are set again (``MODIFY TTL``, which also removes rows already expired)
    and TTL merges restarted.

    For embedded databases holding fixed-date data older than the retention limits
    (replays of old logs, demos, tests). Call it after :func:`migrate`; a later
    migration that sets a TTL again turns retention back on for that table. Production
    servers keep retention on.
    """
    if enabled:
        for table, ttl in RETENTION.items():
            client.command(f"ALTER TABLE {table} MODIFY TTL {ttl}")
        client.command("SYSTEM START TTL MERGES")
        return
    client.command("SYSTEM STOP TTL MERGES")
    with_ttl = client.query(
        "SELECT name FROM system.tables WHERE database = currentDatabase() "
        "AND name IN {t:Array(String)} AND positionCaseInsensitive(create_table_query, ' TTL ') > 0",
        parameters={"t": list(RETENTION)},
    ).result_rows
    for (table,) in with_ttl:
        client.command(f"ALTER TABLE {table} REMOVE TTL")
