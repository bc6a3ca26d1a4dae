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

:class:`DeliveryGuard` therefore keeps Faust's gap-taking off the input topics, and
admits each offset once per partition and rebalance generation (a second copy is
dropped; the first is handled). It notes no gaps at all: a jump in the offsets it sees
cannot be told from records Faust dropped and reads again later (noting such a jump as
a gap let a commit pass records never applied, which can explain one Interaction
missing from a statement in a SIGKILL test). The cost: where the broker really has no record (a
compacted ``cpaas.accounts``, transaction markers), the partition's committed offset
stops before the hole; nothing is lost, the records after it are read again after a
restart and skipped as applied.

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

from metering.stream.trace import trace

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


PRUNE_AT = 4096
"""Admitted offsets of a partition kept before those below the committed offset go."""


class DeliveryGuard:
    """Admits each offset of an input topic-partition once per rebalance generation and
    keeps Faust's gap-taking off the input topics (:meth:`install`)."""

    def __init__(self, topics: Iterable[str]) -> None:
        self.topics = frozenset(topics)
        self.redelivered = 0
        #: input partitions sent back to their beginning by the seek after recovery
        self.rewound = 0
        self._seen: dict[TP, tuple[int | None, set[int]]] = {}
        #: per partition, the size of its admitted set at which it is pruned next
        self._prune_at: dict[TP, int] = {}
        self._installed: set[int] = set()

    def install(self, consumer: Any) -> None:
        """Wrap ``consumer._add_gap`` (idempotent per consumer): calls for input topics
        are ignored; and
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

        seek_to_committed: Callable[[], Awaitable[Mapping[TP, int | None]]]
        seek_to_committed = consumer.seek_to_committed

        async def seek_and_rewind() -> Mapping[TP, int | None]:
            committed = await seek_to_committed()
            rewind = [tp for tp, offset in committed.items() if tp.topic in topics and not offset]
            if rewind:
                await consumer._thread.seek_to_beginning(*(ensure_aiokafka_TP(tp) for tp in rewind))
                self.rewound += len(rewind)
            trace(
                "seek committed=%s rewound=%s",
                {f"{tp.topic}/{tp.partition}": o for tp, o in sorted(committed.items())
                 if tp.topic in topics},
                sorted(f"{tp.topic}/{tp.partition}" for tp in rewind),
            )  # fmt: skip
            return committed

        consumer.seek_to_committed = seek_and_rewind
        self._installed.add(id(consumer))

    def reset(self) -> None:
        """Forget every admitted offset: called on each revocation and assignment, because
        the consumer reads again from the committed offsets then, and a group can rejoin
        with the same generation id (the dev broker does)."""
        self._seen.clear()
        self._prune_at.clear()

    def admit(self, tp: TP, offset: int, committed: int | None, generation: int | None) -> bool:
        """Whether to handle the record at ``offset`` fetched in rebalance ``generation``
        (False: this offset was already admitted in the generation). Offsets below
        ``committed`` (Faust's copy) are forgotten: they can no longer be acked."""
        seen = self._seen.get(tp)
        if seen is None or seen[0] != generation:
            seen = self._seen[tp] = (generation, set())
        offsets = seen[1]
        if offset in offsets:
            self.redelivered += 1
            return False
        offsets.add(offset)
        if committed and len(offsets) > self._prune_at.get(tp, PRUNE_AT):
            offsets.difference_update([o for o in offsets if o < committed])
            # while the committed offset stands still, scan again only once the set
            # doubled: pruning stays amortised O(1) per record
            self._prune_at[tp] = max(PRUNE_AT, 2 * len(offsets))
        return True
