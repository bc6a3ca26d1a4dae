"""Property tests (hypothesis): the incremental engine against the brute-force reference.

For random scenarios around a month boundary and a DST change:

* any arrival order within the allowed lateness, any duplication of events, and any
  placement of the engine's drains give statements identical to ``tests/reference.py``
  (which recomputes everything from the sorted, deduplicated event set);
* a crash and restart from a state snapshot (msgpack) at any point changes nothing.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import call_answered, call_ended, call_started, cdr, decode, message, nlp, smartflow
from metering.engine.accounts import parse_accounts
from metering.engine.engine import Engine
from metering.engine.state import AccountState
from metering.engine.statement import render
from metering.events.decode import to_ms
from metering.events.models import AccountData
from metering.storage import (
    ClickHouseSink,
    Client,
    connect,
    list_statements,
    migrate,
    read_statement,
)
from metering.storage.schema import MIGRATIONS_TABLE, set_retention
from reference import reference_statements

LATENESS_MS = 900_000
BASE = datetime(2026, 10, 31, 22, 0, tzinfo=UTC)  # Denver: Oct 31 16:00 MDT; cycle ends 06:00Z
ACCOUNTS = {
    "acct-1": {
        "timezone": "America/Denver",
        "trunk_groups": {
            "tg-1": {"capacity": 2, "bundle": "call_path"},
            "tg-1b": {"redundant_for": "tg-1"},
            "tg-2": {"capacity": 1, "bundle": "user"},
        },
    },
    "acct-2": {"timezone": "UTC", "policies": ["mitel_us", "intelepeer_cap"]},
}


def ts(ms: int) -> str:
    t = BASE + timedelta(milliseconds=ms)
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@st.composite
def scenario(draw: st.DrawFn) -> list[bytes]:
    """A set of valid events (calls, messages, smartflows) spread over ~12 hours."""
    events: list[bytes] = []
    horizon = 12 * 3_600_000
    # times on a coarse grid make simultaneous starts/ends common; some carry milliseconds
    moment = st.integers(0, horizon // 30_000).map(lambda k: k * 30_000) | st.integers(0, horizon)
    n_calls = draw(st.integers(0, 14))
    for i in range(n_calls):
        acct = draw(st.sampled_from(["acct-1", "acct-1", "acct-2"]))
        start = draw(moment)
        dur = draw(
            st.sampled_from([0, 30_000, 60_000, 61_000, 600_000, 3_600_000])
            | st.integers(0, 5 * 3_600_000)
        )
        answered = draw(st.booleans())
        ring = draw(st.sampled_from([0, 1_000, 5_000]))
        kind = draw(st.sampled_from(["lifecycle", "lifecycle", "cdr", "no_end"]))
        attrs: dict[str, Any] = {
            "tg": draw(st.sampled_from(["tg-1", "tg-1b", "tg-2", "tg-9"])),
            "direction": draw(st.sampled_from(["inbound", "outbound"])),
            "route_class": draw(
                st.sampled_from(["local", "domestic_ld", "toll_free", "international"])
            ),
            "user": draw(st.sampled_from(["u1", "u2", None])),
            "carrier_class": draw(st.sampled_from(["rboc", "itoc", "clec"])),
            "region": draw(st.sampled_from(["CO", "AK", "HI"])),
            "local_calling_area": draw(st.sampled_from(["lca-1", "lca-2", None])),
            "blocked": draw(st.booleans()) and draw(st.booleans()),
            "account": acct,
            "source": draw(st.sampled_from(["//pbx/a", "//pbx/b"])),
        }
        attrs = {k: v for k, v in attrs.items() if v is not None}
        cid = f"c{i}"
        ans = start + min(ring, dur) if answered else None
        end = start + dur
        if kind == "cdr":
            events.append(cdr(cid, ts(start), None if ans is None else ts(ans), ts(end), **attrs))
            continue
        events.append(call_started(cid, ts(start), **attrs))
        extra = {"account": acct, "source": attrs["source"]}
        if ans is not None:
            events.append(call_answered(cid, ts(ans), **extra))
        if kind != "no_end":
            events.append(call_ended(cid, ts(end), **extra))
    n_msgs = draw(st.integers(0, 12))
    for _ in range(n_msgs):
        events.append(
            message(
                draw(st.sampled_from(["message.sent", "message.received"])),
                ts(draw(st.integers(0, 40 * 3_600_000))),
                channel=draw(st.sampled_from(["sms", "mms", "whatsapp"])),
                remote=draw(st.sampled_from(["+20", "+21"])),
                segments=draw(st.integers(1, 3)),
                account=draw(st.sampled_from(["acct-1", "acct-2"])),
            )
        )
    n_flows = draw(st.integers(0, 6))
    for i in range(n_flows):
        acct = draw(st.sampled_from(["acct-1", "acct-2"]))
        t = draw(st.integers(0, horizon))
        channel = draw(st.sampled_from(["voice", "api", "sms", "whatsapp"]))
        addr = {"business": "+1000", "remote": "+20"} if channel in ("sms", "whatsapp") else {}
        eid = f"x{draw(st.integers(0, i))}"  # sometimes an execution triggered again
        events.append(smartflow(eid, ts(t), channel=channel, account=acct, **addr))
        if draw(st.booleans()):
            events.append(nlp(eid, ts(t + draw(st.integers(0, 60_000))), account=acct))
    return events


def arrival_order(events: list[bytes], rnd: random.Random, dup_rate: float) -> list[bytes]:
    """Each event delayed by < the allowed lateness; some repeated (same bytes)."""
    keyed: list[tuple[int, int, bytes]] = []
    for i, b in enumerate(events):
        t = to_ms(decode(b).time)
        keyed.append((t + rnd.randrange(LATENESS_MS), i, b))
        if rnd.random() < dup_rate:
            keyed.append((t + rnd.randrange(LATENESS_MS), len(events) + i, b))
    return [b for _, _, b in sorted(keyed)]


def run_engine(
    order: list[bytes], rnd: random.Random, restart: bool = False
) -> dict[tuple[str, str], dict[str, Any]]:
    accounts = parse_accounts({"accounts": ACCOUNTS})
    engine = Engine(accounts=accounts)
    crash_at = rnd.randrange(len(order) + 1) if restart else -1
    for i, b in enumerate(order):
        if i == crash_at:
            engine.drain()
            snaps = {a: msgspec.msgpack.encode(engine.state(a)) for a in engine.accounts()}
            engine = Engine(accounts=accounts)
            for snap in snaps.values():
                engine.restore(msgspec.msgpack.decode(snap, type=AccountState))
        engine.process(decode(b), b)
        if rnd.random() < 0.2:
            engine.drain()
    engine.drain()
    return engine_statements(engine)


def engine_statements(engine: Engine) -> dict[tuple[str, str], dict[str, Any]]:
    """Every statement the engine holds in memory, by (account, cycle)."""
    return {
        (a, c): render(f)
        for a in engine.accounts()
        for c in engine.cycles_of(a)
        if (f := engine.statement_facts(a, c)) is not None
    }


def expected(events: list[bytes]) -> dict[tuple[str, str], dict[str, Any]]:
    accounts = {a: msgspec.convert(v, AccountData) for a, v in ACCOUNTS.items()}
    return reference_statements([decode(b) for b in events], accounts)


SETTINGS = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@SETTINGS
@given(scenario(), st.randoms(use_true_random=False))
def test_any_order_within_lateness_matches_reference(
    events: list[bytes], rnd: random.Random
) -> None:
    want = expected(events)
    got = run_engine(arrival_order(events, rnd, dup_rate=0.0), rnd)
    assert got == want


@SETTINGS
@given(scenario(), st.randoms(use_true_random=False))
def test_duplicates_never_change_a_statement(events: list[bytes], rnd: random.Random) -> None:
    want = expected(events)
    got = run_engine(arrival_order(events, rnd, dup_rate=0.3), rnd)
    assert got == want


@SETTINGS
@given(scenario(), st.randoms(use_true_random=False))
def test_crash_and_restart_from_snapshot_changes_nothing(
    events: list[bytes], rnd: random.Random
) -> None:
    want = expected(events)
    got = run_engine(arrival_order(events, rnd, dup_rate=0.1), rnd, restart=True)
    assert got == want


# --------------------------------------------------------------------------------------
# The stored statement: what `metering statement` and the worker's HTTP API read back.


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    c = connect(db_dir=str(tmp_path_factory.mktemp("stored") / "ch"))
    migrate(c)
    set_retention(c, False)  # the scenario's dates are older than the TTLs
    yield c
    c.close()


def stored_statements(
    client: Client, order: list[bytes], rnd: random.Random
) -> dict[tuple[str, str], dict[str, Any]]:
    """The engine's facts written as the worker writes them (a sink flush after every
    drain; drains at random points), read back from ClickHouse. The usage aggregates are
    left out: statements do not read them."""
    for table in client.query("SHOW TABLES").result_columns[0]:
        if table != MIGRATIONS_TABLE:
            client.command(f"TRUNCATE TABLE {table}")
    accounts = parse_accounts({"accounts": ACCOUNTS})
    engine = Engine(accounts=accounts)
    for account, cfg in accounts.items():
        engine.configure(account, cfg)
    sink = ClickHouseSink(client, aggregate=False)

    def flush() -> None:
        batch = engine.drain()
        sink.add_many(batch.facts)
        sink.add_many(batch.outputs)
        sink.flush()

    for b in order:
        engine.process(decode(b), b)
        if rnd.random() < 0.15:
            flush()
    flush()
    return {key: st for key in list_statements(client) if (st := read_statement(client, *key))}


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)
@given(scenario(), st.randoms(use_true_random=False))
def test_stored_statements_match_reference(
    store: Client, events: list[bytes], rnd: random.Random
) -> None:
    want = expected(events)
    got = stored_statements(store, arrival_order(events, rnd, dup_rate=0.1), rnd)
    assert got == want


@st.composite
def conversation_items(draw: st.DrawFn) -> list[bytes]:
    """Messages and messaging SmartFlows of a few conversations over 4 days (a month
    boundary and a DST change on the way), so Interaction chains are split by late items."""
    n = draw(st.integers(1, 14))
    events = []
    for i in range(n):
        # 6-hour steps (a few minutes off) make items fall on both sides of deadlines
        step = draw(st.integers(-6, 10)) * 6 * 3_600_000
        t = ts(step + draw(st.sampled_from([0, 60_000, 3_599_999])))
        acct = draw(st.sampled_from(["acct-1", "acct-1", "acct-2"]))
        remote = draw(st.sampled_from(["+20", "+21"]))
        if draw(st.integers(0, 4)) == 0:
            events.append(
                smartflow(f"x{i}", t, channel="sms", business="+1000", remote=remote, account=acct)
            )
        else:
            events.append(message("message.sent", t, channel="sms", remote=remote, account=acct))
    return events


@settings(max_examples=300, deadline=None)
@given(conversation_items(), st.randoms(use_true_random=False))
def test_items_any_days_late_split_interactions_as_in_time_order(
    events: list[bytes], rnd: random.Random
) -> None:
    """SPEC section 3: a late event, however late, corrects the results. With no drain in
    between (drains close Interactions whose deadline has passed), items in any order and
    days late give the Interactions of time order."""
    order = list(events)
    rnd.shuffle(order)
    engine = Engine(accounts=parse_accounts({"accounts": ACCOUNTS}))
    for b in order:
        engine.process(decode(b), b)
    engine.drain()
    assert engine_statements(engine) == expected(events)
