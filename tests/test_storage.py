"""ClickHouse storage against the embedded chDB: migrations, sink, aggregates, reader.

Every test opens its own chDB directory under ``tmp_path`` and closes the client after
(chDB hosts one engine directory per process at a time).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest

import helpers
from helpers import at, call_answered, call_ended, call_started, nlp, raw, smartflow
from metering.engine.accounts import parse_accounts
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
from metering.engine.statement import render
from metering.events.decode import Rejection, to_ms
from metering.replay.replay import replay, replay_into
from metering.storage import (
    MIGRATIONS,
    ClickHouseSink,
    Client,
    SinkUnavailable,
    StorageError,
    applied_migrations,
    connect,
    list_statements,
    migrate,
    read_statement,
    read_statement_facts,
    rebuild_usage,
)
from metering.storage.schema import set_retention

ACCT = "acct-1"
CYCLE = "2026-11"


def ms(ts: str) -> int:
    return to_ms(datetime.fromisoformat(ts.replace("Z", "+00:00")))


@pytest.fixture
def client(tmp_path: Path) -> Iterator[Client]:
    c = connect(db_dir=str(tmp_path / "ch"))
    migrate(c)
    set_retention(c, False)  # fixed-date samples are older than the TTLs
    yield c
    c.close()


# --------------------------------------------------------------------------------------
# A small hand-built scenario.


def call(call_id: str, **kw: Any) -> CallFact:
    base: dict[str, Any] = dict(
        account=ACCT,
        call_id=call_id,
        cycle=CYCLE,
        trunk_group="tg-1",
        capacity_group="tg-1",
        direction="outbound",
        route_class="local",
        user=None,
        from_=None,
        to=None,
        region=None,
        carrier_class="unknown",
        local_calling_area=None,
        blocked=False,
        described_by="lifecycle",
        started_at=ms("2026-11-03T14:05:00Z"),
        answered_at=None,
        ended_at=None,
        end_at=None,
        timed_out=False,
        over_capacity=False,
        billable_seconds=0,
        billable_minutes=0,
    )
    base.update(kw)
    return CallFact(**base)


def interaction(iid: str, channel: str, origin: str, **kw: Any) -> InteractionFact:
    base: dict[str, Any] = dict(
        account=ACCT,
        interaction_id=iid,
        cycle=CYCLE,
        channel=channel,
        business_address="+13035550100" if channel in ("sms", "whatsapp") else None,
        remote_address="+13035550199" if channel in ("sms", "whatsapp") else None,
        origin=ms(origin),
        deadline=ms(origin) + 48 * 3_600_000,
        items=1,
        closed=False,
    )
    base.update(kw)
    return InteractionFact(**base)


def message(mid: str, channel: str, direction: str, t: str, segments: int, iid: str) -> MessageFact:
    return MessageFact(
        account=ACCT,
        source="sim",
        id=f"evt-{mid}",
        message_id=mid,
        cycle=CYCLE,
        time=ms(t),
        direction=direction,
        channel=channel,
        business_address="+13035550100",
        remote_address="+13035550199",
        segments=segments,
        interaction_id=iid,
    )


def fair(rule: str, scope: str, num: int, den: int = 0, aux: int = 0) -> FairUseFact:
    return FairUseFact(
        account=ACCT,
        cycle=CYCLE,
        rule=rule,
        scope=scope,
        num=num,
        den=den,
        aux=aux,
        value=0.0,
        threshold=0.0,
        status="ok",
        charge_usd="0.00",
    )


def scenario() -> list[Any]:
    """Facts of acct-1 (America/Denver, presets mitel_us + intelepeer_uc)."""
    t0 = ms("2026-11-03T14:05:00Z")
    return [
        AccountFact(
            account=ACCT,
            timezone="America/Denver",
            policies=["mitel_us", "intelepeer_uc"],
            trunk_groups={
                "tg-1": {"capacity": 20, "bundle": "user"},
                "tg-2": {"capacity": 5, "bundle": "call_path"},
            },
        ),
        # c1: answered local call of u-1, 2 minutes
        call(
            "c1",
            user="u-1",
            region="CO",
            carrier_class="rboc",
            answered_at=t0 + 10_000,
            ended_at=t0 + 130_000,
            end_at=t0 + 130_000,
            billable_seconds=120,
            billable_minutes=2,
        ),
        # c2: unanswered inbound domestic_ld of u-1
        call(
            "c2",
            user="u-1",
            direction="inbound",
            route_class="domestic_ld",
            started_at=t0 + 30_000,
            ended_at=t0 + 60_000,
            end_at=t0 + 60_000,
        ),
        # c3: blocked toll_free
        call(
            "c3",
            route_class="toll_free",
            blocked=True,
            started_at=t0 + 40_000,
            ended_at=t0 + 40_000,
            end_at=t0 + 40_000,
        ),
        # c4: international on tg-2, answered, timed out, over capacity (240 minutes)
        call(
            "c4",
            trunk_group="tg-2",
            capacity_group="tg-2",
            route_class="international",
            started_at=ms("2026-11-03T15:00:00Z"),
            answered_at=ms("2026-11-03T15:00:10Z"),
            end_at=ms("2026-11-03T19:00:00Z"),
            timed_out=True,
            over_capacity=True,
            billable_seconds=14390,
            billable_minutes=240,
        ),
        # c5: retracted duplicate (never counts)
        call(
            "c5",
            billable_seconds=300,
            billable_minutes=5,
            answered_at=t0,
            ended_at=t0 + 300_000,
            end_at=t0 + 300_000,
            deleted=True,
        ),
        # c6: previous cycle; 03:00Z on Nov 1 is Oct 31 evening in Denver
        call(
            "c6",
            cycle="2026-10",
            started_at=ms("2026-11-01T03:00:00Z"),
            answered_at=ms("2026-11-01T03:00:05Z"),
            ended_at=ms("2026-11-01T03:01:05Z"),
            end_at=ms("2026-11-01T03:01:05Z"),
            billable_seconds=60,
            billable_minutes=1,
        ),
        message("m1", "sms", "sent", "2026-11-03T14:00:00Z", 2, "i1"),
        message("m2", "sms", "received", "2026-11-03T14:01:00Z", 1, "i1"),
        message("m3", "whatsapp", "sent", "2026-11-03T14:02:00Z", 1, "i2"),
        interaction("i1", "sms", "2026-11-03T14:00:00Z", items=2),
        interaction("i2", "whatsapp", "2026-11-03T14:02:00Z"),
        interaction("i3", "voice", "2026-11-03T14:03:00Z", business_address=None),
        interaction("i4", "sms", "2026-11-03T14:04:00Z", deleted=True),
        ExecutionFact(
            account=ACCT,
            execution_id="e1",
            flow_id="f1",
            channel="voice",
            cycle=CYCLE,
            time=ms("2026-11-03T14:03:00Z"),
            nlp_uses=1,
        ),
        ExecutionFact(
            account=ACCT,
            execution_id="e2",
            flow_id="f1",
            channel="sms",
            cycle=CYCLE,
            time=ms("2026-11-03T14:04:00Z"),
            nlp_uses=0,
        ),
        PeakFact(
            account=ACCT,
            cycle=CYCLE,
            scope="account",
            peak=2,
            peak_at=ms("2026-11-03T14:05:30Z"),
            capacity=None,
        ),
        PeakFact(
            account=ACCT,
            cycle=CYCLE,
            scope="trunk_group:tg-1",
            peak=2,
            peak_at=ms("2026-11-03T14:05:30Z"),
            capacity=20,
        ),
        PeakFact(
            account=ACCT,
            cycle=CYCLE,
            scope="trunk_group:tg-2",
            peak=1,
            peak_at=ms("2026-11-03T15:00:00Z"),
            capacity=5,
        ),
        PeakFact(
            account=ACCT, cycle=CYCLE, scope="trunk_group:tg-9", peak=0, peak_at=None, capacity=None
        ),
        PeakFact(
            account=ACCT,
            cycle="2026-10",
            scope="account",
            peak=1,
            peak_at=ms("2026-11-01T03:00:00Z"),
            capacity=None,
        ),
        MinutePeakFact(account=ACCT, trunk_group="tg-1", minute=t0, peak=2, capacity=20),
        fair("minutes_per_user", "user:u-1", 2),
        fair("bundle_sharing", "user:u-1", 2),
        fair("rboc_mix", "account", 2, 2, 242),
        fair("call_completion", "account", 2, 2, 14_510_000),  # aux: answered ms
        fair("alaska_hawaii_share", "account", 0, 0),
        fair("local_calling_area", "trunk_group:tg-2", 0, 0),
        fair("nlp_share", "account", 1, 2),  # preset not configured: not in the statement
        RawEventFact(
            account=ACCT,
            source="sim",
            id="evt-m1",
            type="message.sent",
            time=ms("2026-11-03T14:00:00Z"),
            cycle=CYCLE,
            topic="cpaas.messaging",
            payload=b'{"id":"evt-m1"}',
        ),
        OutputEvent(
            topic="metering.concurrency",
            account=ACCT,
            id="peak-1",
            type="concurrency.peak",
            time=t0,
            data={"scope": "account", "peak": 2, "version": 1},
        ),
    ]


EXPECTED: dict[str, Any] = {
    "account": ACCT,
    "cycle": CYCLE,
    "timezone": "America/Denver",
    "interactions": {
        "total": 3,
        "by_channel": {"voice": 1, "sms": 1, "whatsapp": 1, "facebook": 0, "api": 0},
    },
    "messages": {"total": 3, "segments": 4},
    "voice": {
        "attempts": 4,
        "answered": 2,
        "blocked": 1,
        "timed_out": 1,
        "over_capacity": 1,
        "billable_minutes": 242,
        "minutes_by_route_class": {
            "local": 2,
            "domestic_ld": 0,
            "toll_free": 0,
            "international": 240,
        },
    },
    "concurrency": {
        "peak": 2,
        "peak_at": "2026-11-03T14:05:30.000Z",
        "trunk_groups": {
            "tg-1": {"peak": 2, "peak_at": "2026-11-03T14:05:30.000Z", "capacity": 20},
            "tg-2": {"peak": 1, "peak_at": "2026-11-03T15:00:00.000Z", "capacity": 5},
        },
    },
    "fair_use": [
        {
            "rule": "alaska_hawaii_share",
            "scope": "account",
            "value": 0.0,
            "threshold": 0.01,
            "status": "insufficient_data",
            "charge_usd": "0.00",
        },
        {
            "rule": "bundle_sharing",
            "scope": "user:u-1",
            "value": 2,
            "threshold": 1,
            "status": "breach",
            "charge_usd": "0.00",
        },
        {
            "rule": "call_completion",
            "scope": "account",
            "value": 1.0,
            "threshold": 0.9,
            "status": "insufficient_data",
            "charge_usd": "0.00",
            "acd_seconds": 7255.0,
        },
        {
            "rule": "local_calling_area",
            "scope": "trunk_group:tg-2",
            "value": 0.0,
            "threshold": 0.9,
            "status": "insufficient_data",
            "charge_usd": "0.00",
        },
        {
            "rule": "minutes_per_user",
            "scope": "user:u-1",
            "value": 2,
            "threshold": 2500,
            "status": "ok",
            "charge_usd": "0.00",
        },
        {
            "rule": "rboc_mix",
            "scope": "account",
            "value": 1.0,
            "threshold": 0.7,
            "status": "insufficient_data",
            "charge_usd": "0.00",
        },
        # not stored: filled in with zero counters (the account scope is always listed)
        {
            "rule": "toll_free_share",
            "scope": "account",
            "value": 0.0,
            "threshold": 0.1,
            "status": "insufficient_data",
            "charge_usd": "0.00",
        },
    ],
    "charges": {"overage_usd": "0.00", "surcharge_usd": "0.00"},
}

FACT_TABLES = (
    "accounts",
    "events_raw",
    "calls",
    "messages",
    "interactions",
    "executions",
    "cycle_peaks",
    "concurrency_minute",
    "fairuse_counters",
    "cycle_voice",
    "output_events",
    "dead_letters",
    "usage_minute",
    "usage_hour",
    "usage_day",
)


def write(client: Client, items: list[Any]) -> None:
    sink = ClickHouseSink(client)
    for item in items:
        sink.add(item)
    sink.flush()


def final_counts(client: Client) -> dict[str, int]:
    out = {}
    for t in FACT_TABLES:
        out[t] = int(client.command(f"SELECT count() FROM {t} FINAL"))  # type: ignore[arg-type]
    return out


def usage_totals(client: Client, table: str, where: str = "1 = 1") -> dict[str, int]:
    from metering.storage.usage import USAGE_MEASURES as cols

    row = client.query(
        f"SELECT {', '.join(f'sum({c})' for c in cols)} FROM {table} FINAL "
        f"WHERE deleted = 0 AND {where}"
    ).result_rows[0]
    return {c: int(v) for c, v in zip(cols, row, strict=True)}


# --------------------------------------------------------------------------------------
# Tests.


def test_connect_needs_exactly_one_target(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="exactly one"):
        connect()
    with pytest.raises(StorageError, match="exactly one"):
        connect(db_dir=str(tmp_path), url="http://localhost:8123")
    with pytest.raises(StorageError, match="http"):
        connect(url="ftp://x/metering")
    with pytest.raises(StorageError, match="invalid database"):
        connect(db_dir=str(tmp_path), database="bad-name")


def test_migrations_idempotent(client: Client) -> None:
    tables = {r[0] for r in client.query("SHOW TABLES").result_rows}
    assert migrate(client) == []
    assert migrate(client) == []
    assert {r[0] for r in client.query("SHOW TABLES").result_rows} == tables
    assert set(FACT_TABLES) | {"schema_migrations", "usage_dirty", "usage_items"} == tables
    assert applied_migrations(client) == {m.version: m.checksum for m in MIGRATIONS}
    rows = client.query(
        "SELECT version, name FROM schema_migrations FINAL ORDER BY version"
    ).result_rows
    assert [r[0] for r in rows] == [m.version for m in MIGRATIONS]


def test_round_trip_statement(client: Client) -> None:
    write(client, scenario())
    assert read_statement(client, ACCT, CYCLE) == EXPECTED
    assert list_statements(client) == [(ACCT, "2026-10"), (ACCT, CYCLE)]
    assert read_statement(client, ACCT, "2026-09") is None
    assert read_statement(client, "nobody", CYCLE) is None
    october = read_statement(client, ACCT, "2026-10")
    assert october is not None
    assert october["voice"]["minutes_by_route_class"]["local"] == 1
    assert october["concurrency"]["peak"] == 1
    facts = read_statement_facts(client, ACCT, CYCLE)
    assert facts is not None and facts.policies == ("mitel_us", "intelepeer_uc")
    raw = client.query("SELECT payload, toUnixTimestamp64Milli(time) FROM events_raw").result_rows
    assert raw == [('{"id":"evt-m1"}', ms("2026-11-03T14:00:00Z"))]
    (data,) = client.query("SELECT data FROM output_events FINAL").result_rows[0]
    assert json.loads(data) == {"peak": 2, "scope": "account", "version": 1}


def test_unconfigured_account_defaults(client: Client) -> None:
    write(
        client,
        [
            call(
                "x1",
                account="acct-2",
                answered_at=1,
                ended_at=60_001,
                end_at=60_001,
                billable_seconds=60,
                billable_minutes=1,
            )
        ],
    )
    st = read_statement(client, "acct-2", CYCLE)
    assert st is not None
    assert st["timezone"] == "UTC"
    # every account rule of the three default presets is listed for the account scope
    assert [f["rule"] for f in st["fair_use"]] == [
        "alaska_hawaii_share",
        "call_completion",
        "calls_per_second",
        "nlp_share",
        "rboc_mix",
        "toll_free_share",
    ]


_CHILD = """
import json, sys
sys.path.insert(0, {tests!r})
from test_storage import ACCT, CYCLE, final_counts, scenario, usage_totals, write
from metering.storage import connect, migrate, read_statement
from metering.storage.schema import set_retention
c = connect(db_dir={path!r})
migrate(c)
set_retention(c, False)
write(c, scenario())
print(json.dumps({{"statement": read_statement(c, ACCT, CYCLE), "counts": final_counts(c),
                  "usage": usage_totals(c, "usage_day")}}))
c.close()
"""


def test_idempotent_across_flushes_and_processes(tmp_path: Path) -> None:
    path = str(tmp_path / "ch")
    c = connect(db_dir=path)
    try:
        migrate(c)
        set_retention(c, False)
        write(c, scenario())
        counts = final_counts(c)
        usage = usage_totals(c, "usage_day")
        write(c, scenario())  # same facts again, new sink
        sink = ClickHouseSink(c)
        for item in scenario():
            sink.add(item)
        sink.flush()
        assert sink.flush().rows == {}  # nothing left
        sink.add_many(scenario())
        sink.flush()  # and again from the same sink
        assert read_statement(c, ACCT, CYCLE) == EXPECTED
        assert final_counts(c) == counts
        assert usage_totals(c, "usage_day") == usage
    finally:
        c.close()
    # a new process on the same directory writes the same facts once more
    child = _CHILD.format(tests=str(Path(__file__).parent), path=path)
    env = dict(os.environ)
    proc = subprocess.run(
        [sys.executable, "-c", child],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["statement"] == EXPECTED
    assert out["counts"] == counts
    assert out["usage"] == usage


def test_retraction_and_moved_interaction(client: Client) -> None:
    write(client, scenario())
    # c1 turns out to be a duplicate description; i1 moves to the next cycle
    write(
        client,
        [
            call(
                "c1",
                user="u-1",
                region="CO",
                carrier_class="rboc",
                answered_at=ms("2026-11-03T14:05:10Z"),
                ended_at=ms("2026-11-03T14:07:10Z"),
                end_at=ms("2026-11-03T14:07:10Z"),
                billable_seconds=120,
                billable_minutes=2,
                deleted=True,
            ),
            interaction("i1", "sms", "2026-12-02T10:00:00Z", cycle="2026-12", items=2),
        ],
    )
    st = read_statement(client, ACCT, CYCLE)
    assert st is not None
    assert st["voice"]["attempts"] == 3
    assert st["voice"]["answered"] == 1
    assert st["voice"]["minutes_by_route_class"]["local"] == 0
    assert st["interactions"]["by_channel"]["sms"] == 0
    assert st["interactions"]["total"] == 2
    dec = read_statement(client, ACCT, "2026-12")
    assert dec is not None
    assert dec["interactions"]["by_channel"]["sms"] == 1
    assert (ACCT, "2026-12") in list_statements(client)
    # the aggregates followed: c1's minute lost its call, i1 left November 3
    nov3 = "bucket = toDate('2026-11-03')"
    assert usage_totals(client, "usage_day", nov3)["interactions"] == 2
    assert usage_totals(client, "usage_day", "bucket = toDate('2026-12-02')")["interactions"] == 1
    minute = "bucket = toDateTime64('2026-11-03 14:05:00', 3, 'UTC')"
    assert usage_totals(client, "usage_minute", minute)["calls"] == 2  # c2, c3 remain
    # the (dims) group of c1 in that minute is gone, not zero-padded
    groups = client.query(
        f"SELECT direction, route_class, user FROM usage_minute FINAL WHERE {minute} "
        "AND kind = 'call' AND deleted = 0 ORDER BY route_class"
    ).result_rows
    assert groups == [("inbound", "domestic_ld", "u-1"), ("outbound", "toll_free", "")]


def test_aggregates_match_facts(client: Client) -> None:
    write(client, scenario())
    expected_nov = {
        "calls": 4,
        "answered": 2,
        "blocked": 1,
        "timed_out": 1,
        "over_capacity": 1,
        "billable_minutes": 242,
        "billable_seconds": 14510,
        "messages": 3,
        "segments": 4,
        "interactions": 3,
        "executions": 2,
        "nlp_executions": 1,
    }
    for table in ("usage_minute", "usage_hour", "usage_day"):
        totals = usage_totals(client, table)
        # c6 (October cycle, 1 answered minute) is in the buckets too
        assert totals == {
            **expected_nov,
            "calls": 5,
            "answered": 3,
            "billable_minutes": 243,
            "billable_seconds": 14570,
        }, table
    # local days: c6 started 2026-11-01T03:00Z = Oct 31 in Denver
    assert usage_totals(client, "usage_day", "bucket = toDate('2026-10-31')")["calls"] == 1
    assert (
        usage_totals(
            client, "usage_hour", "bucket = toDateTime64('2026-11-03 14:00:00', 3, 'UTC')"
        )["calls"]
        == 3
    )

    # c2 gets answered later (a correction): the bucket is updated, not added to
    t0 = ms("2026-11-03T14:05:00Z")
    write(
        client,
        [
            call(
                "c2",
                user="u-1",
                direction="inbound",
                route_class="domestic_ld",
                started_at=t0 + 30_000,
                answered_at=t0 + 35_000,
                ended_at=t0 + 95_000,
                end_at=t0 + 95_000,
                billable_seconds=60,
                billable_minutes=1,
            )
        ],
    )
    for table in ("usage_minute", "usage_hour", "usage_day"):
        totals = usage_totals(client, table)
        assert totals["calls"] == 5 and totals["answered"] == 4, table
        assert totals["billable_minutes"] == 244, table
    # c4 is re-described with a start one hour earlier: it moves between buckets
    write(
        client,
        [
            call(
                "c4",
                trunk_group="tg-2",
                capacity_group="tg-2",
                route_class="international",
                started_at=ms("2026-11-03T13:59:00Z"),
                answered_at=ms("2026-11-03T13:59:10Z"),
                end_at=ms("2026-11-03T17:59:00Z"),
                timed_out=True,
                over_capacity=True,
                billable_seconds=14390,
                billable_minutes=240,
            )
        ],
    )
    assert (
        usage_totals(
            client, "usage_hour", "bucket = toDateTime64('2026-11-03 15:00:00', 3, 'UTC')"
        )["calls"]
        == 0
    )
    assert (
        usage_totals(
            client, "usage_hour", "bucket = toDateTime64('2026-11-03 13:00:00', 3, 'UTC')"
        )["calls"]
        == 1
    )
    assert usage_totals(client, "usage_minute")["calls"] == 5
    st = read_statement(client, ACCT, CYCLE)
    assert st is not None and st["voice"]["billable_minutes"] == 243
    before = {t: usage_totals(client, t) for t in ("usage_minute", "usage_hour", "usage_day")}
    rebuild_usage(client)
    assert {t: usage_totals(client, t) for t in before} == before


def test_bulk_load_then_rebuild(client: Client) -> None:
    sink = ClickHouseSink(client, aggregate=False)
    sink.add_many(scenario())
    sink.flush()
    assert usage_totals(client, "usage_day")["calls"] == 0
    rebuild_usage(client, [ACCT])
    assert usage_totals(client, "usage_day")["calls"] == 5
    assert read_statement(client, ACCT, CYCLE) == EXPECTED


def test_dead_letters_idempotent(client: Client) -> None:
    bad = Rejection(b"{not json", "invalid_json", "expected ...")
    wrong = Rejection(
        b'{"type":"call.started"}', "wrong_topic", "belongs on cpaas.voice", "call.started", ACCT
    )
    binary = Rejection(b"\xff\xfe", "invalid_json", "not utf-8")
    for _ in range(2):
        sink = ClickHouseSink(client)
        sink.add_dead_letter(bad, topic="cpaas.voice", partition=3, offset=17)
        sink.add_dead_letter(bad, topic="cpaas.voice", partition=3, offset=17)
        sink.add_dead_letter(bad, topic="cpaas.voice", partition=3, offset=18)  # another record
        sink.add_dead_letter(wrong)  # position unknown (replay)
        sink.add_dead_letter(binary)
        stats = sink.flush()
        assert stats.rows == {"dead_letters": 4}
    rows = client.query(
        "SELECT topic, `partition`, `offset`, reason, event_type, account, original "
        "FROM dead_letters FINAL ORDER BY topic, `offset`, reason"
    ).result_rows
    assert len(rows) == 4
    assert rows[0][3:6] == ("invalid_json", None, None)  # the binary one, position unknown
    assert rows[1][3:6] == ("wrong_topic", "call.started", ACCT)
    assert [r[2] for r in rows[2:]] == [17, 18]
    n = client.command("SELECT count() FROM dead_letters FINAL WHERE original = unhex('FFFE')")
    assert int(n) == 1  # type: ignore[arg-type]


def test_flush_keeps_buffers_when_unavailable(client: Client) -> None:
    sink = ClickHouseSink(client)
    sink.add_many(scenario())
    pending = sink.pending

    def refuse(*_a: Any, **_k: Any) -> Any:
        raise ConnectionRefusedError("connection refused")

    real = client.data_insert
    client.data_insert = refuse  # type: ignore[method-assign]
    try:
        with pytest.raises(SinkUnavailable):
            sink.flush()
    finally:
        client.data_insert = real  # type: ignore[method-assign]
    assert sink.pending == pending
    sink.flush()
    assert sink.pending == 0
    assert read_statement(client, ACCT, CYCLE) == EXPECTED
    assert int(client.command("SELECT count() FROM usage_dirty")) == 0  # type: ignore[arg-type]


def test_buffers_collapse_by_key(client: Client) -> None:
    sink = ClickHouseSink(client)
    sink.add(call("c1"))
    sink.add(
        call(
            "c1",
            answered_at=1,
            ended_at=120_001,
            end_at=120_001,
            billable_seconds=120,
            billable_minutes=2,
        )
    )
    sink.add(call("c2"))
    assert sink.pending == 2
    assert sink.flush().rows == {"calls": 2}
    with pytest.raises(TypeError):
        sink.add("not a fact")
    st = read_statement(client, ACCT, CYCLE)
    assert st is not None and st["voice"]["billable_minutes"] == 2


def test_retry_after_failure_between_facts_and_aggregates(client: Client) -> None:
    from clickhouse_connect.driver.exceptions import DatabaseError

    write(client, scenario())
    before = {t: usage_totals(client, t) for t in ("usage_minute", "usage_hour", "usage_day")}
    sink = ClickHouseSink(client)
    sink.add_many(scenario())
    t0 = ms("2026-11-03T14:05:00Z")
    sink.add(
        call(
            "c2",
            user="u-1",
            direction="inbound",
            route_class="domestic_ld",
            started_at=t0 + 30_000,
            answered_at=t0 + 35_000,
            ended_at=t0 + 95_000,
            end_at=t0 + 95_000,
            billable_seconds=60,
            billable_minutes=1,
        )
    )
    real = client.command
    calls = {"n": 0}

    def flaky(cmd: str, *a: Any, **k: Any) -> Any:
        if cmd.startswith("INSERT INTO usage_hour") and calls["n"] == 0:
            calls["n"] += 1
            raise DatabaseError("Code: 252. Too many parts", code=252)
        return real(cmd, *a, **k)

    client.command = flaky  # type: ignore[method-assign]
    try:
        with pytest.raises(SinkUnavailable):
            sink.flush()  # facts and usage_minute written, usage_hour failed
        assert sink.pending > 0
        sink.flush()  # the retry re-sends everything and finishes the aggregates
    finally:
        client.command = real  # type: ignore[method-assign]
    for table, totals in before.items():
        now = usage_totals(client, table)
        assert now["answered"] == totals["answered"] + 1, table
        assert now["billable_minutes"] == totals["billable_minutes"] + 1, table
        assert now["calls"] == totals["calls"], table
    st = read_statement(client, ACCT, CYCLE)
    assert st is not None and st["voice"]["answered"] == 3


def test_unreachable_server_and_second_directory(client: Client, tmp_path: Path) -> None:
    from metering.storage import StorageUnavailable

    with pytest.raises(StorageUnavailable) as err:
        connect(url="http://bob:s3cret@127.0.0.1:1/metering")
    assert "s3cret" not in str(err.value)
    # chDB: one engine directory per process while a client is open
    with pytest.raises(StorageError, match="one engine directory per process"):
        connect(db_dir=str(tmp_path / "other"))
    # a second client on the same directory works and sees the same data
    write(client, scenario())
    second = connect(db_dir=client.path)  # type: ignore[attr-defined]
    try:
        assert read_statement(second, ACCT, CYCLE) == EXPECTED
    finally:
        second.close()


def test_statement_outlives_call_records(client: Client) -> None:
    """Call records are kept 60 days, statements 3 years (SPEC section 7): with the
    engine's per-cycle voice counts stored, dropping every call row (what the 60-day TTL
    does) changes no statement figure and no fair-use scope."""
    voice = CycleVoiceFact(
        account=ACCT,
        cycle=CYCLE,
        attempts=4,
        answered=2,
        blocked=1,
        timed_out=1,
        over_capacity=1,
        minutes_local=2,
        minutes_domestic_ld=0,
        minutes_toll_free=0,
        minutes_international=240,
    )
    write(client, [*scenario(), voice])
    assert read_statement(client, ACCT, CYCLE) == EXPECTED
    client.command("TRUNCATE TABLE calls")
    assert read_statement(client, ACCT, CYCLE) == EXPECTED
    # the stored counts win over the call rows while both exist
    write(client, [msgspec.structs.replace(voice, attempts=9)])
    st = read_statement(client, ACCT, CYCLE)
    assert st is not None and st["voice"]["attempts"] == 9
    # a scope the engine retracted is no longer listed
    gone = msgspec.structs.replace(fair("bundle_sharing", "user:u-1", 0), deleted=True)
    write(
        client,
        [gone, msgspec.structs.replace(fair("minutes_per_user", "user:u-1", 0), deleted=True)],
    )
    st = read_statement(client, ACCT, CYCLE)
    assert st is not None
    assert not [r for r in st["fair_use"] if r["scope"] == "user:u-1"]


# ------------------------------------------------------------------ bounded recomputation
def test_a_flush_reads_the_items_of_its_buckets_not_the_history(client: Client) -> None:
    """The tiers of a flush's dirty buckets are summed from the ``usage_items`` rows of
    those buckets only: with 30 days x 3,000 items of history for each of two accounts,
    the primary key leaves a small fraction of the granules to read for one dirty minute,
    hour or day (before migration 5 every flush read all the facts of its accounts)."""
    from metering.storage.usage import ITEMS_TABLE, dirty_items_condition

    days, per_day = 30, 3_000
    t = f"toDateTime('2026-10-01 00:00:00', 'UTC') + number * intDiv(86400, {per_day})"
    client.command(
        f"INSERT INTO {ITEMS_TABLE} (account, minute, local_day, kind, key, calls, version) "
        f"SELECT 'acct-x', toStartOfMinute({t}), toDate({t}), 'call', toString(number), 1, 1 "
        f"FROM numbers({days * per_day})"
    )
    # another account with the same history: the account filter must bound it too
    client.command(
        f"INSERT INTO {ITEMS_TABLE} SELECT * REPLACE ('acct-y' AS account) FROM {ITEMS_TABLE}"
    )
    client.command(f"OPTIMIZE TABLE {ITEMS_TABLE} FINAL")
    client.command(
        "INSERT INTO usage_dirty (flush, kind, account, key, minute, day) "
        "VALUES (42, 'call', 'acct-x', 'k', '2026-10-15 12:34:00', '2026-10-15')"
    )
    for gran, bucket in (
        ("minute", "minute = '2026-10-15 12:34:00'"),
        ("hour", "toStartOfHour(minute) = '2026-10-15 12:00:00'"),
        ("day", "local_day = '2026-10-15'"),
    ):
        expected = client.command(
            f"SELECT count() FROM {ITEMS_TABLE} WHERE account = 'acct-x' AND {bucket}"
        )
        assert isinstance(expected, int | str), expected  # a single value: the count
        assert int(expected) > 1
        query = (
            f"SELECT count() FROM {ITEMS_TABLE} FINAL "
            f"WHERE deleted = 0 AND {dirty_items_condition(gran, 42)}"
        )
        assert client.command(query) == int(expected), gran
        # the granules left after the primary key analysis (EXPLAIN's last "Granules: a/b")
        plan = [str(r[0]) for r in client.query(f"EXPLAIN indexes = 1 {query}").result_rows]
        selected, total = map(
            int,
            [x for x in plan if "Granules: " in x and "/" in x][-1]
            .split("Granules: ")[1]
            .split("/"),
        )
        assert total >= 20 and selected * 4 <= total, (gran, selected, total)


# --------------------------------------------------------------------------------------
# The stored statement equals the engine's, whatever the drains (audit, session 6).


def stored_after_drains(
    client: Client,
    tmp_path: Path,
    events: list[bytes],
    batch_size: int = 1,
    accounts: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Replay ``events`` into ``client`` with a drain (and flush) after every
    ``batch_size`` events, the small batches of a worker; return the stored statement of
    acct-1's cycle 2026-11, checked equal to the engine's own."""
    log = tmp_path / "events.jsonl"
    log.write_bytes(b"".join(e + b"\n" for e in events))
    configs = parse_accounts({"accounts": accounts or {}})
    summary = replay_into(client, log, configs, batch_size=batch_size)
    assert summary.accepted == len(events)
    _, engine = replay(log, configs, None, batch_size=batch_size)
    facts = engine.statement_facts(ACCT, CYCLE)
    assert facts is not None
    stored = read_statement(client, ACCT, CYCLE)
    assert stored == render(facts)
    return stored


def test_counters_changed_after_a_drain_are_stored(client: Client, tmp_path: Path) -> None:
    """A drain that settled a call cached the call's cycle; the executions and NLP uses
    counted after it were kept in memory but never written (nlp_share stored as 0)."""
    st = stored_after_drains(
        client,
        tmp_path,
        [
            call_started("c1", at(0)),
            smartflow("x1", at(0, 1), channel="voice"),
            nlp("x1", at(0, 2)),
            smartflow("x2", at(0, 3), channel="api"),
        ],
        batch_size=2,
    )
    nlp_share = next(r for r in st["fair_use"] if r["rule"] == "nlp_share")
    assert nlp_share["value"] == 0.5


def test_each_voice_or_api_trigger_is_a_stored_interaction(client: Client, tmp_path: Path) -> None:
    """SPEC section 4: every smartflow.triggered on voice/api is an Interaction, also when
    an execution is triggered twice (the stored rows were keyed by execution only)."""
    st = stored_after_drains(
        client,
        tmp_path,
        [
            smartflow("x1", at(0), channel="voice"),
            smartflow("x1", at(5), channel="api"),
            smartflow("x2", at(7), channel="voice"),
            smartflow("x2", at(8), channel="voice"),
        ],
    )
    assert st["interactions"]["total"] == 4
    assert st["interactions"]["by_channel"]["voice"] == 3


def test_a_group_whose_call_became_zero_length_is_not_listed(
    client: Client, tmp_path: Path
) -> None:
    """While open, the call gave tg-3 a peak of 1; ended at its start it occupies no port,
    and the stored peak of tg-3 must go back to zero (it stayed at 1)."""
    st = stored_after_drains(
        client,
        tmp_path,
        [
            call_started("c0", at(0), tg="tg-2"),
            call_ended("c0", at(5)),
            call_started("c1", at(1), tg="tg-3"),
            call_ended("c1", at(1)),
        ],
    )
    assert list(st["concurrency"]["trunk_groups"]) == ["tg-2"]


def test_a_policy_added_later_is_stored_for_past_cycles(client: Client, tmp_path: Path) -> None:
    """mitel_us added by account.configured in December: November's statement lists its
    rules with November's figures, in ClickHouse too (they were listed with zeros: the
    cycle was not published again, and its counters for the new rules never written)."""
    later = "2026-12-03T00:00:00.000Z"
    st = stored_after_drains(
        client,
        tmp_path,
        [
            call_started("c1", at(0), user="u1"),
            call_answered("c1", at(0)),
            call_ended("c1", at(10)),
            helpers.message("message.sent", later),
            raw("account.configured", later, {"policies": ["mitel_us", "intelepeer_uc"]}),
            helpers.message("message.sent", "2026-12-03T00:00:01.000Z"),
        ],
        accounts={ACCT: {"policies": ["intelepeer_uc"]}},
    )
    minutes = next(r for r in st["fair_use"] if r["rule"] == "minutes_per_user")
    assert (minutes["scope"], minutes["value"]) == ("user:u1", 10)


def test_a_group_made_redundant_later_shows_its_owners_capacity(
    client: Client, tmp_path: Path
) -> None:
    """tg-1b carried a call as a group of its own, then became redundant for tg-1: the
    stored statement shows tg-1's capacity for it, as the engine does (it showed null)."""
    groups = {"tg-1": {"capacity": 1, "bundle": "call_path"}}
    st = stored_after_drains(
        client,
        tmp_path,
        [
            call_started("c1", at(0), tg="tg-1"),
            call_started("c2", at(1), tg="tg-1b"),
            raw(
                "account.configured",
                at(2),
                {"trunk_groups": {**groups, "tg-1b": {"redundant_for": "tg-1"}}},
            ),
            call_started("c3", at(3), tg="tg-1b"),
            call_ended("c1", at(10)),
            call_ended("c2", at(11)),
            call_ended("c3", at(12)),
        ],
        accounts={ACCT: {"trunk_groups": {**groups, "tg-1b": {"capacity": 5}}}},
    )
    assert st["concurrency"]["trunk_groups"]["tg-1b"]["capacity"] == 1
