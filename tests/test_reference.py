"""Hand-computed examples for the brute-force reference model (tests/reference.py).

One test (or parametrized group) per SPEC edge case. Every expected value is worked out
by hand in the comments next to it, never by running the model twice.
"""

from __future__ import annotations

import itertools
import json
from datetime import datetime, timedelta
from typing import Any

import pytest

from metering.events.decode import Decoder, Rejection
from metering.events.models import AccountData, Policy, TrunkGroupConfig
from reference import reference_statements

ACCT = "acct-1"
_DEC = Decoder()
_IDS = itertools.count()


# --- event builders -----------------------------------------------------------------------


def iso(x: str | datetime, **delta: float) -> str:
    d = datetime.fromisoformat(x) if isinstance(x, str) else x
    return (d + timedelta(**delta)).isoformat(timespec="milliseconds")


def ev(
    type_: str,
    time: str | datetime,
    data: dict[str, Any],
    *,
    id_: str | None = None,
    source: str = "test",
    account: str = ACCT,
) -> Any:
    raw = json.dumps(
        {
            "specversion": "1.0",
            "id": id_ or f"e{next(_IDS):06d}",
            "source": source,
            "type": type_,
            "time": iso(time),
            "subject": account,
            "data": data,
        }
    ).encode()
    e = _DEC.decode(raw)
    assert not isinstance(e, Rejection), e
    return e


def call_data(
    cid: str, tg: str, direction: str, route_class: str, extra: dict[str, Any]
) -> dict[str, Any]:
    return {
        "call_id": cid,
        "trunk_group": tg,
        "direction": direction,
        "route_class": route_class,
        **extra,
    }


def call(
    cid: str,
    start: str,
    *,
    answer: str | None = None,
    end: str | None = None,
    tg: str = "tg-1",
    direction: str = "outbound",
    route_class: str = "local",
    **extra: Any,
) -> list[Any]:
    """A call described by lifecycle events."""
    evs = [ev("call.started", start, call_data(cid, tg, direction, route_class, extra))]
    if answer is not None:
        evs.append(ev("call.answered", answer, {"call_id": cid}))
    if end is not None:
        evs.append(ev("call.ended", end, {"call_id": cid}))
    return evs


def cdr(
    cid: str,
    start: str | datetime,
    answer: str | datetime | None,
    end: str | datetime,
    *,
    tg: str = "tg-1",
    direction: str = "outbound",
    route_class: str = "local",
    **extra: Any,
) -> Any:
    """A call described by one CDR (event time = ended_at)."""
    data = call_data(cid, tg, direction, route_class, extra)
    data |= {
        "started_at": iso(start),
        "answered_at": None if answer is None else iso(answer),
        "ended_at": iso(end),
    }
    return ev("call.completed", end, data)


def cdr_minutes(prefix: str, total: int, base: str, **fields: Any) -> list[Any]:
    """CDRs totalling ``total`` billable minutes: answered at start, at most 240 minutes
    each (so never timed out), one every 5 hours from ``base`` (never overlapping)."""
    evs, start, k = [], datetime.fromisoformat(base), 0
    while total > 0:
        m = min(total, 240)
        evs.append(cdr(f"{prefix}-{k}", start, start, start + timedelta(minutes=m), **fields))
        total, start, k = total - m, start + timedelta(hours=5), k + 1
    return evs


def msg(
    time: str,
    *,
    channel: str = "sms",
    business: str = "+15550001",
    remote: str = "+15559999",
    sent: bool = True,
    segments: int = 1,
) -> Any:
    return ev(
        "message.sent" if sent else "message.received",
        time,
        {
            "message_id": f"m{next(_IDS)}",
            "channel": channel,
            "business_address": business,
            "remote_address": remote,
            "segments": segments,
        },
    )


def flow(time: str, execution_id: str, channel: str = "api", **addresses: str) -> Any:
    return ev(
        "smartflow.triggered",
        time,
        {"execution_id": execution_id, "flow_id": "f-1", "channel": channel, **addresses},
    )


def nlp(time: str, execution_id: str) -> Any:
    return ev("nlp.used", time, {"execution_id": execution_id, "kind": "text"})


def account(
    tz: str = "UTC", policies: list[Policy] | None = None, **tgs: dict[str, Any]
) -> dict[str, AccountData]:
    return {
        ACCT: AccountData(
            timezone=tz,
            policies=policies or ["mitel_us", "intelepeer_uc", "intelepeer_cap"],
            trunk_groups={k.replace("_", "-"): TrunkGroupConfig(**v) for k, v in tgs.items()},
        )
    }


def statements(
    events: list[Any], accounts: dict[str, AccountData] | None = None
) -> dict[tuple[str, str], dict[str, Any]]:
    return reference_statements(events, accounts or {})


def stmt(
    events: list[Any], cycle: str, accounts: dict[str, AccountData] | None = None
) -> dict[str, Any]:
    return statements(events, accounts)[(ACCT, cycle)]


def rule(s: dict[str, Any], name: str, scope: str = "account") -> dict[str, Any]:
    item: dict[str, Any]
    [item] = [f for f in s["fair_use"] if f["rule"] == name and f["scope"] == scope]
    return item


def status_value(s: dict[str, Any], name: str, scope: str = "account") -> tuple[str, float, str]:
    item = rule(s, name, scope)
    return item["status"], item["value"], item["charge_usd"]


# --- SPEC 4: interactions -----------------------------------------------------------------


def test_deadline_exactly_reached_opens_new_interaction() -> None:
    events = [
        # origin 2026-03-10T10:00Z -> deadline = end of Mar 10 (Mar 11 00:00Z) + 24 h
        # = 2026-03-12T00:00:00.000Z
        msg("2026-03-10T10:00:00Z", segments=2),
        msg("2026-03-11T23:59:59.999Z", channel="mms", sent=False),  # < deadline: same one
        # == deadline: opens interaction 2 (deadline 2026-03-14T00:00Z)
        flow(
            "2026-03-12T00:00:00Z",
            "x-1",
            "sms",
            business_address="+15550001",
            remote_address="+15559999",
        ),
        msg("2026-03-13T23:59:59.999Z"),  # belongs to interaction 2
        msg("2026-03-10T11:00:00Z", channel="whatsapp"),  # other family: own conversation
    ]
    s = stmt(events, "2026-03")
    assert s["interactions"] == {
        "total": 3,
        "by_channel": {"voice": 0, "sms": 2, "whatsapp": 1, "facebook": 0, "api": 0},
    }
    assert s["messages"] == {"total": 4, "segments": 5}


def test_deadline_across_dst_fall_back_is_absolute_hours() -> None:
    # America/Denver falls back on 2026-11-01 at 02:00 MDT (08:00Z) to 01:00 MST.
    events = [
        # Oct 31 12:00 MDT. End of Oct 31 local = Nov 1 00:00 MDT = 2026-11-01T06:00Z;
        # deadline = +24 h = 2026-11-02T06:00Z (Nov 1 23:00 MST, not the next midnight).
        msg("2026-10-31T18:00:00Z"),
        msg("2026-11-02T05:59:59.999Z"),  # Nov 1 22:59:59.999 MST: same interaction
        # Nov 1 23:00 MST: new one (the "next local midnight" reading would keep it).
        # End of Nov 1 local = Nov 2 00:00 MST = 07:00Z; deadline = 2026-11-03T07:00Z.
        msg("2026-11-02T06:00:00Z"),
        msg("2026-11-03T06:59:59.999Z"),  # same as previous
        msg("2026-11-03T07:00:00Z"),  # new one
        # other conversation, Oct 31 23:59:59.999 MDT: still cycle 2026-10 in Denver
        msg("2026-11-01T05:59:59.999Z", remote="+15558888"),
    ]
    result = statements(events, account("America/Denver"))
    assert set(result) == {(ACCT, "2026-10"), (ACCT, "2026-11")}
    oct_, nov = result[(ACCT, "2026-10")], result[(ACCT, "2026-11")]
    assert oct_["timezone"] == "America/Denver"
    assert oct_["interactions"]["by_channel"]["sms"] == 2
    assert oct_["messages"]["total"] == 2
    assert nov["interactions"]["by_channel"]["sms"] == 2
    assert nov["messages"]["total"] == 4


def test_voice_and_api_flows_are_one_interaction_each() -> None:
    events = [
        flow("2026-03-10T10:00:00Z", "x-1", "voice"),
        flow("2026-03-10T10:00:01Z", "x-2", "voice"),
        flow("2026-03-10T10:00:02Z", "x-3", "api"),
    ]
    assert stmt(events, "2026-03")["interactions"] == {
        "total": 3,
        "by_channel": {"voice": 2, "sms": 0, "whatsapp": 0, "facebook": 0, "api": 1},
    }


# --- SPEC 5: calls, minutes, concurrency --------------------------------------------------


def test_call_ending_when_another_starts_does_not_overlap() -> None:
    events = [
        *call("c1", "2026-03-10T10:00:00Z", end="2026-03-10T10:05:00Z", user="u-1"),
        *call("c2", "2026-03-10T10:05:00Z", end="2026-03-10T10:10:00Z", user="u-1"),
    ]
    s = stmt(events, "2026-03", account(tg_1={"capacity": 1}))
    # [10:00, 10:05) and [10:05, 10:10) never share an instant
    assert s["concurrency"] == {
        "peak": 1,
        "peak_at": "2026-03-10T10:00:00.000Z",
        "trunk_groups": {"tg-1": {"peak": 1, "peak_at": "2026-03-10T10:00:00.000Z", "capacity": 1}},
    }
    assert s["voice"]["over_capacity"] == 0
    assert status_value(s, "bundle_sharing", "user:u-1") == ("ok", 1, "0.00")


def test_call_spanning_cycle_boundary() -> None:
    events = [
        *call(
            "c1",
            "2026-03-31T23:30:00Z",
            answer="2026-03-31T23:30:00Z",
            end="2026-04-01T00:30:00Z",
            user="u-1",
        ),
        msg("2026-04-15T12:00:00Z"),
    ]
    mar, apr = stmt(events, "2026-03"), stmt(events, "2026-04")
    # the call (and its 60 minutes) counts in the cycle of its start
    assert mar["voice"]["attempts"] == 1 and mar["voice"]["billable_minutes"] == 60
    assert mar["voice"]["minutes_by_route_class"]["local"] == 60
    assert mar["concurrency"]["peak"] == 1
    assert mar["concurrency"]["peak_at"] == "2026-03-31T23:30:00.000Z"
    assert rule(mar, "minutes_per_user", "user:u-1")["value"] == 60
    # ... but it occupies in April too, from the cycle's first instant
    assert apr["voice"]["attempts"] == 0 and apr["voice"]["billable_minutes"] == 0
    assert apr["concurrency"] == {
        "peak": 1,
        "peak_at": "2026-04-01T00:00:00.000Z",
        "trunk_groups": {
            "tg-1": {"peak": 1, "capacity": None, "peak_at": "2026-04-01T00:00:00.000Z"}
        },
    }
    # no call started in April: only the account scope is listed
    assert [(f["rule"], f["scope"]) for f in apr["fair_use"]] == [
        ("alaska_hawaii_share", "account"),
        ("call_completion", "account"),
        ("calls_per_second", "account"),
        ("nlp_share", "account"),
        ("rboc_mix", "account"),
        ("toll_free_share", "account"),
    ]


def test_redundant_trunk_group_shares_owner_capacity() -> None:
    accounts = account(tg_1={"capacity": 1, "bundle": "call_path"}, tg_1b={"redundant_for": "tg-1"})
    events = [
        *call(
            "a",
            "2026-03-10T10:00:00Z",
            answer="2026-03-10T10:00:00Z",
            end="2026-03-10T10:10:00Z",
            tg="tg-1",
            local_calling_area="A",
        ),
        *call(
            "b",
            "2026-03-10T10:05:00Z",
            answer="2026-03-10T10:05:00Z",
            end="2026-03-10T10:15:00Z",
            tg="tg-1b",
            local_calling_area="B",
        ),
    ]
    s = stmt(events, "2026-03", accounts)
    assert s["voice"]["over_capacity"] == 1  # b starts while tg-1 (capacity 1) holds a
    assert s["concurrency"]["trunk_groups"] == {
        "tg-1": {"peak": 2, "peak_at": "2026-03-10T10:05:00.000Z", "capacity": 1}
    }
    # tg-1b's minutes count for tg-1: 10 in A, 10 in B -> 0.5, below the 500 floor
    assert status_value(s, "local_calling_area", "trunk_group:tg-1") == (
        "insufficient_data",
        0.5,
        "0.00",
    )
    assert not [f for f in s["fair_use"] if f["scope"] == "trunk_group:tg-1b"]


def test_blocked_call_is_an_attempt_without_port_or_minutes() -> None:
    events = [
        *call("b", "2026-03-10T10:00:00Z", user="u-9", blocked=True),
        *call("c", "2026-03-10T10:00:00.500Z", end="2026-03-10T10:01:00Z"),
    ]
    s = stmt(events, "2026-03", account(tg_1={"capacity": 1}))
    assert s["voice"] == {
        "attempts": 2,
        "answered": 0,
        "blocked": 1,
        "timed_out": 0,
        "over_capacity": 0,
        "billable_minutes": 0,
        "minutes_by_route_class": {
            "local": 0,
            "domestic_ld": 0,
            "toll_free": 0,
            "international": 0,
        },
    }
    # b never occupies: c is alone on tg-1
    assert s["concurrency"]["peak"] == 1
    assert s["concurrency"]["peak_at"] == "2026-03-10T10:00:00.500Z"
    assert not [f for f in s["fair_use"] if f["scope"] == "user:u-9"]
    assert rule(s, "calls_per_second")["value"] == 2  # blocked starts count, 500 ms apart
    only_blocked = stmt(call("b", "2026-03-10T10:00:00Z", blocked=True), "2026-03")
    assert only_blocked["concurrency"] == {"peak": 0, "peak_at": None, "trunk_groups": {}}


@pytest.mark.parametrize(
    ("last_event", "timed_out", "minutes"),
    [
        ("2026-03-10T13:59:59.999Z", 0, 0),  # start + 4 h not reached: still in progress
        ("2026-03-10T14:00:00.000Z", 1, 240),  # reached: ends at 14:00, ceil(239.5) = 240
    ],
)
def test_missing_end_times_out_at_max_duration(
    last_event: str, timed_out: int, minutes: int
) -> None:
    events = [*call("c1", "2026-03-10T10:00:00Z", answer="2026-03-10T10:00:30Z"), msg(last_event)]
    s = stmt(events, "2026-03")
    assert s["voice"]["answered"] == 1
    assert s["voice"]["timed_out"] == timed_out
    assert s["voice"]["billable_minutes"] == minutes
    assert s["concurrency"]["peak"] == 1


def test_timed_out_call_frees_its_port_at_max_duration() -> None:
    events = [
        *call("c1", "2026-03-10T10:00:00Z", answer="2026-03-10T10:00:30Z"),
        *call("c2", "2026-03-10T14:00:00Z", end="2026-03-10T14:00:10Z"),
    ]
    s = stmt(events, "2026-03", account(tg_1={"capacity": 1}))
    assert s["voice"]["timed_out"] == 1 and s["voice"]["billable_minutes"] == 240
    assert s["voice"]["over_capacity"] == 0  # c1 occupies [10:00, 14:00) only
    assert s["concurrency"]["peak"] == 1


def test_cdr_longer_than_max_duration() -> None:
    events = [
        # 10:00 -> 15:00 is over 4 h: ends at 14:00, billable 10:01 -> 14:00 = 239 min
        cdr("c1", "2026-03-10T10:00:00Z", "2026-03-10T10:01:00Z", "2026-03-10T15:00:00Z"),
        cdr("c2", "2026-03-10T14:00:00Z", None, "2026-03-10T14:30:00Z"),  # port is free
        # exactly 4 h is not timed out: 240 min
        cdr("c3", "2026-03-11T10:00:00Z", "2026-03-11T10:00:00Z", "2026-03-11T14:00:00Z"),
    ]
    s = stmt(events, "2026-03", account(tg_1={"capacity": 1}))
    assert s["voice"]["timed_out"] == 1
    assert s["voice"]["billable_minutes"] == 239 + 240
    assert s["voice"]["over_capacity"] == 0
    assert s["concurrency"]["peak"] == 1


def test_over_capacity_with_capacity_one() -> None:
    events = [
        *call("a", "2026-03-10T10:00:00Z", end="2026-03-10T10:10:00Z"),
        *call("b", "2026-03-10T10:05:00Z", end="2026-03-10T10:08:00Z"),  # a occupies: over
        # same start: (start, source, id) order decides; exactly one of the two is over
        *call("c", "2026-03-10T11:00:00Z", end="2026-03-10T11:10:00Z"),
        *call("d", "2026-03-10T11:00:00Z", end="2026-03-10T11:10:00Z"),
    ]
    s = stmt(events, "2026-03", account(tg_1={"capacity": 1}))
    assert s["voice"]["over_capacity"] == 2
    # over-capacity calls occupy: the peak exceeds the capacity
    assert s["concurrency"]["trunk_groups"]["tg-1"] == {
        "peak": 2,
        "peak_at": "2026-03-10T10:05:00.000Z",
        "capacity": 1,
    }


def test_peak_at_is_first_instant_and_account_peak_is_not_a_sum() -> None:
    events = [
        *call("a", "2026-03-10T10:00:00Z", end="2026-03-10T10:30:00Z", tg="tg-1"),
        *call("b", "2026-03-10T10:10:00Z", end="2026-03-10T10:20:00Z", tg="tg-2"),
        *call("c", "2026-03-10T10:25:00Z", end="2026-03-10T10:40:00Z", tg="tg-2"),
        *call("d", "2026-03-10T10:35:00Z", end="2026-03-10T10:50:00Z", tg="tg-1"),
        *call("e", "2026-03-10T10:45:00Z", end="2026-03-10T10:46:00Z", tg="tg-3"),
    ]
    # occupancy: 10:00 a=1, 10:10 a+b=2, 10:20 a=1, 10:25 a+c=2, 10:30 c=1, 10:35 c+d=2,
    # 10:40 d=1, 10:45 d+e=2: peak 2, first at 10:10. Group peaks 1+1+1 = 3 != 2.
    s = stmt(events, "2026-03")
    assert s["concurrency"] == {
        "peak": 2,
        "peak_at": "2026-03-10T10:10:00.000Z",
        "trunk_groups": {
            "tg-1": {"peak": 1, "peak_at": "2026-03-10T10:00:00.000Z", "capacity": None},
            "tg-2": {"peak": 1, "peak_at": "2026-03-10T10:10:00.000Z", "capacity": None},
            "tg-3": {"peak": 1, "peak_at": "2026-03-10T10:45:00.000Z", "capacity": None},
        },
    }


def test_minutes_are_ceil_of_milliseconds() -> None:
    events = [
        cdr("a", "2026-03-10T10:00:00Z", "2026-03-10T10:00:00Z", "2026-03-10T10:01:00Z"),
        cdr("b", "2026-03-10T11:00:00Z", "2026-03-10T11:00:00Z", "2026-03-10T11:01:00.001Z"),
        cdr("c", "2026-03-10T12:00:00Z", "2026-03-10T12:00:00Z", "2026-03-10T12:00:00Z"),
    ]
    s = stmt(events, "2026-03")
    assert s["voice"]["answered"] == 3
    assert s["voice"]["billable_minutes"] == 1 + 2 + 0


def test_lifecycle_wins_dedupe_orphans_and_order_independence() -> None:
    started = ev(
        "call.started",
        "2026-03-10T10:00:00Z",
        call_data("c1", "tg-1", "outbound", "local", {}),
        id_="s1",
    )
    events = [
        started,
        started,  # repeated (source, id): kept once
        ev("call.answered", "2026-03-10T10:00:00Z", {"call_id": "c1"}),
        ev("call.ended", "2026-03-10T10:10:00Z", {"call_id": "c1"}),
        # the same call as a CDR (30 min): the lifecycle description (10 min) wins
        cdr("c1", "2026-03-10T10:00:00Z", "2026-03-10T10:00:00Z", "2026-03-10T10:30:00Z"),
        # two CDRs of c2: the smaller (time, source, id) is kept -> 5 min
        cdr("c2", "2026-03-10T11:00:00Z", "2026-03-10T11:00:00Z", "2026-03-10T11:05:00Z"),
        cdr("c2", "2026-03-10T11:00:00Z", "2026-03-10T11:00:00Z", "2026-03-10T11:20:00Z"),
        ev("call.ended", "2026-03-10T12:00:00Z", {"call_id": "orphan"}),  # never started
    ]
    s = stmt(events, "2026-03")
    assert s["voice"]["attempts"] == 2
    assert s["voice"]["billable_minutes"] == 10 + 5
    assert stmt(events[::-1], "2026-03") == s


# --- SPEC 6: fair-use rules ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("local", "expected"),
    [
        (1999, ("ok", 1999, "0.00")),
        (2000, ("warning", 2000, "0.00")),  # 80% of 2500
        (2500, ("warning", 2500, "0.00")),  # <= 2500 passes
        (2501, ("breach", 2501, "0.03")),  # (2501 - 2500) x $0.03
    ],
)
def test_minutes_per_user(local: int, expected: tuple[str, int, str]) -> None:
    events = [
        *cdr_minutes("l", local - 100, "2026-03-02T00:00:00Z", user="u-1"),
        *cdr_minutes("d", 100, "2026-03-10T00:00:00Z", user="u-1", route_class="domestic_ld"),
        # neither toll_free minutes nor calls without a user count
        *cdr_minutes("t", 300, "2026-03-12T00:00:00Z", user="u-1", route_class="toll_free"),
        *cdr_minutes("n", 300, "2026-03-14T00:00:00Z"),
    ]
    s = stmt(events, "2026-03", account(policies=["mitel_us"]))
    assert status_value(s, "minutes_per_user", "user:u-1") == expected
    assert s["charges"] == {"overage_usd": expected[2], "surcharge_usd": "0.00"}


def test_minutes_per_user_charges_add_up_exactly() -> None:
    events = [
        *cdr_minutes("a", 2501, "2026-03-02T00:00:00Z", user="u-1"),
        *cdr_minutes("b", 2502, "2026-03-10T00:00:00Z", user="u-2"),
    ]
    s = stmt(events, "2026-03", account(policies=["mitel_us"]))
    # 1 x 0.03 + 2 x 0.03
    assert s["charges"] == {"overage_usd": "0.09", "surcharge_usd": "0.00"}
    assert [f["scope"] for f in s["fair_use"] if f["rule"] == "minutes_per_user"] == [
        "user:u-1",
        "user:u-2",
    ]


@pytest.mark.parametrize(
    ("rboc", "itoc", "expected"),
    [
        (699, 300, ("insufficient_data", 0.6997, "0.00")),  # 999 < 1000 floor
        (699, 301, ("breach", 0.699, "30.00")),  # 0.02 x all 1500 minutes (500 inbound)
        (700, 300, ("ok", 0.7, "0.00")),
    ],
)
def test_rboc_mix(rboc: int, itoc: int, expected: tuple[str, float, str]) -> None:
    route = {"route_class": "international"}
    events = [
        *cdr_minutes("r", rboc, "2026-03-02T00:00:00Z", carrier_class="rboc", **route),
        *cdr_minutes("i", itoc, "2026-03-06T00:00:00Z", carrier_class="itoc", **route),
        *cdr_minutes(
            "in", 500, "2026-03-10T00:00:00Z", carrier_class="rboc", direction="inbound", **route
        ),
        # outbound wireless minutes are outside the ratio (1 or 0 here)
        *cdr_minutes(
            "w", 1000 - rboc - itoc, "2026-03-14T00:00:00Z", carrier_class="wireless", **route
        ),
    ]
    s = stmt(events, "2026-03", account(policies=["mitel_us"]))
    total = rboc + itoc + 500 + (1000 - rboc - itoc)
    assert s["voice"]["billable_minutes"] == total == 1500
    assert status_value(s, "rboc_mix") == expected
    assert s["charges"]["surcharge_usd"] == expected[2]


def _completion_events(attempts: int, answered: int, seconds: int) -> list[Any]:
    """``attempts`` outbound calls, the first ``answered`` talking ``seconds`` each, plus
    blocked outbound and inbound calls, which are not attempted outbound calls."""
    evs = []
    for i in range(attempts):
        start = datetime.fromisoformat("2026-03-10T00:00:00Z") + timedelta(minutes=i)
        ans = start if i < answered else None
        evs.append(cdr(f"o{i}", start, ans, start + timedelta(seconds=seconds)))
    evs += call("blk", "2026-03-11T00:00:00Z", blocked=True)
    evs.append(
        cdr("inb", "2026-03-11T01:00:00Z", None, "2026-03-11T01:01:00Z", direction="inbound")
    )
    return evs


@pytest.mark.parametrize(
    ("attempts", "answered", "seconds", "expected", "acd"),
    [
        (99, 99, 31, ("insufficient_data", 1.0, "0.00"), 31.0),  # 99 < 100 attempts
        (100, 90, 31, ("ok", 0.9, "0.00"), 31.0),
        (100, 89, 31, ("breach", 0.89, "1.78"), 31.0),  # 0.02 x 89 one-minute calls
        (100, 90, 30, ("breach", 0.9, "1.80"), 30.0),  # mean must be > 30 s; 0.02 x 90
    ],
)
def test_call_completion(
    attempts: int, answered: int, seconds: int, expected: tuple[str, float, str], acd: float
) -> None:
    s = stmt(
        _completion_events(attempts, answered, seconds), "2026-03", account(policies=["mitel_us"])
    )
    assert status_value(s, "call_completion") == expected
    assert rule(s, "call_completion")["acd_seconds"] == acd
    assert s["voice"]["attempts"] == attempts + 2


@pytest.mark.parametrize(
    ("ak", "hi", "other", "expected"),
    [
        (4, 4, 991, ("insufficient_data", 0.008, "0.00")),  # 999 < 1000 minutes
        (4, 4, 992, ("warning", 0.008, "0.00")),  # 8/1000 = 80% of 0.01
        (4, 4, 993, ("ok", 0.008, "0.00")),  # 8/1001 = 0.0079920.. < 80% (shown rounded)
        (11, 0, 989, ("breach", 0.011, "0.00")),  # no charge for this rule
    ],
)
def test_alaska_hawaii_share(
    ak: int, hi: int, other: int, expected: tuple[str, float, str]
) -> None:
    dld = {"route_class": "domestic_ld"}
    events = [
        *cdr_minutes("ak", ak, "2026-03-02T00:00:00Z", region="AK", **dld),
        *cdr_minutes("hi", hi, "2026-03-03T00:00:00Z", region="HI", **dld),
        *cdr_minutes("co", other, "2026-03-04T00:00:00Z", region="CO", **dld),
        # inbound AK minutes are outside both counters
        *cdr_minutes("in", 50, "2026-03-10T00:00:00Z", region="AK", direction="inbound", **dld),
    ]
    s = stmt(events, "2026-03", account(policies=["mitel_us"]))
    assert status_value(s, "alaska_hawaii_share") == expected


@pytest.mark.parametrize(
    ("toll_free", "other", "expected"),
    [
        (80, 919, ("insufficient_data", 0.0801, "0.00")),  # 999 < 1000 minutes
        (80, 920, ("warning", 0.08, "0.00")),  # 80% of 0.10
        (80, 921, ("ok", 0.0799, "0.00")),  # 80/1001
        (101, 899, ("breach", 0.101, "0.00")),
    ],
)
def test_toll_free_share(toll_free: int, other: int, expected: tuple[str, float, str]) -> None:
    events = [
        *cdr_minutes(
            "tf", toll_free, "2026-03-02T00:00:00Z", route_class="toll_free", direction="inbound"
        ),
        *cdr_minutes("o", other, "2026-03-04T00:00:00Z", route_class="international"),
    ]
    s = stmt(events, "2026-03", account(policies=["intelepeer_uc"]))
    assert status_value(s, "toll_free_share") == expected


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        (449, 50, ("insufficient_data", 0.8998, "0.00")),  # 499 < 500 local minutes
        (450, 50, ("ok", 0.9, "0.00")),
        (449, 51, ("breach", 0.898, "0.00")),
    ],
)
def test_local_calling_area(a: int, b: int, expected: tuple[str, float, str]) -> None:
    accounts = account(
        policies=["intelepeer_uc"], tg_cp={"bundle": "call_path"}, tg_cpr={"redundant_for": "tg-cp"}
    )
    events = [
        *cdr_minutes("a", a, "2026-03-02T00:00:00Z", tg="tg-cp", local_calling_area="A"),
        # no area: its own area "unknown"; on the redundant group: counts for tg-cp
        *cdr_minutes("b", b, "2026-03-06T00:00:00Z", tg="tg-cpr"),
        # non-local minutes are outside the rule
        *cdr_minutes("x", 300, "2026-03-08T00:00:00Z", tg="tg-cp", route_class="toll_free"),
    ]
    s = stmt(events, "2026-03", accounts)
    assert status_value(s, "local_calling_area", "trunk_group:tg-cp") == expected
    # a group with bundle user (default) has no local_calling_area scope
    plain = stmt(
        cdr_minutes("p", 10, "2026-03-02T00:00:00Z"), "2026-03", account(policies=["intelepeer_uc"])
    )
    assert [(f["rule"], f["scope"]) for f in plain["fair_use"]] == [("toll_free_share", "account")]


def test_bundle_sharing_two_overlapping_calls() -> None:
    events = [
        *call("a", "2026-03-10T10:00:00Z", end="2026-03-10T10:10:00Z", user="u-1"),
        *call("b", "2026-03-10T10:09:59.999Z", end="2026-03-10T10:20:00Z", user="u-1", tg="tg-2"),
        *call("c", "2026-03-10T10:05:00Z", end="2026-03-10T10:06:00Z", user="u-2"),
    ]
    s = stmt(events, "2026-03", account(policies=["intelepeer_uc"]))
    assert status_value(s, "bundle_sharing", "user:u-1") == ("breach", 2, "0.00")
    assert status_value(s, "bundle_sharing", "user:u-2") == ("ok", 1, "0.00")


@pytest.mark.parametrize(
    ("executions", "with_nlp", "expected"),
    [
        (99, 30, ("insufficient_data", 0.303, "0.00")),  # 99 < 100 executions
        (100, 23, ("ok", 0.23, "0.00")),
        (100, 24, ("warning", 0.24, "0.00")),  # 80% of 0.30
        (101, 24, ("ok", 0.2376, "0.00")),
        (100, 31, ("breach", 0.31, "0.00")),
    ],
)
def test_nlp_share(executions: int, with_nlp: int, expected: tuple[str, float, str]) -> None:
    events = []
    for i in range(executions):
        t = iso("2026-03-10T00:00:00Z", minutes=i)
        events.append(
            flow(
                t,
                f"x{i}",
                ["voice", "api", "sms"][i % 3],
                business_address="+15550001",
                remote_address=f"+1555{i:04d}",
            )
        )
        if i < with_nlp:  # two uses of one execution count once; one use is in April
            events.append(nlp(iso(t, seconds=1), f"x{i}"))
            events.append(nlp("2026-04-01T00:00:00Z" if i == 0 else iso(t, seconds=2), f"x{i}"))
    s = stmt(events, "2026-03", account(policies=["intelepeer_cap"]))
    assert [f["rule"] for f in s["fair_use"]] == ["calls_per_second", "nlp_share"]
    assert status_value(s, "nlp_share") == expected
    assert (ACCT, "2026-04") not in statements(events)  # nlp.used alone makes no statement


def _starts(base: str, offsets_ms: list[int]) -> list[Any]:
    return [
        e
        for k, off in enumerate(offsets_ms)
        for e in call(f"s{k}", iso(base, milliseconds=off), blocked=True)
    ]


@pytest.mark.parametrize(
    ("offsets", "expected"),
    [
        # 119 starts 6 ms apart (0..708 ms) -> 119, below 80% of 150
        ([6 * i for i in range(119)], ("ok", 119)),
        ([6 * i for i in range(120)], ("warning", 120)),
        # 150 starts in [0, 894] ms and one at exactly +1000 ms: [t, t + 1 s) is half-open,
        # and the window from 6 ms holds 149 + 1 = 150
        ([6 * i for i in range(150)] + [1000], ("warning", 150)),
        ([6 * i for i in range(150)] + [999, 1000], ("breach", 151)),
    ],
)
def test_calls_per_second_window(offsets: list[int], expected: tuple[str, int]) -> None:
    s = stmt(
        _starts("2026-03-10T10:00:00Z", offsets), "2026-03", account(policies=["intelepeer_cap"])
    )
    assert status_value(s, "calls_per_second") == (*expected, "0.00")


def test_calls_per_second_counts_starts_of_the_cycle_only() -> None:
    events = _starts("2026-03-31T23:59:59.500Z", [0, 0, 700])  # 2 in March, 1 in April
    assert rule(stmt(events, "2026-03"), "calls_per_second")["value"] == 2
    assert rule(stmt(events, "2026-04"), "calls_per_second")["value"] == 1


def test_only_rules_of_the_account_policies_are_listed() -> None:
    events = call("a", "2026-03-10T10:00:00Z", end="2026-03-10T10:10:00Z", user="u-1", tg="tg-cp")
    s = stmt(events, "2026-03", account(policies=["intelepeer_uc"], tg_cp={"bundle": "call_path"}))
    assert [(f["rule"], f["scope"]) for f in s["fair_use"]] == [
        ("bundle_sharing", "user:u-1"),
        ("local_calling_area", "trunk_group:tg-cp"),
        ("toll_free_share", "account"),
    ]


def test_call_completion_mean_uses_milliseconds() -> None:
    # 100 outbound attempts, all answered: 99 of exactly 30 s and one of 30.001 s.
    # Mean = (99 x 30000 + 30001) / 100 ms = 30.00001 s > 30 s: passes (whole seconds
    # would give exactly 30 and fail). Shown rounded to 30.0.
    events = []
    for i in range(100):
        start = datetime.fromisoformat("2026-03-10T00:00:00Z") + timedelta(minutes=i)
        ms = 30_001 if i == 0 else 30_000
        events.append(cdr(f"o{i}", start, start, start + timedelta(milliseconds=ms)))
    s = stmt(events, "2026-03", account(policies=["mitel_us"]))
    assert status_value(s, "call_completion") == ("ok", 1.0, "0.00")
    assert rule(s, "call_completion")["acd_seconds"] == 30.0
