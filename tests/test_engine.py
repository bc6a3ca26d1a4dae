"""Engine rules, one test per SPEC edge case; expected figures are worked out by hand."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest

from helpers import (
    at,
    call_answered,
    call_ended,
    call_started,
    cdr,
    decode,
    message,
    nlp,
    raw,
    smartflow,
)
from metering.engine.accounts import parse_accounts
from metering.engine.engine import Batch, Engine
from metering.engine.facts import ExecutionFact
from metering.engine.state import AccountState
from metering.engine.statement import render

DENVER = datetime(2026, 11, 1, 6, 0, tzinfo=UTC)  # local midnight, Nov 1 (MDT ends 08:00Z)


def engine(accounts: dict[str, Any] | None = None) -> Engine:
    return Engine(accounts=parse_accounts({"accounts": accounts or {}}))


def feed(e: Engine, events: list[bytes]) -> Batch:
    for b in events:
        e.process(decode(b), b)
    return e.drain()


def statement(e: Engine, cycle: str = "2026-11", account: str = "acct-1") -> dict[str, Any]:
    f = e.statement_facts(account, cycle)
    assert f is not None, f"no statement for {account} {cycle}"
    return render(f)


def rule(st: dict[str, Any], name: str, scope: str = "account") -> dict[str, Any]:
    item: dict[str, Any]
    (item,) = [r for r in st["fair_use"] if r["rule"] == name and r["scope"] == scope]
    return item


# ------------------------------------------------------------------ interactions
def test_item_at_deadline_opens_new_interaction() -> None:
    e = engine()
    # UTC account: origin 2026-11-10 12:00 -> deadline 2026-11-12 00:00
    feed(
        e,
        [
            message("message.sent", "2026-11-10T12:00:00.000Z"),
            message("message.received", "2026-11-11T23:59:59.999Z"),
            message("message.sent", "2026-11-12T00:00:00.000Z"),
        ],
    )
    st = statement(e)
    assert st["interactions"]["by_channel"]["sms"] == 2
    assert st["messages"] == {"total": 3, "segments": 3}


def test_deadline_across_dst_change_is_24_absolute_hours() -> None:
    e = engine({"acct-1": {"timezone": "America/Denver"}})
    # origin Oct 31 local (MDT, -6): end of day = Nov 1 06:00Z, deadline = Nov 2 06:00Z,
    # which is 23:00 local on Nov 1 (MST), not the next local midnight (Nov 2 07:00Z).
    b = feed(
        e,
        [
            message("message.sent", "2026-10-31T20:00:00.000Z"),
            message("message.sent", "2026-11-02T05:59:59.999Z"),
            message("message.sent", "2026-11-02T06:00:00.000Z"),
        ],
    )
    opened = [o for o in b.outputs if o.type == "interaction.opened"]
    assert [o.data["deadline"] for o in opened] == [
        "2026-11-02T06:00:00.000Z",
        "2026-11-03T07:00:00.000Z",  # origin is 23:00 local on Nov 1
    ]
    assert statement(e, "2026-10")["interactions"]["total"] == 1
    assert statement(e, "2026-11")["interactions"]["total"] == 1


def test_both_directions_and_mms_share_one_conversation() -> None:
    e = engine()
    feed(
        e,
        [
            message("message.sent", at(0), channel="sms"),
            message("message.received", at(1), channel="mms", segments=3),
            message("message.sent", at(2), channel="whatsapp"),
        ],
    )
    st = statement(e)
    assert st["interactions"]["by_channel"] == {
        "voice": 0,
        "sms": 1,
        "whatsapp": 1,
        "facebook": 0,
        "api": 0,
    }
    assert st["messages"]["segments"] == 5


def test_late_item_becomes_origin_within_lateness() -> None:
    e = engine()
    # arrival order: 00:05 then 23:59 of the previous day (6 minutes late)
    b = feed(
        e,
        [
            message("message.sent", "2026-11-11T00:05:00.000Z"),
            message("message.sent", "2026-11-10T23:59:00.000Z"),
        ],
    )
    st = statement(e)
    assert st["interactions"]["total"] == 1
    closed = [o for o in b.outputs if o.type == "interaction.closed"]
    assert [o.data["reason"] for o in closed] == ["merged"]
    # the merged interaction's deadline follows the new origin's day
    opened = [o for o in b.outputs if o.type == "interaction.opened"]
    assert opened[-1].data["deadline"] == "2026-11-12T00:00:00.000Z"


def test_item_days_late_splits_the_open_interactions_again() -> None:
    """Time order: t0 opens X (deadline Nov 1 00:00Z), a joins X, b opens Y, c joins Y.
    t0 arriving last used to open an Interaction of its own (three in all, two in
    October) instead of taking a into X and leaving b and c to Y."""
    t0 = message("message.sent", "2026-10-30T00:00:00.000Z")
    a = message("message.sent", "2026-10-31T12:00:00.000Z")
    b = message("message.sent", "2026-11-01T12:00:00.000Z")
    c = message("message.sent", "2026-11-02T00:10:00.000Z")
    in_order, late = engine(), engine()
    feed(in_order, [t0, a, b, c])
    for x in (a, b, c, t0):
        feed(late, [x])
    for cycle in ("2026-10", "2026-11"):
        assert statement(late, cycle) == statement(in_order, cycle)
        assert statement(late, cycle)["interactions"]["total"] == 1


def test_late_item_before_interactions_restored_without_item_times() -> None:
    """Snapshots taken before item times were kept: a late item that cannot join opens an
    Interaction of its own, as before (documented approximation)."""
    e = engine()
    feed(e, [message("message.sent", "2026-11-11T12:00:00.000Z")])
    old = msgspec.msgpack.decode(msgspec.msgpack.encode(e.state("acct-1")), type=AccountState)
    for chain in old.conversations.values():
        for inter in chain:
            inter.times = []
    e = engine()
    e.restore(old)
    feed(e, [message("message.sent", "2026-11-10T00:00:00.000Z")])
    assert statement(e)["interactions"]["total"] == 2


def test_voice_and_api_smartflows_are_interactions_by_themselves() -> None:
    e = engine()
    feed(
        e,
        [
            smartflow("x1", at(0), channel="voice"),
            smartflow("x2", at(0), channel="voice"),
            smartflow("x3", at(1), channel="api"),
            smartflow("x4", at(2), channel="sms", business="+1", remote="+2"),
            message("message.sent", at(3), business="+1", remote="+2"),
        ],
    )
    st = statement(e)
    assert st["interactions"]["by_channel"] == {
        "voice": 2,
        "sms": 1,
        "whatsapp": 0,
        "facebook": 0,
        "api": 1,
    }
    assert st["interactions"]["total"] == 4


def test_interaction_closes_when_watermark_passes_deadline_plus_lateness() -> None:
    e = engine()
    b = feed(e, [message("message.sent", "2026-11-10T12:00:00.000Z")])
    assert not [o for o in b.outputs if o.type == "interaction.closed"]
    b = feed(e, [message("message.sent", "2026-11-12T00:14:59.999Z", remote="+9")])
    assert not [o for o in b.outputs if o.type == "interaction.closed"]
    b = feed(e, [message("message.sent", "2026-11-12T00:15:00.000Z", remote="+9")])
    closed = [o for o in b.outputs if o.type == "interaction.closed"]
    assert len(closed) == 1 and closed[0].data["reason"] == "deadline"


# ------------------------------------------------------------------ calls
def test_minutes_round_up_per_call_and_unanswered_have_none() -> None:
    e = engine()
    feed(
        e,
        [
            call_started("c1", at(0)),
            call_answered("c1", at(0, 5)),
            call_ended("c1", at(1, 5)),
            call_started("c2", at(0)),
            call_answered("c2", at(0, 5)),
            call_ended("c2", at(1, 6)),
            call_started("c3", at(0)),
            call_ended("c3", at(0, 30)),
        ],
    )
    v = statement(e)["voice"]
    assert v["attempts"] == 3 and v["answered"] == 2
    assert v["billable_minutes"] == 1 + 2
    assert v["minutes_by_route_class"]["local"] == 3


def test_call_ending_when_another_starts_does_not_overlap() -> None:
    e = engine({"acct-1": {"trunk_groups": {"tg-1": {"capacity": 1}}}})
    feed(
        e,
        [
            call_started("c1", at(0)),
            call_ended("c1", at(5)),
            call_started("c2", at(5)),
            call_ended("c2", at(9)),
        ],
    )
    st = statement(e)
    assert st["concurrency"]["peak"] == 1
    assert st["concurrency"]["peak_at"] == at(0)
    assert st["voice"]["over_capacity"] == 0


def test_call_spanning_cycle_boundary_occupies_in_both_cycles() -> None:
    e = engine({"acct-1": {"timezone": "America/Denver"}})
    # Denver cycle 2026-11 starts 2026-11-01T06:00Z
    feed(
        e,
        [
            call_started("c1", "2026-11-01T05:50:00.000Z"),
            call_answered("c1", "2026-11-01T05:50:00.000Z"),
            call_ended("c1", "2026-11-01T06:10:00.000Z"),
        ],
    )
    oct_, nov = statement(e, "2026-10"), statement(e, "2026-11")
    assert oct_["voice"]["attempts"] == 1 and oct_["voice"]["billable_minutes"] == 20
    assert oct_["concurrency"]["peak_at"] == "2026-11-01T05:50:00.000Z"
    assert nov["voice"]["attempts"] == 0
    assert nov["concurrency"]["peak"] == 1
    assert nov["concurrency"]["peak_at"] == "2026-11-01T06:00:00.000Z"
    assert nov["concurrency"]["trunk_groups"]["tg-1"]["peak"] == 1


def test_redundant_trunk_group_shares_capacity_of_its_primary() -> None:
    e = engine(
        {
            "acct-1": {
                "trunk_groups": {
                    "tg-1": {"capacity": 1, "bundle": "call_path"},
                    "tg-1b": {"redundant_for": "tg-1"},
                }
            }
        }
    )
    feed(
        e,
        [
            call_started("c1", at(0), tg="tg-1"),
            call_ended("c1", at(10)),
            call_started("c2", at(1), tg="tg-1b"),
            call_ended("c2", at(2)),
        ],
    )
    st = statement(e)
    assert st["concurrency"]["trunk_groups"] == {
        "tg-1": {"peak": 2, "peak_at": at(1), "capacity": 1}
    }
    assert st["voice"]["over_capacity"] == 1
    assert any(r["scope"] == "trunk_group:tg-1" for r in st["fair_use"])


def test_blocked_call_counts_as_attempt_only() -> None:
    e = engine({"acct-1": {"trunk_groups": {"tg-1": {"capacity": 1}}}})
    feed(
        e,
        [
            call_started("c1", at(0), user="u1"),
            call_answered("c1", at(0)),
            call_ended("c1", at(10)),
            call_started("c2", at(1), user="u2", blocked=True),
            call_ended("c2", at(1)),
        ],
    )
    st = statement(e)
    v = st["voice"]
    assert (v["attempts"], v["blocked"], v["over_capacity"], v["answered"]) == (2, 1, 0, 1)
    assert st["concurrency"]["peak"] == 1
    # u2 had only a blocked call: no user scope
    assert {r["scope"] for r in st["fair_use"] if r["rule"] == "minutes_per_user"} == {"user:u1"}


def test_missing_end_times_out_at_max_call_duration() -> None:
    e = engine()
    feed(e, [call_started("c1", at(0)), call_answered("c1", at(1))])
    assert statement(e)["voice"]["timed_out"] == 0
    # a later event moves the watermark past start + 4 h
    feed(e, [message("message.sent", at(240))])
    v = statement(e)["voice"]
    assert v["timed_out"] == 1
    assert v["billable_minutes"] == 239


def test_late_end_within_lateness_undoes_time_out() -> None:
    e = engine()
    feed(
        e, [call_started("c1", at(0)), call_answered("c1", at(0)), message("message.sent", at(241))]
    )
    assert statement(e)["voice"]["timed_out"] == 1
    feed(e, [call_ended("c1", at(239, 30))])
    v = statement(e)["voice"]
    assert v["timed_out"] == 0 and v["billable_minutes"] == 240


def test_cdr_longer_than_max_duration_is_timed_out_and_capped() -> None:
    e = engine()
    feed(e, [cdr("c1", at(0), at(0), at(300))])
    v = statement(e)["voice"]
    assert v["timed_out"] == 1 and v["billable_minutes"] == 240


def test_cdr_corrects_peak_back_to_its_start() -> None:
    e = engine({"acct-1": {"trunk_groups": {"tg-1": {"capacity": 1}}}})
    feed(e, [call_started("c1", at(10)), call_ended("c1", at(20))])
    assert statement(e)["concurrency"]["peak"] == 1
    # a CDR arriving at its end (25) describes a call from minute 5
    b = feed(e, [cdr("c2", at(5), at(5), at(25))])
    st = statement(e)
    assert st["concurrency"]["peak"] == 2
    assert st["concurrency"]["peak_at"] == at(10)
    # c1 started while c2 held the only port
    assert st["voice"]["over_capacity"] == 1
    assert [o.data["call_id"] for o in b.outputs if o.type == "capacity.exceeded"] == ["c1"]


def test_simultaneous_starts_are_ordered_by_source_then_id() -> None:
    e = engine({"acct-1": {"trunk_groups": {"tg-1": {"capacity": 1}}}})
    b = feed(
        e,
        [
            call_started("late", at(0), source="//b", eid="1"),
            call_ended("late", at(5)),
            call_started("early", at(0), source="//a", eid="9"),
            call_ended("early", at(5)),
        ],
    )
    assert [o.data["call_id"] for o in b.outputs if o.type == "capacity.exceeded"] == ["late"]


def test_lifecycle_events_in_any_order() -> None:
    events = [call_ended("c1", at(3)), call_answered("c1", at(1)), call_started("c1", at(0))]
    e = engine()
    feed(e, events)
    v = statement(e)["voice"]
    assert (v["attempts"], v["answered"], v["billable_minutes"]) == (1, 1, 2)


def test_calls_per_second_window() -> None:
    e = engine()
    # 3 starts within [0, 1 s), a 4th exactly 1 s after the first
    feed(e, [call_started(f"c{i}", at(0, s)) for i, s in enumerate([0, 0.4, 0.999, 1.0])])
    assert rule(statement(e), "calls_per_second")["value"] == 3


def test_bundle_sharing_counts_users_concurrent_calls() -> None:
    e = engine()
    feed(
        e,
        [
            call_started("c1", at(0), user="u1"),
            call_ended("c1", at(5)),
            call_started("c2", at(4), user="u1", tg="tg-9"),
            call_ended("c2", at(6)),
            call_started("c3", at(5), user="u2"),
            call_ended("c3", at(6)),
        ],
    )
    st = statement(e)
    assert rule(st, "bundle_sharing", "user:u1")["status"] == "breach"
    assert rule(st, "bundle_sharing", "user:u1")["value"] == 2
    assert rule(st, "bundle_sharing", "user:u2")["value"] == 1


def test_nlp_share_matches_executions_in_any_order() -> None:
    e = engine()
    feed(
        e,
        [
            nlp("x1", at(0, 1)),
            smartflow("x1", at(0)),
            smartflow("x2", at(0)),
            nlp("x2", at(0, 2)),
            nlp("x2", at(0, 3)),
            smartflow("x3", at(1)),
        ],
    )
    r = rule(statement(e), "nlp_share")
    assert r["value"] == 0.6667 and r["status"] == "insufficient_data"


def test_minutes_per_user_overage_charge_is_exact() -> None:
    e = engine({"acct-1": {"policies": ["mitel_us"]}})
    # 2501 local minutes for one user: a 2501-minute call would time out, so use 11 calls
    events: list[bytes] = []
    for i in range(11):
        start = i * 240
        minutes = 227 if i < 10 else 231  # 10 x 227 + 231 = 2501
        events += [cdr(f"c{i}", at(start), at(start), at(start + minutes), user="u1")]
    feed(e, events)
    st = statement(e)
    r = rule(st, "minutes_per_user", "user:u1")
    assert (r["value"], r["status"], r["charge_usd"]) == (2501, "breach", "0.03")
    assert st["charges"]["overage_usd"] == "0.03"


def test_policies_limit_listed_rules() -> None:
    e = engine({"acct-1": {"policies": ["intelepeer_cap"]}})
    feed(e, [call_started("c1", at(0), user="u1")])
    assert [r["rule"] for r in statement(e)["fair_use"]] == ["calls_per_second", "nlp_share"]


# ------------------------------------------------------------------ bad input
def test_duplicates_are_ignored() -> None:
    e = engine()
    b1 = call_started("c1", at(0), eid="same")
    assert e.process(decode(b1), b1) == "accepted"
    assert e.process(decode(b1), b1) == "duplicate"
    e.drain()
    assert statement(e)["voice"]["attempts"] == 1


def verdicts(e: Engine, events: list[bytes], drain_each: bool) -> list[str]:
    """What ``process`` said of each event, with a drain after each one or none."""
    out: list[str] = []
    for b in events:
        out.append(e.process(decode(b), b))
        if drain_each:
            e.drain()
    e.drain()
    return out


@pytest.mark.parametrize("drain_each", [False, True])
def test_repeat_within_the_horizon_of_its_pair_is_a_duplicate_wherever_drains_fall(
    drain_each: bool,
) -> None:
    """A repeat of a pair carrying another time (a producer re-using an id), 1 minute
    behind the watermark and 23 h 59 min after the pair's first time: a duplicate, as in
    sorted processing. The watermark had passed the first time + 24 h, so the pair's key
    used to be expired by a drain in between, and the repeat counted as a new message."""
    first = message("message.sent", at(0), eid="dup")
    later = message("message.sent", at(24 * 60, 0.001), remote="+2")
    repeat = message("message.sent", at(23 * 60 + 59), eid="dup")
    e = engine()
    assert verdicts(e, [first, later, repeat], drain_each) == ["accepted", "accepted", "duplicate"]
    assert statement(e)["messages"]["total"] == 2


def test_pair_is_held_for_the_horizon_plus_the_lateness() -> None:
    """A pair comes back as a new event once the watermark is the horizon plus the
    allowed lateness past its time, drained in between or not; before that it is a
    duplicate, even 24 h apart (the raw events and messages in ClickHouse are keyed by the
    pair, so two events with one pair held at once would be one row there)."""
    a = message("message.sent", at(0), eid="again")
    b = message("message.sent", at(24 * 60), eid="again")
    c = message("message.sent", at(24 * 60 + 15), eid="again")
    for drain_each in (False, True):
        assert verdicts(engine(), [a, b, c], drain_each) == ["accepted", "duplicate", "accepted"]


def test_call_described_again_after_it_left_memory_is_a_duplicate() -> None:
    """A second CDR (another event id) for a call that is final and left memory 9 h
    later, and its start sent again: dead-lettered as duplicate_call, not a second call
    (it was counted twice)."""
    e = engine()
    first = cdr("c1", at(0), at(0, 5), at(10), eid="cdr-1")
    feed(e, [first])
    feed(e, [message("message.received", at(9 * 60))])  # the call leaves memory
    assert "c1" not in e.state("acct-1").calls
    again = cdr("c1", at(0), at(0, 5), at(10), eid="cdr-1-resent")
    start = call_started("c1", at(0), eid="start-c1")
    b = feed(e, [again, start])
    assert [r.reason for r in b.rejections] == ["duplicate_call", "duplicate_call"]
    voice = statement(e)["voice"]
    assert (voice["attempts"], voice["billable_minutes"]) == (1, 10)


def test_orphan_lifecycle_events_are_dead_lettered() -> None:
    e = engine()
    b = feed(e, [call_answered("ghost", at(0)), call_ended("ghost", at(1))])
    assert not b.rejections
    b = feed(e, [message("message.sent", at(4 * 60 + 16))])
    assert sorted(r.reason for r in b.rejections) == ["orphan", "orphan"]
    assert b.retracted == 2


def test_call_described_twice_is_dead_lettered() -> None:
    e = engine()
    dup = cdr("c1", at(0), at(0), at(2))
    b = feed(e, [call_started("c1", at(0)), call_ended("c1", at(2)), dup])
    assert [(r.reason, r.raw) for r in b.rejections] == [("duplicate_call", dup)]
    assert statement(e)["voice"]["attempts"] == 1


def test_bad_account_configuration_event_is_dead_lettered() -> None:
    e = engine()
    bad = raw("account.configured", at(0), {"timezone": "Mars/Olympus"})
    assert e.process(decode(bad), bad) == "rejected"
    assert [r.reason for r in e.drain().rejections] == ["schema"]


def test_account_configured_event_applies_without_restart() -> None:
    e = engine()
    cfg = raw(
        "account.configured", at(0), {"timezone": "UTC", "trunk_groups": {"tg-1": {"capacity": 1}}}
    )
    feed(
        e,
        [
            cfg,
            call_started("c1", at(1)),
            call_ended("c1", at(5)),
            call_started("c2", at(2)),
            call_ended("c2", at(3)),
        ],
    )
    assert statement(e)["voice"]["over_capacity"] == 1


def test_configuration_change_does_not_depend_on_where_drains_fall() -> None:
    """What came before an account.configured is finished under the old configuration
    (a call at 03:00Z on Dec 1 is December's in UTC), drained in between or not; it was
    November's when no drain came between the call and a change to America/Denver."""

    def statements(drain_each: bool) -> dict[str, dict[str, Any]]:
        e = engine()
        events = [
            call_started("c1", "2026-12-01T03:00:00.000Z"),
            call_answered("c1", "2026-12-01T03:00:00.000Z"),
            call_ended("c1", "2026-12-01T03:10:00.000Z"),
            raw("account.configured", "2026-12-01T04:00:00.000Z", {"timezone": "America/Denver"}),
            message("message.sent", "2026-12-01T04:00:01.000Z"),
        ]
        verdicts(e, events, drain_each)
        return {c: statement(e, c) for c in e.cycles_of("acct-1")}

    together, apart = statements(False), statements(True)
    assert together == apart
    assert together["2026-12"]["voice"]["attempts"] == 1


# ------------------------------------------------------------------ state
def test_state_snapshot_round_trip_continues_identically() -> None:
    events = [
        call_started("c1", at(0), user="u1"),
        call_answered("c1", at(0, 5)),
        message("message.sent", at(1)),
        smartflow("x1", at(2), channel="api"),
        call_ended("c1", at(7)),
        cdr("c2", at(3), at(3), at(9), user="u1"),
        message("message.received", at(12)),
        nlp("x1", at(13)),
    ]
    whole = engine()
    feed(whole, events)
    first = engine()
    feed(first, events[:4])
    snap = msgspec.msgpack.encode(first.state("acct-1"))
    second = engine()
    second.restore(msgspec.msgpack.decode(snap, type=AccountState))
    feed(second, events[4:])
    assert statement(second) == statement(whole)


def test_memory_is_released_after_settling() -> None:
    e = engine()
    feed(e, [call_started("c1", at(0)), call_ended("c1", at(1)), message("message.sent", at(2))])
    st = e.state("acct-1")
    assert st.calls and st.conversations and st.seen
    feed(e, [message("message.sent", at(3 * 24 * 60), remote="+7")])
    assert "c1" not in st.calls
    assert list(st.conversations) == ["sms\x1f+1000\x1f+7"]
    assert len(st.seen) == 1
    # the counters stay
    assert statement(e)["voice"]["attempts"] == 1


@pytest.mark.parametrize("cycle", ["2026-11"])
def test_statement_shape_matches_spec(cycle: str) -> None:
    e = engine(
        {"acct-1": {"timezone": "America/Denver", "trunk_groups": {"tg-1": {"capacity": 20}}}}
    )
    feed(e, [call_started("c1", at(0)), call_ended("c1", at(1))])
    st = statement(e, cycle)
    assert list(st) == [
        "account",
        "cycle",
        "timezone",
        "interactions",
        "messages",
        "voice",
        "concurrency",
        "fair_use",
        "charges",
    ]
    assert list(st["voice"]) == [
        "attempts",
        "answered",
        "blocked",
        "timed_out",
        "over_capacity",
        "billable_minutes",
        "minutes_by_route_class",
    ]
    assert st["concurrency"]["trunk_groups"]["tg-1"]["capacity"] == 20
    assert [(r["rule"], r["scope"]) for r in st["fair_use"]] == sorted(
        (r["rule"], r["scope"]) for r in st["fair_use"]
    )


def test_every_execution_is_published_even_when_it_expires_in_the_same_drain() -> None:
    e = engine()
    b = feed(
        e,
        [
            smartflow("x1", at(0), channel="api"),
            nlp("x1", at(1)),
            message("message.sent", at(25 * 60)),
        ],
    )
    facts = [f for f in b.facts if isinstance(f, ExecutionFact)]
    assert [(f.execution_id, f.nlp_uses) for f in facts] == [("x1", 1)]


# ------------------------------------------------------------------ account lifecycle
def _holds(e: Engine, account: str) -> list[str]:
    """Names of the engine's per-account containers still holding ``account``."""
    return [
        name
        for name, value in vars(e).items()
        if isinstance(value, dict | set) and account in value and name != "_configs"
    ]


def test_forget_drops_everything_about_one_account() -> None:
    e = engine({"acct-2": {"timezone": "America/Denver"}})
    both = [
        call_started("c1", at(0), account="acct-1"),
        message("message.sent", at(1), account="acct-1"),
        call_started("c1", at(0), account="acct-2"),
        message("message.sent", at(1), account="acct-2"),
    ]
    feed(e, both)
    e.process(decode(both[1]), both[1])  # a duplicate of acct-1, pending until a drain
    later = message("message.sent", at(2), account="acct-2")
    e.process(decode(later), later)  # acct-2 has pending (undrained) work too
    assert _holds(e, "acct-2")
    e.forget("acct-2")
    assert _holds(e, "acct-2") == []
    assert e.config_of("acct-2").timezone == "UTC"  # back to the defaults
    assert e.accounts() == ["acct-1"]
    # the forgotten account starts afresh: its old event is no duplicate any more
    assert e.process(decode(both[3]), both[3]) == "accepted"
    e.forget(
        "acct-1", parse_accounts({"accounts": {"acct-1": {"timezone": "Europe/Paris"}}})["acct-1"]
    )
    assert e.config_of("acct-1").timezone == "Europe/Paris"
    assert e.accounts() == ["acct-2"]


def test_close_idle_only_for_the_accounts_given() -> None:
    e = engine()
    feed(
        e,
        [
            message("message.sent", "2026-11-10T12:00:00.000Z", account="acct-1"),
            message("message.sent", "2026-11-10T12:00:00.000Z", account="acct-2"),
        ],
    )
    far = int(datetime(2026, 12, 1, tzinfo=UTC).timestamp() * 1000)
    e.close_idle(far, accounts=["acct-2", "acct-unknown"])
    closed = [o.account for o in e.drain().outputs if o.type == "interaction.closed"]
    assert closed == ["acct-2"]
    e.close_idle(far)
    closed = [o.account for o in e.drain().outputs if o.type == "interaction.closed"]
    assert closed == ["acct-1"]
