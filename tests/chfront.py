"""A ClickHouse HTTP interface in front of chDB, for tests (no ClickHouse server here).

Run it as its own process, so it can be killed and restarted like a server::

    python tests/chfront.py --db DIR --port PORT [--host 127.0.0.1]

Every request runs in chDB on ``DIR`` (one engine, one connection, requests serialized),
so ``metering ... --clickhouse-url http://127.0.0.1:PORT`` exercises the production path:
clickhouse-connect's HTTP client, its retries and its errors. What it serves, as
ClickHouse's HTTP interface does (and as far as clickhouse-connect uses it):

* ``GET /ping`` and ``GET /``: ``Ok.``;
* the query from the ``query`` URL parameter, the body, or both (the parameter, a
  newline, then the body), or from a ``multipart/form-data`` body (``query`` and
  ``param_*`` fields: clickhouse-connect switches to it for long bound parameters);
* ``param_NAME`` bound parameters (``{NAME:Type}`` in the query);
* ``database`` (``USE`` before the query; default ``default``), ``default_format``,
  ``query_id``; every other parameter that is not an HTTP-interface parameter is a
  setting, applied with ``SET`` for this request only;
* ``INSERT INTO ... FORMAT F`` followed by data (in the body, e.g. clickhouse-connect's
  Native blocks), written to a temporary file and run as
  ``INSERT INTO ... FROM INFILE 'file' FORMAT F``;
* request bodies compressed with ``Content-Encoding`` lz4, zstd, gzip, deflate (what
  clickhouse-connect sends by default); responses are never compressed (HTTP allows it
  whatever the client accepts);
* the result in the query's ``FORMAT`` (clickhouse-connect asks for Native), else in
  ``default_format`` (TabSeparated), with ``X-ClickHouse-Format`` only for statements
  that produce a result set (clickhouse-connect's ``command()`` tells DDL from an empty
  result by it), ``X-ClickHouse-Query-Id``, ``X-ClickHouse-Timezone`` and
  ``X-ClickHouse-Summary``;
* errors as ClickHouse sends them: the ``Code: N. DB::Exception: ... (NAME) (version
  V)`` text, ``X-ClickHouse-Exception-Code: N`` and the HTTP status of the code (400
  for syntax and bad arguments, 404 for unknown tables/databases, 500 otherwise).

Not served: sessions (``session_id`` is accepted and ignored: every request is
independent, settings included), users and passwords (any are accepted), external data,
the native ``compress``/``decompress`` block format, progress headers, HTTPS.

:func:`start_front` starts one as a subprocess and waits until it answers.
"""

from __future__ import annotations

import argparse
import email.parser
import email.policy
import gzip
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

__all__ = ["Answer", "ChFront", "FrontProcess", "serve", "start_front"]

# Parameters of the HTTP interface itself: never passed to the engine as settings.
HTTP_PARAMS = frozenset(
    {
        "query",
        "database",
        "default_format",
        "query_id",
        "session_id",
        "session_timeout",
        "session_check",
        "compress",
        "decompress",
        "buffer_size",
        "wait_end_of_query",
        "client_protocol_version",
        "quota_key",
        "user",
        "password",
        "role",
        "enable_http_compression",
        "http_zlib_compression_level",
        "send_progress_in_http_headers",
        "http_headers_progress_interval_ms",
        "cancel_http_readonly_queries_on_client_close",
        "http_native_compression_disable_checksumming_on_decompress",
        "add_http_cors_header",
    }
)

# ClickHouse error code -> HTTP status (a subset of ClickHouse's own mapping).
_STATUS_OF_CODE: dict[int, int] = {
    **dict.fromkeys((16, 46, 47, 50, 60, 81, 83, 179), 404),  # unknown column/table/db/...
    **dict.fromkeys((6, 27, 33, 36, 38, 41, 43, 53, 62, 70, 72, 115, 117, 456, 457), 400),
    **dict.fromkeys((192, 193, 194, 516), 401),  # unknown user, wrong password, ...
    48: 501,  # NOT_IMPLEMENTED
}
_CODE_RE = re.compile(r"Code:\s*(\d+)")
_INSERT_WITH_DATA = re.compile(
    rb"^\s*(INSERT\s+INTO\s.*?)\s+FORMAT\s+(\w+)[ \t]*(?:\r?\n)?", re.IGNORECASE | re.DOTALL
)
_TRAILING_FORMAT = re.compile(r"\bFORMAT\s+(\w+)\s*;?\s*$", re.IGNORECASE)
_SETTINGS_WORD = re.compile(r"\bSETTINGS\b", re.IGNORECASE)
_SETTING_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_HEAD_LIMIT = 1 << 16
_CONTENT_TYPES = {
    "Native": "application/octet-stream",
    "RowBinary": "application/octet-stream",
    "JSON": "application/json; charset=UTF-8",
    "JSONEachRow": "application/x-ndjson; charset=UTF-8",
    "TabSeparated": "text/tab-separated-values; charset=UTF-8",
    "TSV": "text/tab-separated-values; charset=UTF-8",
    "CSV": "text/csv; charset=UTF-8; header=absent",
}


class FrontError(Exception):
    """A request the front refuses, answered like a ClickHouse exception."""

    def __init__(self, code: int, name: str, message: str) -> None:
        super().__init__(f"Code: {code}. DB::Exception: {message}. ({name})")
        self.code = code


@dataclass
class Answer:
    """One HTTP response."""

    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def decompress(body: bytes, encoding: str) -> bytes:
    """A request body sent with ``Content-Encoding: encoding`` (concatenated frames
    included: clickhouse-connect compresses each Native block on its own)."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding == "gzip":
        return gzip.decompress(body)
    if encoding == "deflate":
        return zlib.decompress(body)
    if encoding == "lz4":
        import lz4.frame

        out = bytearray()
        rest = body
        while rest:
            d = lz4.frame.LZ4FrameDecompressor()
            out += d.decompress(rest)
            if not d.eof:
                raise FrontError(27, "CANNOT_PARSE_INPUT_ASSERTION_FAILED", "truncated lz4 frame")
            rest = d.unused_data
        return bytes(out)
    if encoding == "zstd":
        try:
            from compression import zstd  # type: ignore[import-not-found]  # Python 3.14+
        except ImportError:
            from backports import zstd  # type: ignore[no-redef]
        data: bytes = zstd.decompress(body)
        return data
    raise FrontError(48, "NOT_IMPLEMENTED", f"Unknown HTTP Content-Encoding {encoding!r}")


def parse_form(content_type: str, body: bytes) -> dict[str, str]:
    """The fields of a ``multipart/form-data`` body (clickhouse-connect's form encoding of
    the query and its bound parameters)."""
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    fields: dict[str, str] = {}
    for part in msg.iter_parts():  # type: ignore[attr-defined]  # a multipart message
        name = part.get_param("name", header="content-disposition")
        if part.get_param("filename", header="content-disposition") is not None:
            raise FrontError(48, "NOT_IMPLEMENTED", "external data is not supported by chfront")
        if not isinstance(name, str):
            raise FrontError(36, "BAD_ARGUMENTS", "a form field without a name")
        payload = part.get_payload(decode=True)
        fields[name] = payload.decode() if isinstance(payload, bytes) else str(payload)
    return fields


class ChFront:
    """Runs ClickHouse HTTP requests in chDB (thread-safe: one request at a time)."""

    def __init__(self, db_dir: str) -> None:
        import chdb

        self.path = os.path.realpath(os.path.abspath(db_dir))
        os.makedirs(self.path, exist_ok=True)
        self.conn: Any = chdb.connect(self.path)  # type: ignore[no-untyped-call]
        self.lock = threading.Lock()
        self.database: str | None = None
        self.applied: dict[str, str] = {}
        self.version, self.timezone = (
            self.conn.query("SELECT version(), timezone()", "TabSeparated")
            .bytes()
            .decode()
            .strip()
            .split("\t")
        )
        self.tmp = tempfile.mkdtemp(prefix="chfront-")

    def close(self) -> None:
        with self.lock:
            self.conn.close()

    # ------------------------------------------------------------------ requests
    def handle(self, params: Mapping[str, str], body: bytes) -> Answer:
        """One request: ``params`` from the URL (and form), ``body`` decompressed."""
        query_id = params.get("query_id") or str(uuid.uuid4())
        headers = {"X-ClickHouse-Query-Id": query_id, "X-ClickHouse-Timezone": self.timezone}
        started = time.perf_counter_ns()
        try:
            with self.lock:
                answer = self._run(params, body)
        except Exception as exc:  # every failure is answered, never raised
            return self._error(exc, headers)
        answer.headers.update(headers)
        summary = json.loads(answer.headers.get("X-ClickHouse-Summary", "{}"))
        summary["elapsed_ns"] = str(time.perf_counter_ns() - started)
        answer.headers["X-ClickHouse-Summary"] = json.dumps(summary, separators=(",", ":"))
        return answer

    def _error(self, exc: Exception, headers: dict[str, str]) -> Answer:
        text = str(exc).strip()
        idx = text.find("Code: ")
        text = text[idx:] if idx > 0 else text
        m = _CODE_RE.match(text)
        code = int(m.group(1)) if m else 1001
        if not m:
            text = f"Code: 1001. DB::Exception: {text}. (STD_EXCEPTION)"
        return Answer(
            _STATUS_OF_CODE.get(code, 500),
            f"{text} (version {self.version})\n".encode(),
            {
                **headers,
                "X-ClickHouse-Exception-Code": str(code),
                "Content-Type": "text/plain; charset=UTF-8",
            },
        )

    def _run(self, params: Mapping[str, str], body: bytes) -> Answer:
        if params.get("decompress") == "1":
            raise FrontError(48, "NOT_IMPLEMENTED", "decompress=1 is not supported by chfront")
        query = params.get("query", "")
        text = (query.encode() + b"\n" + body) if query and body else (query.encode() or body)
        if not text.strip():
            raise FrontError(62, "SYNTAX_ERROR", "Empty query")
        bound = {k[6:]: v for k, v in params.items() if k.startswith("param_")}
        settings = {
            k: v for k, v in params.items() if k not in HTTP_PARAMS and not k.startswith("param_")
        }
        self._use(params.get("database") or "default")
        self._apply(settings)
        insert = _INSERT_WITH_DATA.match(text[:_HEAD_LIMIT])
        if insert is not None:
            return self._insert(insert.group(1).decode(), insert.group(2).decode(), text, insert)
        sql = text.decode()
        trailing = _TRAILING_FORMAT.search(sql)
        if trailing is not None:
            fmt = trailing.group(1)
            result = self.conn.query(sql, fmt, params=bound)
            return self._result(result, fmt, result.bytes() or b"")
        fmt = params.get("default_format") or "TabSeparated"
        if fmt in ("TabSeparated", "TSV"):
            # a result set always has the names line, a statement without one has nothing
            result = self.conn.query(sql, "TabSeparatedWithNames", params=bound)
            out = result.bytes() or b""
            if not out:
                return self._result(result, None, b"")
            return self._result(result, fmt, out[out.find(b"\n") + 1 :])
        result = self.conn.query(sql, fmt, params=bound)
        out = result.bytes() or b""
        return self._result(result, fmt if out else None, out)

    def _insert(self, head: str, fmt: str, text: bytes, match: re.Match[bytes]) -> Answer:
        target, _, extra = (part.strip() for part in _split_settings(head))
        fd, path = tempfile.mkstemp(suffix=f".{fmt.lower()}", dir=self.tmp)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(memoryview(text)[match.end() :])
            settings = f" SETTINGS {extra}" if extra else ""
            sql = f"{target} FROM INFILE {_quote(path)}{settings} FORMAT {fmt}"
            result = self.conn.query(sql, "TabSeparated")
        finally:
            os.unlink(path)
        summary = {
            "read_rows": str(result.rows_read()),
            "read_bytes": str(result.bytes_read()),
            "written_rows": str(result.rows_read()),
            "written_bytes": str(result.bytes_read()),
        }
        return Answer(200, b"", {"X-ClickHouse-Summary": json.dumps(summary)})

    def _result(self, result: Any, fmt: str | None, out: bytes) -> Answer:
        summary = {
            "read_rows": str(result.rows_read()),
            "read_bytes": str(result.bytes_read()),
            "written_rows": "0",
            "written_bytes": "0",
        }
        headers = {"X-ClickHouse-Summary": json.dumps(summary)}
        if fmt is not None:
            headers["X-ClickHouse-Format"] = fmt
            headers["Content-Type"] = _CONTENT_TYPES.get(fmt, "text/plain; charset=UTF-8")
        else:
            headers["Content-Type"] = "text/plain; charset=UTF-8"
        return Answer(200, out, headers)

    def _use(self, database: str) -> None:
        if database != self.database:
            self.conn.query(f"USE `{database.replace('`', '``')}`", "TabSeparated")
            self.database = database

    def _apply(self, settings: Mapping[str, str]) -> None:
        """Make the engine's settings those of this request (and no earlier request's)."""
        for name in [n for n in self.applied if n not in settings]:
            self.conn.query(f"SET {name} = DEFAULT", "TabSeparated")
            del self.applied[name]
        for name, value in settings.items():
            if self.applied.get(name) == value:
                continue
            if not _SETTING_NAME.match(name):
                raise FrontError(115, "UNKNOWN_SETTING", f"Unknown setting {name!r}")
            self.conn.query(f"SET {name} = {_quote(value)}", "TabSeparated")
            self.applied[name] = value


def _split_settings(head: str) -> tuple[str, str, str]:
    """``INSERT INTO t (cols) SETTINGS a=1`` -> (``INSERT INTO t (cols)``, ``SETTINGS``,
    ``a=1``); FROM INFILE goes before the SETTINGS clause."""
    m = _SETTINGS_WORD.search(head)
    if m is None:
        return head, "", ""
    return head[: m.start()], "SETTINGS", head[m.end() :]


# ----------------------------------------------------------------------------- HTTP


def _handler(front: ChFront) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "chfront"

        def log_message(self, format: str, *args: Any) -> None:
            return  # quiet: tests read the worker's log, not this one

        def do_GET(self) -> None:
            self._serve(b"")

        def do_POST(self) -> None:
            try:
                body = self._read_body()
            except (OSError, ValueError) as exc:
                self._send(Answer(400, f"bad request body: {exc}\n".encode()))
                return
            self._serve(body)

        def _serve(self, body: bytes) -> None:
            url = urlsplit(self.path)
            params = dict(parse_qsl(url.query, keep_blank_values=True))
            if url.path.rstrip("/") in ("", "/ping") and "query" not in params and not body:
                self._send(Answer(200, b"Ok.\n", {"Content-Type": "text/html; charset=UTF-8"}))
                return
            try:
                body = decompress(body, self.headers.get("Content-Encoding", ""))
                content_type = self.headers.get("Content-Type", "")
                if content_type.startswith("multipart/form-data"):
                    params.update(parse_form(content_type, body))
                    body = b""
            except Exception as exc:
                self._send(front._error(exc, {}))
                return
            self._send(front.handle(params, body))

        def _read_body(self) -> bytes:
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                parts: list[bytes] = []
                while True:
                    size = int(self.rfile.readline(1 << 16).split(b";", 1)[0].strip() or b"0", 16)
                    if size == 0:
                        while self.rfile.readline(1 << 16) not in (b"\r\n", b"\n", b""):
                            pass  # trailers
                        return b"".join(parts)
                    parts.append(self.rfile.read(size))
                    self.rfile.readline(1 << 16)
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def _send(self, answer: Answer) -> None:
            self.send_response(answer.status)
            for name, value in answer.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(answer.body)))
            self.send_header("Keep-Alive", "timeout=30")
            self.end_headers()
            self.wfile.write(answer.body)

    return Handler


def serve(db_dir: str, host: str, port: int, *, ready: Callable[[], None] | None = None) -> None:
    """Serve until SIGTERM / SIGINT (then close chDB cleanly)."""
    front = ChFront(db_dir)
    server = ThreadingHTTPServer((host, port), _handler(front))
    server.daemon_threads = True

    def stop(signum: int, frame: Any) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if ready is not None:
        ready()
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        front.close()


# ----------------------------------------------------------------------------- process


@dataclass
class FrontProcess:
    """A ``python tests/chfront.py`` subprocess."""

    proc: subprocess.Popen[bytes]
    port: int
    db: Path
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL (a crash: chDB gets no chance to close)."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)

    def terminate(self, timeout_s: float = 30) -> int:
        """SIGTERM and wait (chDB closes the directory cleanly)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return int(self.proc.returncode)


def start_front(db: Path, port: int, log: Path, timeout_s: float = 60) -> FrontProcess:
    """Start a front on ``db`` and ``port`` and wait until it answers ``/ping``."""
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--db", str(db), "--port", str(port)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    front = FrontProcess(proc, port, db, log)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"chfront exited ({proc.returncode}):\n{front.tail()}")
        try:
            with urllib.request.urlopen(front.url + "/ping", timeout=2) as resp:
                if resp.read() == b"Ok.\n":
                    return front
        except (OSError, urllib.error.URLError):
            pass
        time.sleep(0.1)
    front.kill()
    raise RuntimeError(f"chfront did not answer within {timeout_s:.0f} s:\n{front.tail()}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", required=True, help="chDB directory")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)
    serve(
        args.db,
        args.host,
        args.port,
        ready=lambda: print(f"chfront: {args.db} on {args.host}:{args.port}", flush=True),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
