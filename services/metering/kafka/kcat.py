"""kcat against the development broker: a protocol shim and small helpers for tests.

Why a shim
----------
Debian bookworm's ``kcat`` 1.7.1 is built on librdkafka 2.0.2, which skips KIP-482 tagged
fields by the wrong number of bytes (fixed upstream by librdkafka PR #4278, May 2023).
Apache Kafka omits tagged fields that hold their default value, so the bug rarely bites
there, but Tansu 0.6.0 writes all four ``ApiVersions`` v3 response tags (SupportedFeatures,
FinalizedFeaturesEpoch, FinalizedFeatures, ZkMigrationReady), and librdkafka 2.0.2 then
misreads the response and drops the connection ("ApiVersionRequest failed: Local: Read
underflow"). ``api.version.request=false`` does not help: that librdkafka still asks.

:class:`KcatProxy` is a tiny TCP proxy in front of a broker that

* removes the trailing tagged fields of ``ApiVersions`` responses (v3+), and
* rewrites the broker port in ``Metadata`` responses to the proxy's own port, so librdkafka
  also reaches the partition leader through the proxy.

Every other byte passes through unchanged. It is meant for one single-node development
broker (``DevBroker``) and for tests; it is not needed with Apache Kafka or a recent kcat.

Helpers: :func:`kcat_path`, :func:`kcat_metadata` (``kcat -L -J``) and
:func:`kcat_consume` (``kcat -C -o beginning -e``), each optionally through the proxy.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import struct
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any

__all__ = [
    "KcatError",
    "KcatProxy",
    "KcatRecord",
    "kcat_consume",
    "kcat_metadata",
    "kcat_path",
]

_API_VERSIONS = 18
_METADATA = 3
_METADATA_FLEXIBLE = 9
_API_VERSIONS_FLEXIBLE = 3


class KcatError(RuntimeError):
    """kcat is missing or failed."""


def kcat_path() -> str:
    """Path of the ``kcat`` executable (``kafkacat`` accepted); :class:`KcatError` if none."""
    for name in ("kcat", "kafkacat"):
        found = shutil.which(name)
        if found:
            return found
    raise KcatError("kcat is not installed (Debian/Ubuntu: apt-get install -y kcat)")


# ---------------------------------------------------------------------------- protocol


def _uvarint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7


def _skip_tags(buf: bytes, pos: int) -> int:
    count, pos = _uvarint(buf, pos)
    for _ in range(count):
        _, pos = _uvarint(buf, pos)
        size, pos = _uvarint(buf, pos)
        pos += size
    return pos


def fix_api_versions(body: bytes, version: int) -> bytes:
    """``ApiVersions`` response body (after the correlation id) without tagged fields."""
    if version < _API_VERSIONS_FLEXIBLE:
        return body
    out = bytearray(body[:2])  # error_code
    count, pos = _uvarint(body, 2)
    out += body[2:pos]  # api_keys count, unchanged
    for _ in range(max(count - 1, 0)):
        out += body[pos : pos + 6]  # api_key, min_version, max_version
        pos = _skip_tags(body, pos + 6)
        out.append(0)
    out += body[pos : pos + 4]  # throttle_time_ms
    out.append(0)  # no tagged fields
    return bytes(out)


def fix_metadata(body: bytes, version: int, ports: dict[int, int]) -> bytes:
    """``Metadata`` response body with each broker port looked up in ``ports``."""
    out = bytearray(body)
    pos = 0
    flexible = version >= _METADATA_FLEXIBLE
    if flexible:
        pos = _skip_tags(body, pos)  # response header v1 tagged fields
    if version >= 3:
        pos += 4  # throttle_time_ms
    if flexible:
        n, pos = _uvarint(body, pos)
        n -= 1
    else:
        (n,) = struct.unpack_from(">i", body, pos)
        pos += 4
    for _ in range(max(n, 0)):
        pos += 4  # node_id
        if flexible:
            size, pos = _uvarint(body, pos)
            pos += size - 1
        else:
            (size,) = struct.unpack_from(">h", body, pos)
            pos += 2 + size
        (port,) = struct.unpack_from(">i", body, pos)
        struct.pack_into(">i", out, pos, ports.get(port, port))
        pos += 4
        if version >= 1:  # rack
            if flexible:
                size, pos = _uvarint(body, pos)
                pos += max(size - 1, 0)
                pos = _skip_tags(body, pos)
            else:
                (size,) = struct.unpack_from(">h", body, pos)
                pos += 2 + max(size, 0)
    return bytes(out)


async def _read_frame(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readexactly(4)
    (size,) = struct.unpack(">i", head)
    return await reader.readexactly(size)


class KcatProxy:
    """A librdkafka-2.0-compatible front for a single-node broker (see the module doc).

    ``with KcatProxy("127.0.0.1:9092") as proxy: kcat -b proxy.bootstrap ...``.
    Runs its own event loop in a daemon thread, so it works from sync and async code.
    """

    def __init__(self, upstream: str, port: int = 0) -> None:
        host, _, port_text = upstream.rpartition(":")
        self.upstream_host = host or "127.0.0.1"
        self.upstream_port = int(port_text)
        self._want_port = port
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> KcatProxy:
        if self._thread is not None:
            return self
        self._thread = threading.Thread(target=self._run, name="kcat-proxy", daemon=True)
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise KcatError(f"kcat proxy failed to start: {self._error}")
        if not self._ready.is_set():
            raise KcatError("kcat proxy did not start within 10 s")
        return self

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            self._server = loop.run_until_complete(
                asyncio.start_server(self._handle, "127.0.0.1", self._want_port)
            )
            self.port = self._server.sockets[0].getsockname()[1]
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            self._server.close()
            loop.run_until_complete(self._server.wait_closed())
            loop.close()

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is not None and thread is not None and thread.is_alive():
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
        self._thread = None

    def __enter__(self) -> KcatProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def _handle(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        try:
            sreader, swriter = await asyncio.open_connection(self.upstream_host, self.upstream_port)
        except OSError:
            cwriter.close()
            return
        pending: dict[int, tuple[int, int]] = {}
        ports = {self.upstream_port: self.port}

        async def upstream() -> None:
            while True:
                frame = await _read_frame(creader)
                key, version, corr = struct.unpack_from(">hhi", frame)
                if key in (_API_VERSIONS, _METADATA):
                    pending[corr] = (key, version)
                swriter.write(struct.pack(">i", len(frame)) + frame)
                await swriter.drain()

        async def downstream() -> None:
            while True:
                frame = await _read_frame(sreader)
                (corr,) = struct.unpack_from(">i", frame)
                request = pending.pop(corr, None)
                if request is not None:
                    key, version = request
                    body = frame[4:]
                    if key == _API_VERSIONS:
                        body = fix_api_versions(body, version)
                    else:
                        body = fix_metadata(body, version, ports)
                    frame = frame[:4] + body
                cwriter.write(struct.pack(">i", len(frame)) + frame)
                await cwriter.drain()

        tasks = [asyncio.ensure_future(upstream()), asyncio.ensure_future(downstream())]
        with contextlib.suppress(Exception):
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            task.cancel()
        for writer in (cwriter, swriter):
            writer.close()


# ---------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def _through(bootstrap: str, proxy: bool) -> Iterator[str]:
    if not proxy:
        yield bootstrap
        return
    with KcatProxy(bootstrap) as p:
        yield p.bootstrap


def _run(args: list[str], timeout: float) -> bytes:
    try:
        done = subprocess.run(
            [kcat_path(), *args], capture_output=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise KcatError(f"kcat {' '.join(args)} timed out after {timeout} s") from exc
    if done.returncode != 0:
        err = done.stderr.decode(errors="replace").strip().splitlines()[-5:]
        raise KcatError(f"kcat {' '.join(args)} failed ({done.returncode}): {' | '.join(err)}")
    return done.stdout


def kcat_metadata(bootstrap: str, *, proxy: bool = True, timeout: float = 20) -> dict[str, Any]:
    """``kcat -L -J``: the cluster metadata as kcat reports it."""
    with _through(bootstrap, proxy) as boot:
        text = _run(["-b", boot, "-L", "-J", "-m", "10"], timeout)
    out: dict[str, Any] = json.loads(text)
    return out


@dataclass(frozen=True, slots=True)
class KcatRecord:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


def kcat_consume(
    bootstrap: str, topic: str, *, proxy: bool = True, timeout: float = 60
) -> list[KcatRecord]:
    """Every record of ``topic`` from the beginning to the current end (``-o beginning -e``).

    The output format carries explicit key and value lengths (``%K``/``%S``, -1 for null),
    so null keys are told apart from empty ones and arbitrary bytes survive.
    """
    fmt = "%t\t%p\t%o\t%K\t%k%S\t%s\n"
    with _through(bootstrap, proxy) as boot:
        args = ["-b", boot, "-C", "-t", topic, "-o", "beginning", "-e", "-q", "-f", fmt]
        raw = _run(args, timeout)
    records: list[KcatRecord] = []
    pos = 0
    while pos < len(raw):
        t_end = raw.index(b"\t", pos)
        t = raw[pos:t_end].decode()
        p_end = raw.index(b"\t", t_end + 1)
        part = int(raw[t_end + 1 : p_end])
        o_end = raw.index(b"\t", p_end + 1)
        off = int(raw[p_end + 1 : o_end])
        kl_end = raw.index(b"\t", o_end + 1)
        klen = int(raw[o_end + 1 : kl_end])
        kstart = kl_end + 1
        key = raw[kstart : kstart + klen] if klen >= 0 else None
        pos = kstart + max(klen, 0)
        vl_end = raw.index(b"\t", pos)
        vlen = int(raw[pos:vl_end])
        vstart = vl_end + 1
        value = raw[vstart : vstart + vlen] if vlen >= 0 else None
        pos = vstart + max(vlen, 0) + 1  # trailing newline
        records.append(KcatRecord(t, part, off, key, value))
    return records
