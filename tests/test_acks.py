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


def test_fausts_fake_gap_no_longer_doubles_offsets() -> None:
    """After a rebalance Faust can take records it fetches twice (before and after its
    seek) for a gap. Merged into the acked offsets, the gap lists each offset twice and
    Faust commits one offset per commit. With the guard installed, only the worker's
    real gaps reach Faust: all acked offsets commit at once."""
    import faust
    from faust.types import TP
    from faust.types.tuples import ConsumerMessage

    from metering.stream.acks import AckGate, DeliveryGuard

    def next_commit(guarded: bool) -> int | None:
        app = faust.App("gaps-test", broker="kafka://127.0.0.1:1")
        consumer: Any = app.consumer
        app.topics.acking_topics.add("cpaas.voice")
        tp = TP("cpaas.voice", 0)
        gate, guard = AckGate(["cpaas.voice"]), DeliveryGuard(["cpaas.voice"])
        if guarded:
            gate.install(consumer)
            guard.install(consumer)
        consumer._committed_offset[tp] = 10

        async def deliver() -> None:
            # what Faust's fetch loop does when a pre-seek record (20) follows the seek
            await consumer._add_gap(tp, 11, 20)
            for offset in range(10, 21):
                assert guard.admit(tp, offset, 10, 1)
                msg = ConsumerMessage("cpaas.voice", 0, offset, 0.0, 0, None, b"k", b"v", None)
                msg.incref()
                gate.release(msg, consumer)

        asyncio.run(deliver())
        offset: int | None = consumer._new_offset(tp)
        return offset

    assert next_commit(guarded=False) == 12  # doubled offsets: one offset per commit
    assert next_commit(guarded=True) == 21


def test_delivery_guard_admits_each_offset_once_per_generation_and_notes_no_gaps() -> None:
    import faust
    from faust.types import TP

    from metering.stream.acks import DeliveryGuard

    app = faust.App("guard-test", broker="kafka://127.0.0.1:1")
    consumer: Any = app.consumer
    guard = DeliveryGuard(["cpaas.voice"])
    guard.install(consumer)
    voice, other = TP("cpaas.voice", 0), TP("other", 0)

    async def main() -> None:
        await consumer._add_gap(other, 3, 5)  # not an input topic: Faust's own gap stays
        await consumer._add_gap(voice, 11, 20)  # an input topic: ignored

    asyncio.run(main())
    got = [
        guard.admit(voice, 14, 10, 1),
        guard.admit(voice, 15, 10, 1),
        guard.admit(voice, 15, 10, 1),  # fetched again: handled once
        guard.admit(voice, 10, 10, 1),  # dropped by Faust before, read again: handled
        guard.admit(voice, 15, 10, 2),  # a new generation reads again
    ]
    assert got == [True, True, False, True, True]
    assert guard.redelivered == 1
    # a rejoin with the same generation id (the dev broker does that) reads again too
    guard.reset()
    assert guard.admit(voice, 15, 10, 2)
    assert not consumer._gap.get(voice)  # a jump (10 -> 14) is never taken for a gap
    assert sorted((iv.begin, iv.end - 1) for iv in consumer._gap[other]) == [(3, 5)]


def test_delivery_guard_forgets_offsets_below_the_committed_one_in_bulk() -> None:
    from faust.types import TP

    from metering.stream.acks import PRUNE_AT, DeliveryGuard

    guard = DeliveryGuard(["cpaas.voice"])
    tp = TP("cpaas.voice", 0)
    for offset in range(PRUNE_AT + 1):
        assert guard.admit(tp, offset, 4000, 1)
    # pruned once past PRUNE_AT: below the committed offset forgotten, the rest kept
    assert guard.admit(tp, 10, 4000, 1)
    assert not guard.admit(tp, 4050, 4000, 1)
    assert guard._prune_at[tp] == PRUNE_AT  # 97 kept: the next scan waits for PRUNE_AT
