"""Offsets: a consumer group's committed offsets (for benchmarks, tests and operators'
checks), and which offsets of a partition exist (:class:`OffsetProbe`, for the worker).

Committed offsets are read with OffsetFetch through a consumer that never joins the group
(the admin client's variant trips on the development broker, Tansu).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


async def committed_offsets(
    bootstrap: str, group: str, topics: Iterable[str], partitions: int, **client_options: Any
) -> dict[tuple[str, int], int]:
    """``{(topic, partition): committed offset}`` of ``group`` for partitions
    ``0..partitions-1`` of each topic; partitions without a committed offset are left
    out."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False, **client_options
    )
    await consumer.start()
    try:
        out = {}
        for topic in topics:
            for p in range(partitions):
                offset = await consumer.committed(TopicPartition(topic, p))
                if offset is not None:
                    out[(topic, p)] = offset
        return out
    finally:
        await consumer.stop()


@dataclass(frozen=True, slots=True)
class LogRange:
    """The broker's answer for a range of offsets of one partition."""

    #: the offsets in ``[start, covered)`` that hold a record, in order; every other
    #: offset of that range does not exist in the log
    offsets: list[int]
    #: ``end`` when the broker answered for the whole range; less when the time ran out
    #: first (the start: nothing is known)
    covered: int
    #: the partition's first offset, when the range starts below it (retention deleted
    #: those records); None otherwise
    log_start: int | None = None


class OffsetProbe:
    """Which offsets of a partition the broker has: the broker's word on a missing offset.

    A consumer of its own (no group, no commits, started on first use and kept) reads a
    range of one partition and reports the offsets it got. Offsets of the range that it
    did not get do not exist in the broker's log (compaction removed their records, or
    they hold transaction markers): a consumer never receives them. Meant for rare calls
    (a worker asks only when records past an offset arrived without it, or its
    consumer's position stayed past it), so each call assigns its one partition and
    unassigns it afterwards (nothing is fetched between calls). ``client_options`` are
    the worker's (TLS, SASL); use the isolation level the worker's consumer reads with.
    """

    def __init__(self, bootstrap: str, **client_options: Any) -> None:
        self.bootstrap = bootstrap
        self.client_options = client_options
        self._consumer: Any = None

    async def existing(
        self, topic: str, partition: int, start: int, end: int, timeout_s: float = 2.0
    ) -> LogRange:
        """What the broker has of ``[start, end)`` of one partition (:class:`LogRange`).
        Errors of the consumer propagate (the next call starts a new one)."""
        from aiokafka import TopicPartition

        if end <= start:
            return LogRange([], start)
        consumer = await self._started()
        tp = TopicPartition(topic, partition)
        found: list[int] = []
        covered = start
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        log_start: int | None = None
        try:
            consumer.assign([tp])
            first = int((await consumer.beginning_offsets([tp]))[tp])
            if first > start:
                log_start = first  # retention deleted the records below it
            consumer.seek(tp, max(start, first))
            while covered < end:
                left = deadline - loop.time()
                if left <= 0:
                    break
                got = await consumer.getmany(tp, timeout_ms=int(left * 1000) + 1)
                for record in got.get(tp, ()):
                    if record.offset < covered:
                        continue
                    if record.offset >= end:
                        covered = end
                        break
                    found.append(record.offset)
                    covered = record.offset + 1
        except BaseException:
            await self.close()
            raise
        consumer.unsubscribe()
        return LogRange(found, covered, log_start)

    async def _started(self) -> Any:
        if self._consumer is None:
            from aiokafka import AIOKafkaConsumer

            consumer = AIOKafkaConsumer(
                bootstrap_servers=self.bootstrap,
                group_id=None,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                **self.client_options,
            )
            await consumer.start()
            self._consumer = consumer
        return self._consumer

    async def close(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await consumer.stop()
