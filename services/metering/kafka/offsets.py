"""A consumer group's committed offsets (for benchmarks, tests and operators' checks).

Read with OffsetFetch through a consumer that never joins the group (the admin client's
variant trips on the development broker, Tansu).
"""

from __future__ import annotations

from collections.abc import Iterable
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
