"""Offset holes on the development broker, for tests of the worker's delivery guard.

On Apache Kafka a partition's log has offsets without a record a consumer can read where
compaction removed records or transaction markers sit. Neither happens on Tansu (no
compaction, no transactional producer), but Tansu stores a record batch whose offset
deltas skip a value as it is, and the skipped offset then has no record: a fetch from it
returns the next one. :func:`produce_with_holes` sends such a batch. (Apache Kafka
rewrites or rejects such batches, so these tests run on the dev broker only.)
"""

from __future__ import annotations

import time
from collections.abc import Sequence


async def produce_with_holes(
    bootstrap: str,
    topic: str,
    partition: int,
    records: Sequence[tuple[bytes | None, bytes]],
    deltas: Sequence[int],
) -> int:
    """Append one batch of ``records`` (key, value) to ``topic``/``partition`` at offset
    deltas ``deltas`` (increasing, from 0; a skipped delta becomes a hole). Returns the
    batch's base offset."""
    from aiokafka import TopicPartition
    from aiokafka.client import AIOKafkaClient
    from aiokafka.protocol.produce import ProduceRequest
    from aiokafka.record.default_records import DefaultRecordBatchBuilder

    assert len(records) == len(deltas) and list(deltas) == sorted(set(deltas)) and deltas[0] == 0
    builder = DefaultRecordBatchBuilder(
        magic=2, compression_type=0, is_transactional=False, producer_id=-1,
        producer_epoch=-1, base_sequence=-1, batch_size=1 << 24,
    )  # fmt: skip
    now = int(time.time() * 1000)
    for (key, value), delta in zip(records, deltas, strict=True):
        assert builder.append(delta, timestamp=now, key=key, value=value, headers=[])
    client = AIOKafkaClient(bootstrap_servers=bootstrap)
    await client.bootstrap()
    try:
        await client.force_metadata_update()
        leader = client.cluster.leader_for_partition(TopicPartition(topic, partition))
        request = ProduceRequest(
            transactional_id=None, required_acks=-1, timeout=10_000,
            topics=[(topic, [(partition, bytes(builder.build()))])],
        )  # fmt: skip
        response = await client.send(leader, request)
    finally:
        await client.close()
    [(_, [(_, error, base, *_)])] = response.topics
    assert error == 0, f"produce to {topic}/{partition} failed: error {error}"
    return int(base)
