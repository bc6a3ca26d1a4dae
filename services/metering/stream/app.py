"""The streaming worker: a Faust app that meters the Kafka input topics.

One agent consumes the four input topics (``cpaas.voice``, ``cpaas.messaging``,
``cpaas.smartflows``, ``cpaas.accounts``) as one multi-topic channel. The topics are
co-partitioned by account id (record key = account id, Kafka's default murmur2
partitioner, the same partition count), and Faust's assignor hands the same partition
number of every topic of one agent to the same worker, so one worker owns *all* of an
account's events, and its engine state. The state changelog topic
(:data:`STATE_CHANGELOG_TOPIC`) has the same partition count and is written with the same
partitioner keyed by account id (``use_partitioner=True``), so an account's checkpoint
lands on the changelog partition with the account's input partition number, which the
assignor gives to the same worker (``tests/test_stream.py`` checks this on a live broker).

Commit order
------------
The agent takes records in small batches (``stream.take_events(batch_size,
within=0.1 s)``), decodes them and hands them to a processor task, so Faust keeps
delivering while a commit waits for ClickHouse. Each record gets an extra Faust
reference, so the ack ``take_events`` does after a batch does not mark it done: the
commit that covers it acks it. The processor runs steps 2-4 as records are released and
steps 5-8 (one *commit*) for everything processed since the previous commit, once
``batch_size`` records are uncommitted or the oldest is ``batch_window`` old (while a
backlog is caught up: at ``batch_size``, or 10 windows). In this order:

1. **decode** the newly consumed records (:class:`~metering.events.decode.Decoder`, topic
   check on: ``wrong_topic``). A record on a partition other than its account's is set
   aside to be re-produced keyed by its account (step 7), so the owner applies it;
2. **align**: valid events wait in a :class:`~metering.stream.pipeline.Aligner` that
   releases the four topics of each partition merged in event-time order (a consumer
   reads them in chunks per topic-partition; without the merge a backlog of one topic
   would push the account's watermark hours ahead of the others);
3. **process** each released event in the engine (``engine.process(event, raw, topic)``);
4. **drain** the engine (``engine.drain()``): facts, output events, engine rejections;
   buffer them in the ClickHouse sink (``sink.add`` for facts and output events,
   ``sink.add_dead_letter(rejection, topic, partition, offset)`` for decoder rejections
   with their source position, ``sink.add_dead_letter(rejection)`` for engine rejections
   (``orphan``, ``duplicate_call``: found by the engine, possibly long after the record,
   so without a position, exactly like ``metering replay``);
5. **checkpoint** (write-ahead) every account the drains touched (``batch.accounts``)
   into the Faust table :data:`STATE_TABLE` (changelog :data:`STATE_CHANGELOG_TOPIC`):
   its engine state, *everything produced for it since the last commit* (facts, output
   events, engine rejections) and the input offsets it covers; await the changelog
   records' delivery;
6. **flush** the sink (on a dedicated thread); while it raises
   :class:`~metering.storage.sink.SinkUnavailable`, retry with exponential backoff (0.5 s
   doubling to 30 s), never dropping or skipping anything; meanwhile ``/ready`` answers
   503 and ``metering_sink_up`` is 0;
7. **publish** output events to ``metering.interactions`` / ``metering.concurrency`` /
   ``metering.fairuse``, dead letters to ``metering.deadletter`` (CloudEvents JSON, key =
   account id) and rerouted records, and **await their delivery**;
8. **ack** the commit's records, then have Faust commit the acked offsets (the first
   run of contiguous acked offsets per partition) at once rather than on its timer
   only (less to read again after a crash). A record that went past the aligner (a dead
   letter, a rerouted or skipped record) is acked only once no earlier record of its
   topic-partition is held there. No other ack of an input record reaches the consumer
   (:class:`~metering.stream.acks.AckGate`: Faust's pure-Python stream acks records it
   skips as stale after a rebalance), and Faust takes no offset gaps on the input
   topics and commits only runs of acked offsets starting at the committed offset
   (:class:`~metering.stream.acks.DeliveryGuard`: a record fetched twice in one
   generation is handled once; a record lost on the way is read again, and the records
   past it wait for it in the aligner; checkpoint floors never pass it).

Why a crash between any two steps neither loses nor double-counts (a "step" below is
everything one commit covers):

* Nothing is acked before 8, so after a crash the records come again, from the
  committed offsets, and are applied to the state of the last checkpoint.
* A crash before 5 leaves ClickHouse and the output topics without anything of this
  step (they are written after 5), and the changelog with the previous state: the
  records are processed again from there, as if for the first time.
* A crash after 5 leaves a checkpoint that contains the step. It stores, per input
  topic, the offset of the account's partition below which every record is applied
  (records leave the aligner in offset order per topic-partition), so the re-delivered
  records of the account are skipped by offset, not counted twice; within the dedupe
  horizon the state's dedupe set would also catch them (``engine.process`` returns
  ``"duplicate"``), but a backlog can hold more than the horizon's worth of event time
  between two offset commits. Its ``pending`` output is flushed and published again
  when the account is restored.
* Re-flushing is harmless: facts are replace-by-key (a later row with the same key
  replaces the earlier one), dead letters are keyed by position + bytes + reason.
  Re-publishing repeats deterministic CloudEvent ids (at-least-once; consumers dedupe).

Why write-ahead rather than checkpointing after the flush: the engine publishes only
*changes* (a counter, a peak, a per-minute peak is re-emitted when it differs from what
its state says was last published) and retracts transient things it created (an
Interaction merged into an earlier one is re-emitted as deleted). A state rolled back
behind what ClickHouse already holds could leave a newer row there that it never
overwrites or retracts (e.g. a fair-use counter that went up and back down). With the
checkpoint first, the state is never behind what was flushed or published.

The checkpoint also carries the account's configuration from ``account.configured``
events (:class:`~metering.stream.pipeline.Checkpoint`): the event that set it is in the
dedupe set and would not be applied again after a restart.

Exactly-once (Kafka transactions) is deliberately off: the development broker (Tansu)
cannot do idempotent/transactional producers and Faust's exactly-once mode has open bugs.
There is no zombie fencing either: a worker stuck in step 6 (ClickHouse down) longer than
the group's session timeout can be replaced while it still retries; the replacement
restores the same checkpoint (with its pending output), so both write the same rows, and
the old worker skips later checkpoints of partitions it no longer owns.

Rebalancing
-----------
On revocation the worker waits for its in-flight step (a lock), commits the acked
offsets, then drops the accounts of the revoked partitions from the engine, and drops,
unacked, whatever it still holds of them (Faust's ``stream_wait_empty`` is off: events may
wait in the aligner indefinitely, and the new owner reads them again anyway). After
Faust's table recovery (the changelog replayed into the table) the accounts of the
assigned partitions are restored from their checkpoints (``engine.restore``), and their
pending output is flushed and published again. Account configuration: the YAML file
given at start, then ``account.configured`` events on ``cpaas.accounts`` (which go
through the engine like any event; the later wins).

Wall clock
----------
A Faust timer (``idle_check_s``) closes on the wall clock the Interactions of accounts
that received no event for ``idle_after_s`` (``engine.close_idle``), then drains,
checkpoints, flushes and publishes like a batch.

Topics are created before Faust starts (:func:`ensure_worker_topics`): the 4 inputs, the
4 outputs and the state changelog, all with the configured partition count (Faust's own
topic declaration and leader topic are off, so nothing gets a broker-default count).
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from typing import Any, TypeVar, cast

import faust
from faust.streams import _current_event
from faust.types import TP, EventT
from mode import Service

from metering.engine.accounts import AccountConfig, load_accounts
from metering.engine.engine import Engine
from metering.kafka.offsets import OffsetProbe
from metering.kafka.topics import INPUT_TOPICS, TopicSpec, ensure_topics, topic_specs
from metering.storage.client import StorageError, StorageUnavailable, connect
from metering.storage.schema import migrate, set_retention
from metering.storage.sink import ClickHouseSink, SinkUnavailable
from metering.stream.acks import AckGate, Admit, DeliveryGuard
from metering.stream.diagnostics import (
    StallWatch,
    consumer_thread_tasks,
    fetch_position,
    main_loop_tasks,
    partition_report,
)
from metering.stream.metrics import WorkerMetrics
from metering.stream.pipeline import Outgoing, Pipeline, Record, Work
from metering.stream.settings import WorkerSettings
from metering.stream.trace import ENABLED as TRACING
from metering.stream.trace import ranges, trace

__all__ = [
    "APP_ID",
    "STATE_CHANGELOG_TOPIC",
    "STATE_TABLE",
    "StreamRuntime",
    "create_app",
    "ensure_worker_topics",
    "runtime_of",
    "worker_topic_specs",
]

log = logging.getLogger(__name__)

APP_ID = "metering"
STATE_TABLE = "engine-state"
STATE_CHANGELOG_TOPIC = "metering-engine-state-changelog"
MAX_REQUEST_BYTES = 64 * 1024 * 1024
"""Largest producer request: one checkpoint is one record and can be a few MB."""
END_OFFSETS_EVERY_S = 15.0
TAKE_WINDOW_S = 0.1
"""The agent hands records to the processor at least this often (the processor decides
when a step runs: ``batch_size`` / ``batch_window``)."""
LAGGING_WINDOWS = 10
"""While catching up a backlog, commits wait for ``batch_size`` records, or at most this
many batch windows."""
RELEASE_INTERVAL_S = 0.1
"""How often the processor looks for work without being woken (aligned events whose wait
ended, restored checkpoints' pending output)."""
PROBE_TIMEOUT_S = 2.0
"""How long the broker is asked which offsets of a partition exist, per gap."""
PROBE_CONNECT_S = 8.0
"""On top of that, for the probe's connection and metadata (the processing loop waits)."""
BACKOFF_START_S = 0.5
BACKOFF_MAX_S = 30.0

T = TypeVar("T")


def worker_topic_specs(partitions: int) -> list[TopicSpec]:
    """The 4 inputs, the 4 outputs and the (compacted) state changelog."""
    return topic_specs(partitions, [TopicSpec(STATE_CHANGELOG_TOPIC, partitions, compacted=True)])


async def ensure_worker_topics(settings: WorkerSettings) -> list[str]:
    """Create every topic the worker uses (before Faust starts); returns those created."""
    return await ensure_topics(
        settings.bootstrap,
        worker_topic_specs(settings.partitions),
        client_options=dict(settings.client_options),
    )


# ----------------------------------------------------------------------------- faust glue


class _PartitionEvent:
    """Stands in for Faust's current event where a store wants one for its partition
    (the RocksDB store files each key under ``current_event().message.partition``)."""

    class _Message:
        def __init__(self, partition: int) -> None:
            self.partition = partition
            self.topic = STATE_CHANGELOG_TOPIC

    def __init__(self, partition: int) -> None:
        self.message = self._Message(partition)


@contextmanager
def _in_partition(partition: int) -> Iterator[None]:
    stub = _PartitionEvent(partition)
    token = _current_event.set(weakref.ref(stub))  # type: ignore[arg-type]  # duck-typed event
    try:
        yield
    finally:
        _current_event.reset(token)


def _credentials(options: dict[str, Any]) -> Any:
    """Faust credentials from aiokafka security options (metering.kafka.topics)."""
    protocol = options.get("security_protocol", "PLAINTEXT")
    if protocol == "PLAINTEXT":
        return None
    if protocol == "SSL":
        return faust.SSLCredentials(options.get("ssl_context"))
    return faust.SASLCredentials(
        username=options.get("sasl_plain_username"),
        password=options.get("sasl_plain_password"),
        ssl_context=options.get("ssl_context") if protocol == "SASL_SSL" else None,
        mechanism=options.get("sasl_mechanism", "PLAIN"),
    )


def faust_settings(settings: WorkerSettings) -> dict[str, Any]:
    """Keyword arguments of :class:`faust.App` for ``settings``."""
    conf: dict[str, Any] = {
        "broker": [f"kafka://{h.strip()}" for h in settings.bootstrap.split(",") if h.strip()],
        "store": settings.state_store,
        "datadir": settings.data_dir,
        "key_serializer": "raw",
        "value_serializer": "raw",
        "processing_guarantee": "at_least_once",
        "consumer_auto_offset_reset": "earliest",
        "topic_partitions": settings.partitions,
        "topic_allow_declare": False,  # ensure_worker_topics created them all
        "topic_disable_leader": True,  # no leader topic (nothing here runs "on leader")
        "producer_acks": -1,
        "producer_max_request_size": MAX_REQUEST_BYTES,
        "web_enabled": True,
        "web_port": settings.web_port,
        "web_host": settings.web_host,
        "web_bind": settings.web_bind,
        "web_in_thread": False,
        # Do not wait for in-flight events on rebalance/shutdown: events can wait in the
        # aligner, or a step can wait for ClickHouse, indefinitely. Unacked events are
        # simply read again; checkpoints carry offsets, so nothing is applied twice.
        "stream_wait_empty": False,
    }
    creds = _credentials(dict(settings.client_options))
    if creds is not None:
        conf["broker_credentials"] = creds
    if settings.embedded:
        # Tansu (the development broker): one record per producer batch, so that its end
        # offsets (start of the last batch + 1) are right and changelog recovery reads to
        # the end; and short group timeouts, because its group joins are slow.
        conf.update(
            producer_max_batch_size=1,
            broker_session_timeout=6.0,
            broker_heartbeat_interval=1.0,
            broker_rebalance_timeout=10.0,
        )
    return conf


async def _to_list(futs: Sequence[Awaitable[T]]) -> list[T]:
    return list(await asyncio.gather(*futs))


def deliver_all(
    items: Sequence[T], send: Callable[[T], Awaitable[Any]]
) -> Callable[[], Awaitable[None]]:
    """An attempt for :meth:`StreamRuntime._retry`: send every item not delivered yet and
    await them all; raise the first failure. Each attempt sends the failed items again
    (a failed send's future stays failed: awaiting it again would fail forever)."""
    pending = list(range(len(items)))

    async def attempt() -> None:
        nonlocal pending
        sent = [(i, send(items[i])) for i in pending]
        results = await asyncio.gather(*(f for _, f in sent), return_exceptions=True)
        pending = [
            i for (i, _), r in zip(sent, results, strict=True) if isinstance(r, BaseException)
        ]
        for r in results:
            if isinstance(r, BaseException):
                raise r

    return attempt


# ----------------------------------------------------------------------------- runtime


class OutputProducer(Service):
    """The producer of output events, dead letters and rerouted records: a plain,
    batching aiokafka producer (``acks=all``, no idempotence), separate from Faust's, which
    in the embedded profile sends one record per batch for the changelog's sake."""

    def __init__(self, settings: WorkerSettings, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self.producer: Any = None

    async def on_start(self) -> None:
        from aiokafka import AIOKafkaProducer

        self.producer = AIOKafkaProducer(
            bootstrap_servers=self.settings.bootstrap,
            client_id="metering-worker-outputs",
            acks="all",
            enable_idempotence=False,
            linger_ms=2,
            max_batch_size=1 << 20,
            max_request_size=MAX_REQUEST_BYTES,
            **dict(self.settings.client_options),
        )
        await self.producer.start()

    async def on_stop(self) -> None:
        if self.producer is not None:
            await self.producer.stop()
            self.producer = None


class LogProbe(Service):
    """The worker's :class:`~metering.kafka.offsets.OffsetProbe` (its consumer is
    started on first use and stopped with the app). It reads ``read_uncommitted``, as
    Faust's consumer does under ``at_least_once``, so both see the same records."""

    def __init__(self, settings: WorkerSettings, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.probe = OffsetProbe(settings.bootstrap, **dict(settings.client_options))

    async def on_stop(self) -> None:
        await self.probe.close()


class StreamRuntime:
    """Everything the Faust app's agent, timer, signals and web views share."""

    def __init__(self, settings: WorkerSettings, app: faust.App, client: Any = None) -> None:
        self.settings = settings
        self.app = app
        self.metrics = WorkerMetrics()
        self.yaml_accounts: dict[str, AccountConfig] = (
            load_accounts(settings.accounts_file) if settings.accounts_file else {}
        )
        self.engine = Engine(settings.engine_config(), self.yaml_accounts)
        self.client: Any = client
        self.sink: ClickHouseSink | None = ClickHouseSink(client) if client is not None else None
        self.pipeline = Pipeline(
            self.engine,
            self.sink,
            self.metrics,
            partitions=settings.partitions,
            yaml_accounts=self.yaml_accounts,
            compression=settings.checkpoint_compression,
            lookup=self._lookup,
            align_wait_s=settings.align_wait_s,
            frontier=self._frontier,
            holds=self._holds,
        )
        self.table: Any = None  # set by create_app
        self.outputs = OutputProducer(settings)
        self.log_probe = LogProbe(settings)
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="clickhouse")
        self._lock: asyncio.Lock | None = None
        self._wakeup: asyncio.Event | None = None
        #: work processed (steps 2-4) but not committed yet (steps 5-8)
        self._uncommitted: Work | None = None
        self._uncommitted_at = 0.0
        self._uncommitted_generation = 0
        self._uncommitted_restored = False
        #: committed records whose ack waits for an earlier record held by the aligner
        self._deferred_acks: list[EventT[Any]] = []
        self._room: asyncio.Event | None = None
        #: state: set once the first recovery completed; False while rebalancing
        self.consuming = False
        self.ever_consumed = False
        self.sink_error: str | None = None
        self.owned: set[int] = set()
        self.generation = 0
        self.stall_watch = StallWatch(
            tasks=lambda: [
                *(f"main: {t}" for t in main_loop_tasks()),
                *(f"consumer thread: {t}" for t in consumer_thread_tasks(self.app.consumer)),
            ]
        )
        #: only the processor acks input records (see metering.stream.acks)
        self.acks = AckGate(INPUT_TOPICS, self.metrics.stale_acks.inc)
        #: each input offset once per generation; real offset gaps only
        self.deliveries = DeliveryGuard(INPUT_TOPICS)
        #: what the processor is doing, and since when (monotonic); for GET /partitions
        self.phase: tuple[str, float] = ("idle", time.monotonic())
        self.metrics.sink_up.set(1 if client is not None else 0)
        self.metrics.ready.set(0)

    # ------------------------------------------------------------------ helpers
    @contextmanager
    def _phase(self, name: str) -> Iterator[None]:
        """Mark what the processor is doing (``phase``) while the block runs."""
        previous = self.phase[0]
        self.phase = (name, time.monotonic())
        try:
            yield
        finally:
            self.phase = (previous, time.monotonic())

    @property
    def uncommitted_records(self) -> int:
        """Records processed (steps 2-4) and not committed yet."""
        return 0 if self._uncommitted is None else len(self._uncommitted.tokens)

    @property
    def lock(self) -> asyncio.Lock:
        if self._lock is None:
            self._lock = asyncio.Lock()
        return self._lock

    async def run_db(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a ClickHouse call on the worker's single ClickHouse thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: fn(*args, **kwargs))

    @property
    def ready(self) -> bool:
        return self.consuming and self.sink_error is None and self.sink is not None

    def readiness(self) -> tuple[bool, str]:
        if not self.consuming:
            return False, "not consuming yet (joining the group or recovering state)"
        if self.sink is None:
            return False, self.sink_error or "ClickHouse not connected yet"
        if self.sink_error is not None:
            return False, f"ClickHouse unavailable: {self.sink_error}"
        return True, "ok"

    def _set_sink_error(self, error: str | None) -> None:
        self.sink_error = error
        self.metrics.sink_up.set(0 if error else 1)
        self.metrics.ready.set(1 if self.ready else 0)

    def _frontier(self, topic: str, partition: int) -> int | None:
        return self.deliveries.frontier(TP(topic, partition))

    def _holds(self) -> dict[tuple[str, int], int]:
        return self.deliveries.holds(time.monotonic())

    def _lookup(self, account: str) -> bytes | None:
        if self.table is None:
            return None
        with _in_partition(self.pipeline.owner_partition(account)):
            value = self.table.data.get(account.encode())
        return value if isinstance(value, bytes) else None

    async def _retry(self, what: str, fn: Callable[[], Awaitable[T]]) -> T:
        """Retry ``fn`` with exponential backoff until it succeeds (never give up: the
        batch is not acked until it does)."""
        delay = BACKOFF_START_S
        while True:
            try:
                return await fn()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("%s failed (%s); retrying in %.1f s", what, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX_S)

    # ------------------------------------------------------------------ sink
    def _open_storage(self) -> Any:
        """Connect and migrate (on the ClickHouse thread). The embedded engine keeps rows
        of any age (retention is a ClickHouse server's job), as for ``metering replay``."""
        s = self.settings
        client = connect(db_dir=s.db_dir, url=s.clickhouse_url)
        try:
            migrate(client)
            if s.db_dir is not None:
                set_retention(client, False)
        except BaseException:
            client.close()
            raise
        return client

    def connect_now(self) -> None:
        """Connect to ClickHouse and migrate now, on the ClickHouse thread (before Faust
        starts, to fail fast on a bad chDB directory). Raises StorageUnavailable when a
        server is unreachable (the worker then retries when records come)."""
        if self.sink is not None:
            return
        try:
            client = self._executor.submit(self._open_storage).result()
        except StorageUnavailable as exc:
            self._set_sink_error(str(exc))
            raise
        self.client = client
        self.sink = self.pipeline.sink = ClickHouseSink(client)
        self._set_sink_error(None)

    async def ensure_sink(self) -> ClickHouseSink:
        """Connect to ClickHouse and migrate, retrying while it is unreachable."""
        delay = BACKOFF_START_S
        while self.sink is None:
            try:
                client = await self.run_db(self._open_storage)
            except StorageUnavailable as exc:
                self._set_sink_error(str(exc))
                log.warning("ClickHouse unavailable (%s); retrying in %.1f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX_S)
                continue
            self.client = client
            self.sink = self.pipeline.sink = ClickHouseSink(client)
            self._set_sink_error(None)
        return self.sink

    async def flush_sink(self) -> None:
        """Commit step 6: flush, retrying with backoff while ClickHouse is unavailable."""
        sink = await self.ensure_sink()
        delay = BACKOFF_START_S
        while True:
            started = time.perf_counter()
            try:
                stats = await self.run_db(sink.flush)
            except SinkUnavailable as exc:
                self.metrics.sink_retries.inc()
                self._set_sink_error(str(exc))
                log.warning("ClickHouse flush failed (%s); retrying in %.1f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX_S)
                continue
            except StorageError as exc:
                # not transient (a schema or programming error): stop rather than spin
                self._set_sink_error(str(exc))
                raise
            elapsed = time.perf_counter() - started
            self.metrics.sink_seconds.observe(elapsed)
            self.metrics.step_seconds.labels("flush").observe(elapsed)
            for phase, seconds in stats.timings.items():
                self.metrics.sink_phase_seconds.labels(phase).inc(seconds)
            for table, n in stats.rows.items():
                self.metrics.sink_rows.labels(table).inc(n)
            if self.sink_error is not None:
                log.info("ClickHouse is back")
            self._set_sink_error(None)
            return

    # ------------------------------------------------------------------ kafka
    async def publish(self, outgoing: Sequence[Outgoing]) -> None:
        """Commit step 7: produce and await delivery of every record."""
        if not outgoing:
            return
        started = time.perf_counter()
        producer = self.outputs.producer
        if producer is None:  # pragma: no cover - the service starts with the app
            raise RuntimeError("the output producer is not started")

        async def send_all() -> None:
            futs = [await producer.send(o.topic, o.value, key=o.key) for o in outgoing]
            await _to_list(futs)

        await self._retry(f"publishing {len(outgoing)} records", send_all)
        self.pipeline.observe_outputs(outgoing)
        self.metrics.step_seconds.labels("publish").observe(time.perf_counter() - started)

    async def checkpoint(self, work: Work, generation: int) -> bool:
        """Write the checkpoints of the accounts ``work`` touched (state + the step's
        output) to the table and await the changelog records. An account whose partition
        is no longer ours (a rebalance since ``generation``) is skipped."""
        started = time.perf_counter()
        blobs = self.pipeline.checkpoints(work)
        if not blobs:
            return True
        table = self.table
        owned_now = self.owned
        todo: list[tuple[str, int, bytes]] = []
        for account, blob in blobs:
            partition = self.pipeline.owner_partition(account)
            if generation != self.generation and partition not in owned_now:
                log.warning("not checkpointing %s: partition %d was revoked", account, partition)
                continue
            with _in_partition(partition):
                table.data[account.encode()] = blob
            todo.append((account, partition, blob))

        def send(item: tuple[str, int, bytes]) -> Awaitable[Any]:
            account, partition, blob = item
            with _in_partition(partition):
                fut = table.send_changelog(None, account.encode(), blob)
            sent_to = fut.message.partition
            if sent_to is not None and sent_to != partition:  # pragma: no cover - invariant
                log.error(
                    "checkpoint of %s went to changelog partition %s, expected %d: the "
                    "producer's partitioner differs from the input topics' one",
                    account,
                    sent_to,
                    partition,
                )
            return cast(Awaitable[Any], fut)

        await self._retry("writing checkpoints", deliver_all(todo, send))
        self.metrics.step_seconds.labels("checkpoint").observe(time.perf_counter() - started)
        return True

    async def commit(self, work: Work, generation: int) -> None:
        """Checkpoint (write-ahead), flush, publish ``work`` (module docstring)."""
        with self._phase("checkpoint"):
            await self.checkpoint(work, generation)
        with self._phase("flush"):
            await self.flush_sink()
        with self._phase("publish"):
            await self.publish(work.outgoing)
        for (topic, partition), pos in work.positions.items():
            self.metrics.consumer_position.labels(topic, str(partition)).set(pos)
            end = self.highwater(topic, partition)
            if end is not None:
                self.metrics.input_end_offset.labels(topic, str(partition)).set(end)
        self.pipeline.update_gauges(work.accounts)

    # ------------------------------------------------------------------ agent / timers
    def refresh_end_offsets(self) -> None:
        """Publish the high-water mark of every assigned input partition (its own timer,
        so the gauge keeps moving while the processing loop is stuck)."""
        try:
            assigned = self.app.consumer.assignment()
        except Exception:  # consumer not started yet
            return
        for tp in assigned:
            if tp.topic in INPUT_TOPICS:
                end = self.highwater(tp.topic, tp.partition)
                if end is not None:
                    self.metrics.input_end_offset.labels(tp.topic, str(tp.partition)).set(end)

    def check_stalls(self) -> None:
        """Log input partitions that stopped committing (:class:`StallWatch`)."""
        if self.consuming:
            self.stall_watch.check(partition_report(self))

    def highwater(self, topic: str, partition: int) -> int | None:
        """The last fetched high watermark of an assigned input partition (None: not
        known yet)."""
        try:
            hw = self.app.consumer.highwater(TP(topic, partition))
        except Exception:  # not assigned / not fetched yet
            return None
        return hw if isinstance(hw, int) else None

    def _committed(self, topic: str, partition: int) -> int | None:
        # Faust keeps the group's committed offsets here (filled at assignment)
        offsets = getattr(self.app.consumer, "_committed_offset", None)
        if offsets is None:
            return None
        value = offsets.get(TP(topic, partition))
        return value if isinstance(value, int) else None

    def _final_ack(self, event: EventT[Any]) -> None:
        """Release the reference taken in :meth:`handle`; the last one marks the offset
        safe to commit."""
        message = event.message
        if self.acks.release(message, self.app.consumer):
            self.app.sensors.on_message_out(message.tp, message.offset, message)

    async def handle(self, events: Sequence[EventT[Any]]) -> None:
        """One batch from the agent: admit (decode) every record and wake the processor.

        Each event gets an extra reference, so the ack ``take_events`` does after this
        returns does not mark it done: the step that commits it acks it (events can wait
        in the aligner across batches), or nobody does (a crash, a revocation: the record
        is consumed again from the committed offset). Events fetched before the current
        rebalance generation, or of partitions no longer assigned, are dropped the same
        way, unacked: the consumer re-reads them from the committed offset.

        Returning quickly lets Faust keep delivering while the processor flushes
        (``take_events`` adds nothing to its buffer while the agent holds a batch); when
        more than two batches wait while a step runs, this waits for it (backpressure)."""
        app = self.app
        assignment = app.consumer.assignment()
        generation = app.consumer_generation_id
        admitted: list[tuple[Record, Any]] = []
        guard = self.deliveries
        again = 0
        now = time.monotonic()
        dropped: dict[tuple[str, int, str], list[int]] = {}
        for e in events:
            msg = e.message
            msg.incref()
            if msg.tp not in assignment or msg.generation_id not in (None, generation):
                if TRACING:
                    why = "not-assigned" if msg.tp not in assignment else "generation"
                    dropped.setdefault((msg.topic, msg.partition, why), []).append(msg.offset)
                continue  # stale: never acked
            if guard.admit(msg.tp, msg.offset, now) is not Admit.OK:
                self.metrics.redelivered.labels(msg.topic).inc()
                again += 1
                if TRACING:
                    dropped.setdefault((msg.topic, msg.partition, "copy"), []).append(msg.offset)
                continue  # fetched twice in this generation: the first copy is handled
            ts = msg.timestamp
            rec = Record(
                msg.topic,
                msg.partition,
                msg.offset,
                msg.key,
                msg.value,
                None if ts is None else int(ts * 1000),
            )
            admitted.append((rec, e))
        if again:
            log.info("%d records delivered a second time in this generation, handled once", again)
        if TRACING:
            seen: dict[tuple[str, int], list[int]] = {}
            for rec, _ in admitted:
                seen.setdefault((rec.topic, rec.partition), []).append(rec.offset)
            trace(
                "batch gen=%s consuming=%s admitted=%s dropped=%s",
                generation,
                self.consuming,
                {f"{t}/{p}": ranges(o) for (t, p), o in sorted(seen.items())},
                {f"{t}/{p}:{w}": ranges(o) for (t, p, w), o in sorted(dropped.items())},
            )
        if admitted:
            self.pipeline.admit(admitted)
            if self.pipeline.admitted_since_step >= self.settings.batch_size:
                self.wakeup.set()
        # Backpressure only while a step runs: records held by the aligner for a lagging
        # topic must not stop the delivery of that topic's records.
        limit = 2 * self.settings.batch_size
        while self.pipeline.backlog > limit and self.lock.locked() and not app.should_stop:
            self.room.clear()
            await self.room.wait()

    @property
    def wakeup(self) -> asyncio.Event:
        if self._wakeup is None:
            self._wakeup = asyncio.Event()
        return self._wakeup

    @property
    def room(self) -> asyncio.Event:
        if self._room is None:
            self._room = asyncio.Event()
        return self._room

    async def process_loop(self) -> None:
        """The processor. Engine work (steps 2-4) runs as soon as records are released;
        a commit (steps 5-8) covers everything processed since the previous one and runs
        once ``batch_size`` records are uncommitted, or the oldest of them is
        ``batch_window`` old, or a restored checkpoint's output is to be redone. So a
        backlog is committed in big batches (each commit has a fixed cost, the
        ClickHouse flush above all) and steady traffic within the window."""
        pipeline = self.pipeline
        while not self.app.should_stop:
            with suppress(TimeoutError):
                await asyncio.wait_for(self.wakeup.wait(), RELEASE_INTERVAL_S)
            self.wakeup.clear()
            self.metrics.backlog.set(pipeline.backlog)
            self.check_tails()
            await self.heal_partitions()
            if pipeline.pending or self._uncommitted is not None:
                async with self.lock:
                    if pipeline.pending:
                        await self._advance()
                    if self._commit_due():
                        await self._commit_uncommitted()
            self.room.set()

    def check_tails(self) -> None:
        """While the worker is quiet (no step or commit running, nothing admitted waiting),
        tell the guard where the consumer's fetch position of each input partition is: a
        position left past the frontier means records lost on the way with no later one
        to show it (:meth:`DeliveryGuard.fetched`)."""
        if self.lock.locked() or self.pipeline.pending:
            return
        consumer: Any = self.app.consumer
        now = time.monotonic()
        for tp in consumer.assignment():
            if tp.topic in INPUT_TOPICS:
                self.deliveries.fetched(tp, fetch_position(consumer, tp), now)

    async def heal_partitions(self) -> None:
        """For each input partition whose records past an offset arrived without it, or
        whose fetch position stayed past it (:meth:`DeliveryGuard.to_heal`): ask the
        broker which offsets up to the highest one received or fetched exist; those it
        does not have are holes of its log (the guard passes them); if a record it has is
        still missing, read the partition again from it. Without the broker's answer (an
        error), read again anyway."""
        guard = self.deliveries
        for tp, frontier, top in guard.to_heal(time.monotonic()):
            try:
                answer = await asyncio.wait_for(
                    self.log_probe.probe.existing(
                        tp.topic, tp.partition, frontier, top + 1, timeout_s=PROBE_TIMEOUT_S
                    ),
                    PROBE_TIMEOUT_S + PROBE_CONNECT_S,
                )
            except Exception as exc:
                log.warning("asking the broker for %s[%d] offsets %d-%d failed: %s",
                            tp.topic, tp.partition, frontier, top, exc)  # fmt: skip
            else:
                if answer.log_start is not None:
                    log.error(
                        "%s[%d]: offsets %d-%d were deleted from the broker's log "
                        "(retention) before this worker read them: those records are lost",
                        tp.topic, tp.partition, frontier, answer.log_start - 1,
                    )  # fmt: skip
                holes = guard.learn(tp, frontier, answer.offsets, answer.covered)
                if holes:
                    self.metrics.offset_holes.labels(tp.topic).inc(holes)
                    log.info(
                        "%s[%d]: %d offsets from %d on are not in the broker's log "
                        "(compaction, transaction markers); passing them",
                        tp.topic, tp.partition, holes, frontier,
                    )  # fmt: skip
            offset = guard.missing(tp)
            if offset is None:
                continue
            log.warning(
                "%s[%d]: the record at offset %d was fetched but never reached the worker; "
                "reading again from it",
                tp.topic,
                tp.partition,
                offset,
            )
            guard.sought_back(tp, offset)
            self.metrics.heals.labels(tp.topic).inc()
            consumer: Any = self.app.consumer
            try:
                # in the consumer's own thread (aiokafka's seek is not thread-safe)
                await consumer._thread.seek_wait({tp: offset})
            except Exception as exc:  # not assigned any more, consumer stopping ...
                log.warning("seeking %s[%d] to %d failed: %s", tp.topic, tp.partition, offset, exc)

    async def _advance(self) -> None:
        """Steps 2-4 for whatever the aligner releases, added to the uncommitted work
        (lock held)."""
        with self._phase("connect"):
            await self.ensure_sink()
        work = self.pipeline.step(self.highwater, self._committed)
        if not work.tokens and not work.outgoing and not work.accounts:
            return
        if self._uncommitted is None:
            self._uncommitted = work
            self._uncommitted_at = time.monotonic()
            self._uncommitted_generation = self.generation
        else:
            self._uncommitted.merge(work)
        self._uncommitted_restored = self._uncommitted_restored or bool(work.restored)

    def _lag(self) -> int:
        """Records known to be on the broker (up to the last fetched high watermarks) and
        not received yet, over the owned input partitions."""
        lag = 0
        aligner = self.pipeline.aligner
        for p in self.owned:
            for topic in INPUT_TOPICS:
                hw = self.highwater(topic, p)
                if hw is None:
                    continue
                nxt = aligner.next_offset(topic, p)
                if nxt is None:
                    nxt = self._committed(topic, p) or 0
                lag += max(0, hw - nxt)
        return lag

    def _commit_due(self) -> bool:
        """Commit at ``batch_size`` uncommitted records, or when the oldest is
        ``batch_window`` old; while a backlog is being caught up (consumer lag of more
        than a batch), at ``batch_size`` or ``LAGGING_WINDOWS`` windows only."""
        work = self._uncommitted
        if work is None:
            return False
        if self._uncommitted_restored or len(work.tokens) >= self.settings.batch_size:
            return True
        age = time.monotonic() - self._uncommitted_at
        window = self.settings.batch_window_s
        if age >= LAGGING_WINDOWS * window:
            return True
        return age >= window and self._lag() < self.settings.batch_size

    async def _commit_uncommitted(self) -> None:
        """Steps 5-8 for the uncommitted work (lock held)."""
        work = self._uncommitted
        if work is None:
            return
        await self.commit(work, self._uncommitted_generation)
        self._uncommitted = None
        self._uncommitted_restored = False
        self.pipeline.aligner.busy()
        ready, self._deferred_acks = self._ackable([*self._deferred_acks, *work.tokens])
        for token in ready:
            self._final_ack(token)
        if TRACING:
            acked: dict[str, list[int]] = {}
            for token in ready:
                m = token.message
                acked.setdefault(f"{m.topic}/{m.partition}", []).append(m.offset)
            later: dict[str, list[int]] = {}
            for token in self._deferred_acks:
                m = token.message
                later.setdefault(f"{m.topic}/{m.partition}", []).append(m.offset)
            trace(
                "ack %s deferred=%s",
                {k: ranges(v) for k, v in sorted(acked.items())},
                {k: ranges(v) for k, v in sorted(later.items())},
            )
        for topic, n in work.records_by_topic.items():
            self.metrics.records_consumed.labels(topic).inc(n)
        await self.commit_offsets()

    def _ackable(self, tokens: list[EventT[Any]]) -> tuple[list[EventT[Any]], list[EventT[Any]]]:
        """Split committed records into those to ack now and those whose ack waits: a
        record that went past the aligner (a dead letter, a rerouted or skipped record)
        while an earlier record of its topic-partition is still held there. Faust commits
        the first run of acked offsets, and for a partition without a committed offset
        it does not check that the run starts at the consumer's position, so acking the
        later record first could commit past the held one."""
        aligner = self.pipeline.aligner
        ready: list[EventT[Any]] = []
        later: list[EventT[Any]] = []
        for token in tokens:
            m = token.message
            low = aligner.lowest_held(m.topic, m.partition)
            (later if low is not None and low < m.offset else ready).append(token)
        return ready, later

    async def commit_offsets(self) -> None:
        """Have Faust commit the acked offsets now (after each step) rather than only on
        its own timer. A failed commit is retried by Faust's timer or the next step (the
        offsets stay acked)."""
        try:
            with self._phase("commit offsets"):
                await self.app.consumer.commit()
            if TRACING:
                offsets = getattr(self.app.consumer, "_committed_offset", {})
                trace(
                    "committed %s",
                    {f"{tp.topic}/{tp.partition}": o for tp, o in sorted(offsets.items())
                     if tp.topic in INPUT_TOPICS},
                )  # fmt: skip
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # this task is being cancelled (shutdown)
            self.metrics.offset_commit_failures.inc()
            log.warning("offset commit was cancelled in the consumer; the next step retries")
        except Exception as exc:
            self.metrics.offset_commit_failures.inc()
            log.warning("offset commit failed (%s); the next step retries", exc)

    async def close_idle(self) -> None:
        """The wall-clock timer: close idle accounts' Interactions."""
        if not self.consuming:
            return
        async with self.lock:
            if self.sink is None:
                return
            work = self.pipeline.close_idle(int(time.time() * 1000), self.settings.idle_after_s)
            if work.outgoing or work.accounts:
                if self._uncommitted is None:
                    self._uncommitted = work
                    self._uncommitted_at = time.monotonic()
                    self._uncommitted_generation = self.generation
                else:
                    self._uncommitted.merge(work)
            await self._commit_uncommitted()

    # ------------------------------------------------------------------ rebalancing
    async def on_revoked(self, revoked: set[TP]) -> None:
        parts = {tp.partition for tp in revoked if tp.topic in INPUT_TOPICS}
        async with self.lock:
            # Commit what was processed: the sink holds its facts, and they must not be
            # flushed later without the checkpoint that covers them.
            await self._commit_uncommitted()
            # commit the acked offsets while the partitions are still ours (fewer records
            # to skip again after the rebalance; a no-op when the step above just did,
            # and correctness does not depend on it)
            await self.commit_offsets()
            # acks still waiting for a held record are dropped with it: both are read again
            self._deferred_acks = [
                t for t in self._deferred_acks if t.message.partition not in parts
            ]
            self.deliveries.reset()
            self.generation += 1
            self.consuming = False
            self.metrics.ready.set(0)
            self.owned -= parts
            if TRACING:
                trace("forget partitions %s: held %s", sorted(parts), {
                    f"{t}/{p}": ranges(h.record.offset for h in q)
                    for p, qs in self.pipeline.aligner._queues.items() if p in parts
                    for t, q in qs.items() if q
                })  # fmt: skip
            gone = self.pipeline.forget_partitions(parts)
        if gone:
            log.info("revoked partitions %s: dropped %d accounts", sorted(parts), len(gone))

    async def on_assigned(self, assigned: set[TP]) -> None:
        # before any record of this generation: a stale one exists only after a rebalance
        self.acks.install(self.app.consumer)
        if self.deliveries.install(self.app.consumer):
            # Faust's fetch loop holds on to the read offsets it started with: restart it
            # (as Faust itself does on every revocation) so it reads the guard's ones
            await self.app._stop_fetcher()  # type: ignore[attr-defined]
        self.deliveries.reset()
        async with self.lock:
            self.generation += 1
            self.owned = {tp.partition for tp in assigned if tp.topic in INPUT_TOPICS}
            self.metrics.rebalances.inc()
            # anything held for a partition we did not get back goes
            self.pipeline.forget(
                [
                    a
                    for a in self.pipeline.loaded
                    if self.pipeline.owner_partition(a) not in self.owned
                ]
            )
        log.info("assigned input partitions %s", sorted(self.owned))

    async def on_recovered(self) -> None:
        """After the table recovered from the changelog: restore the owned accounts."""
        async with self.lock:
            table = self.table
            # from the consumer, not from on_assigned: recovery may finish first
            self.owned = {
                tp.partition for tp in self.app.consumer.assignment() if tp.topic in INPUT_TOPICS
            }
            restored = 0
            for key in list(table.data.keys()):
                account = key.decode() if isinstance(key, bytes) else str(key)
                if account in self.pipeline.loaded:
                    continue
                partition = self.pipeline.owner_partition(account)
                if partition not in self.owned:
                    continue  # a standby copy of another worker's account
                with _in_partition(partition):
                    blob = table.data.get(key)
                if isinstance(blob, bytes):
                    self.pipeline.restore(account, blob)
                    restored += 1
            self.metrics.accounts_owned.set(len(self.pipeline.loaded))
            self.consuming = True
            self.ever_consumed = True
            self.metrics.ready.set(1 if self.ready else 0)
        log.info(
            "state recovered: %d accounts restored, partitions %s", restored, sorted(self.owned)
        )

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        if self.client is not None:
            try:
                self.client.close()
            except Exception:  # pragma: no cover - best effort at exit
                log.debug("closing the ClickHouse client failed", exc_info=True)


def runtime_of(app: faust.App) -> StreamRuntime:
    rt = getattr(app, "metering_runtime", None)
    if not isinstance(rt, StreamRuntime):
        raise LookupError("not an app made by metering.stream.app.create_app")
    return rt


def create_app(settings: WorkerSettings, *, client: Any = None) -> faust.App:
    """The Faust app of the worker (see the module docstring).

    ``client`` is an open ClickHouse client; None connects lazily (with retries) on the
    worker's ClickHouse thread when the first batch arrives.
    """
    from metering.stream.web import register_views

    app = faust.App(APP_ID, **faust_settings(settings))
    rt = StreamRuntime(settings, app, client)
    app.metering_runtime = rt  # type: ignore[attr-defined]  # Faust apps take attributes

    changelog = app.topic(
        STATE_CHANGELOG_TOPIC,
        partitions=settings.partitions,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        compacting=True,
        internal=False,
    )
    rt.table = app.Table(
        STATE_TABLE,
        key_type=bytes,
        value_type=bytes,
        partitions=settings.partitions,
        changelog_topic=changelog,
        use_partitioner=True,
        help="engine checkpoints (msgpack AccountState + config) by account id",
    )
    rt.table.on_recover(rt.on_recovered)
    app.add_dependency(rt.outputs)
    app.add_dependency(rt.log_probe)

    inputs = app.topic(
        *INPUT_TOPICS,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
    )

    async def meter(stream: faust.StreamT[bytes]) -> None:
        # StreamT does not declare take_events (faust.Stream has it)
        batches = stream.take_events(  # type: ignore[attr-defined]
            settings.batch_size, within=min(TAKE_WINDOW_S, settings.batch_window_s)
        )
        async for events in batches:
            await rt.handle(events)

    app.agent(inputs, name="metering.stream.meter")(meter)

    async def process_loop() -> None:
        await rt.process_loop()

    app.task(process_loop)

    if settings.idle_check_s > 0:

        async def idle_check() -> None:
            await rt.close_idle()

        app.timer(interval=settings.idle_check_s, name="metering.stream.idle_check")(idle_check)

    async def end_offsets() -> None:
        rt.refresh_end_offsets()
        rt.check_stalls()

    app.timer(interval=END_OFFSETS_EVERY_S, name="metering.stream.end_offsets")(end_offsets)

    async def on_revoked(sender: Any, revoked: set[TP], **kwargs: Any) -> None:
        await rt.on_revoked(revoked)

    async def on_assigned(sender: Any, assigned: set[TP], **kwargs: Any) -> None:
        await rt.on_assigned(assigned)

    # Faust types signal receivers with a keyword-only ``signal`` parameter it passes in
    # **kwargs; these handlers take it there.
    app.on_partitions_revoked.connect(on_revoked)  # type: ignore[arg-type]
    app.on_partitions_assigned.connect(on_assigned)  # type: ignore[arg-type]
    register_views(app, rt)
    return app
