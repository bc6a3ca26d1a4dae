"""The streaming worker end to end: a real broker (Tansu, ``DevBroker``), real embedded
ClickHouse (chDB) in temporary directories, and the worker as a subprocess
(``python -m metering.stream``), exactly as it runs in production. Where Docker exists,
Apache Kafka and a ClickHouse server in containers instead (``tests/backends.py``;
``METERING_TEST_BACKEND=local|docker|auto``).

What "done" means here is never a sleep: a run is complete when the consumer group's
committed offsets (read from the broker) reach the end of every input partition. The
worker commits an offset only after the record's facts are flushed to ClickHouse, its
output events are published and its account's state is checkpointed, so at that point
ClickHouse holds everything.

chDB allows one process per directory, so statements are read after the worker has
exited (the worker holds its directory while it runs); while it runs, they are read
through its HTTP API. Two workers in one group each get their own directory (test 4).

The baseline is ``metering replay`` of the same log into another chDB directory.

Test 6 puts ClickHouse's HTTP interface in front of chDB (``tests/chfront.py``, a process
of its own) so the worker writes through ``--clickhouse-url`` as in production, and kills
it with SIGKILL mid-stream: the worker backs off, keeps its offsets, and catches up when
it comes back, with the replay's statements and rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from backends import (
    Backend,
    BackendUnavailable,
    Kafka,
    Selection,
    Storage,
    open_backend,
    select_backend,
)
from chfront import FrontProcess, start_front
from helpers import decode as decode_event
from helpers import message
from holes import produce_with_holes
from metering.engine.state import AccountState
from metering.kafka.broker import free_port
from metering.kafka.offsets import committed_offsets
from metering.kafka.produce import make_producer, produce_lines, route_line
from metering.kafka.topics import INPUT_TOPICS, ensure_topics
from metering.simulate.accounts import make_accounts, write_accounts
from metering.simulate.config import SimulationConfig, SimulationSummary
from metering.simulate.generator import iter_events
from metering.stream.app import STATE_CHANGELOG_TOPIC, worker_topic_specs
from metering.stream.pipeline import (
    Aligner,
    Checkpoint,
    Held,
    Record,
    decode_checkpoint,
    encode_checkpoint,
    partition_for,
)


def message_sent(message_id: str, time: str, account: str = "acct-1") -> bytes:
    return message("message.sent", time, message_id=message_id, account=account)


PY = sys.executable
PARTITIONS = 4
SLOW = pytest.mark.slow
"""End-to-end tests (a broker and worker processes, ~2 minutes in all). They run by default
(``make test``); deselect them with ``-m "not slow"``."""
GROUP = "metering"

# Every table is compared row for row (count ... FINAL) with the replay, except:
# - ``output_events`` and ``concurrency_minute``: their rows depend on where batches /
#   drains fell (notifications and per-minute peaks are published at drain points; a run
#   with other batch boundaries emits other intermediate peaks, and a minute that had a
#   live peak at one drain keeps a zero row after a later one);
# - the bookkeeping tables ``usage_dirty`` and ``schema_migrations``.
# The log's fixed October/November 2026 dates are past some retention limits: every
# database here has its retention switched off (``set_retention(False)``, stored with
# the tables), so the short-lived tiers are compared too.
NOT_COMPARED = (
    "output_events",
    "concurrency_minute",
    "usage_dirty",
    "schema_migrations",
)

DUMP = """
import json, sys
from metering.storage.client import connect
from metering.storage.reader import list_statements, read_statement
from metering.storage.schema import set_retention
client = connect(**{sys.argv[1]: sys.argv[2]})
set_retention(client, False)  # the log has fixed (old) dates, as `metering statement` does
skip = set(sys.argv[3].split(","))
tables = [r[0] for r in client.query(
    "SELECT name FROM system.tables WHERE database = currentDatabase() ORDER BY name"
).result_rows if r[0] not in skip]
statements = {f"{a}/{c}": read_statement(client, a, c) for a, c in list_statements(client)}
counts = {t: int(client.command(f"SELECT count() FROM {t} FINAL")) for t in tables}
print(json.dumps({"statements": statements, "counts": counts}))
"""


# ----------------------------------------------------------------------------- helpers


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def dump(storage: Storage) -> dict[str, Any]:
    """Every statement and the row counts of ``storage`` (in a subprocess: chDB is one
    directory per process). The statements are what ``metering statement`` prints (the
    same ``read_statement``); test 1 also checks one through the CLI itself."""
    ((kind, where),) = storage.connect_kwargs().items()
    out = subprocess.run(
        [PY, "-c", DUMP, kind, where, ",".join(NOT_COMPARED)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, f"reading {storage} failed:\n{out.stderr[-3000:]}"
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def http(url: str, timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status), dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), dict(exc.headers), exc.read()


def metric_sum(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


@dataclass
class Worker:
    """One ``python -m metering.stream`` subprocess."""

    proc: subprocess.Popen[bytes]
    web_port: int
    log: Path
    storage: Storage

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    def get(self, path: str) -> tuple[int, dict[str, str], bytes]:
        return http(self.url + path)

    def json(self, path: str) -> Any:
        status, _, body = self.get(path)
        assert status == 200, f"GET {path}: {status} {body[:300]!r}"
        return json.loads(body)

    def metrics(self) -> str:
        status, _, body = self.get("/metrics")
        assert status == 200
        return body.decode()

    def tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def wait_healthy(self, timeout_s: float = 90) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        last = ""
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"worker exited ({self.proc.returncode}):\n{self.tail()}")
            try:
                status, _, body = self.get("/health")
                if status == 200:
                    data: dict[str, Any] = json.loads(body)
                    return data
                last = f"{status} {body[:200]!r}"
            except OSError as exc:
                last = str(exc)
            time.sleep(0.1)
        pytest.fail(f"worker not healthy within {timeout_s:.0f} s ({last}):\n{self.tail()}")

    def terminate(self, timeout_s: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
                pytest.fail(f"worker did not stop on SIGTERM within {timeout_s:.0f} s")
        return int(self.proc.returncode)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def start_worker(
    kafka: Kafka,
    tmp: Path,
    name: str,
    accounts: Path | None,
    *,
    storage: Storage,
    web_port: int | None = None,
    extra: tuple[str, ...] = (),
    store: str = "memory://",
) -> Worker:
    web_port = web_port or free_port()
    log = tmp / f"{name}.log"
    cmd = [
        PY, "-m", "metering.stream",
        "--bootstrap", kafka.bootstrap,
        *storage.worker_args(),
        "--web-port", str(web_port),
        "--partitions", str(PARTITIONS),
        "--data-dir", str(tmp / f"{name}-data"),
        *(["--accounts", str(accounts)] if accounts else []),
        *extra,
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith(("METERING_", "KAFKA_"))}
    env.update(METERING_PROFILE=kafka.profile, METERING_STATE_STORE=store)
    if os.environ.get("METERING_TRACE"):  # the offset trace (metering.stream.trace)
        env["METERING_TRACE"] = os.environ["METERING_TRACE"]
    with log.open("ab") as out:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env
        )
    return Worker(proc, web_port, log, storage)


@contextlib.contextmanager
def workers() -> Iterator[list[Worker]]:
    """Collects started workers; kills any still running at the end (test failures)."""
    started: list[Worker] = []
    try:
        yield started
    finally:
        for w in started:
            w.kill()


async def _produce(bootstrap: str, lines: list[bytes]) -> int:
    producer = make_producer(bootstrap)
    await producer.start()
    try:
        return await produce_lines(lines, producer)
    finally:
        await producer.stop()


def produce(bootstrap: str, lines: list[bytes]) -> None:
    assert run(_produce(bootstrap, lines)) == len(lines)


async def _read_all(
    bootstrap: str, topics: tuple[str, ...], expected: int, timeout_s: float = 30
) -> list[Any]:
    """Every record of ``topics`` from the beginning, until ``expected`` were read."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        *topics, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
        enable_auto_commit=False, group_id=None,
    )  # fmt: skip
    await consumer.start()
    out: list[Any] = []
    try:
        deadline = time.monotonic() + timeout_s
        while len(out) < expected and time.monotonic() < deadline:
            got = await consumer.getmany(timeout_ms=500)
            for records in got.values():
                out.extend(records)
    finally:
        await consumer.stop()
    assert len(out) >= expected, f"read {len(out)} of {expected} records from {topics}"
    return out


def end_offsets(kafka: Kafka, n: int) -> dict[tuple[str, int], int]:
    """Exact end offset of every input partition once ``n`` records were produced: by
    reading them back on Tansu (its ListOffsets answer is wrong for multi-record batches),
    from ListOffsets on Apache Kafka."""
    if kafka.exact_end_offsets:
        ends = run(_list_end_offsets(kafka.bootstrap))
        assert sum(ends.values()) == n, f"{sum(ends.values())} records on the inputs, not {n}"
        return {tp: end for tp, end in ends.items() if end > 0}
    ends = {}
    for r in run(_read_all(kafka.bootstrap, INPUT_TOPICS, n)):
        key = (r.topic, r.partition)
        ends[key] = max(ends.get(key, 0), r.offset + 1)
    return ends


async def _list_end_offsets(bootstrap: str) -> dict[tuple[str, int], int]:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(t, p) for t in INPUT_TOPICS for p in range(PARTITIONS)]
        got = await consumer.end_offsets(tps)
        return {(tp.topic, tp.partition): int(end) for tp, end in got.items()}
    finally:
        await consumer.stop()


async def _committed(bootstrap: str) -> dict[tuple[str, int], int]:
    """The worker group's committed offsets of the input partitions."""
    return await committed_offsets(bootstrap, GROUP, INPUT_TOPICS, PARTITIONS)


def wait_committed(
    bootstrap: str,
    ends: dict[tuple[str, int], int],
    alive: list[Worker],
    timeout_s: float = 120,
) -> None:
    """Until the group's committed offsets reach ``ends`` (everything handled)."""
    deadline = time.monotonic() + timeout_s
    behind: dict[tuple[str, int], tuple[int, int]] = {}
    while time.monotonic() < deadline:
        for w in alive:
            if w.proc.poll() is not None:
                pytest.fail(f"worker exited ({w.proc.returncode}):\n{w.tail()}")
        committed = run(_committed(bootstrap))
        behind = {
            tp: (committed.get(tp, -1), end)
            for tp, end in ends.items()
            if committed.get(tp, -1) < end
        }
        if not behind:
            return
        time.sleep(0.5)
    logs = "\n".join(f"--- {w.log.name}\n{w.tail(30)}" for w in alive)
    reports = []
    for w in alive:
        try:
            report = json.dumps(w.json("/partitions?tasks=1"))
            reports.append(f"--- {w.log.name} /partitions\n{report}")
        except (OSError, AssertionError) as exc:
            reports.append(f"--- {w.log.name} /partitions: {exc}")
    pytest.fail(
        f"not all input consumed within {timeout_s:.0f} s; behind: {behind}\n{logs}\n"
        + "\n".join(reports)
    )


def differences(got: Any, want: Any, path: str = "") -> list[str]:
    """Readable paths where two JSON values differ."""
    if isinstance(got, dict) and isinstance(want, dict):
        out = []
        for k in sorted(set(got) | set(want), key=str):
            out += differences(got.get(k), want.get(k), f"{path}/{k}")
        return out
    if isinstance(got, list) and isinstance(want, list) and len(got) == len(want):
        return [d for i, (g, w) in enumerate(zip(got, want, strict=True))
                for d in differences(g, w, f"{path}[{i}]")]  # fmt: skip
    return [] if got == want else [f"{path}: got {got!r}, replay {want!r}"]


def compare_with_replay(
    got: dict[str, Any], replay: dict[str, Any], *, counts: bool = True
) -> None:
    assert got["statements"].keys() == replay["statements"].keys()
    diffs = [
        f"{key}{d}"
        for key, statement in replay["statements"].items()
        for d in differences(got["statements"][key], statement)
    ]
    assert not diffs, "statements differ from replay:\n" + "\n".join(diffs[:20])
    if counts:
        assert got["counts"] == replay["counts"]


# ----------------------------------------------------------------------------- fixtures


@dataclass
class SimLog:
    lines: list[bytes]
    accounts: Path
    summary: SimulationSummary
    replay_db: Path
    replay: dict[str, Any] = field(default_factory=dict)


@pytest.fixture(scope="module")
def sim_log(tmp_path_factory: pytest.TempPathFactory) -> SimLog:
    """~4.4k events of 6 accounts over 3 days (crossing a cycle boundary and the US end
    of DST), with duplicates, bounded disorder (a quarter of the events up to 13.5 min
    late) and malformed lines; and the replay of it into chDB."""
    tmp = tmp_path_factory.mktemp("stream-log")
    cfg = SimulationConfig(seed=11, events=4000, days=3, accounts=6, duplicate_rate=0.02)
    accounts_obj = make_accounts(cfg)
    accounts = tmp / "accounts.yaml"
    write_accounts(accounts, accounts_obj)
    summary = SimulationSummary()
    lines = list(iter_events(cfg, accounts_obj, summary))
    assert summary.duplicates > 0 and summary.malformed > 0
    log = tmp / "events.jsonl"
    log.write_bytes(b"\n".join(lines) + b"\n")
    rdb = tmp / "replay-db"
    out = subprocess.run(
        [PY, "-m", "metering.cli", "replay", str(log), "--accounts", str(accounts),
         "--db", str(rdb), "--quiet"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    sim = SimLog(lines, accounts, summary, rdb)
    sim.replay = dump(Storage(db=rdb))
    assert len(sim.replay["statements"]) >= 6
    return sim


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    """Kafka and ClickHouse from the backend ``tests/backends.py`` selects (the dev broker
    and chDB here; fails with the reason when METERING_TEST_BACKEND=docker and there is
    no Docker)."""
    try:
        selection: Selection | str = select_backend()
    except BackendUnavailable as exc:
        selection = str(exc)
    if isinstance(selection, str):
        pytest.fail(f"no backend for the stream tests: {selection}", pytrace=False)
    print(f"stream tests backend: {selection.kind} ({selection.reason})")
    with open_backend(selection, tmp_path_factory.mktemp("backend")) as b:
        yield b


@pytest.fixture
def broker(backend: Backend) -> Iterator[Kafka]:
    """A fresh broker for one test."""
    with backend.kafka() as kafka:
        yield kafka


# ----------------------------------------------------------------------------- unit tests


def test_partition_for_matches_the_producers_partitioner() -> None:
    """The worker's idea of an account's partition is Kafka's default partitioner (the
    one aiokafka, Faust's producer and the Java client use): murmur2 of the key."""
    from aiokafka.partitioner import DefaultPartitioner

    parts = list(range(PARTITIONS))
    for i in range(200):
        key = f"acct-{i}"
        assert partition_for(key, PARTITIONS) == DefaultPartitioner()(key.encode(), parts, parts)


def _held(topic: str, partition: int, offset: int, t: int) -> Held:
    ev = decode_event(message_sent("m", f"2026-11-10T12:00:{t:02d}.000Z"))
    return Held(t, Record(topic, partition, offset, None, b""), ev, (topic, offset))


def test_aligner_merges_topics_by_event_time_and_waits_for_lagging_ones() -> None:
    now = [0.0]
    al = Aligner(INPUT_TOPICS, max_wait_s=2.0, monotonic=lambda: now[0])
    voice, msg, sf, accts = INPUT_TOPICS
    for off, t in enumerate([10, 11, 30, 31]):
        al.add(_held(voice, 0, off, t))
        al.note(voice, 0, off)
    for off, t in enumerate([5, 20]):
        al.add(_held(msg, 0, off, t))
        al.note(msg, 0, off)
    hws = {(voice, 0): 4, (msg, 0): 3, (sf, 0): 0, (accts, 0): 0}

    def hw(t: str, p: int) -> int | None:
        return hws.get((t, p))

    def committed(t: str, p: int) -> int | None:
        return None

    # messaging has one more record (offset 2) not received yet: stop before its time
    got = [h.time for h in al.release(hw, committed)]
    assert got == [5, 10, 11, 20]
    assert al.held == 2
    # it stays blocked until the wait runs out ...
    now[0] = 1.0
    assert al.release(hw, committed) == []
    now[0] = 2.5
    assert [h.time for h in al.release(hw, committed)] == [30, 31]
    # ... or the lagging topic catches up
    al.add(_held(voice, 0, 4, 40))
    al.note(voice, 0, 4)
    hws[(voice, 0)] = 5
    now[0] = 3.0
    assert al.release(hw, committed) == []
    al.add(_held(msg, 0, 2, 35))
    al.note(msg, 0, 2)
    assert [h.time for h in al.release(hw, committed)] == [35, 40]
    # force releases everything, whatever lags
    al.add(_held(voice, 1, 0, 50))
    hws[(msg, 1)] = 9
    assert [h.time for h in al.release(hw, committed, force=True)] == [50]


def test_aligner_holds_a_partition_while_a_missing_record_is_read_again() -> None:
    """Records past a missing offset wait (the whole partition number waits, so the
    merge by event time stays right); the missing record, read again, takes its place in
    offset order and everything is released in order; ``force`` releases regardless."""
    al = Aligner(INPUT_TOPICS, max_wait_s=2.0, monotonic=lambda: 0.0)
    voice, msg = INPUT_TOPICS[0], INPUT_TOPICS[1]
    missing = {(voice, 0): 11}  # records of voice/0 past 11 wait

    def hw(t: str, p: int) -> int | None:
        return 0  # every topic caught up: only the gap holds

    def no_commit(t: str, p: int) -> int | None:
        return None

    for offset, t in ((10, 1), (12, 3), (13, 4)):
        al.add(_held(voice, 0, offset, t))
    al.add(_held(msg, 0, 0, 2))
    al.add(_held(voice, 1, 0, 5))  # another partition number is not held
    got = al.release(hw, no_commit, holds=missing)
    # voice/0@12 waits for 11, and with it all of partition 0 (11 may be earlier than
    # the messaging record in event time)
    assert [(h.record.topic, h.record.partition, h.record.offset) for h in got] == [
        (voice, 0, 10), (voice, 1, 0),
    ]  # fmt: skip
    al.add(_held(voice, 0, 11, 2))  # read again after the seek back: before 12
    del missing[(voice, 0)]
    got = al.release(hw, no_commit, holds=missing)
    assert [(h.record.topic, h.record.offset) for h in got] == [
        (voice, 11), (msg, 0), (voice, 12), (voice, 13),
    ]  # fmt: skip
    missing[(voice, 0)] = 20
    al.add(_held(voice, 0, 21, 9))
    assert al.release(hw, no_commit, holds=missing) == []
    assert [h.record.offset for h in al.release(hw, no_commit, True, missing)] == [21]


def test_checkpoint_round_trip() -> None:
    from metering.events.models import AccountData

    st = AccountState(account="acct-1", watermark=123, seen={"s\x1fid": 5})
    for compression in ("zlib", "none"):
        blob = encode_checkpoint(Checkpoint(state=st, config=AccountData()), compression)
        back = decode_checkpoint(blob)
        assert back.state == st and back.config == AccountData()


class _ListSink:
    """Collects what the pipeline buffers (stands in for ClickHouseSink)."""

    def __init__(self) -> None:
        self.items: list[Any] = []
        self.dead: list[Any] = []

    def add(self, item: Any) -> None:
        self.items.append(item)

    def add_many(self, items: Any) -> None:
        self.items.extend(items)

    def add_dead_letter(self, rej: Any, *args: Any) -> None:
        self.dead.append((rej, *args))


def _records(lines: list[bytes]) -> list[tuple[Record, Any]]:
    """The lines as records of the input topics, partitioned like the producer does."""
    offsets: dict[tuple[str, int], int] = {}
    out = []
    for i, line in enumerate(lines):
        topic, key = route_line(line)
        p = partition_for(key.decode(), PARTITIONS) if key else i % PARTITIONS
        off = offsets.get((topic, p), 0)
        offsets[(topic, p)] = off + 1
        out.append((Record(topic, p, off, key, line), (topic, p, off)))
    return out


Offsets = Callable[[str, int], int | None]


def _offline(
    sim_log: SimLog,
) -> tuple[list[tuple[Record, Any]], Offsets, Offsets, Callable[..., Any]]:
    """For pipeline tests without a broker: the log as records, its high watermarks, no
    committed offsets, and a factory of pipelines (``lookup`` optional)."""
    from metering.engine.accounts import load_accounts
    from metering.engine.engine import Engine
    from metering.stream.metrics import WorkerMetrics
    from metering.stream.pipeline import Pipeline

    accounts = load_accounts(sim_log.accounts)
    records = _records(sim_log.lines)
    ends: dict[tuple[str, int], int] = {}
    for rec, _ in records:
        ends[(rec.topic, rec.partition)] = rec.offset + 1

    def hw(t: str, p: int) -> int | None:
        return ends.get((t, p), 0)

    def no_commit(t: str, p: int) -> int | None:
        return None

    def pipeline(lookup: Any = None) -> Pipeline:
        return Pipeline(Engine(None, accounts), _ListSink(), WorkerMetrics(),
                        partitions=PARTITIONS, yaml_accounts=accounts, lookup=lookup)  # fmt: skip

    return records, hw, no_commit, pipeline


def test_restore_skips_applied_records_by_offset_and_redoes_pending_output(
    sim_log: SimLog,
) -> None:
    """Without a broker: a pipeline restored from checkpoints taken mid-log skips, by
    offset, every re-delivered record its accounts already applied (even beyond the
    dedupe horizon: the log spans 3 days), redoes the checkpoints' pending output, and
    ends with the statements of an uninterrupted run."""
    records, hw, no_commit, pipeline = _offline(sim_log)

    # uninterrupted
    full = pipeline()
    full.admit(records)
    full.step(hw, no_commit, force=True)
    # interrupted after ~60% of the log, checkpointed, restored, everything re-delivered
    cut = len(records) * 6 // 10
    first = pipeline()
    first.admit(records[:cut])
    work = first.step(hw, no_commit, force=True)
    saved = dict(first.checkpoints(work))
    assert saved and all(decode_checkpoint(b).pending for b in saved.values())
    second = pipeline(lambda account: saved.get(account))
    second.admit(records)  # from offset 0 again
    skipped = metric_sum(second.metrics.render().decode(), "metering_records_skipped_total")
    work2 = second.step(hw, no_commit, force=True)
    assert skipped >= sum(1 for r, _ in records[:cut] if r.key) * 0.9
    assert len(work2.tokens) == len(records)
    redone = {type(i).__name__ for i in second.sink.items}
    assert "RawEventFact" in redone  # the first run's pending facts, flushed again
    assert second.engine.accounts() == full.engine.accounts()
    for account in full.engine.accounts():
        assert second.engine.cycles_of(account) == full.engine.cycles_of(account)
        for cycle in full.engine.cycles_of(account):
            assert second.engine.statement_facts(account, cycle) == (
                full.engine.statement_facts(account, cycle)
            ), (account, cycle)


def test_checkpoint_floor_waits_for_records_received_out_of_offset_order(
    sim_log: SimLog,
) -> None:
    """Records of a partition arriving below offsets already received (the consumer
    seeking back) are counted, and until they are applied the checkpoints of that
    partition's accounts keep their offset floor below them: a restore must not skip
    them as applied."""
    from metering.stream.pipeline import Work

    records, hw, no_commit, pipeline = _offline(sim_log)
    voice = [r for r, _ in records if r.topic == "cpaas.voice" and r.key]
    tp = ("cpaas.voice", voice[0].partition)
    late = [(r, t) for r, t in records if (r.topic, r.partition) == tp][:20]
    early = [(r, t) for r, t in records if (r, t) not in late]
    account = late[0][0].key.decode()  # type: ignore[union-attr]
    end = hw(*tp)
    pl = pipeline()
    pl.admit(early)
    pl.step(hw, no_commit, force=True)
    ((_, blob),) = pl.checkpoints(Work(accounts=[account]))
    assert decode_checkpoint(blob).positions["cpaas.voice"] == end  # in order so far

    pl.admit(late)  # offsets 0..19 after offsets up to the end: a seek back
    text = pl.metrics.render().decode()
    assert metric_sum(text, "metering_records_out_of_order_total") == len(late)
    ((_, blob),) = pl.checkpoints(Work(accounts=[account]))
    assert decode_checkpoint(blob).positions["cpaas.voice"] == 0  # held: not applied yet

    pl.step(hw, no_commit, force=True)
    ((_, blob),) = pl.checkpoints(Work(accounts=[account]))
    assert decode_checkpoint(blob).positions["cpaas.voice"] == end


# ----------------------------------------------------------------------------- end to end


@SLOW
def _healthy_worker(
    ws: list[Worker], broker: Kafka, backend: Backend, sim_log: SimLog, tmp_path: Path
) -> Worker:
    """Worker "w1" with the log's accounts and 500-record batches, started and healthy."""
    w = start_worker(
        broker, tmp_path, "w1", sim_log.accounts, storage=backend.storage(tmp_path, "w1"),
        extra=("--batch-size", "500"),
    )  # fmt: skip
    ws.append(w)
    w.wait_healthy()
    return w


def test_1_worker_statements_equal_replay(
    sim_log: SimLog, backend: Backend, broker: Kafka, tmp_path: Path
) -> None:
    """(1) The generated log through Kafka and one worker gives the same statements as
    ``metering replay``, and the same rows in every drain-independent table."""
    bootstrap = broker.bootstrap
    with workers() as ws:
        w = _healthy_worker(ws, broker, backend, sim_log, tmp_path)
        produce(bootstrap, sim_log.lines)  # while the worker consumes
        ends = end_offsets(broker, len(sim_log.lines))
        wait_committed(bootstrap, ends, ws)

        # every record accounted for: consumed, and the bad ones dead-lettered
        text = w.metrics()
        assert metric_sum(text, "metering_records_consumed_total") == len(sim_log.lines)
        assert (
            metric_sum(text, "metering_dead_letters_total")
            == sim_log.replay["counts"]["dead_letters"]
        )
        # statements over HTTP while it runs
        for key, statement in list(sim_log.replay["statements"].items())[:3]:
            assert w.json(f"/statements/{key}") == statement

        # checkpoints land on the changelog partition numbered like the account's input
        # partition (so the assignor gives both to the same worker)
        inputs = run(_read_all(bootstrap, INPUT_TOPICS, len(sim_log.lines)))
        home: dict[str, set[int]] = {}
        for r in inputs:
            if r.key is not None:
                home.setdefault(r.key.decode(), set()).add(r.partition)
        changelog = run(_read_all(bootstrap, (STATE_CHANGELOG_TOPIC,), 1))
        seen_accounts = set()
        for r in changelog:
            account = r.key.decode()
            seen_accounts.add(account)
            assert home[account] == {r.partition} == {partition_for(account, PARTITIONS)}
            assert decode_checkpoint(r.value).state.account == account
        assert seen_accounts == set(home)

        assert w.terminate() == 0, w.tail()
    got = dump(w.storage)
    compare_with_replay(got, sim_log.replay)
    if w.storage.db is None:
        return  # `metering statement` reads a chDB directory
    # and `metering statement` prints the same JSON
    key = next(iter(sim_log.replay["statements"]))
    account, cycle = key.split("/")
    out = subprocess.run(
        [PY, "-m", "metering.cli", "statement", "--db", str(w.storage.db), "--account", account,
         "--cycle", cycle],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == sim_log.replay["statements"][key]


def test_8_offsets_missing_from_the_log_are_passed(
    sim_log: SimLog, backend: Backend, broker: Kafka, tmp_path: Path
) -> None:
    """(8) Offsets the broker's log does not have (compaction, transaction markers on
    Apache Kafka; made here with a batch whose offset deltas skip values) never come.
    The worker asks the broker, passes them without reading the partition again,
    commits through them, and its statements still equal the replay's."""
    if broker.profile != "embedded":
        pytest.skip("offset holes are made with a dev-broker batch (tests/holes.py)")
    bootstrap = broker.bootstrap
    # the last three lines of one messaging partition go in one batch with two holes
    routed = [(i, *route_line(line)) for i, line in enumerate(sim_log.lines)]
    topic = "cpaas.messaging"
    counts: dict[int, list[int]] = {}
    for i, t, k in routed:
        if t == topic and k is not None:
            counts.setdefault(partition_for(k.decode(), PARTITIONS), []).append(i)
    partition, idx = max(counts.items(), key=lambda kv: len(kv[1]))
    last = idx[-3:]
    in_batch = set(last)
    rest = [line for i, line in enumerate(sim_log.lines) if i not in in_batch]
    batch = [(routed[i][2], sim_log.lines[i]) for i in last]
    with workers() as ws:
        w = _healthy_worker(ws, broker, backend, sim_log, tmp_path)
        produce(bootstrap, rest)
        base = run(produce_with_holes(bootstrap, topic, partition, batch, [0, 2, 5]))
        ends = end_offsets(broker, len(sim_log.lines))
        assert ends[(topic, partition)] == base + 6
        wait_committed(bootstrap, ends, ws)
        text = w.metrics()
        assert metric_sum(text, "metering_offset_holes_total") == 3  # base+1, +3, +4
        # the broker's answer settled it: the partition was not read again
        assert metric_sum(text, "metering_partition_heals_total") == 0
        assert metric_sum(text, "metering_records_consumed_total") == len(sim_log.lines)
        report = w.json("/partitions")
        assert report["holes"] == 3, report
        (entry,) = [e for e in report["partitions"]
                    if (e["topic"], e["partition"]) == (topic, partition)]  # fmt: skip
        assert entry["frontier"] == base + 6, entry
        assert w.terminate() == 0, w.tail()
    compare_with_replay(dump(w.storage), sim_log.replay)


@SLOW
def test_2_sigkill_three_times_still_equals_replay(
    sim_log: SimLog, backend: Backend, broker: Kafka, tmp_path: Path
) -> None:
    """(2) SIGKILL the worker three times at random moments of the consumption and restart
    it (memory store: state comes back from the changelog on Tansu). Nothing is lost or
    counted twice: statements and row counts equal the replay's. The log is produced in
    four parts, one before each incarnation, so that each has records to consume when it
    is killed (with the whole log up front, one incarnation often consumed the rest and
    the later ones were killed idle)."""
    bootstrap = broker.bootstrap
    run(ensure_topics(bootstrap, worker_topic_specs(PARTITIONS)))
    lines = sim_log.lines
    parts = [lines[i * len(lines) // 4 : (i + 1) * len(lines) // 4] for i in range(4)]
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    db = backend.storage(tmp_path, "db")
    restored: list[int] = []
    kills = 0
    with workers() as ws:
        for incarnation in range(4):
            produce(bootstrap, parts[incarnation])
            w = start_worker(
                broker, tmp_path, f"w{incarnation}", sim_log.accounts, storage=db,
                extra=("--batch-size", "150"),
            )  # fmt: skip
            ws.append(w)
            health = w.wait_healthy()
            if incarnation:
                restored.append(int(health["accounts"]))
            if incarnation == 3:
                break
            # kill once this incarnation has committed at least one batch, a random
            # moment later (mid-batch, mid-flush, mid-checkpoint ...)
            target = rng.randrange(150, max(151, len(parts[incarnation]) * 3 // 4))
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if metric_sum(w.metrics(), "metering_records_consumed_total") >= target:
                    break
                if w.proc.poll() is not None:
                    pytest.fail(f"worker exited:\n{w.tail()}")
                time.sleep(0.05)
            time.sleep(rng.uniform(0, 0.4))
            w.kill()
            kills += 1
        ends = end_offsets(broker, len(lines))
        wait_committed(bootstrap, ends, [ws[-1]])
        assert ws[-1].terminate() == 0, ws[-1].tail()
    assert kills == 3
    # every restart found state to restore from the changelog
    assert all(n > 0 for n in restored), (restored, seed)
    got = dump(db)
    try:
        compare_with_replay(got, sim_log.replay)
    except AssertionError as exc:
        raise AssertionError(f"{exc} (random seed {seed})") from exc


@SLOW
def test_7_rocksdb_store_survives_sigkill(
    sim_log: SimLog, backend: Backend, broker: Kafka, tmp_path: Path
) -> None:
    """(7) The RocksDB state store (``rocksdb://``: Faust tables in RocksDB through
    rocksdict, under ``--data-dir``): a worker SIGKILLed mid-consumption and restarted on
    the same data directory restores its accounts and ends with the replay's statements
    and rows."""
    bootstrap = broker.bootstrap
    run(ensure_topics(bootstrap, worker_topic_specs(PARTITIONS)))
    produce(bootstrap, sim_log.lines)
    ends = end_offsets(broker, len(sim_log.lines))
    db = backend.storage(tmp_path, "db")
    data_dir = tmp_path / "rocks-data"
    with workers() as ws:
        w = start_worker(
            broker, tmp_path, "rocks", sim_log.accounts, storage=db, store="rocksdb://",
            extra=("--batch-size", "300"),
        )  # fmt: skip
        ws.append(w)
        w.wait_healthy()
        deadline = time.monotonic() + 60
        while metric_sum(w.metrics(), "metering_checkpoint_bytes_count") < 2:
            assert time.monotonic() < deadline, f"no checkpoint within 60 s:\n{w.tail()}"
            assert w.proc.poll() is None, f"worker exited:\n{w.tail()}"
            time.sleep(0.05)
        w.kill()
        stored = [f for f in data_dir.rglob("*") if f.is_file()]
        assert any(f.suffix == ".sst" or f.name.startswith("MANIFEST") for f in stored), stored
        w = start_worker(
            broker, tmp_path, "rocks", sim_log.accounts, storage=db, store="rocksdb://",
            extra=("--batch-size", "300"),
        )  # fmt: skip
        ws.append(w)
        assert int(w.wait_healthy()["accounts"]) > 0
        wait_committed(bootstrap, ends, [w])
        assert w.terminate() == 0, w.tail()
    compare_with_replay(dump(db), sim_log.replay)


@pytest.fixture(scope="module")
def solo(
    tmp_path_factory: pytest.TempPathFactory, backend: Backend
) -> Iterator[tuple[Kafka, Worker]]:
    """One broker and one worker (no accounts file) for the malformed-input and HTTP
    tests."""
    tmp = tmp_path_factory.mktemp("stream-solo")
    with backend.kafka() as b, workers() as ws:
        w = start_worker(b, tmp, "solo", None, storage=backend.storage(tmp, "solo"))
        ws.append(w)
        w.wait_healthy()
        yield b, w


async def _send(bootstrap: str, records: list[tuple[str, bytes | None, bytes]]) -> list[Any]:
    from aiokafka import AIOKafkaProducer

    p = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False, acks="all")
    await p.start()
    try:
        futs = [await p.send(topic, key=key, value=value) for topic, key, value in records]
        return list(await asyncio.gather(*futs))
    finally:
        await p.stop()


@SLOW
def test_3_malformed_input_is_dead_lettered_and_the_worker_keeps_going(
    solo: tuple[Kafka, Worker],
) -> None:
    """(3) Invalid JSON, an unknown type, a wrong topic and a schema error each land in
    metering.deadletter with the reason, the original bytes and their source
    topic/partition/offset; a valid event behind them is still metered."""
    broker, w = solo
    valid = message_sent("m-ok", "2026-11-10T12:00:00.000Z", account="acct-z")
    bad = [
        ("cpaas.voice", b"acct-z", b'{"specversion": "1.0", "id": '),
        ("cpaas.messaging", b"acct-z", message_sent("m1", "2026-11-10T12:00:00.000Z",
                                                    account="acct-z")
         .replace(b'"message.sent"', b'"message.teleported"')),
        ("cpaas.voice", b"acct-z", message_sent("m2", "2026-11-10T12:00:00.000Z",
                                                account="acct-z")),
        ("cpaas.voice", b"acct-z", b'{"specversion":"1.0","id":"x1","source":"//t",'
         b'"type":"call.started","time":"2026-11-10T12:00:00Z","subject":"acct-z",'
         b'"data":{"trunk_group":"tg-1"}}'),
    ]  # fmt: skip
    reasons = ["invalid_json", "unknown_type", "wrong_topic", "schema"]
    metas = run(_send(broker.bootstrap, [*bad, ("cpaas.messaging", b"acct-z", valid)]))
    letters = run(_read_all(broker.bootstrap, ("metering.deadletter",), len(bad), 60))
    by_offset = {}
    for r in letters:
        ev = json.loads(r.value)
        assert ev["type"] == "deadletter" and ev["source"] == "metering"
        by_offset[(ev["data"]["topic"], ev["data"]["partition"], ev["data"]["offset"])] = ev
    for (topic, _, value), meta, reason in zip(bad, metas[:4], reasons, strict=True):
        ev = by_offset[(topic, meta.partition, meta.offset)]
        assert ev["data"]["reason"] == reason
        assert ev["data"]["original"] == value.decode()
        assert ev["data"]["detail"]
    # the worker kept going: the valid event behind them is in its statement
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status, _, body = w.get("/statements/acct-z/2026-11")
        if status == 200:
            assert json.loads(body)["messages"]["total"] == 1
            break
        time.sleep(0.2)
    else:
        pytest.fail(f"the valid event was not metered:\n{w.tail()}")
    text = w.metrics()
    for reason in reasons:
        assert f'metering_dead_letters_total{{reason="{reason}"}} 1.0' in text


@SLOW
def test_5_http_api(solo: tuple[Kafka, Worker], backend: Backend, tmp_path: Path) -> None:
    """(5) /health, /ready, /metrics, /statements, /concurrency, /fairuse."""
    _, w = solo
    status, _, body = w.get("/health")
    assert status == 200 and json.loads(body)["status"] == "ok"
    status, _, body = w.get("/ready")
    assert status == 200 and json.loads(body)["status"] == "ready"
    status, headers, body = w.get("/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert b"# TYPE metering_records_consumed_total counter" in body
    assert b"metering_sink_up 1.0" in body
    status, _, body = w.get("/statements/nobody/2026-11")
    assert status == 404 and "nobody" in json.loads(body)["error"]
    status, _, body = w.get("/statements/acct-z/2031-01")
    assert status == 404 and "error" in json.loads(body)
    status, _, body = w.get("/statements/acct-z/2026-13")
    assert status == 400 and "YYYY-MM" in json.loads(body)["error"]
    status, _, body = w.get("/concurrency")
    assert status == 200 and "partitions" in json.loads(body)
    status, _, _ = w.get("/fairuse/nobody")
    assert status == 404
    status, _, body = w.get("/partitions")
    report = json.loads(body)
    assert status == 200 and report["consuming"] is True
    assert {(e["topic"], e["partition"]) for e in report["partitions"]} == {
        (t, p) for t in INPUT_TOPICS for p in range(PARTITIONS)
    }
    assert all(e["faust_paused"] is False and e["paused"] is False for e in report["partitions"])
    assert report["commit"]["group_generation"] >= 0 and report["commit"]["member_id"]
    # a new group has no committed offsets: Faust's seek after recovery left the input
    # partitions where they were; the worker sent them back to their beginning (the seek
    # can come just after /health turned 200: wait for it)
    n_inputs = len(INPUT_TOPICS) * PARTITIONS
    wait_until("the seek after recovery",
               lambda: w.json("/partitions")["rewound"] >= n_inputs, w, 20)  # fmt: skip
    report = w.json("/partitions")
    assert report["rewound"] >= n_inputs, report
    # the guard's frontier is known for every input partition once the seek ran, and
    # nothing is missing: it is not below what was received
    assert report["heals"] >= 0
    for e in report["partitions"]:
        assert isinstance(e["frontier"], int), e
        assert e["received"] is None or e["frontier"] >= e["received"], e
    with_tasks = w.json("/partitions?tasks=1")
    tasks = with_tasks["consumer_tasks"] + with_tasks["main_tasks"]
    assert tasks and all(isinstance(t, str) for t in tasks), tasks
    assert any("_commit_handler" in t for t in with_tasks["main_tasks"]), tasks
    assert report["commit"]["faust_commit_task"] is True

    # a worker whose ClickHouse is unreachable: healthy (consuming) but not ready
    with backend.kafka() as b2, workers() as ws:
        dead = Storage(url=f"http://127.0.0.1:{free_port()}")
        w2 = start_worker(b2, tmp_path, "no-ch", None, storage=dead)
        ws.append(w2)
        w2.wait_healthy()
        status, _, body = w2.get("/ready")
        assert status == 503
        answer = json.loads(body)
        assert answer["status"] == "not ready" and "ClickHouse" in answer["reason"]
        assert b"metering_sink_up 0.0" in w2.get("/metrics")[2]
        # records wait (never dropped) while ClickHouse is down; SIGTERM still stops it
        run(_send(b2.bootstrap, [("cpaas.messaging", b"acct-q", message_sent(
            "m-q", "2026-11-10T12:00:00.000Z", account="acct-q"))]))  # fmt: skip
        time.sleep(1.0)
        assert w2.get("/ready")[0] == 503
        p = partition_for("acct-q", PARTITIONS)
        # /partitions shows the record consumed and waiting, unacked, uncommitted
        (entry,) = [e for e in w2.json("/partitions")["partitions"]
                    if (e["topic"], e["partition"]) == ("cpaas.messaging", p)]  # fmt: skip
        assert entry["received"] == 1 and entry["unacked"] == 1, entry
        assert entry["acked_waiting"] == 0 and entry["committed"] in (None, 0), entry
        assert run(_committed(b2.bootstrap)).get(("cpaas.messaging", p), -1) <= 0
        assert w2.terminate() == 0, w2.tail()
        # nothing was acked, so nothing was committed: the record is consumed again
        assert run(_committed(b2.bootstrap)).get(("cpaas.messaging", p), -1) <= 0


@SLOW
def test_4_two_workers_split_the_partitions(
    sim_log: SimLog, backend: Backend, broker: Kafka, tmp_path: Path
) -> None:
    """(4) Two workers in one group each take half of the partitions and together give
    the replay's statements.

    chDB allows one process per directory, so each worker writes its own directory. The
    test waits until the group has settled on a 2 + 2 split before producing, so each
    account is metered by exactly one worker from its first event; the statements are
    then read from the directory of the worker that owns the account."""
    bootstrap = broker.bootstrap
    with workers() as ws:

        def start(name: str) -> Worker:
            storage = backend.storage(tmp_path, name)
            w = start_worker(broker, tmp_path, name, sim_log.accounts, storage=storage,
                             extra=("--batch-size", "500"))  # fmt: skip
            ws.append(w)
            w.wait_healthy()
            return w

        a = start("a")
        b = start("b")
        deadline = time.monotonic() + 60
        parts: list[list[int]] = []
        while time.monotonic() < deadline:
            parts = [w.json("/health")["partitions"] for w in (a, b)]
            split = sorted(parts[0] + parts[1]) == list(range(PARTITIONS)) and all(parts)
            if split and all(w.get("/ready")[0] == 200 for w in (a, b)):
                break
            time.sleep(0.2)
        else:
            pytest.fail(f"no stable split: {parts}\n{a.tail()}\n{b.tail()}")
        produce(bootstrap, sim_log.lines)
        ends = end_offsets(broker, len(sim_log.lines))
        wait_committed(bootstrap, ends, ws)
        # the split did not move while consuming
        assert [w.json("/health")["partitions"] for w in (a, b)] == parts
        # /fairuse is answered for any account by either worker (routed to the owner)
        owner_of = {
            acct: (a if partition_for(acct, PARTITIONS) in parts[0] else b)
            for acct in {k.split("/")[0] for k in sim_log.replay["statements"]}
        }
        for acct, owner in owner_of.items():
            other = b if owner is a else a
            assert other.json(f"/fairuse/{acct}") == owner.json(f"/fairuse/{acct}")
        assert a.terminate() == 0 and b.terminate() == 0
    got_a, got_b = dump(a.storage), dump(b.storage)
    merged: dict[str, Any] = {}
    for key in sim_log.replay["statements"]:
        owner = owner_of[key.split("/")[0]]
        merged[key] = (got_a if owner is a else got_b)["statements"][key]
        other_dump = got_b if owner is a else got_a
        assert key not in other_dump["statements"], f"{key} metered by both workers"
    assert merged == sim_log.replay["statements"]
    # each worker stored exactly its own accounts' rows
    for table, n in sim_log.replay["counts"].items():
        assert got_a["counts"][table] + got_b["counts"][table] == n, table


EVENT_KEYS = """
import json, sys
from metering.storage.client import connect
client = connect(db_dir=sys.argv[1])
rows = client.query("SELECT DISTINCT source, id FROM events_raw").result_rows
print(json.dumps([[s, i] for s, i in rows]))
"""


def event_keys(db: Path) -> set[tuple[str, str]]:
    """(source, id) of every event stored in the chDB directory ``db`` (a subprocess)."""
    out = subprocess.run([PY, "-c", EVENT_KEYS, str(db)], capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    assert out.returncode == 0, f"reading {db} failed:\n{out.stderr[-3000:]}"
    return {(s, i) for s, i in json.loads(out.stdout)}


def wait_until(what: str, cond: Any, w: Worker, timeout_s: float = 60) -> None:
    """Poll ``cond()`` until true (the worker must stay alive meanwhile)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if w.proc.poll() is not None:
            pytest.fail(f"worker exited ({w.proc.returncode}) waiting for {what}:\n{w.tail()}")
        if cond():
            return
        time.sleep(0.1)
    pytest.fail(f"{what}: not within {timeout_s:.0f} s\n{w.tail()}")


def retention_off(url: str) -> None:
    """Retention TTLs off on the server at ``url`` (``set_retention(False)``, as the chDB
    readers here do): the log has fixed dates, some older than a TTL."""
    from metering.storage.client import connect
    from metering.storage.schema import set_retention

    client = connect(url=url)
    try:
        set_retention(client, False)
    finally:
        client.close()


@SLOW
def test_6_clickhouse_outage_backs_off_and_catches_up(
    sim_log: SimLog, broker: Kafka, tmp_path: Path
) -> None:
    """(6) The worker writes to a ClickHouse server (the HTTP interface of
    ``tests/chfront.py`` over chDB, ``--clickhouse-url``), which is SIGKILLed while the
    worker consumes. The worker reports it (``/ready`` 503, ``metering_sink_up`` 0,
    ``metering_sink_retries_total`` growing), backs off and retries; it commits nothing
    more meanwhile (no record counted, every committed offset flushed) while the rest of
    the log arrives. ClickHouse comes back on the same data: the worker catches up, and
    the statements and rows equal the replay's (nothing lost, nothing doubled)."""
    bootstrap = broker.bootstrap
    lines = sim_log.lines
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    db, port = tmp_path / "front-db", free_port()
    fronts: list[FrontProcess] = [start_front(db, port, tmp_path / "front.log")]
    url = fronts[0].url
    try:
        with workers() as ws:
            w = start_worker(broker, tmp_path, "w", sim_log.accounts, storage=Storage(url=url),
                             extra=("--batch-size", "150"))  # fmt: skip
            ws.append(w)
            w.wait_healthy()
            wait_until("ready", lambda: w.get("/ready")[0] == 200, w)
            retention_off(url)  # the worker has created the tables

            def consumed() -> float:
                return metric_sum(w.metrics(), "metering_records_consumed_total")

            def retries() -> float:
                return metric_sum(w.metrics(), "metering_sink_retries_total")

            cut = len(lines) // 2
            produce(bootstrap, lines[:cut])
            # kill ClickHouse while the worker is busy (some batches committed)
            target = rng.randrange(150, 600)
            wait_until("first commits", lambda: consumed() >= target, w)
            time.sleep(rng.uniform(0, 0.3))
            fronts[0].kill()

            # the outage is reported, and retried
            wait_until("/ready 503", lambda: w.get("/ready")[0] == 503, w)
            status, _, body = w.get("/ready")
            assert status == 503 and "ClickHouse" in json.loads(body)["reason"]
            assert "metering_sink_up 0.0" in w.metrics()
            wait_until("a retried flush", lambda: retries() >= 1, w)
            frozen = consumed()
            assert 0 < frozen <= cut
            # the rest of the log arrives while ClickHouse is down
            produce(bootstrap, lines[cut:])
            ends = end_offsets(broker, len(lines))
            seen = retries()
            wait_until("more retries", lambda: retries() >= seen + 2, w)
            assert consumed() == frozen, "records were committed while ClickHouse was down"
            assert w.get("/ready")[0] == 503
            committed = run(_committed(bootstrap))
            assert sum(committed.values()) <= frozen
            assert any(committed.get(tp, 0) < end for tp, end in ends.items())
            # every record below a committed offset is in ClickHouse (read while the
            # server is down: the directory is free)
            below = {
                (ev["source"], ev["id"])
                for r in run(_read_all(bootstrap, INPUT_TOPICS, len(lines)))
                if r.offset < committed.get((r.topic, r.partition), 0)
                for ev in [_json_or_none(r.value)]
                if isinstance(ev, dict) and "source" in ev and "id" in ev
            }
            expected = below & event_keys(sim_log.replay_db)
            assert expected, "nothing was committed before the outage"
            missing = expected - event_keys(db)
            assert not missing, f"{len(missing)} committed events not in ClickHouse (seed {seed})"

            # ClickHouse comes back (same data directory, same port): the worker catches up
            fronts.append(start_front(db, port, tmp_path / "front.log"))
            retention_off(url)
            wait_committed(bootstrap, ends, ws)
            assert w.get("/ready")[0] == 200
            text = w.metrics()
            assert "metering_sink_up 1.0" in text
            assert metric_sum(text, "metering_records_consumed_total") == len(lines)
            assert w.terminate() == 0, w.tail()
        assert fronts[-1].terminate() == 0, fronts[-1].tail()
    finally:
        for front in fronts:
            front.kill()
    got = dump(Storage(db=db))
    try:
        compare_with_replay(got, sim_log.replay)
    except AssertionError as exc:
        raise AssertionError(f"{exc} (random seed {seed})") from exc


def _json_or_none(value: bytes) -> Any:
    try:
        return json.loads(value)
    except ValueError:
        return None
