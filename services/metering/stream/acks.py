"""What reaches Faust's offset bookkeeping for the input topics: acks and offset gaps.

Faust commits, per partition, the first run of consecutive offsets in its list of acked
offsets, into which it also merges the offset *gaps* it noted (offsets that never come:
compaction, transaction markers). Two of its habits break that for this worker, and both
were seen on the dev broker after restarts:

Fake gaps and doubled offsets
-----------------------------
After a rebalance Faust resumes fetching *before* it seeks to the committed offsets, so
records fetched from before the seek can arrive after it. Faust then takes the jump
from the committed offset to such a record for a gap, although those offsets come again
after the seek, and merges that "gap" into its acked list. Every offset in it is then
listed twice once its re-delivered record is acked, and Faust commits one offset per
commit: the worker seems stuck (it took minutes per thousand records). Worse, a gap
covers its own last record and offsets not applied yet, so a commit could pass records
still in flight, and a crash then would lose them.

:class:`DeliveryGuard` therefore keeps Faust's own gap-taking off the input topics and
notes gaps itself, from the offsets it admits: per partition and rebalance generation,
a record at or below the last admitted offset is a re-delivery (dropped; the first copy
is handled), and a jump past the next offset is a real gap, noted without the record
that ends it.

Partitions without a committed offset
-------------------------------------
Faust's "seek to the committed offsets" after recovery does not move a partition that
has none (aiokafka seeks only to a committed offset above 0). Records such a partition
delivered while Faust was still recovering are dropped by Faust, and the consumer's
position stays after them: the partition then waits, never committing, until a restart
(seen with ``rocksdb://`` on the dev broker: nothing committed in 120 s, the consumer's
position at the end of every input partition). :meth:`DeliveryGuard.install` makes that
seek rewind such input partitions to their beginning.

Acks of skipped records
-----------------------
Faust's stream acks a record it *skips*: one fetched before the latest rebalance
(``message.generation_id`` older than the consumer's) or while flow control is
suspended. The record was never handed to the worker; the consumer reads it again from
the committed offset after the rebalance. But the early ack already marks its offset as
done, so a commit before the re-read record is applied covers it, and a crash in that
window loses it (the next owner starts after it, and no checkpoint holds it).

:class:`AckGate` closes the window: on the input topics, only the acks the worker makes
itself, once the commit covering a record is done (:meth:`AckGate.release`), reach the
consumer. Every other ack of an input record is refused and counted; the record stays
unacked, so the committed offset cannot pass it until it was applied.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from faust.transport.drivers.aiokafka import ensure_aiokafka_TP
from faust.types import TP

__all__ = ["AckGate", "DeliveryGuard"]


class AckGate:
    """Lets only :meth:`release` ack records of ``topics`` on a Faust consumer."""

    def __init__(self, topics: Iterable[str], on_refused: Callable[[], None] | None = None) -> None:
        self.topics = frozenset(topics)
        self.refused = 0
        self._on_refused = on_refused
        self._open = False
        self._installed: set[int] = set()

    def install(self, consumer: Any) -> None:
        """Wrap ``consumer.ack`` (idempotent per consumer)."""
        if id(consumer) in self._installed:
            return
        original: Callable[[Any], bool] = consumer.ack

        def ack(message: Any) -> bool:
            if not self._open and message.topic in self.topics:
                self.refused += 1
                if self._on_refused is not None:
                    self._on_refused()
                return False
            return original(message)

        consumer.ack = ack
        self._installed.add(id(consumer))

    def release(self, message: Any, consumer: Any) -> bool:
        """Drop one reference of ``message``; when it was the last, ack it on
        ``consumer`` (True: the offset is now safe to commit)."""
        self._open = True
        try:
            return bool(message.ack(consumer))
        finally:
            self._open = False


class DeliveryGuard:
    """Admits each offset of an input topic-partition once per rebalance generation, and
    notes the real offset gaps in Faust's consumer (its own gap-taking is kept off the
    input topics by :meth:`install`)."""

    def __init__(self, topics: Iterable[str]) -> None:
        self.topics = frozenset(topics)
        self.redelivered = 0
        #: input partitions sent back to their beginning by the seek after recovery
        self.rewound = 0
        self._last: dict[TP, tuple[int | None, int]] = {}
        self._add_gap: Callable[[TP, int, int], Awaitable[None]] | None = None
        self._installed: set[int] = set()

    def install(self, consumer: Any) -> None:
        """Wrap ``consumer._add_gap`` (idempotent per consumer): calls for input topics
        are ignored, :meth:`admit` notes their gaps itself; and
        ``consumer.seek_to_committed``: input partitions without a committed offset (or
        at 0) are sent back to their beginning."""
        if id(consumer) in self._installed:
            return
        original: Callable[[TP, int, int], Awaitable[None]] = consumer._add_gap
        topics = self.topics

        async def add_gap(tp: TP, offset_from: int, offset_to: int) -> None:
            if tp.topic not in topics:
                await original(tp, offset_from, offset_to)

        consumer._add_gap = add_gap
        self._add_gap = original

        seek_to_committed: Callable[[], Awaitable[Mapping[TP, int | None]]]
        seek_to_committed = consumer.seek_to_committed

        async def seek_and_rewind() -> Mapping[TP, int | None]:
            committed = await seek_to_committed()
            rewind = [tp for tp, offset in committed.items() if tp.topic in topics and not offset]
            if rewind:
                await consumer._thread.seek_to_beginning(*(ensure_aiokafka_TP(tp) for tp in rewind))
                self.rewound += len(rewind)
            return committed

        consumer.seek_to_committed = seek_and_rewind
        self._installed.add(id(consumer))

    async def admit(
        self, tp: TP, offset: int, committed: int | None, generation: int | None
    ) -> bool:
        """Whether to handle the record at ``offset`` fetched in rebalance ``generation``
        (False: a re-delivery). Notes the gap before it, if any: after the last offset
        admitted in the generation or, for its first record of the partition, after the
        ``committed`` offset (Faust's copy; the consumer reads again from there after
        every rebalance)."""
        seen = self._last.get(tp)
        last = seen[1] if seen is not None and seen[0] == generation else None
        if last is not None and offset <= last:
            self.redelivered += 1
            return False
        self._last[tp] = (generation, offset)
        start = last + 1 if last is not None else committed
        if start is not None and offset > start and self._add_gap is not None:
            await self._add_gap(tp, start, offset - 1)
        return True
