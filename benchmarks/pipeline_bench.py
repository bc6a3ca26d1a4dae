"""End-to-end figures of the streaming worker on the development broker (prints figures).

    .venv/bin/python benchmarks/pipeline_bench.py [--events 200000] [--batch-size 2000]
        [--rate 500] [--latency-seconds 30]

One run, one fresh Tansu broker, one worker subprocess (``python -m metering.stream``,
embedded profile, memory store, chDB in a temporary directory):

1. **throughput**: a simulated log of ``--events`` events is produced into the input
   topics first; then the worker is started and timed from "healthy" (joined, state
   recovered) until the group's committed offsets reach the end of every input
   partition, i.e. until every record is flushed to ClickHouse, published and
   checkpointed (statements ready). Events/s = records / that time.
2. **plain consumer**: in the same run, a plain aiokafka consumer (no group) reads the
   same input topics from the beginning to the end; its events/s, and the ratio
   worker / plain consumer. The plain consumer's time is roughly the broker's share of
   the worker's cost (fetching the same bytes from the same broker).
3. **latency**: with the worker caught up, ``message.sent`` events are produced at a
   steady ``--rate`` for ``--latency-seconds``, each opening a new Interaction; the
   worker publishes ``interaction.opened`` only after the flush to ClickHouse returned,
   so produce -> receipt of that output event is an upper bound of produce -> ClickHouse
   visibility. p50 / p99 / max.
4. **worker peak RSS** (``VmHWM``) and the worker's own per-step times from its
   ``/metrics`` (decode, process, drain, checkpoint, flush, publish).
5. **replay**: ``metering replay`` of the same log (the offline path), for reference.

Figures depend heavily on the machine (2 CPUs here, shared by the broker, the worker,
chDB's background merges and this script).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from metering.kafka.broker import DevBroker, free_port
from metering.kafka.offsets import committed_offsets
from metering.kafka.produce import make_producer, produce_lines
from metering.kafka.topics import INPUT_TOPICS, ensure_topics
from metering.simulate.accounts import make_accounts, write_accounts
from metering.simulate.config import SimulationConfig
from metering.simulate.generator import iter_events
from metering.stream.app import worker_topic_specs

PY = sys.executable
GROUP = "metering"


def say(msg: str) -> None:
    print(msg, flush=True)


def http(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return int(resp.status), resp.read()
    except OSError:
        return 0, b""


async def produce_all(bootstrap: str, lines: list[bytes]) -> float:
    producer = make_producer(bootstrap)
    await producer.start()
    started = time.perf_counter()
    try:
        await produce_lines(lines, producer)
    finally:
        await producer.stop()
    return time.perf_counter() - started


async def read_all(bootstrap: str, expected: int) -> tuple[float, dict[tuple[str, int], int]]:
    """Plain consumer: every record of the input topics; (seconds, end offsets)."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        *INPUT_TOPICS,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
    )
    started = time.perf_counter()
    await consumer.start()
    ends: dict[tuple[str, int], int] = {}
    n = 0
    try:
        while n < expected:
            got = await consumer.getmany(timeout_ms=1000, max_records=10_000)
            for tp, records in got.items():
                n += len(records)
                ends[(tp.topic, tp.partition)] = records[-1].offset + 1
    finally:
        await consumer.stop()
    return time.perf_counter() - started, ends


def wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"worker exited with {proc.returncode}")
        if http(url + "/health")[0] == 200:
            return
        time.sleep(0.05)
    raise SystemExit("worker not healthy in time")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def sink_phases(metrics: str) -> dict[str, float]:
    """phase -> seconds from metering_sink_phase_seconds_total."""
    out: dict[str, float] = {}
    for line in metrics.splitlines():
        if line.startswith("metering_sink_phase_seconds_total{"):
            phase = line.split('phase="', 1)[1].split('"', 1)[0]
            out[phase] = float(line.rsplit(" ", 1)[1])
    return out


def step_times(metrics: str) -> dict[str, tuple[float, float]]:
    """step -> (total seconds, count) from metering_batch_step_seconds."""
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    for line in metrics.splitlines():
        for suffix, target in (("_sum", sums), ("_count", counts)):
            head = f"metering_batch_step_seconds{suffix}{{"
            if line.startswith(head):
                step = line.split('step="', 1)[1].split('"', 1)[0]
                target[step] = float(line.rsplit(" ", 1)[1])
    return {s: (sums[s], counts.get(s, 0)) for s in sums}


async def latency_run(
    bootstrap: str, rate: float, seconds: float, cycle_time: datetime
) -> list[float]:
    """Produce message.sent at ``rate``/s; measure produce -> interaction.opened receipt."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    n = int(rate * seconds)
    consumer = AIOKafkaConsumer(
        "metering.interactions", bootstrap_servers=bootstrap, auto_offset_reset="latest",
        enable_auto_commit=False, group_id=None,
    )  # fmt: skip
    await consumer.start()
    await consumer.seek_to_end()
    # Tansu's ListOffsets is off by a batch: make sure we are at the real end by draining
    while await consumer.getmany(timeout_ms=300):
        pass
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False,
                                acks="all", linger_ms=0)  # fmt: skip
    await producer.start()
    sent_at: dict[str, float] = {}
    seen: dict[str, float] = {}

    async def receive() -> None:
        while len(seen) < n:
            got = await consumer.getmany(timeout_ms=500)
            now = time.perf_counter()
            for records in got.values():
                for r in records:
                    ev = orjson.loads(r.value)
                    if ev.get("type") != "interaction.opened":
                        continue
                    remote = ev["data"].get("remote_address") or ""
                    if remote in sent_at and remote not in seen:
                        seen[remote] = now

    receiver = asyncio.ensure_future(receive())
    started = time.perf_counter()
    for i in range(n):
        target = started + i / rate
        delay = target - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        remote = f"+1555{i:07d}"
        t = (cycle_time + timedelta(seconds=i)).isoformat(timespec="milliseconds")
        value = orjson.dumps(
            {
                "specversion": "1.0", "id": f"lat-{i}", "source": "//bench",
                "type": "message.sent", "time": t.replace("+00:00", "Z"),
                "subject": "bench-latency",
                "data": {"message_id": f"lm-{i}", "channel": "sms",
                         "business_address": "+15550000000", "remote_address": remote},
            }
        )  # fmt: skip
        sent_at[remote] = time.perf_counter()
        await producer.send("cpaas.messaging", key=b"bench-latency", value=value)
    await producer.flush()
    try:
        await asyncio.wait_for(receiver, timeout=120)
    except TimeoutError:
        say(f"  (only {len(seen)} of {n} outputs arrived)")
    await producer.stop()
    await consumer.stop()
    return sorted(seen[k] - sent_at[k] for k in seen)


def worker_statements(url: str, lines: list[bytes]) -> dict[str, Any]:
    """Every statement the worker serves for the accounts and months of ``lines`` (a
    month either side of the events' range: cycles follow each account's time zone)."""
    accounts: set[str] = set()
    lo, hi = "9999-12", "0000-01"
    for line in lines:
        try:
            ev = orjson.loads(line)
            account, when = str(ev["subject"]), str(ev["time"])[:7]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            continue  # the log's malformed lines
        accounts.add(account)
        lo, hi = min(lo, when), max(hi, when)
    y, m = int(lo[:4]), int(lo[5:7]) - 1
    months: list[str] = []
    while True:
        if m == 0:
            y, m = y - 1, 12
        months.append(f"{y:04d}-{m:02d}")
        if months[-1] > hi:
            break
        y, m = (y + 1, 1) if m == 12 else (y, m + 1)
    out: dict[str, Any] = {}
    for account in sorted(accounts):
        for cycle in months:
            status, body = http(f"{url}/statements/{account}/{cycle}")
            if status == 200:
                out[f"{account}/{cycle}"] = orjson.loads(body)
    return out


def compare_statements(worker: dict[str, Any], replay_db: Path) -> list[str]:
    """Keys whose statement differs between the worker and ``metering replay``'s chDB."""
    from metering.storage.client import connect
    from metering.storage.reader import list_statements, read_statement

    client = connect(db_dir=str(replay_db), url=None)
    try:
        replay = {f"{a}/{c}": read_statement(client, a, c) for a, c in list_statements(client)}
    finally:
        client.close()
    keys = sorted(worker.keys() | replay.keys())
    return [k for k in keys if worker.get(k) != replay.get(k)]


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(q * len(values)))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--accounts", type=int, default=8)
    ap.add_argument("--days", type=float, default=3)
    ap.add_argument("--batch-size", type=int, default=50_000, help="worker --batch-size")
    ap.add_argument("--batch-window", type=float, default=1.0, help="worker --batch-window")
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--rate", type=float, default=200.0, help="latency run: events/s")
    ap.add_argument("--latency-seconds", type=float, default=30.0)
    ap.add_argument("--no-replay", action="store_true")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="pipeline-bench-"))
    cfg = SimulationConfig(seed=3, events=args.events, days=args.days, accounts=args.accounts)
    accounts_obj = make_accounts(cfg)
    accounts = tmp / "accounts.yaml"
    write_accounts(accounts, accounts_obj)
    t = time.perf_counter()
    lines = list(iter_events(cfg, accounts_obj))
    say(f"simulated {len(lines):,} events ({sum(map(len, lines)) / 1e6:.0f} MB) in "
        f"{time.perf_counter() - t:.1f}s; work dir {tmp}")  # fmt: skip

    with DevBroker() as broker:
        bootstrap = broker.bootstrap
        asyncio.run(ensure_topics(bootstrap, worker_topic_specs(args.partitions)))
        secs = asyncio.run(produce_all(bootstrap, lines))
        say(f"produced in {secs:.1f}s ({len(lines) / secs:,.0f} events/s)")

        plain_s, ends = asyncio.run(read_all(bootstrap, len(lines)))
        assert sum(ends.values()) == len(lines), (sum(ends.values()), len(lines))

        web = free_port()
        log = tmp / "worker.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("METERING_")}
        env.update(METERING_PROFILE="embedded", METERING_STATE_STORE="memory://",
                   METERING_LOG_LEVEL="WARNING")  # fmt: skip
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [PY, "-m", "metering.stream", "--bootstrap", bootstrap,
                 "--accounts", str(accounts), "--db", str(tmp / "db"),
                 "--web-port", str(web), "--partitions", str(args.partitions),
                 "--batch-size", str(args.batch_size),
                 "--batch-window", str(args.batch_window),
                 "--data-dir", str(tmp / "data")],
                stdout=out, stderr=subprocess.STDOUT, env=env,
            )  # fmt: skip
        url = f"http://127.0.0.1:{web}"
        try:
            t0 = time.perf_counter()
            wait_healthy(url, proc)
            healthy = time.perf_counter()
            while True:
                done = asyncio.run(
                    committed_offsets(bootstrap, GROUP, INPUT_TOPICS, args.partitions)
                )
                if all(done.get(tp, -1) >= end for tp, end in ends.items()):
                    break
                if proc.poll() is not None:
                    raise SystemExit(f"worker died:\n{log.read_text()[-3000:]}")
                time.sleep(0.25)
            worker_s = time.perf_counter() - healthy
            statements = worker_statements(url, lines)
            _, body = http(url + "/metrics")
            steps = step_times(body.decode())
            phases = sink_phases(body.decode())
            rss_after_backlog = peak_rss_mb(proc.pid)

            now = datetime.now(UTC).replace(microsecond=0)
            lat = asyncio.run(latency_run(bootstrap, args.rate, args.latency_seconds, now))
            rss = peak_rss_mb(proc.pid)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()

    n = len(lines)
    say("")
    say(f"worker start -> healthy        {healthy - t0:8.1f} s")
    say(f"worker, backlog of {n:,}      {worker_s:8.1f} s   {n / worker_s:10,.0f} events/s "
        "(healthy -> all committed: flushed, published, checkpointed)")  # fmt: skip
    say(f"plain aiokafka consumer       {plain_s:8.1f} s   {n / plain_s:10,.0f} events/s")
    say(f"ratio worker / plain           {worker_s / plain_s:8.1f} x slower; the broker "
        f"(fetching) is ~{100 * plain_s / worker_s:.0f}% of the worker's time")  # fmt: skip
    total = sum(s for s, _ in steps.values())
    say("worker time per step (sum over batches, from /metrics):")
    for step, (s, c) in sorted(steps.items(), key=lambda kv: -kv[1][0]):
        say(f"  {step:<14} {s:8.2f} s  {100 * s / worker_s:5.1f}% of the run  "
            f"({int(c)} batches, {1000 * s / max(c, 1):.1f} ms each)")  # fmt: skip
    say(f"  (steps total {total:.1f} s; the rest is Faust, fetching, aligning, acking)")
    flush_total = sum(phases.values())
    if flush_total:
        say("ClickHouse flush by phase (sink FlushStats):")
        top = sorted(phases.items(), key=lambda kv: -kv[1])
        for phase, sec in top[:6]:
            say(f"  {phase:<20} {sec:8.2f} s  {100 * sec / flush_total:5.1f}% of flush time")
    say(f"latency at {args.rate:.0f} events/s for {args.latency_seconds:.0f} s "
        f"(produce -> output published after the ClickHouse flush, n={len(lat)}): "
        f"p50 {1000 * pct(lat, 0.5):.0f} ms  p99 {1000 * pct(lat, 0.99):.0f} ms  "
        f"max {1000 * (lat[-1] if lat else float('nan')):.0f} ms "
        f"(batch window {args.batch_window:g} s)")  # fmt: skip
    if lat:
        say(f"  mean {1000 * statistics.fmean(lat):.0f} ms")
    say(f"worker peak RSS               {rss:8.0f} MB (after the backlog: "
        f"{rss_after_backlog:.0f} MB)")  # fmt: skip

    if not args.no_replay:
        log_path = tmp / "events.jsonl"
        log_path.write_bytes(b"\n".join(lines) + b"\n")
        t = time.perf_counter()
        replay_run = subprocess.run(
            [PY, "-m", "metering.cli", "replay", str(log_path), "--accounts", str(accounts),
             "--db", str(tmp / "replay-db"), "--quiet"],
            capture_output=True, text=True,
        )  # fmt: skip
        replay_s = time.perf_counter() - t
        if replay_run.returncode == 0:
            say(f"metering replay (offline)     {replay_s:8.1f} s   {n / replay_s:10,.0f} "
                "events/s (process start to end, chDB start included)")  # fmt: skip
            differing = compare_statements(statements, tmp / "replay-db")
            if differing:
                say(f"STATEMENTS DIFFER from the replay's: {differing[:10]}")
                return 1
            say(f"statements: all {len(statements)} equal to the replay's (worker's read over "
                "HTTP after the backlog)")  # fmt: skip
        else:
            say(f"replay failed: {replay_run.stderr[-500:]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
