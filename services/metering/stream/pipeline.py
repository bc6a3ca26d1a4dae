"""The Faust-free half of the streaming worker: records in, facts / output records /
checkpoints out.

:class:`Pipeline` wraps one :class:`~metering.engine.engine.Engine` and one ClickHouse
sink. :mod:`metering.stream.app` drives it from Faust in the commit order documented
there; this module does the synchronous steps (decode, engine, sink buffering), encodes
output events and checkpoints, and answers the HTTP queries from engine state. Keeping it
free of Faust makes it testable without a broker.
"""

from __future__ import annotations

import hashlib
import logging
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, get_args

import msgspec
from aiokafka.partitioner import murmur2

from metering.engine.accounts import AccountConfig, AccountConfigError, resolve
from metering.engine.calendar import calendar_for
from metering.engine.engine import Batch, Engine
from metering.engine.facts import Fact, OutputEvent
from metering.engine.rules import RULES, evaluate, round_ratio, threshold_value
from metering.engine.state import AccountState
from metering.events.decode import Decoder, Rejection, ms_to_rfc3339, to_ms
from metering.events.models import (
    AccountConfigured,
    AccountData,
    CallCompleted,
    CallStarted,
    InputEvent,
    event_type,
)
from metering.events.outputs import cloudevent, deadletter_data, encode
from metering.kafka.topics import INPUT_TOPICS
from metering.stream.metrics import WorkerMetrics
from metering.stream.trace import ENABLED as TRACING
from metering.stream.trace import ranges, trace

__all__ = [
    "DEADLETTER_TOPIC",
    "Aligner",
    "Checkpoint",
    "Held",
    "Outgoing",
    "Pipeline",
    "Record",
    "Work",
    "decode_checkpoint",
    "encode_checkpoint",
    "partition_for",
]

log = logging.getLogger(__name__)

DEADLETTER_TOPIC = "metering.deadletter"
_RAW, _ZLIB = b"\x00", b"\x01"


def partition_for(account: str, partitions: int) -> int:
    """The partition of a record keyed by ``account``: Kafka's default partitioner
    (murmur2 of the key bytes, as aiokafka, the Java client and librdkafka's
    ``murmur2_random`` compute it)."""
    return int(murmur2(account.encode()) & 0x7FFFFFFF) % partitions


# ----------------------------------------------------------------------------- records


@dataclass(slots=True)
class Record:
    """One Kafka record of an input topic."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int | None = None


@dataclass(slots=True)
class Outgoing:
    """One record to produce: an output event, a dead letter or a rerouted input record."""

    topic: str
    key: bytes | None
    value: bytes
    type: str  # CloudEvent type, or "reroute"


@dataclass(slots=True)
class Work:
    """What one step (or one idle check) produced, between the engine and Kafka."""

    outgoing: list[Outgoing] = field(default_factory=list)
    #: accounts whose engine state changed: checkpointed after publishing
    accounts: list[str] = field(default_factory=list)
    #: tokens of the records this step covers: acked once its commit is done
    tokens: list[Any] = field(default_factory=list)
    #: (topic, partition) -> next offset, for the position gauges once the step is done
    positions: dict[tuple[str, int], int] = field(default_factory=dict)
    records_by_topic: dict[str, int] = field(default_factory=dict)
    #: account -> what this step produced for it (written ahead in its checkpoint)
    pending: dict[str, list[tuple[str, bytes]]] = field(default_factory=dict)

    #: whether this includes the output of restored checkpoints (commit it promptly)
    restored: bool = False

    def merge(self, other: Work) -> None:
        """Add a later step's work to this one (one commit covers both)."""
        self.outgoing.extend(other.outgoing)
        self.accounts = sorted(set(self.accounts) | set(other.accounts))
        self.tokens.extend(other.tokens)
        for key, pos in other.positions.items():
            if pos > self.positions.get(key, -1):
                self.positions[key] = pos
        for topic, n in other.records_by_topic.items():
            self.records_by_topic[topic] = self.records_by_topic.get(topic, 0) + n
        for account, items in other.pending.items():
            self.pending.setdefault(account, []).extend(items)
        self.restored = self.restored or other.restored

    def done(self, rec: Record, token: Any) -> None:
        self.tokens.append(token)
        topic = rec.topic
        self.records_by_topic[topic] = self.records_by_topic.get(topic, 0) + 1
        pos = (topic, rec.partition)
        if rec.offset + 1 > self.positions.get(pos, -1):
            self.positions[pos] = rec.offset + 1


@dataclass(slots=True)
class Held:
    """A decoded event waiting in the :class:`Aligner`."""

    time: int
    record: Record
    event: InputEvent
    token: Any


class Aligner:
    """Releases the events of co-partitioned topics in event-time order.

    Kafka orders records per topic-partition only. The four input topics of one
    partition number carry the same accounts, but a consumer reads them in chunks per
    topic-partition: with a backlog it can get hours of ``cpaas.voice`` before the
    matching ``cpaas.messaging`` records, and the engine would see messaging events far
    behind the account's watermark (late, beyond the allowed lateness). Like Kafka
    Streams' timestamp synchronization, the aligner keeps one FIFO per topic-partition
    and releases, per partition number, the head with the smallest event time, but only
    while every topic of that partition either has a head or is *caught up* (everything
    up to its high watermark received). A topic-partition that is behind blocks its
    partition until its records come, or until the worker has been idle (no records
    admitted, no step running: :meth:`busy`) for ``max_wait_s`` while blocked, or for at
    most ``HARD_CAP`` x ``max_wait_s`` in all; then it is treated as idle. Time the worker
    spends in its own steps does not count: a lagging topic's records are usually just
    behind in the consumer's queue.

    Within a topic-partition the order is kept, so when each topic carries events with
    bounded disorder (less than the allowed lateness behind the running maximum), so
    does the merged stream: a released event is never more than that behind the
    watermark. ``force`` releases everything (before a rebalance or shutdown).
    """

    def __init__(
        self,
        topics: Sequence[str],
        max_wait_s: float = 2.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.topics = tuple(topics)
        self._rank = {t: i for i, t in enumerate(self.topics)}
        self.max_wait_s = max_wait_s
        self._monotonic = monotonic
        self._queues: dict[int, dict[str, deque[Held]]] = {}
        self._next: dict[tuple[str, int], int] = {}
        self._blocked_since: dict[int, float] = {}
        self._busy_at = float("-inf")
        self.held = 0
        #: times a blocked partition was released without its lagging topic
        self.timeouts = 0

    HARD_CAP = 10

    def busy(self) -> None:
        """Records were just admitted, or a step just ended: waits count from now."""
        self._busy_at = self._monotonic()

    def next_offset(self, topic: str, partition: int) -> int | None:
        """The offset after the last record received from (topic, partition)."""
        return self._next.get((topic, partition))

    def held_for(self, topic: str, partition: int) -> int:
        """How many records of (topic, partition) are held."""
        return len(self._queues.get(partition, {}).get(topic, ()))

    def lowest_held(self, topic: str, partition: int) -> int | None:
        """The offset of the first record of (topic, partition) held (None: none)."""
        q = self._queues.get(partition, {}).get(topic)
        return q[0].record.offset if q else None

    def blocked_for(self, partition: int) -> float | None:
        """Seconds ``partition`` has been blocked by a lagging topic (None: not blocked)."""
        since = self._blocked_since.get(partition)
        return None if since is None else self._monotonic() - since

    def note(self, topic: str, partition: int, offset: int) -> None:
        """A record of (topic, partition) at ``offset`` was received."""
        key = (topic, partition)
        if offset + 1 > self._next.get(key, -1):
            self._next[key] = offset + 1

    def add(self, h: Held) -> None:
        """Queue a record; a record below one already queued (read again after a seek
        back) takes its place in offset order."""
        rec = h.record
        qs = self._queues.setdefault(rec.partition, {})
        q = qs.get(rec.topic)
        if q is None:
            q = qs[rec.topic] = deque()
        if q and rec.offset < q[-1].record.offset:
            i = len(q)
            while i > 0 and q[i - 1].record.offset > rec.offset:
                i -= 1
            q.insert(i, h)
        else:
            q.append(h)
        self.held += 1

    def forget(self, partitions: Iterable[int]) -> list[Held]:
        """Drop (and return) what is held for ``partitions`` and their read positions."""
        gone: list[Held] = []
        for p in set(partitions):
            for q in self._queues.pop(p, {}).values():
                gone.extend(q)
            self._blocked_since.pop(p, None)
            for t in self.topics:
                self._next.pop((t, p), None)
        self.held -= len(gone)
        return gone

    def caught_up(
        self,
        topic: str,
        partition: int,
        highwater: Callable[[str, int], int | None],
        committed: Callable[[str, int], int | None],
    ) -> bool:
        hw = highwater(topic, partition)
        if hw is None:
            return False
        if hw <= 0:
            return True
        nxt = self._next.get((topic, partition))
        if nxt is None:
            nxt = committed(topic, partition)
        return nxt is not None and nxt >= hw

    def release(
        self,
        highwater: Callable[[str, int], int | None],
        committed: Callable[[str, int], int | None],
        force: bool = False,
        holds: Mapping[tuple[str, int], int] | None = None,
    ) -> list[Held]:
        """The records to apply now, in event-time order per partition number.
        ``holds`` maps (topic, partition) to an offset whose record is missing and being
        read again: while a queued record of that topic-partition lies past it, nothing
        of that partition number is released (``force`` releases all the same)."""
        out: list[Held] = []
        now = self._monotonic()
        rank = self._rank
        for p in sorted(self._queues):
            qs = self._queues[p]
            timed_out = False
            limits = {} if force or not holds else {
                t: holds[(t, p)] for t in qs if (t, p) in holds
            }  # fmt: skip
            while True:
                if limits and any(qs[t] and qs[t][0].record.offset > n for t, n in limits.items()):
                    break
                heads = [(q[0].time, rank[t], t) for t, q in qs.items() if q]
                if not heads:
                    self._blocked_since.pop(p, None)
                    break
                if not force and len(heads) < len(self.topics):
                    blocked = any(
                        not qs.get(t) and not self.caught_up(t, p, highwater, committed)
                        for t in self.topics
                    )
                    if blocked:
                        since = self._blocked_since.setdefault(p, now)
                        idle = now - max(since, self._busy_at)
                        if idle < self.max_wait_s and now - since < self.HARD_CAP * self.max_wait_s:
                            break
                        if not timed_out:
                            timed_out = True
                            self.timeouts += 1
                    else:
                        self._blocked_since.pop(p, None)
                else:
                    self._blocked_since.pop(p, None)
                _, _, t = min(heads)
                out.append(qs[t].popleft())
        self.held -= len(out)
        return out


class Checkpoint(msgspec.Struct, kw_only=True):
    """What the changelog holds per account.

    * ``state``: the engine state after the step that wrote it;
    * ``config``: the account's configuration from its last ``account.configured`` event
      (None when only the YAML configures it). It is not part of :class:`AccountState`,
      and the event that set it is in the state's dedupe set, so after a restart it would
      be skipped as a duplicate and the configuration lost without this field;
    * ``pending``: everything that step produced for the account (facts, output events,
      engine rejections; each as (type name, msgpack)). The checkpoint is written
      *before* they are flushed and published (write-ahead), and a restore flushes and
      publishes them again, so the engine state never falls behind what ClickHouse and the
      output topics have seen (see :mod:`metering.stream.app`);
    * ``positions``: per input topic, the offset of the account's partition below which
      every record was applied. Records are released from each topic-partition in the
      order they arrive, so a re-delivered record of this account below that offset is
      already in ``state`` and is skipped. (The engine's dedupe set would catch most of
      them, but only within the dedupe horizon of *event* time, and a backlog can hold
      days of event time between two offset commits.) The floor never passes the
      *frontier* of the worker's delivery guard (the lowest offset not received yet,
      from the committed one on: a record lost on the way is not taken for applied),
      nor, after records arrived out of offset order (the consumer sought back;
      ``metering_records_out_of_order_total``), the lowest offset still held.
    """

    state: AccountState
    config: AccountData | None = None
    pending: list[tuple[str, bytes]] = msgspec.field(default_factory=list)
    #: input topic -> offset (of the account's partition) below which every record had
    #: been applied when this checkpoint was written: re-delivered records below it are
    #: skipped by offset, whatever their event time
    positions: dict[str, int] = msgspec.field(default_factory=dict)


PENDING_TYPES: dict[str, type[Any]] = {
    t.__name__: t for t in (*get_args(Fact), OutputEvent, Rejection)
}
_item_encoder = msgspec.msgpack.Encoder()
_item_decoders = {name: msgspec.msgpack.Decoder(t) for name, t in PENDING_TYPES.items()}


def encode_item(item: Any) -> tuple[str, bytes]:
    """One fact / output event / rejection as (type name, msgpack)."""
    return type(item).__name__, _item_encoder.encode(item)


def decode_item(kind: str, blob: bytes) -> Any:
    return _item_decoders[kind].decode(blob)


_cp_encoder = msgspec.msgpack.Encoder()
_cp_decoder = msgspec.msgpack.Decoder(Checkpoint)


def encode_checkpoint(cp: Checkpoint, compression: str = "zlib") -> bytes:
    """One byte of format (0 = msgpack, 1 = zlib'd msgpack), then the payload."""
    raw = _cp_encoder.encode(cp)
    if compression == "zlib":
        return _ZLIB + zlib.compress(raw, 1)
    return _RAW + raw


def decode_checkpoint(blob: bytes) -> Checkpoint:
    head, body = blob[:1], blob[1:]
    if head == _ZLIB:
        return _cp_decoder.decode(zlib.decompress(body))
    if head == _RAW:
        return _cp_decoder.decode(body)
    raise ValueError(f"unknown checkpoint format byte {head!r}")


def _deadletter_id(*parts: object) -> str:
    return hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=12).hexdigest()


# ----------------------------------------------------------------------------- pipeline


class Pipeline:
    """Engine + sink + metrics of one worker (not thread-safe; one asyncio loop).

    ``lookup(account)`` returns the account's checkpoint bytes from the state table (or
    None); it is used to restore an account lazily when its first record arrives before
    the post-recovery restore ran.
    """

    def __init__(
        self,
        engine: Engine,
        sink: Any,
        metrics: WorkerMetrics,
        *,
        partitions: int,
        yaml_accounts: Mapping[str, AccountConfig],
        compression: str = "zlib",
        lookup: Callable[[str], bytes | None] | None = None,
        align_wait_s: float = 2.0,
        monotonic: Callable[[], float] = time.monotonic,
        frontier: Callable[[str, int], int | None] | None = None,
        holds: Callable[[], Mapping[tuple[str, int], int]] | None = None,
    ) -> None:
        self.engine = engine
        #: (topic, partition) -> the lowest offset not received yet in order (None:
        #: unknown); checkpoint floors never pass it
        self.frontier = frontier
        #: () -> {(topic, partition): offset of a missing record being read again}: the
        #: aligner holds that partition number meanwhile, so the record is applied in its
        #: place rather than late
        self.holds = holds
        self.sink = sink
        self.metrics = metrics
        self.partitions = partitions
        self.yaml_accounts = dict(yaml_accounts)
        self.compression = compression
        self.lookup = lookup
        self.decoder = Decoder()
        self.aligner = Aligner(INPUT_TOPICS, align_wait_s, monotonic)
        self._monotonic = monotonic
        self._passed: list[tuple[Record, Any]] = []
        self._dead: list[tuple[Rejection, str, int, int]] = []
        self._reroute: list[tuple[int, Outgoing]] = []  # (source partition, record)
        self._backlog_since: float | None = None
        #: records admitted since the last step began
        self.admitted_since_step = 0
        #: account -> the pending output of its restored checkpoint, to redo
        self._restored: dict[str, list[tuple[str, bytes]]] = {}
        #: account -> topic -> offset below which its records are in its restored state
        self.floors: dict[str, dict[str, int]] = {}
        #: (topic, partition) -> the offset after the highest record released/applied
        self.released: dict[tuple[str, int], int] = {}
        #: (topic, partition) that received a record below one received before, since
        #: their assignment (logged once each)
        self.disordered: set[tuple[str, int]] = set()
        #: accounts the engine holds (restored or created here)
        self.loaded: set[str] = set()
        #: account -> configuration from its last account.configured event
        self.event_configs: dict[str, AccountData] = {}
        #: account -> monotonic time its last event was processed
        self.last_seen: dict[str, float] = {}
        self._owners: dict[str, int] = {}
        #: (topic, type, verdict) -> its child of ``metrics.events`` (bounded labels)
        self._event_counters: dict[tuple[str, str, str], Any] = {}

    # ------------------------------------------------------------------ state
    def owner_partition(self, account: str) -> int:
        """The input partition of ``account`` (memoised: murmur2 is pure Python)."""
        p = self._owners.get(account)
        if p is None:
            p = self._owners[account] = partition_for(account, self.partitions)
        return p

    def restore(self, account: str, blob: bytes) -> None:
        """Adopt a checkpoint (after recovery, or lazily on the account's first record)."""
        cp = decode_checkpoint(blob)
        if cp.state.account != account:
            raise ValueError(f"checkpoint under key {account!r} holds {cp.state.account!r}")
        cfg: AccountConfig | None = None
        if cp.config is not None:
            self.event_configs[account] = cp.config
            try:
                cfg = resolve(account, cp.config)
            except AccountConfigError:  # pragma: no cover - it was valid when applied
                log.exception("cannot re-apply the stored configuration of %s", account)
        if cfg is None:
            cfg = self.yaml_accounts.get(account)
        if cfg is not None:
            # before restore(): configuring a held state would force a full re-sweep
            self.engine.configure(account, cfg)
        self.engine.restore(cp.state)
        if cp.pending:
            self._restored[account] = cp.pending
        if cp.positions:
            self.floors[account] = dict(cp.positions)
        trace(
            "restore %s floors=%s pending=%d watermark=%d",
            account, dict(cp.positions), len(cp.pending), cp.state.watermark,
        )  # fmt: skip
        self.loaded.add(account)
        self.last_seen[account] = self._monotonic()

    def ensure_loaded(self, account: str) -> None:
        if account in self.loaded:
            return
        blob = self.lookup(account) if self.lookup is not None else None
        trace("lazy load %s: checkpoint %s", account, "found" if blob is not None else "none")
        if blob is not None:
            self.restore(account, blob)
        self.loaded.add(account)

    def forget(self, accounts: Iterable[str]) -> list[str]:
        gone = [a for a in accounts if a in self.loaded]
        for account in gone:
            self.engine.forget(account, self.yaml_accounts.get(account))
            self.loaded.discard(account)
            self.event_configs.pop(account, None)
            self.last_seen.pop(account, None)
            self._owners.pop(account, None)
            self._restored.pop(account, None)
            self.floors.pop(account, None)
        self.metrics.forget_accounts(gone)
        self.metrics.accounts_owned.set(len(self.loaded))
        return gone

    def forget_partitions(self, partitions: set[int]) -> list[str]:
        """Drop the accounts of ``partitions`` (revoked) and anything still held for them
        (nothing normally: a forced step runs before revocation; records dropped here are
        not acked, so their offsets are not committed and the new owner reads them)."""
        self.aligner.forget(partitions)
        for key in [k for k in self.released if k[1] in partitions]:
            del self.released[key]
        self.disordered = {k for k in self.disordered if k[1] not in partitions}
        self._passed = [(r, t) for r, t in self._passed if r.partition not in partitions]
        self._dead = [d for d in self._dead if d[2] not in partitions]
        self._reroute = [(p, o) for p, o in self._reroute if p not in partitions]
        return self.forget([a for a in list(self.loaded) if self.owner_partition(a) in partitions])

    def checkpoints(self, work: Work) -> list[tuple[str, bytes]]:
        """(account, checkpoint bytes) for each account of ``work`` (sorted; loaded ones
        only), with the step's output for the account as ``pending``."""
        out = []
        for account in sorted(set(work.accounts)):
            if account not in self.loaded:
                continue
            p = self.owner_partition(account)
            positions = dict(self.floors.get(account, {}))
            for topic in INPUT_TOPICS:
                pos = self.released.get((topic, p))
                # a record read again after a seek back is held below released ones
                low = self.aligner.lowest_held(topic, p)
                if pos is not None and low is not None and low < pos:
                    pos = low
                cap = self.frontier(topic, p) if self.frontier is not None else None
                if pos is not None and cap is not None and cap < pos:
                    pos = cap
                if pos is not None and pos > positions.get(topic, -1):
                    positions[topic] = pos
            cp = Checkpoint(
                state=self.engine.state(account),
                config=self.event_configs.get(account),
                pending=work.pending.get(account, []),
                positions=positions,
            )
            trace("checkpoint %s floors=%s pending=%d", account, positions, len(cp.pending))
            blob = encode_checkpoint(cp, self.compression)
            self.metrics.checkpoint_bytes.observe(len(blob))
            out.append((account, blob))
        return out

    # ------------------------------------------------------------------ steps 1-4
    def admit(self, records: Sequence[tuple[Record, Any]]) -> None:
        """Commit-order step 1 for newly consumed records: decode each one.

        Each record comes with an opaque ``token`` (the Faust event) handed back in
        :attr:`Work.tokens` once the commit that covers the record is done. Valid events
        wait in the :class:`Aligner` until they can be released in event-time order;
        decoder rejections, rerouted records (a record on a partition other than its
        account's is re-produced keyed by its account, so the owner applies it) and
        tombstones go with the next :meth:`step`.
        """
        m = self.metrics
        m.batch_records.observe(len(records))
        decode = self.decoder.decode
        aligner = self.aligner
        aligner.busy()
        if self._backlog_since is None and records:
            self._backlog_since = self._monotonic()
        self.admitted_since_step += len(records)
        started = time.perf_counter()
        for rec, token in records:
            topic = rec.topic
            received = aligner.next_offset(topic, rec.partition)
            if received is not None and rec.offset < received:
                self._out_of_order(rec, received)
            aligner.note(topic, rec.partition, rec.offset)
            if rec.value is None:  # a compaction tombstone on cpaas.accounts: not an event
                self._passed.append((rec, token))
                continue
            ev = decode(rec.value, topic)
            if isinstance(ev, Rejection):
                self._dead.append((ev, topic, rec.partition, rec.offset))
                self._passed.append((rec, token))
                continue
            account = ev.subject
            if self.owner_partition(account) != rec.partition:
                m.rerouted.labels(topic).inc()
                out = Outgoing(topic, account.encode(), rec.value, "reroute")
                self._reroute.append((rec.partition, out))
                self._passed.append((rec, token))
                continue
            self.ensure_loaded(account)
            floor = self.floors.get(account)
            if floor is not None and rec.offset < floor.get(topic, -1):
                m.skipped.labels(topic).inc()  # re-delivered, already in the checkpoint
                if TRACING:
                    trace("skip %s/%d@%d %s", topic, rec.partition, rec.offset, account)
                self._passed.append((rec, token))
                continue
            aligner.add(Held(to_ms(ev.time), rec, ev, token))
        m.step_seconds.labels("decode").observe(time.perf_counter() - started)

    def _out_of_order(self, rec: Record, received: int) -> None:
        """A record below an offset already received from its partition: the consumer
        went back (a seek back after a record was lost). It is queued in offset order,
        and checkpoint floors stay below it until it is applied (:meth:`checkpoints`)."""
        key = (rec.topic, rec.partition)
        self.metrics.out_of_order.labels(rec.topic).inc()
        if key not in self.disordered:
            self.disordered.add(key)
            log.warning(
                "%s[%d]: offset %d received after offsets up to %d; checkpoint floors of "
                "this partition now wait for the records held",
                rec.topic,
                rec.partition,
                rec.offset,
                received - 1,
            )

    @property
    def backlog(self) -> int:
        """Admitted records not handled yet."""
        return self.aligner.held + len(self._passed)

    def backlog_age(self) -> float:
        """Seconds since the oldest record of the current backlog was admitted."""
        if self._backlog_since is None:
            return 0.0
        return self._monotonic() - self._backlog_since

    @property
    def has_restored(self) -> bool:
        return bool(self._restored)

    @property
    def pending(self) -> bool:
        """Whether a :meth:`step` has anything to do (admitted records not yet handled,
        or the output of a restored checkpoint to redo)."""
        return bool(self._passed or self.aligner.held or self._restored)

    def step(
        self,
        highwater: Callable[[str, int], int | None],
        committed: Callable[[str, int], int | None],
        force: bool = False,
    ) -> Work:
        """Commit-order steps 2-4: release what the aligner allows, process it, drain,
        and buffer everything in the sink. The caller then commits (flush, publish,
        checkpoint) and acks :attr:`Work.tokens`."""
        m = self.metrics
        work = Work()
        holds = self.holds() if self.holds is not None else None
        released = self.aligner.release(highwater, committed, force, holds)
        if TRACING and released:
            by_tp: dict[str, list[int]] = {}
            for h in released:
                by_tp.setdefault(f"{h.record.topic}/{h.record.partition}", []).append(
                    h.record.offset
                )
            trace("release %s", {k: ranges(v) for k, v in sorted(by_tp.items())})
        self._backlog_since = None if not self.aligner.held else self._monotonic()
        self.admitted_since_step = 0
        process = self.engine.process
        now = self._monotonic()
        started = time.perf_counter()
        done = self.released
        for h in released:
            rec, ev = h.record, h.event
            topic = rec.topic
            account = ev.subject
            key = (topic, rec.partition)
            if rec.offset + 1 > done.get(key, -1):
                done[key] = rec.offset + 1
            self.ensure_loaded(account)
            verdict = process(ev, rec.value or b"", topic)
            etype = event_type(ev)
            counter = self._event_counters.get((topic, etype, verdict))
            if counter is None:
                counter = m.events.labels(topic, etype, verdict)
                self._event_counters[(topic, etype, verdict)] = counter
            counter.inc()
            if verdict == "duplicate":
                m.duplicates.labels(topic).inc()
            elif (
                verdict == "accepted"
                and isinstance(ev, (CallStarted, CallCompleted))
                and ev.data.blocked
            ):
                m.calls_blocked.inc()
            elif verdict == "accepted" and isinstance(ev, AccountConfigured):
                self.event_configs[account] = ev.data
            self.last_seen[account] = now
            work.done(rec, h.token)
        for rec, token in self._passed:
            work.done(rec, token)
        processed = time.perf_counter()
        batch = self.engine.drain()
        drained = time.perf_counter()
        m.step_seconds.labels("process").observe(processed - started)
        m.step_seconds.labels("drain").observe(drained - processed)
        m.engine_seconds.observe(drained - started)
        m.align_timeouts.set(self.aligner.timeouts)
        m.backlog.set(self.backlog)
        dead, self._dead = self._dead, []
        work.outgoing.extend(out for _, out in self._reroute)
        self._reroute = []
        self._passed = []
        self._to_sink(batch, dead, work)
        return work

    def close_idle(self, now_ms: int, idle_after_s: float) -> Work:
        """Close, on the wall clock, the Interactions of accounts without events for
        ``idle_after_s`` seconds; drain and buffer like a batch."""
        cutoff = self._monotonic() - idle_after_s
        idle = [a for a in sorted(self.loaded) if self.last_seen.get(a, 0.0) <= cutoff]
        work = Work()
        if idle:
            self.engine.close_idle(now_ms, accounts=idle)
        batch = self.engine.drain()
        self._to_sink(batch, [], work)
        return work

    def _to_sink(
        self, batch: Batch, dead: list[tuple[Rejection, str, int, int]], work: Work
    ) -> None:
        """Buffer the step's output in the sink and as records to publish; collect it per
        account for the write-ahead checkpoint. The output of restored checkpoints goes
        first (anything newer for the same key replaces it)."""
        sink = self.sink
        m = self.metrics
        now_ms = int(time.time() * 1000)
        pending = work.pending
        restored, self._restored = self._restored, {}
        for account, items in restored.items():
            pending[account] = list(items)
            for kind, blob in items:
                item = decode_item(kind, blob)
                if isinstance(item, Rejection):
                    sink.add_dead_letter(item)
                    work.outgoing.append(self._deadletter(item, now_ms))
                else:
                    sink.add(item)
                    if isinstance(item, OutputEvent):
                        work.outgoing.append(self._output(item))
        for rej, topic, partition, offset in dead:
            sink.add_dead_letter(rej, topic, partition, offset)
            m.dead_letters.labels(rej.reason).inc()
            work.outgoing.append(self._deadletter(rej, now_ms, topic, partition, offset))
        for rej in batch.rejections:
            sink.add_dead_letter(rej)
            m.dead_letters.labels(rej.reason).inc()
            work.outgoing.append(self._deadletter(rej, now_ms))
            if rej.account:
                pending.setdefault(rej.account, []).append(encode_item(rej))
        sink.add_many(batch.facts)
        for fact in batch.facts:
            pending.setdefault(fact.account, []).append(encode_item(fact))
        sink.add_many(batch.outputs)
        for out in batch.outputs:
            pending.setdefault(out.account, []).append(encode_item(out))
            work.outgoing.append(self._output(out))
            if out.type == "interaction.opened":
                m.interactions_opened.inc()
            elif out.type == "interaction.closed":
                m.interactions_closed.labels(str(out.data.get("reason", "deadline"))).inc()
            elif out.type.startswith("fairuse."):
                rule = str(out.data.get("rule", ""))
                if rule in RULES:
                    m.fairuse_events.labels(rule, out.type).inc()
        work.accounts = sorted(set(batch.accounts) | restored.keys())
        work.restored = bool(restored)

    def _output(self, out: OutputEvent) -> Outgoing:
        try:
            value = encode(cloudevent(out.type, out.id, out.time, out.account, out.data))
        except msgspec.ValidationError:
            # an engine bug: publish it anyway (never drop), but say so loudly
            log.exception("output event %s %s does not fit its schema", out.type, out.id)
            value = msgspec.json.encode(
                {
                    "specversion": "1.0",
                    "id": out.id,
                    "source": "metering",
                    "type": out.type,
                    "time": ms_to_rfc3339(out.time),
                    "subject": out.account,
                    "data": out.data,
                }
            )
        return Outgoing(out.topic, out.account.encode(), value, out.type)

    def _deadletter(
        self,
        rej: Rejection,
        now_ms: int,
        topic: str | None = None,
        partition: int | None = None,
        offset: int | None = None,
    ) -> Outgoing:
        # deterministic ids: a re-delivered record is dead-lettered under the same id
        if topic is not None:
            ident = _deadletter_id("deadletter", rej.reason, topic, partition, offset)
        else:
            ident = _deadletter_id("deadletter", rej.reason, rej.raw.hex())
        data = deadletter_data(rej, topic=topic, partition=partition, offset=offset)
        value = encode(cloudevent("deadletter", ident, now_ms, rej.account or None, data))
        key = rej.account.encode() if rej.account else None
        return Outgoing(DEADLETTER_TOPIC, key, value, "deadletter")

    # ------------------------------------------------------------------ after a batch
    def observe_outputs(self, outgoing: Sequence[Outgoing]) -> None:
        m = self.metrics
        for o in outgoing:
            if o.type != "reroute":
                m.outputs.labels(o.topic, o.type).inc()

    def update_gauges(self, accounts: Iterable[str]) -> None:
        m = self.metrics
        for account in accounts:
            if account not in self.loaded:
                continue
            conc = self.live_concurrency(account)
            groups = {g: v["occupied"] for g, v in conc["trunk_groups"].items()}
            m.set_concurrency(account, conc["occupied"], groups)
            values: dict[str, float] = {}
            failing: dict[str, int] = {}
            warning: dict[str, int] = {}
            for row in self.fairuse(account)["rules"]:
                rule = row["rule"]
                v = float(row["value"])
                worse = max if RULES[rule].kind == "max" else min
                values[rule] = worse(values[rule], v) if rule in values else v
                failing[rule] = failing.get(rule, 0) + (row["status"] == "breach")
                warning[rule] = warning.get(rule, 0) + (row["status"] == "warning")
            m.set_fairuse(account, values, failing, warning)
        m.accounts_owned.set(len(self.loaded))

    # ------------------------------------------------------------------ queries
    def live_concurrency(self, account: str) -> dict[str, Any]:
        """Calls occupying ports now, i.e. at the account's watermark: start <= watermark
        < effective end (blocked calls never occupy), per capacity group and in total."""
        engine = self.engine
        st = engine.state(account)
        cfg = engine.config_of(account)
        w = st.watermark
        groups: dict[str, int] = {}
        total = 0
        for call in st.calls.values():
            if call.start is None or call.blocked or call.start > w:
                continue
            if w < engine.effective_end(call):
                total += 1
                groups[call.group] = groups.get(call.group, 0) + 1
        return {
            "account": account,
            "watermark": ms_to_rfc3339(w) if w > -(2**61) else None,
            "occupied": total,
            "trunk_groups": {
                g: {"occupied": n, "capacity": cfg.capacity_of(g)}
                for g, n in sorted(groups.items())
            },
        }

    def fairuse(self, account: str, cycle: str | None = None) -> dict[str, Any]:
        """Month-to-date fair-use values of the account's current cycle (the cycle of its
        watermark, or ``cycle``): every (rule, scope) with its counters and evaluation."""
        engine = self.engine
        st = engine.state(account)
        cfg = engine.config_of(account)
        if cycle is None:
            cycle = calendar_for(cfg.timezone).cycle_of(st.watermark) if st.cycles else None
        cs = st.cycles.get(cycle) if cycle is not None else None
        rows: list[dict[str, Any]] = []
        if cs is not None:
            account_minutes = sum(cs.minutes.values())
            for (rule, scope), c in sorted(engine.counters(cfg, cs).items()):
                ev = evaluate(rule, c.num, c.den, c.aux, account_minutes)
                row: dict[str, Any] = {
                    "rule": rule,
                    "scope": scope,
                    "value": ev.display_value(),
                    "threshold": threshold_value(rule),
                    "status": ev.status,
                    "charge_usd": f"{ev.charge:.2f}",
                    "counters": {"num": c.num, "den": c.den, "aux": c.aux},
                }
                if ev.acd_seconds is not None:
                    row["acd_seconds"] = round_ratio(ev.acd_seconds)
                rows.append(row)
        return {
            "account": account,
            "cycle": cycle,
            "timezone": cfg.timezone,
            "watermark": ms_to_rfc3339(st.watermark) if st.cycles else None,
            "rules": rows,
        }
