"""``metering worker`` (the streaming worker) and ``metering up`` (a local streaming demo).

``metering worker --bootstrap HOST:PORT --accounts ACCOUNTS.yaml (--db DIR |
--clickhouse-url URL) [--web-port 6066] [--partitions 4]`` creates the topics, then runs
the Faust worker in this process until SIGTERM / SIGINT (both stop it cleanly: the
in-flight batch finishes and its offsets are committed). Every flag has an environment
variable (:mod:`metering.stream.settings`).

``metering up`` starts a development broker (Tansu), creates the topics, starts one worker
(``metering worker ... --db <workdir>/db`` as a subprocess), streams simulated traffic
(:mod:`metering.simulate`) into Kafka at a steady rate, prints where to look, and stops
everything on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

__all__ = ["add_up_arguments", "add_worker_arguments", "main", "run_up", "run_worker"]

log = logging.getLogger("metering.stream")


def _err(msg: str) -> None:
    print(f"metering: error: {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- worker


def add_worker_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``metering worker`` (each defaults to its environment variable)."""
    from metering.stream.settings import add_settings_arguments

    add_settings_arguments(parser)


def run_worker(args: argparse.Namespace) -> int:
    """Run the streaming worker until SIGTERM/SIGINT; returns the exit status."""
    import faust

    from metering.engine.accounts import AccountConfigError
    from metering.gctune import tune_gc
    from metering.kafka.topics import KafkaConfigError, TopicMismatchError
    from metering.storage.client import StorageError, StorageUnavailable
    from metering.stream.app import create_app, ensure_worker_topics, runtime_of
    from metering.stream.settings import SettingsError, WorkerSettings

    try:
        settings = WorkerSettings.from_args(args)
    except (SettingsError, KafkaConfigError) as exc:
        _err(str(exc))
        return 2
    tune_gc()
    logging.basicConfig(
        level=settings.log_level,
        format="[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s",
    )
    if settings.log_level == "INFO":
        # Faust and mode narrate every service start and stop at INFO; aiokafka's INFO
        # lines (group joins, assignments, retried commit errors) stay
        for name in ("faust", "mode"):
            logging.getLogger(name).setLevel(logging.WARNING)
    try:
        created = asyncio.run(ensure_worker_topics(settings))
    except (TopicMismatchError, TimeoutError, RuntimeError, OSError) as exc:
        _err(f"cannot prepare the Kafka topics at {settings.bootstrap}: {exc}")
        return 1
    if created:
        log.info("created topics: %s", ", ".join(created))
    try:
        app = create_app(settings)
    except AccountConfigError as exc:
        _err(str(exc))
        return 2
    rt = runtime_of(app)
    try:
        rt.connect_now()
    except StorageUnavailable as exc:
        log.warning("ClickHouse unavailable at start (%s): will retry when records come", exc)
    except StorageError as exc:
        _err(str(exc))
        rt.close()
        return 1
    log.info(
        "metering worker: Kafka %s, %d partitions, store %s, ClickHouse %s, "
        "HTTP http://%s:%d (profile %s)",
        settings.bootstrap,
        settings.partitions,
        settings.state_store,
        settings.db_dir or _redact(settings.clickhouse_url or ""),
        settings.web_host,
        settings.web_port,
        settings.profile,
    )
    worker = faust.Worker(
        app,
        loglevel=settings.log_level,
        quiet=True,
        redirect_stdouts=False,
        logging_config=None,
    )
    worker.spinner = None  # no terminal spinner (its escape codes garble logs)
    code: int = 0
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        rt.close()
    if app._crash_reason is not None:  # Faust (mode) keeps a crash's exception here
        _err(f"worker crashed: {app._crash_reason!r}")
        return code or 1
    return code


def _redact(url: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}:{parts.port}" if parts.hostname else url


def main(argv: list[str] | None = None) -> int:
    """``python -m metering.stream``: the worker (same flags as ``metering worker``)."""
    parser = argparse.ArgumentParser(
        prog="python -m metering.stream", description="the metering streaming worker"
    )
    add_worker_arguments(parser)
    return run_worker(parser.parse_args(argv))


# ----------------------------------------------------------------------------- up


def add_up_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``metering up``."""
    parser.add_argument(
        "--workdir",
        default=".metering",
        help="where the accounts YAML, the ClickHouse directory and the "
        "worker log go (default .metering)",
    )
    parser.add_argument(
        "--kafka-port",
        type=int,
        default=9092,
        help="port of the development broker (default 9092; 0 = any free)",
    )
    parser.add_argument("--web-port", type=int, default=6066, help="worker HTTP port")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument(
        "--rate",
        type=float,
        default=500.0,
        help="events per second streamed into Kafka (default 500)",
    )
    parser.add_argument(
        "--days", type=float, default=3.0, help="days of simulated traffic, ending now (default 3)"
    )
    parser.add_argument(
        "--events",
        type=int,
        default=100_000,
        help="approximate number of simulated events (default 100000)",
    )
    parser.add_argument("--accounts", type=int, default=6, help="simulated accounts")
    parser.add_argument("--seed", type=int, default=7)


def _get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()


def wait_http_ok(url: str, timeout_s: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Poll ``url`` until it answers 200 (RuntimeError on timeout or when ``proc`` died)."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the worker exited with status {proc.returncode}")
        try:
            status, body = _get(url)
            if status == 200:
                return
            last = f"HTTP {status}: {body[:200]!r}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.25)
    raise RuntimeError(f"{url} did not answer 200 within {timeout_s:.0f} s ({last})")


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _stop_process(proc: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def run_up(args: argparse.Namespace) -> int:
    """``metering up`` (see the module docstring)."""
    from metering.kafka.broker import BrokerError, DevBroker, free_port
    from metering.kafka.kcat import KcatProxy
    from metering.kafka.produce import make_producer, produce_lines
    from metering.kafka.topics import INPUT_TOPICS, OUTPUT_TOPICS, ensure_topics
    from metering.simulate.accounts import make_accounts, write_accounts
    from metering.simulate.config import SimulationConfig
    from metering.simulate.generator import iter_events
    from metering.stream.app import STATE_CHANGELOG_TOPIC, worker_topic_specs

    def say(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    sim = SimulationConfig(
        seed=args.seed,
        start=now - timedelta(days=args.days),
        days=args.days,
        accounts=args.accounts,
        events=args.events,
    )
    accounts_obj = make_accounts(sim)
    accounts_file = workdir / "accounts.yaml"
    write_accounts(accounts_file, accounts_obj)
    db = workdir / "db"
    worker_log = workdir / "worker.log"
    port = args.kafka_port or free_port()

    broker = DevBroker(port)
    proxy: KcatProxy | None = None
    worker: subprocess.Popen[bytes] | None = None
    interrupted = False

    def on_sigterm(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt  # stop like Ctrl-C

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        say(f"[1/4] starting the development broker (Tansu) on 127.0.0.1:{port}")
        try:
            broker.start()
        except BrokerError as exc:
            _err(f"{exc} (try --kafka-port 0 for any free port)")
            return 1
        bootstrap = broker.bootstrap
        say(f"[2/4] creating topics ({args.partitions} partitions each)")
        asyncio.run(ensure_topics(bootstrap, worker_topic_specs(args.partitions)))
        say(f"[3/4] starting the worker (log: {worker_log})")
        with worker_log.open("ab") as logf:
            worker = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "metering.stream",
                    "--bootstrap",
                    bootstrap,
                    "--accounts",
                    str(accounts_file),
                    "--db",
                    str(db),
                    "--web-port",
                    str(args.web_port),
                    "--partitions",
                    str(args.partitions),
                    "--data-dir",
                    str(workdir / "worker-data"),
                ],
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                env={**os.environ, "METERING_PROFILE": "embedded"},
            )
        web = f"http://127.0.0.1:{args.web_port}"
        try:
            wait_http_ok(f"{web}/health", 90, worker)
        except RuntimeError as exc:
            _err(f"{exc}\n--- worker log (tail) ---\n{_tail(worker_log)}")
            return 1
        try:
            proxy = KcatProxy(bootstrap).start()
        except Exception:  # kcat is a convenience only
            proxy = None
        first = next(iter(accounts_obj["accounts"]))
        cycle = now.strftime("%Y-%m")
        kcat_b = proxy.bootstrap if proxy is not None else bootstrap
        say(
            "\nmetering is up:\n"
            f"  Kafka (Tansu)     {bootstrap}\n"
            f"  input topics      {', '.join(INPUT_TOPICS)}\n"
            f"  output topics     {', '.join(OUTPUT_TOPICS)}\n"
            f"  state changelog   {STATE_CHANGELOG_TOPIC}\n"
            f"  health / ready    {web}/health   {web}/ready\n"
            f"  metrics           {web}/metrics\n"
            f"  statement         {web}/statements/{first}/{cycle}\n"
            f"  live concurrency  {web}/concurrency\n"
            f"  fair use          {web}/fairuse/{first}\n"
            f"  output events     kcat -b {kcat_b} -C -t metering.interactions -o beginning"
            + ("" if proxy is not None else "   (kcat < 2.1.1 needs metering.kafka.kcat)")
            + "\n"
            f"  dead letters      kcat -b {kcat_b} -C -t metering.deadletter -o beginning\n"
            f"  statement (CLI)   after Ctrl-C: metering statement --db {db} "
            f"--account {first} --cycle {cycle} --pretty\n"
            f"  worker log        {worker_log}\n"
        )
        say(
            f"[4/4] streaming ~{args.events:,} simulated events over {args.days:g} days "
            f"at {args.rate:,.0f}/s (Ctrl-C to stop)"
        )

        async def stream() -> int:
            producer = make_producer(bootstrap)
            await producer.start()
            try:
                return await produce_lines(
                    iter_events(sim, accounts_obj),
                    producer,
                    rate=args.rate,
                    progress=lambda s: say(f"  produced {s.lines:,} events ({s.rate:,.0f}/s)"),
                )
            finally:
                await producer.stop()

        sent = asyncio.run(stream())
        say(f"all {sent:,} simulated events produced; the worker keeps running (Ctrl-C to stop)")
        while worker.poll() is None:
            time.sleep(0.5)
        _err(f"the worker exited with status {worker.returncode}\n{_tail(worker_log)}")
        return 1
    except KeyboardInterrupt:
        interrupted = True
        say("\nstopping ...")
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)
        if worker is not None:
            _stop_process(worker)
        if proxy is not None:
            proxy.stop()
        broker.stop()
        if interrupted:
            say(f"stopped: worker, broker (its topics are gone; ClickHouse data stays in {db})")
