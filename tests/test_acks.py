"""The worker's ack gate (metering.stream.acks) against Faust's stream.

Faust's pure-Python stream iterator (used without its Cython extension, or with
``NO_CYTHON`` set) acks a record it skips because it was fetched before the latest
rebalance, although the record never reached the agent. These tests drive a real Faust
stream in a subprocess with ``NO_CYTHON=1`` and show the gate keeps that ack from the
consumer while the worker's own acks pass.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from typing import Any

import pytest

SCRIPT = r"""
import asyncio, json, sys
import faust
from faust.events import Event
from faust.types.tuples import ConsumerMessage
from metering.stream.acks import AckGate

gated = sys.argv[1] == "gated"

async def main():
    app = faust.App("acks-test", broker="kafka://127.0.0.1:1")
    consumer = app.consumer
    app.topics._acking_topics.add("cpaas.voice")
    app.flow_control.resume()
    app.consumer_generation_id = 2
    gate = AckGate(["cpaas.voice"])
    if gated:
        gate.install(consumer)
    chan = app.channel()
    delivered = []

    async def agent():
        async for event in chan.stream().noack().events():
            delivered.append(event.message.offset)
            gate.release(event.message, consumer)  # what the worker does after a commit

    task = asyncio.ensure_future(agent())
    await asyncio.sleep(0.1)
    for offset, generation in ((5, 1), (6, 2)):  # 5 was fetched before the rebalance
        msg = ConsumerMessage("cpaas.voice", 0, offset, 0.0, 0, None, b"k", b"v", None,
                              generation_id=generation)
        await chan.put(Event(app, b"k", b"v", None, msg))
    await asyncio.sleep(0.3)
    task.cancel()
    acked = sorted(o for offsets in consumer._acked.values() for o in offsets)
    print(json.dumps({"stale_acked": acked, "delivered": delivered, "refused": gate.refused,
                      "cython": __import__("faust.streams").streams._CStreamIterator is not None}))

asyncio.run(main())
"""


def run_stream(mode: str) -> dict[str, object]:
    env = dict(os.environ, NO_CYTHON="1")
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode], env=env, capture_output=True, timeout=60
    )
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    result: dict[str, object] = json.loads(out.stdout.decode().strip().splitlines()[-1])
    assert result["cython"] is False
    return result


@pytest.mark.parametrize("mode", ["plain", "gated"])
def test_a_record_skipped_as_stale_is_acked_only_without_the_gate(mode: str) -> None:
    got = run_stream(mode)
    assert got["delivered"] == [6]  # the stale record never reaches the agent
    if mode == "plain":
        # Faust itself marks it done: a commit now could pass it before it is re-read
        assert got["stale_acked"] == [5, 6]
    else:
        assert got["stale_acked"] == [6]
        assert got["refused"] == 1


def test_an_ack_waits_while_an_earlier_record_of_its_partition_is_held(tmp_path: Any) -> None:
    """A dead letter at offset 11 passes the aligner while the event at offset 10 waits
    there: the worker acks 11 only once 10 is released, so no commit can pass 10."""
    import faust
    from faust.events import Event
    from faust.types.tuples import ConsumerMessage

    from helpers import decode, message
    from metering.stream.app import create_app, runtime_of
    from metering.stream.pipeline import Held, Record
    from metering.stream.settings import WorkerSettings

    settings = WorkerSettings.from_env({}, db_dir=str(tmp_path / "db"), data_dir=str(tmp_path))
    app = create_app(settings, client=object())
    rt = runtime_of(app)
    assert isinstance(app, faust.App)

    def event(topic: str, offset: int) -> Any:
        msg = ConsumerMessage(topic, 0, offset, 0.0, 0, None, b"k", b"v", None)
        return Event(app, b"k", b"v", None, msg)

    held = Record("cpaas.messaging", 0, 10, b"k", b"v")
    sent = decode(message("message.sent", "2026-11-10T12:00:00.000Z"))
    rt.pipeline.aligner.add(Held(0, held, sent, event(held.topic, 10)))
    dead, other_topic = event("cpaas.messaging", 11), event("cpaas.voice", 11)
    before = event("cpaas.messaging", 9)
    ready, later = rt._ackable([dead, other_topic, before])
    assert ready == [other_topic, before] and later == [dead]
    rt.pipeline.aligner.forget([0])  # released (or dropped): nothing held any more
    assert rt._ackable(later) == ([dead], [])


def _faust_consumer(name: str) -> Any:
    import faust

    app = faust.App(name, broker="kafka://127.0.0.1:1")
    app.topics.acking_topics.add("cpaas.voice")
    return app.consumer


def _guarded(name: str, guarded: bool, head: int) -> tuple[Any, Any, Any]:
    """A Faust consumer with the ack gate and delivery guard on ``cpaas.voice/0`` (whose
    seek put the head at ``head``), or without them: (consumer, gate, guard)."""
    from faust.types import TP

    from metering.stream.acks import AckGate, DeliveryGuard

    consumer = _faust_consumer(name)
    gate, guard = AckGate(["cpaas.voice"]), DeliveryGuard(["cpaas.voice"])
    if guarded:
        gate.install(consumer)
        guard.install(consumer)
        guard.start({TP("cpaas.voice", 0): head})
    return consumer, gate, guard


def _ack(consumer: Any, gate: Any, offsets: Any) -> None:
    from faust.types.tuples import ConsumerMessage

    for offset in offsets:
        msg = ConsumerMessage("cpaas.voice", 0, offset, 0.0, 0, None, b"k", b"v", None)
        msg.incref()
        gate.release(msg, consumer)


def test_fausts_fake_gap_no_longer_doubles_offsets() -> None:
    """After a rebalance Faust can take records it fetches twice (before and after its
    seek) for a gap. Merged into the acked offsets, the gap lists each offset twice and
    Faust commits one offset per commit. With the guard installed, Faust's gaps stay off
    the input topics: all acked offsets commit at once."""
    from faust.types import TP

    from metering.stream.acks import Admit

    def next_commit(guarded: bool) -> int | None:
        consumer, gate, guard = _guarded("gaps-test", guarded, 10)
        tp = TP("cpaas.voice", 0)
        consumer._committed_offset[tp] = 10

        async def deliver() -> None:
            # what Faust's fetch loop does when a pre-seek record (20) follows the seek
            await consumer._add_gap(tp, 11, 20)
            for offset in range(10, 21):
                assert not guarded or guard.admit(tp, offset, 0.0) is Admit.OK
            _ack(consumer, gate, range(10, 21))

        asyncio.run(deliver())
        offset: int | None = consumer._new_offset(tp)
        return offset

    assert next_commit(guarded=False) == 12  # doubled offsets: one offset per commit
    assert next_commit(guarded=True) == 21


@pytest.mark.parametrize(
    ("committed", "acked", "faust", "guarded"),
    [
        (10, range(11, 21), 21, None),  # the committed offset's record is not acked
        (None, range(5, 10), 10, None),  # nothing committed: the head (0) is not acked
        (10, range(10, 21), 21, 21),
        (None, range(0, 10), 10, 10),
    ],
)
def test_faust_commits_past_an_unacked_record_and_the_guard_does_not(
    committed: int | None, acked: range, faust: int, guarded: int | None
) -> None:
    """Faust commits the first run of acked offsets when the committed offset's own
    record is not acked (it checks ``min(acked) - committed > 1``) or when nothing was
    committed: a record dropped on the way is passed. The guard commits only a run that
    starts at the committed offset (the partition's head when none is committed)."""
    from faust.types import TP

    for guard_on, want in ((False, faust), (True, guarded)):
        consumer, gate, _ = _guarded("commit-test", guard_on, committed or 0)
        tp = TP("cpaas.voice", 0)
        consumer._committed_offset[tp] = committed
        _ack(consumer, gate, acked)
        assert consumer._new_offset(tp) == want, (guard_on, committed)


def test_delivery_guard_frontier_and_seeks_back() -> None:
    """Each offset is admitted once per generation, in any order. The frontier (lowest
    offset from the committed one on not admitted) bounds checkpoint floors; records
    past a missing one make the guard seek the partition back to it, at growing
    intervals while it stays missing; Faust commits only up to the frontier's acked run."""
    from faust.types import TP

    from metering.stream.acks import (
        GAP_HOLD_S,
        HEAL_AFTER_S,
        HEAL_MAX_S,
        AckGate,
        Admit,
        DeliveryGuard,
    )

    consumer = _faust_consumer("admit-test")
    voice, other = TP("cpaas.voice", 0), TP("metering.other", 0)
    gate, guard = AckGate(["cpaas.voice"]), DeliveryGuard(["cpaas.voice"])
    gate.install(consumer)
    assert guard.install(consumer) and not guard.install(consumer)
    # Faust's read offsets no longer filter input records (they would drop re-read ones)
    consumer._read_offset[voice] = 7
    consumer._read_offset[other] = 7
    assert consumer._read_offset[voice] is None and consumer._read_offset[other] == 7

    # before the seek: from the lowest offset seen
    assert [guard.admit(voice, o, 0.0) for o in (12, 13)] == [Admit.OK, Admit.OK]
    assert guard.frontier(voice) == 12
    guard.start({voice: 10}, now=1.0)  # the seek: committed 10, so 10 and 11 are missing
    assert guard.frontier(voice) == 10
    assert [guard.admit(voice, o, 1.0) for o in (10, 12, 9)] == [
        Admit.OK, Admit.COPY, Admit.COPY,
    ]  # fmt: skip
    assert guard.frontier(voice) == 11  # 11 is still missing
    # 12 and 13 are held back (not applied) while 11 is read again, for at most GAP_HOLD_S
    assert guard.holds(2.0) == {("cpaas.voice", 0): 11}  # records past 11 wait
    assert guard.holds(1.0 + GAP_HOLD_S) == {}
    assert guard.to_heal(1.0 + HEAL_AFTER_S / 2) == []
    t = 1.0 + HEAL_AFTER_S
    assert guard.to_heal(t) == [(voice, 11, 13)]  # 11 missing, 13 the highest received
    assert guard.missing(voice) == 11  # (the broker has it: seek back to 11)
    assert guard.to_heal(t + HEAL_AFTER_S) == []  # the next one waits twice as long
    assert guard.to_heal(t + 2 * HEAL_AFTER_S) == [(voice, 11, 13)]
    consumer._committed_offset[voice] = 10
    _ack(consumer, gate, [10, 12, 13])
    assert consumer._new_offset(voice) == 11  # not past the missing 11
    assert consumer._new_offset(voice) is None
    assert guard.admit(voice, 11, 20.0) is Admit.OK  # read again: it comes
    assert guard.frontier(voice) == 14
    assert guard.missing(voice) is None
    assert guard.to_heal(20.0 + HEAL_MAX_S) == []
    consumer._committed_offset[voice] = 11
    _ack(consumer, gate, [11])
    assert consumer._new_offset(voice) == 14
    guard.reset()
    assert guard.frontier(voice) is None


def test_delivery_guard_finds_a_lost_tail_from_the_consumers_position() -> None:
    """Records lost on the way at the end of a partition: no later record shows the gap,
    but the consumer's position stays past the frontier. After TAIL_AFTER_S of that (the
    worker quiet), the guard reports a gap up to the position; a record the broker has is
    read again, a trailing hole (a transaction marker) is passed."""
    from faust.types import TP

    from metering.stream.acks import TAIL_AFTER_S, Admit, DeliveryGuard

    voice = TP("cpaas.voice", 3)
    guard = DeliveryGuard(["cpaas.voice"])
    guard.start({voice: 700}, now=0.0)
    for o in range(700, 715):
        assert guard.admit(voice, o, 0.0) is Admit.OK
    # records in flight (position past the frontier while they are handled): no gap
    guard.fetched(voice, 800, 1.0)
    assert guard.admit(voice, 715, 1.5) is Admit.OK  # admitted: the wait starts again
    guard.fetched(voice, 822, 2.0)
    assert guard.to_heal(2.0 + TAIL_AFTER_S - 0.1) == []
    guard.fetched(voice, 822, 2.0 + TAIL_AFTER_S - 0.1)
    assert guard.to_heal(2.0 + TAIL_AFTER_S - 0.1) == []
    guard.fetched(voice, 822, 2.0 + TAIL_AFTER_S)
    # 716-821 were handed to Faust and never came: a gap up to the position
    assert guard.to_heal(2.0 + TAIL_AFTER_S) == [(voice, 716, 821)]
    assert guard.learn(voice, 716, range(716, 822), 822) == 0  # the broker has them all
    assert guard.missing(voice) == 716  # (seek back to 716)
    guard.sought_back(voice, 716)
    for o in range(716, 800):
        guard.admit(voice, o, 6.0)
    assert guard.missing(voice) == 800  # not all back yet: still a gap up to 821
    for o in range(800, 822):
        guard.admit(voice, o, 6.5)
    assert guard.frontier(voice) == 822 and guard.missing(voice) is None
    guard.fetched(voice, 822, 7.0)
    guard.fetched(voice, 822, 7.0 + 2 * TAIL_AFTER_S)
    assert guard.to_heal(7.0 + 2 * TAIL_AFTER_S) == []  # position == frontier: nothing
    # a trailing transaction marker at 822: position 823, the broker has no record there
    guard.fetched(voice, 823, 20.0)
    guard.fetched(voice, 823, 20.0 + TAIL_AFTER_S)
    assert guard.to_heal(20.0 + TAIL_AFTER_S) == [(voice, 822, 822)]
    assert guard.learn(voice, 822, [], 823) == 1
    assert guard.frontier(voice) == 823 and guard.missing(voice) is None
    guard.fetched(voice, 823, 30.0)
    guard.fetched(voice, 823, 30.0 + TAIL_AFTER_S)
    assert guard.to_heal(30.0 + TAIL_AFTER_S) == []


def test_delivery_guard_passes_offsets_the_broker_does_not_have() -> None:
    """Offsets the broker's log lacks (compaction, transaction markers) never come. Told
    which offsets of a range exist, the guard passes the others: the frontier moves past
    them, records past them stop waiting, and Faust commits through them. An offset the
    broker has but the worker did not receive stays missing (it is read again)."""
    from faust.types import TP

    from metering.stream.acks import HEAL_AFTER_S, AckGate, Admit, DeliveryGuard

    consumer = _faust_consumer("holes-test")
    accounts = TP("cpaas.voice", 0)
    gate, guard = AckGate(["cpaas.voice"]), DeliveryGuard(["cpaas.voice"])
    gate.install(consumer)
    guard.install(consumer)
    guard.start({accounts: 0}, now=0.0)
    # the log: 0 1 _ _ 4 5 _ 7 8 (2, 3 and 6 compacted away); 8 lost on the way here
    for o in (0, 1, 4, 5, 7):
        assert guard.admit(accounts, o, 0.0) is Admit.OK
    assert guard.frontier(accounts) == 2
    assert guard.holds(1.0) == {("cpaas.voice", 0): 2}
    [(tp, frontier, top)] = guard.to_heal(HEAL_AFTER_S)
    assert (tp, frontier, top) == (accounts, 2, 7)
    # the broker's answer for [2, 8): 4, 5 and 7 exist (it may not know 8 yet)
    assert guard.learn(accounts, 2, [4, 5, 7], 8) == 3  # 2, 3 and 6
    assert guard.holes == 3
    assert guard.frontier(accounts) == 8
    assert guard.missing(accounts) is None and guard.holds(1.0) == {}
    consumer._committed_offset[accounts] = 0
    _ack(consumer, gate, [0, 1, 4, 5, 7])
    assert consumer._new_offset(accounts) == 8  # through the holes

    # past the end of what it knows, a record it has but the worker lacks: still missing
    for o in (10, 11):
        assert guard.admit(accounts, o, 1.0) is Admit.OK
    [(_, frontier, top)] = guard.to_heal(1.0 + HEAL_AFTER_S)
    assert (frontier, top) == (8, 11)
    assert guard.learn(accounts, 8, [8, 10, 11], 12) == 1  # 9 is a hole, 8 exists
    assert guard.frontier(accounts) == 8 and guard.missing(accounts) == 8
    assert guard.learn(accounts, 8, [8, 10, 11], 12) == 0  # asked again: 9 known already
    assert guard.holes == 4
    assert guard.admit(accounts, 8, 2.0) is Admit.OK  # read again
    assert guard.frontier(accounts) == 12 and guard.missing(accounts) is None
    consumer._committed_offset[accounts] = 8
    _ack(consumer, gate, [8, 10, 11])
    assert consumer._new_offset(accounts) == 12
    # a partial answer (the broker answered up to 5 only) passes only what it covers
    guard.reset()
    guard.start({accounts: 20}, now=5.0)
    for o in (22, 30):
        guard.admit(accounts, o, 5.0)
    assert guard.learn(accounts, 20, [], 21) == 1  # 20 is a hole; nothing known past 21
    assert guard.frontier(accounts) == 21 and guard.missing(accounts) == 21
