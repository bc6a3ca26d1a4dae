"""What reaches Faust's offset bookkeeping for the input topics: acks, offset gaps,
read offsets and commits.

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
missing from a statement in a SIGKILL test).

Records lost on the way, and commits past them
----------------------------------------------
Faust can lose an input record between fetching and the agent: its fetch loop moves a
partition's *read offset* on when it puts a record in the stream's queue, the queue is
cleared when the flow resumes after a rebalance, and a fetch loop still iterating
records fetched before Faust's seek moves the read offset past the records that seek
reads again, so Faust drops the re-read copy below its read offset. Its commit then
passes the lost record: it commits the first run of acked offsets when the committed
offset's own record is not acked (its check is ``min(acked) - committed > 1``) and
without any check when nothing is committed. A SIGKILL test lost ``smartflows/3@34`` this
way (offsets 23-33 read before the seek, 35-46 after it; 2 of 15 runs of test 2), and
checkpoint floors (the highest applied offset) had passed it too, so the restarted
worker skipped it as applied.

The guard now makes Faust's read offsets unknown for input topics (every fetched input
record reaches the worker; the guard drops copies itself), lets Faust commit only a run
of acked offsets starting exactly at the committed offset, and tracks per partition the
*frontier*: the lowest offset, from the committed one on, not admitted yet. Checkpoint
floors never pass it (:class:`~metering.stream.pipeline.Pipeline`), and when records
past it waited :data:`HEAL_AFTER_S` for it, the partition is sought back to the frontier
(``metering_partition_heals_total``; again after 1, 2 ... up to 60 s while it stays
missing); meanwhile the records past it wait in the aligner, up to :data:`GAP_HOLD_S`.

Offsets the broker does not have
--------------------------------
Where the broker's log has no record at an offset (a compacted ``cpaas.accounts``,
transaction markers) the record never comes, and reading again cannot tell that from a
record lost on the way. So before seeking back the worker asks the broker which offsets
from the frontier to the highest one received exist
(:class:`~metering.kafka.offsets.OffsetProbe`, a consumer of its own);
:meth:`DeliveryGuard.learn` takes the others for holes: the frontier and Faust's commits
pass them and the records past them stop waiting (``metering_offset_holes_total``).
Only a record the broker has and the worker lacks is read again. Without an answer
(the broker unreachable) the partition is read again as before, and the answer is asked
for again at the next seek back.

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

import time
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from faust.transport.drivers.aiokafka import ensure_aiokafka_TP
from faust.types import TP

from metering.stream.trace import trace

__all__ = ["AckGate", "Admit", "DeliveryGuard"]


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


class _InputBlindOffsets(defaultdict[TP, int | None]):
    """Faust's read offsets, reported as unknown for input topics: its fetch loop then
    delivers every fetched input record (the guard drops copies itself)."""

    topics: frozenset[str] = frozenset()

    def __getitem__(self, tp: TP) -> int | None:
        if tp.topic in self.topics:
            return None
        return super().__getitem__(tp)


HEAL_AFTER_S = 0.5
"""How long records past a missing offset wait before the partition is read again from
that offset (doubling, up to :data:`HEAL_MAX_S`, while it stays missing)."""
HEAL_MAX_S = 60.0
TAIL_AFTER_S = 3.0
"""How long the consumer's position may stay past the frontier, with nothing admitted
while the worker is quiet, before the records in between count as lost (a lost *tail*:
no later record comes to show the gap)."""
GAP_HOLD_S = 30.0
"""How long records past a missing offset are held back (not applied) while it is read
again; past that (the broker did not say it is a hole, nor did the record come) they are
applied."""


@dataclass(slots=True)
class _Partition:
    """What the guard knows of one input partition in the current generation."""

    #: offsets admitted in this generation (once the head is fixed, those below
    #: ``frontier - 1`` are pruned: ``frontier`` alone says they were admitted)
    admitted: set[int] = field(default_factory=set)
    #: where reading started: the committed offset from the generation's seek (or the
    #: partition's beginning when nothing was committed); before that seek, the lowest
    #: offset admitted
    head: int | None = None
    #: ``head`` comes from the seek (not from the records seen so far)
    fixed: bool = False
    #: the lowest offset at or above ``head`` not admitted
    frontier: int = 0
    #: the highest offset admitted
    top: int = -1
    #: monotonic time since which records above ``frontier`` wait for it (None: none)
    gap_since: float | None = None
    #: when the current gap opened (``gap_since`` moves on with each seek back)
    gap_opened: float | None = None
    #: seconds to wait before the next seek back (doubles while the gap stays)
    backoff: float = HEAL_AFTER_S
    #: offsets the broker does not have (:meth:`DeliveryGuard.learn`): start -> end
    #: (exclusive) of each run of them
    holes: dict[int, int] = field(default_factory=dict)
    #: the highest offset the consumer handed to Faust (its position - 1), when past the
    #: frontier with nothing admitted since ``tail_since`` (:meth:`DeliveryGuard.fetched`)
    fetched: int = -1
    tail_since: float | None = None

    def run_end(self, n: int, present: set[int] | dict[int, Any]) -> int:
        """The first offset from ``n`` on that is neither in ``present`` nor a hole."""
        holes = self.holes
        while True:
            if n in present:
                n += 1
            elif (end := holes.get(n)) is not None:
                n = end  # offsets the broker does not have: nothing to wait for
            else:
                return n

    def close_gap_if_whole(self) -> bool:
        """Close the gap (True) when nothing is missing any more below the highest offset
        admitted or fetched."""
        if self.frontier <= max(self.top, self.fetched):
            return False
        self.gap_since = self.gap_opened = None
        self.backoff = HEAL_AFTER_S
        self.fetched = -1
        return True

    def advance(self) -> None:
        n = self.frontier = self.run_end(self.frontier, self.admitted)
        if self.fixed and len(self.admitted) > 2 * PRUNE_AT:
            self.admitted = {o for o in self.admitted if o >= n - 1}


PRUNE_AT = 4096
"""Admitted offsets of a partition kept, about, below which the set is pruned."""


class Admit(Enum):
    """What :meth:`DeliveryGuard.admit` decided for one record."""

    OK = "ok"
    COPY = "copy"  # admitted before in this generation, or below the committed offset


class DeliveryGuard:
    """Admits each offset of an input topic-partition once per rebalance generation,
    tracks the *frontier* (the lowest offset, from the committed one on, not admitted
    yet), and lets Faust commit only runs of acked offsets that start at the committed
    offset (:meth:`install`).

    Checkpoint floors stay below the frontier (:meth:`frontier`), so a record lost on the
    way is never taken for applied; when records above the frontier waited for it, the
    partition is sought back to the frontier (:meth:`to_heal`) and the record comes
    again.
    """

    def __init__(self, topics: Iterable[str]) -> None:
        self.topics = frozenset(topics)
        #: records refused as copies (fetched again: below the frontier)
        self.redelivered = 0
        #: input partitions sent back to their beginning by the seek after recovery
        self.rewound = 0
        #: seeks back to a partition's frontier after a record past it
        self.heals = 0
        #: offsets found missing from the broker's log (:meth:`learn`)
        self.holes = 0
        self._parts: dict[TP, _Partition] = {}
        self._installed: set[int] = set()

    def install(self, consumer: Any) -> bool:
        """Change, on ``consumer`` (idempotent per consumer; True when it changed it),
        before its fetch loop starts (the loop reads the read offsets it started with):

        * ``_read_offset``: reads as unknown for input topics, so Faust's fetch loop no
          longer drops input records below its read offset. That offset moves on when a
          record is put in the stream's queue; the queue is cleared when the flow resumes
          after a rebalance, and a fetch loop still iterating records fetched before
          Faust's seek moves it past the records the seek reads again: they were
          dropped, and a later commit passed them (seen on the dev broker);
        * ``_add_gap``: ignored for input topics (Faust takes records fetched before and
          after its seek for a gap);
        * ``seek_to_committed``: input partitions without a committed offset (or at 0)
          are sent back to their beginning; each input partition's head is noted and
          admission opens (:meth:`admit`);
        * ``_new_offset`` (what Faust commits) for input topics: the run of acked offsets
          starting exactly at the committed offset (the head when none is committed).
          Faust's own version commits the first run of acked offsets even when the
          committed offset itself is not acked (it checks ``min(acked) - committed >
          1``, and nothing without a committed offset).
        """
        if id(consumer) in self._installed:
            return False
        topics = self.topics
        offsets = consumer._read_offset
        if not isinstance(offsets, _InputBlindOffsets):
            blind = _InputBlindOffsets(offsets.default_factory, offsets)
            blind.topics = topics
            consumer._read_offset = blind

        original: Callable[[TP, int, int], Awaitable[None]] = consumer._add_gap

        async def add_gap(tp: TP, offset_from: int, offset_to: int) -> None:
            if tp.topic not in topics:
                await original(tp, offset_from, offset_to)

        consumer._add_gap = add_gap

        seek_to_committed: Callable[[], Awaitable[Mapping[TP, int | None]]]
        seek_to_committed = consumer.seek_to_committed

        async def seek_and_rewind() -> Mapping[TP, int | None]:
            committed = await seek_to_committed()
            mine = {tp: o for tp, o in committed.items() if tp.topic in topics}
            rewind = [tp for tp, offset in mine.items() if not offset]
            starts: Mapping[Any, int] = {}
            if rewind:
                thread = consumer._thread
                await thread.seek_to_beginning(*(ensure_aiokafka_TP(tp) for tp in rewind))
                starts = await thread.earliest_offsets(*rewind)
                self.rewound += len(rewind)
            self.start(
                {tp: offset if offset else int(starts.get(tp) or 0) for tp, offset in mine.items()}
            )
            trace("seek rewound=%s", sorted(f"{tp.topic}/{tp.partition}" for tp in rewind))
            return committed

        consumer.seek_to_committed = seek_and_rewind

        new_offset: Callable[[TP], int | None] = consumer._new_offset

        def safe_new_offset(tp: TP) -> int | None:
            if tp.topic not in topics:
                return new_offset(tp)
            return self._commit_offset(consumer, tp)

        consumer._new_offset = safe_new_offset
        self._installed.add(id(consumer))
        return True

    def _commit_offset(self, consumer: Any, tp: TP) -> int | None:
        """The offset Faust may commit for input partition ``tp`` (None: nothing new)."""
        acked: list[int] = consumer._acked[tp]
        part = self._parts.get(tp)
        if not acked or part is None:
            return None
        committed = consumer._committed_offset[tp]
        head = committed if committed is not None else part.head if part.fixed else None
        if head is None:  # nothing committed and the seek not done yet: wait for it
            return None
        acked.sort()
        index: set[int] = consumer._acked_index[tp]
        low = bisect_left(acked, head)
        if low:  # acked below the committed offset: nothing to do with them
            index.difference_update(acked[:low])
            del acked[:low]
        n = part.run_end(head, index)  # Faust keeps ``index`` == set(acked)
        if n == head:
            return None
        i = bisect_left(acked, n)
        index.difference_update(acked[:i])
        del acked[:i]
        if part.holes:
            part.holes = {h: e for h, e in part.holes.items() if e > n}
        return n

    def start(self, heads: Mapping[TP, int], now: float | None = None) -> None:
        """The generation's seek ran: each input partition's head is its committed offset
        (or its beginning), whatever was admitted before."""
        now = time.monotonic() if now is None else now
        for tp, head in heads.items():
            part = self._parts.get(tp)
            if part is None:
                part = self._parts[tp] = _Partition()
            part.head = part.frontier = head
            part.fixed = True
            part.advance()
            if part.frontier <= part.top and part.gap_since is None:
                part.gap_since = part.gap_opened = now  # admitted above a missing one
        trace("seek heads=%s", {f"{tp.topic}/{tp.partition}": h for tp, h in sorted(heads.items())})

    def reset(self) -> None:
        """Forget every partition: called on each revocation and assignment (the consumer
        reads again from the committed offsets then; a group can rejoin with the same
        generation id, as the dev broker does)."""
        self._parts.clear()

    def admit(self, tp: TP, offset: int, now: float) -> Admit:
        """Whether to handle the record at ``offset`` of input partition ``tp``: each
        offset once per generation, in any order (records fetched before Faust's seek to
        the committed offsets come again after it)."""
        part = self._parts.get(tp)
        if part is None:
            part = self._parts[tp] = _Partition()
        if offset in part.admitted or (part.fixed and offset < part.frontier):
            self.redelivered += 1
            return Admit.COPY
        part.admitted.add(offset)
        if not part.fixed and (part.head is None or offset < part.head):
            part.head = part.frontier = offset  # before the seek: from the lowest so far
        if offset > part.top:
            part.top = offset
        part.tail_since = None
        part.advance()
        if not part.close_gap_if_whole() and part.gap_since is None:
            part.gap_since = part.gap_opened = now
        return Admit.OK

    def fetched(self, tp: TP, position: int | None, now: float) -> None:
        """The consumer's fetch position of ``tp`` (the next offset it hands to Faust),
        read while the worker is quiet (no step running, nothing held). Records below it
        were handed to Faust; if it stays past the frontier for :data:`TAIL_AFTER_S` with
        nothing admitted, the records in between were lost on the way, and no later record
        will show it (the end of the partition): the partition gets a gap up to the
        position, which :meth:`to_heal` reports at once (seen on the dev broker: a worker
        of a group of two, its consumer at 822 of ``cpaas.voice[3]``, 715 received)."""
        part = self._parts.get(tp)
        if part is None or not part.fixed or part.gap_since is not None:
            return
        if position is None or position <= part.frontier:
            part.tail_since = None
            return
        if part.tail_since is None:
            part.tail_since = now
            return
        if now - part.tail_since >= TAIL_AFTER_S:
            part.tail_since = None
            part.fetched = position - 1
            part.gap_opened = now
            part.gap_since = now - part.backoff  # due now
            trace("tail %s/%d: frontier %d, position %d", tp.topic, tp.partition,
                  part.frontier, position)  # fmt: skip

    def to_heal(self, now: float) -> list[tuple[TP, int, int]]:
        """Partitions whose records above a missing offset waited for it (from
        :data:`HEAL_AFTER_S`, doubling each time up to :data:`HEAL_MAX_S`), as
        ``(tp, frontier, top)``: the missing offset and the highest one admitted. The
        caller asks the broker which offsets of ``[frontier, top]`` exist
        (:meth:`learn`), then seeks back to the frontier if a record it has is still
        missing (:meth:`sought_back`): a record lost on the way comes again."""
        out: list[tuple[TP, int, int]] = []
        for tp, part in self._parts.items():
            since = part.gap_since
            if since is None or now - since < part.backoff:
                continue
            part.gap_since = now
            part.backoff = min(2 * part.backoff, HEAL_MAX_S)
            out.append((tp, part.frontier, max(part.top, part.fetched)))
        return out

    def learn(self, tp: TP, start: int, existing: Iterable[int], covered: int) -> int:
        """The broker's word on ``[start, covered)`` of ``tp``: only the ``existing``
        offsets of it are in its log. The others are holes (compaction, transaction
        markers): the frontier and Faust's commits pass them, and records past them stop
        waiting. Returns the number of offsets found to be holes."""
        part = self._parts.get(tp)
        if part is None or not part.fixed or covered <= start:
            return 0
        if part.head is not None:
            start = max(start, part.head)
        known = {o for o in existing if start <= o < covered}
        known.update(o for o in part.admitted if start <= o < covered)
        found = 0
        prev = start
        for o in [*sorted(known), covered]:
            if o > prev and part.holes.get(prev) != o:  # (not known already)
                part.holes[prev] = o
                found += o - prev
            prev = o + 1
        if found:
            part.advance()
            part.close_gap_if_whole()
            self.holes += found
            trace("holes %s/%d: %s", tp.topic, tp.partition, sorted(part.holes.items()))
        return found

    def missing(self, tp: TP) -> int | None:
        """The offset of ``tp`` that records past it still wait for (None: no gap)."""
        part = self._parts.get(tp)
        if part is None or part.gap_since is None:
            return None
        return part.frontier

    def sought_back(self, tp: TP, offset: int) -> None:
        """Count a seek of ``tp`` back to ``offset`` (its frontier)."""
        self.heals += 1
        trace("heal %s/%d: seek back to %d", tp.topic, tp.partition, offset)

    def holds(self, now: float) -> dict[tuple[str, int], int]:
        """(topic, partition) -> frontier, for the partitions whose records past the
        frontier must wait: a record there is missing and being read again (for at most
        :data:`GAP_HOLD_S`)."""
        return {
            (tp.topic, tp.partition): part.frontier
            for tp, part in self._parts.items()
            if part.gap_opened is not None and now - part.gap_opened < GAP_HOLD_S
        }

    def frontier(self, tp: TP) -> int | None:
        """The offset of ``tp`` below which every record was admitted (None: none
        admitted in this generation). Before the generation's seek fixed the head, the
        lowest offset admitted: records below it may be missing."""
        part = self._parts.get(tp)
        if part is None or part.head is None:
            return None
        return part.frontier if part.fixed else part.head
