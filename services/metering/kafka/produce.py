"""Publishing a JSON-lines event log to the input topics (``metering produce``).

Each line is one CloudEvent (the format of ``metering simulate`` and ``metering replay``,
plain or ``.gz``). It is routed by its ``type`` to the topic of SPEC section 2
(``metering.events.models.TYPE_TOPIC``) with the record key = its ``subject`` (the account
id) as UTF-8, and the line's bytes as the value, unchanged.

Bad lines are published too, never dropped: the SPEC makes the *service* dead-letter bad
input (with the original bytes and a reason), so the producer only forwards it. A line
that is not a JSON object, has no string ``type`` or an unknown ``type``, or has no string
``subject``, goes to the *bad-lines topic* (``--bad-lines-topic``, default
``cpaas.messaging``) with a null key; the worker rejects it there with the same reason a
replay of the log gives (``invalid_json``, ``schema`` or ``unknown_type``: the schema
check comes before the topic check). Lines with a known type and a subject go to their own
topic even when the rest of the event is invalid, and are dead-lettered there.
``cpaas.accounts`` cannot be the bad-lines topic: it is compacted, and compacted topics
refuse records without a key.

Only the cheap envelope fields are parsed here (``type`` and ``subject``, with msgspec);
validation is the worker's job.

Throughput: records are appended straight into one record batch per topic-partition
(``producer.create_batch`` / ``send_batch``, batches up to 1 MiB, sent when full or 5 ms
old), partitioned like the Java client (murmur2 of the key, so co-partitioning holds
with any other producer). That is 3-4x faster than ``producer.send`` per record,
which costs a future and a partitioner call each. The producer is a plain one
(``acks="all"``, no idempotence: see :mod:`metering.kafka.broker` why); aiokafka keeps
one request in flight per broker, so records keep the log's order per account and topic.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import sys
import time
from collections import Counter
from collections.abc import AsyncIterable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from metering.events.models import TYPE_TOPIC
from metering.kafka.topics import (
    ACCOUNTS_TOPIC,
    INPUT_TOPICS,
    KafkaConfigError,
    TopicMismatchError,
    bootstrap_from_env,
    ensure_topics,
    kafka_client_options,
    topic_specs,
)

__all__ = [
    "DEFAULT_BAD_LINES_TOPIC",
    "ProduceSummary",
    "add_arguments",
    "main",
    "make_producer",
    "produce_lines",
    "produce_log",
    "route_line",
    "run_cli",
]

DEFAULT_BAD_LINES_TOPIC = "cpaas.messaging"
PROGRESS_EVERY = 10_000
LINGER_MS = 5.0
YIELD_EVERY = 500
"""Lines between yields to the event loop, so the sender task runs while we produce."""
MAX_BATCH_BYTES = 1 << 20


class _Head(msgspec.Struct):
    type: Any = None
    subject: Any = None


_decode_head = msgspec.json.Decoder(_Head).decode


def check_bad_lines_topic(topic: str) -> str:
    if topic not in INPUT_TOPICS:
        raise ValueError(
            f"bad-lines topic {topic!r} must be an input topic the worker reads: "
            f"{', '.join(t for t in INPUT_TOPICS if t != ACCOUNTS_TOPIC)}"
        )
    if topic == ACCOUNTS_TOPIC:
        raise ValueError(f"{ACCOUNTS_TOPIC} is compacted and refuses records without a key")
    return topic


def route_line(
    line: bytes, bad_lines_topic: str = DEFAULT_BAD_LINES_TOPIC
) -> tuple[str, bytes | None]:
    """(topic, key) for one log line (see the module doc)."""
    try:
        head = _decode_head(line)
    except msgspec.DecodeError:
        return bad_lines_topic, None
    etype, subject = head.type, head.subject
    topic = TYPE_TOPIC.get(etype) if isinstance(etype, str) else None
    if topic is None or not isinstance(subject, str):
        return bad_lines_topic, None
    return topic, subject.encode()


@dataclass(slots=True)
class ProduceSummary:
    lines: int = 0
    """Records sent (and acknowledged, once the run is over)."""
    bytes: int = 0
    bad_lines: int = 0
    """Lines sent to the bad-lines topic with a null key."""
    topics: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        return self.lines / self.seconds if self.seconds > 0 else 0.0

    def render(self) -> str:
        rows = [f"records sent    {self.lines:>12,}  ({self.bytes / 1e6:,.1f} MB)"]
        for topic, n in sorted(self.topics.items()):
            rows.append(f"  {topic:<22}{n:>10,}")
        rows.append(
            f"bad lines       {self.bad_lines:>12,}  (null key, dead-lettered by the worker)"
        )
        rows.append(f"elapsed         {self.seconds:>11.1f}s  ({self.rate:,.0f} events/s)")
        return "\n".join(rows)

    def to_dict(self) -> dict[str, Any]:
        return {
            "lines": self.lines,
            "bytes": self.bytes,
            "bad_lines": self.bad_lines,
            "topics": dict(sorted(self.topics.items())),
            "seconds": round(self.seconds, 3),
            "events_per_second": round(self.rate),
        }


def make_producer(bootstrap: str, client_options: dict[str, Any] | None = None) -> Any:
    """The plain, throughput-oriented ``AIOKafkaProducer`` used here (not started)."""
    from aiokafka import AIOKafkaProducer

    return AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        client_id="metering-produce",
        acks="all",
        enable_idempotence=False,
        linger_ms=5,
        max_batch_size=MAX_BATCH_BYTES,
        **(client_options or {}),
    )


class _Batches:
    """One open record batch per (topic, partition), handed to ``producer.send_batch``
    when full, when older than ``linger_s`` (a background task) or on :meth:`close`.

    Building batches directly (instead of ``producer.send`` per record) saves a future
    and a partitioner call per record: 3-4x the throughput. Partitions are chosen as
    the Java client and aiokafka's default partitioner do (murmur2 of the key modulo the
    partition count, so co-partitioning holds with other producers); records without a
    key stick to one random partition per batch. All sends go through one FIFO lock, so
    the batches of a partition are sent in the order they were filled.
    """

    MAX_PENDING = 64

    def __init__(self, producer: Any, linger_s: float) -> None:
        self._producer = producer
        self._linger_s = linger_s
        self._open: dict[tuple[str, int], tuple[Any, float]] = {}
        self._partitions: dict[str, list[int]] = {}
        self._keyed: dict[tuple[str, bytes], int] = {}
        self._sticky: dict[str, int] = {}
        self._lock = asyncio.Lock()
        self._pending: list[asyncio.Future[Any]] = []
        self._settling: asyncio.Future[Any] | None = None
        self._error: BaseException | None = None
        self._lingerer: asyncio.Task[None] | None = None
        self._closing = False
        self._sleeping = False

    def start(self) -> None:
        self._lingerer = asyncio.get_running_loop().create_task(self._linger())

    async def _partition(self, topic: str, key: bytes | None) -> int:
        parts = self._partitions.get(topic)
        if parts is None:
            parts = sorted(await self._producer.partitions_for(topic))
            if not parts:
                raise RuntimeError(f"topic {topic} has no partitions")
            self._partitions[topic] = parts
        if key is None:
            p = self._sticky.get(topic)
            if p is None:
                p = self._sticky[topic] = random.choice(parts)
            return p
        p = self._keyed.get((topic, key))
        if p is None:
            from aiokafka.partitioner import murmur2

            p = self._keyed[(topic, key)] = parts[(murmur2(key) & 0x7FFFFFFF) % len(parts)]
        return p

    async def add(self, topic: str, key: bytes | None, value: bytes) -> None:
        if self._error is not None:
            raise self._error
        while True:
            tp = (topic, await self._partition(topic, key))
            entry = self._open.get(tp)
            fresh = entry is None
            if entry is None:
                entry = self._open[tp] = (self._producer.create_batch(), time.monotonic())
            if entry[0].append(timestamp=None, key=key, value=value) is not None:
                return
            if fresh:
                del self._open[tp]
                raise ValueError(f"a record of {len(value):,} bytes does not fit in a batch")
            # Full: send it and try again. A key-less record then moves to another
            # partition, whose open batch (keyed records) it must join, not replace.
            del self._open[tp]
            await self._send(tp, entry[0])

    async def flush(self) -> None:
        """Hand every open batch to the producer now (before an idle wait)."""
        for tp in list(self._open):
            entry = self._open.pop(tp, None)
            if entry is not None:
                await self._send(tp, entry[0])

    async def _send(self, tp: tuple[str, int], batch: Any) -> None:
        topic, partition = tp
        if self._sticky.get(topic) == partition:
            del self._sticky[topic]
        async with self._lock:
            future = await self._producer.send_batch(batch, topic, partition=partition)
        self._pending.append(future)
        if len(self._pending) >= self.MAX_PENDING:
            await self._settle(final=False)

    async def _settle(self, final: bool) -> None:
        """Await the previous chunk of delivery futures and start a new one (two chunks in
        flight); ``final``: await everything. Each chunk is swapped in before any await,
        so concurrent callers (the lingerer) never drop one."""
        chunk = asyncio.gather(*self._pending) if self._pending else None
        self._pending = []
        previous, self._settling = self._settling, chunk
        if previous is not None:
            await previous
        if final and self._settling is not None:
            last, self._settling = self._settling, None
            await last

    async def _linger(self) -> None:
        try:
            while not self._closing:
                self._sleeping = True
                try:
                    await asyncio.sleep(self._linger_s)
                finally:
                    self._sleeping = False
                limit = time.monotonic() - self._linger_s
                for tp, (batch, born) in list(self._open.items()):
                    if born <= limit and self._open.get(tp, (None,))[0] is batch:
                        del self._open[tp]
                        await self._send(tp, batch)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self._error = exc

    async def close(self) -> None:
        """Send what is left and wait until every batch is acknowledged."""
        await self._stop_lingerer(abort=False)
        if self._error is not None:
            raise self._error
        await self.flush()
        await self._settle(final=True)

    async def abort(self) -> None:
        """Stop without sending the rest (after an error or a cancellation)."""
        await self._stop_lingerer(abort=True)
        if self._settling is not None:
            self._settling.cancel()

    async def _stop_lingerer(self, abort: bool) -> None:
        # Never cancel the lingerer while it holds a batch it took out of _open: that
        # batch would be lost. Cancel it only while it sleeps; else let it finish.
        self._closing = True
        task, self._lingerer = self._lingerer, None
        if task is None:
            return
        if abort or self._sleeping:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def produce_lines(
    lines: Iterable[bytes] | AsyncIterable[bytes],
    producer: Any,
    *,
    bad_lines_topic: str = DEFAULT_BAD_LINES_TOPIC,
    rate: float | None = None,
    summary: ProduceSummary | None = None,
    progress: Callable[[ProduceSummary], None] | None = None,
    linger_ms: float = LINGER_MS,
) -> int:
    """Send every line with a started ``producer`` (an ``AIOKafkaProducer``, e.g. from
    :func:`make_producer`); return the number of lines sent.

    The topics must exist already (:func:`ensure_topics`): asking for the partitions of a
    missing topic makes a broker that auto-creates topics create it with its default
    partition count. Returns once every record is acknowledged (a delivery error is
    raised). ``rate``
    paces the stream to that many events per second (None = as fast as possible; open
    batches are flushed before each pause). A record waits at most about ``linger_ms``
    before its batch is sent. ``summary`` (optional) is updated as lines go;
    ``progress(summary)`` is called every 10,000 lines.
    """
    check_bad_lines_topic(bad_lines_topic)
    if rate is not None and rate <= 0:
        raise ValueError(f"rate must be > 0 events/s, got {rate}")
    s = summary if summary is not None else ProduceSummary()
    started = time.perf_counter()
    base_seconds = s.seconds
    batches = _Batches(producer, linger_ms / 1000)
    batches.start()
    add = batches.add
    sent = 0
    bad = 0
    size = 0
    counts: Counter[str] = Counter()
    # With a rate, check the clock about every 20 ms of traffic.
    pace_every = max(1, int(rate / 50)) if rate else 0

    def fold() -> None:
        nonlocal bad, size, counts
        s.bad_lines += bad
        s.bytes += size
        s.topics.update(counts)
        bad = size = 0
        counts = Counter()

    async def one(line: bytes) -> None:
        nonlocal sent, bad, size
        topic, key = route_line(line, bad_lines_topic)
        if key is None:
            bad += 1
        counts[topic] += 1
        size += len(line)
        await add(topic, key, line)
        sent += 1
        if rate and sent % pace_every == 0:
            ahead = sent / rate - (time.perf_counter() - started)
            if ahead > 0:
                await batches.flush()
                await asyncio.sleep(ahead)
        elif sent % YIELD_EVERY == 0:
            await asyncio.sleep(0)  # let the producer's sender and our lingerer run
        if sent % PROGRESS_EVERY == 0:
            fold()
            s.lines += PROGRESS_EVERY
            s.seconds = base_seconds + time.perf_counter() - started
            if progress is not None:
                progress(s)

    try:
        if isinstance(lines, AsyncIterable):
            async for line in lines:
                await one(line)
        else:
            for line in lines:
                await one(line)
        await batches.close()
    except BaseException:
        await batches.abort()
        raise
    finally:
        fold()
        s.lines += sent % PROGRESS_EVERY
        s.seconds = base_seconds + time.perf_counter() - started
    return sent


async def _check_topics_exist(
    bootstrap: str, topics: Sequence[str], client_options: dict[str, Any] | None
) -> None:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap, client_id="metering-produce", **(client_options or {})
    )
    try:
        await admin.start()
        existing = set(await admin.list_topics())
    finally:
        await admin.close()
    missing = [t for t in topics if t not in existing]
    if missing:
        raise TopicMismatchError(
            f"topic(s) {', '.join(missing)} do not exist on {bootstrap}; start the worker "
            "first or pass --partitions N to create the service topics (a broker that "
            "auto-creates topics would otherwise pick its own partition count)"
        )


async def produce_log(
    path: str | Path,
    bootstrap: str,
    *,
    client_options: dict[str, Any] | None = None,
    progress: Callable[[ProduceSummary], None] | None = None,
    rate: float | None = None,
    bad_lines_topic: str = DEFAULT_BAD_LINES_TOPIC,
    partitions: int | None = None,
) -> ProduceSummary:
    """Publish the JSON-lines log at ``path`` (plain or ``.gz``) to ``bootstrap``.

    ``partitions`` given: first create any missing service topic with that many
    partitions (:func:`ensure_topics`). Otherwise the input topics must already exist
    (an error names the missing ones): producing to a missing topic would let the broker
    auto-create it with its default partition count.
    """
    from metering.replay.replay import iter_lines, open_log

    check_bad_lines_topic(bad_lines_topic)
    stream = open_log(path)  # FileNotFoundError before any network traffic
    try:
        if partitions is not None:
            await ensure_topics(bootstrap, topic_specs(partitions), client_options=client_options)
        else:
            await _check_topics_exist(bootstrap, INPUT_TOPICS, client_options)
        producer = make_producer(bootstrap, client_options)
        summary = ProduceSummary()
        await producer.start()
        try:
            await produce_lines(
                iter_lines(stream),
                producer,
                bad_lines_topic=bad_lines_topic,
                rate=rate,
                summary=summary,
                progress=progress,
            )
        finally:
            await producer.stop()
        return summary
    finally:
        stream.close()


# ---------------------------------------------------------------------------- CLI

DESCRIPTION = (
    "Publish a JSON-lines CloudEvents log (plain or .gz) to the input topics, routed by "
    "`type`, keyed by `subject`. Bad lines go to --bad-lines-topic with a null key and "
    "are dead-lettered by the worker. Security settings come from KAFKA_* variables "
    "(see metering.kafka.topics)."
)


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """Add the ``produce`` options to a parser (for ``metering produce``)."""
    ap.add_argument("file", help="event log, one CloudEvent per line (plain or .gz)")
    ap.add_argument(
        "--bootstrap",
        default=bootstrap_from_env(),
        metavar="HOST:PORT",
        help="Kafka bootstrap servers (default: $KAFKA_BOOTSTRAP_SERVERS or 127.0.0.1:9092)",
    )
    ap.add_argument(
        "--rate", type=float, metavar="N", help="send N events per second (default: max)"
    )
    ap.add_argument(
        "--bad-lines-topic",
        default=DEFAULT_BAD_LINES_TOPIC,
        choices=[t for t in INPUT_TOPICS if t != ACCOUNTS_TOPIC],
        help=f"where unparsable / unknown-type lines go (default {DEFAULT_BAD_LINES_TOPIC})",
    )
    ap.add_argument(
        "--partitions",
        type=int,
        metavar="N",
        help="create missing service topics with N partitions first "
        "(default: require existing topics)",
    )
    ap.add_argument("--quiet", action="store_true", help="no progress lines")


def run_cli(args: argparse.Namespace) -> int:
    """Run with parsed options; progress on stderr, the summary on stdout. Errors are one
    line on stderr and exit status 2."""

    def progress(s: ProduceSummary) -> None:
        print(f"produce: {s.lines:,} records ({s.rate:,.0f}/s)", file=sys.stderr, flush=True)

    try:
        options = kafka_client_options(os.environ)
        summary = asyncio.run(
            produce_log(
                args.file,
                args.bootstrap,
                client_options=options,
                progress=None if args.quiet else progress,
                rate=args.rate,
                bad_lines_topic=args.bad_lines_topic,
                partitions=args.partitions,
            )
        )
    except (FileNotFoundError, KafkaConfigError, TopicMismatchError, ValueError) as exc:
        print(f"metering produce: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("metering produce: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        from aiokafka.errors import KafkaError

        if isinstance(exc, KafkaError | OSError | TimeoutError):
            print(f"metering produce: error: Kafka at {args.bootstrap}: {exc}", file=sys.stderr)
            return 2
        raise
    print(summary.render())
    return 0


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    ap = argparse.ArgumentParser(prog=prog or "metering produce", description=DESCRIPTION)
    add_arguments(ap)
    return run_cli(ap.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
