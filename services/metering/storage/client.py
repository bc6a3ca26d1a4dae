"""Opening a ClickHouse client: embedded chDB (a directory) or a server (a URL).

Both kinds are plain clickhouse-connect clients, so everything above this module writes
ordinary SQL that runs on either. :func:`connect` creates the database when it is missing
and selects it, so callers use unqualified table names.

chDB hosts one engine per process: a process can have several clients on the *same*
directory, but not clients on two different directories, and two processes cannot open
the same directory at once. Hold one client per process and close it before another
process opens the directory.
"""

from __future__ import annotations

import os
import re
from typing import Any
from urllib.parse import SplitResult, unquote, urlsplit, urlunsplit

import clickhouse_connect
from clickhouse_connect.driver import options as _driver_options
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError

# clickhouse-connect imports pandas (about a second) on the first insert, only to test
# whether the data is a DataFrame. This service never passes one: run as if pandas were
# not installed (the library's own state in that case).
_driver_options.pd = None  # type: ignore[attr-defined]
_driver_options.pd_time_test = None  # type: ignore[attr-defined]

__all__ = [
    "Client",
    "StorageError",
    "StorageUnavailable",
    "connect",
    "is_transient",
]

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

# ClickHouse error codes worth retrying: the server is alive but busy, overloaded or
# briefly unable to accept writes. Anything else (syntax, types, missing tables) is a bug
# and retrying would not help.
TRANSIENT_CODES: frozenset[int] = frozenset(
    {
        159,  # TIMEOUT_EXCEEDED
        164,  # READONLY (e.g. replica in readonly mode during a restart)
        202,  # TOO_MANY_SIMULTANEOUS_QUERIES
        209,  # SOCKET_TIMEOUT
        210,  # NETWORK_ERROR
        225,  # NO_ZOOKEEPER
        241,  # MEMORY_LIMIT_EXCEEDED
        242,  # TABLE_IS_READ_ONLY
        252,  # TOO_MANY_PARTS
        285,  # TOO_FEW_LIVE_REPLICAS
        319,  # UNKNOWN_STATUS_OF_INSERT
        394,  # QUERY_WAS_CANCELLED
        999,  # KEEPER_EXCEPTION
    }
)


class StorageError(RuntimeError):
    """The storage could not be opened or used (configuration or programming error)."""


class StorageUnavailable(StorageError):
    """The storage is (temporarily) unreachable or overloaded: back off and retry."""


def is_transient(exc: BaseException) -> bool:
    """Whether an exception from clickhouse-connect is worth retrying later."""
    if isinstance(exc, StorageUnavailable):
        return True
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    if isinstance(exc, OperationalError):
        return True  # transport failures: refused, reset, timeouts, DNS
    if isinstance(exc, DatabaseError):
        code = getattr(exc, "code", None)
        return code in TRANSIENT_CODES
    return False


def connect(
    db_dir: str | None = None,
    url: str | None = None,
    database: str = "metering",
    *,
    settings: dict[str, Any] | None = None,
) -> Client:
    """A clickhouse-connect client with ``database`` created (if missing) and selected.

    Exactly one of:

    - ``db_dir``: a directory for the embedded chDB engine (created if missing; made
      absolute, since chDB compares engine paths literally);
    - ``url``: a ClickHouse server, ``http[s]://user:password@host:port[/database][?setting=value]``.
      A database in the URL path wins over ``database``.

    Raises :class:`StorageUnavailable` when a server cannot be reached and
    :class:`StorageError` for anything else that prevents opening the storage.
    """
    if (db_dir is None) == (url is None):
        raise StorageError(
            "connect() needs exactly one of db_dir (embedded chDB directory) "
            "or url (ClickHouse server, e.g. http://user:pass@host:8123/metering)"
        )
    if url is not None:
        client, db = _connect_url(url, database, settings)
    else:
        assert db_dir is not None
        client, db = _connect_dir(db_dir, database, settings)
    try:
        _use_database(client, db)
    except Exception:
        client.close()
        raise
    return client


def _check_database(name: str) -> str:
    if not _IDENT.match(name):
        raise StorageError(f"invalid database name {name!r}: use letters, digits and underscores")
    return name


def _connect_dir(db_dir: str, database: str, settings: dict[str, Any] | None) -> tuple[Client, str]:
    db = _check_database(database)
    if not db_dir or db_dir.startswith(("chdb:", "http:", "https:")):
        raise StorageError(f"db_dir must be a directory path, got {db_dir!r} (pass URLs as url=)")
    path = os.path.realpath(os.path.abspath(os.path.expanduser(db_dir)))
    if os.path.exists(path) and not os.path.isdir(path):
        raise StorageError(f"chDB path {path} exists and is not a directory")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise StorageError(f"cannot create chDB directory {path}: {exc}") from exc
    try:
        client = clickhouse_connect.get_client(dsn=f"chdb://{path}", settings=settings or {})
    except ImportError as exc:
        raise StorageError(f"embedded ClickHouse needs the chdb package: {exc}") from exc
    except Exception as exc:
        raise StorageError(
            f"cannot open chDB at {path}: {exc}. chDB allows one engine directory per process "
            "and one process per directory; close other clients (or processes) using it first."
        ) from exc
    return client, db


def _redacted(parts: SplitResult) -> str:
    host = parts.hostname or "?"
    port = f":{parts.port}" if parts.port else ""
    user = f"{unquote(parts.username)}@" if parts.username else ""
    return f"{parts.scheme}://{user}{host}{port}"


def _connect_url(url: str, database: str, settings: dict[str, Any] | None) -> tuple[Client, str]:
    try:
        parts = urlsplit(url)
        _ = parts.port  # validates the port
    except ValueError as exc:
        raise StorageError(f"invalid ClickHouse URL: {exc}") from exc
    if parts.scheme not in ("http", "https"):
        raise StorageError(
            f"ClickHouse URL must start with http:// or https://, got {parts.scheme or 'no'} scheme"
        )
    if not parts.hostname:
        raise StorageError("ClickHouse URL has no host")
    path_db = unquote(parts.path.strip("/"))
    db = _check_database(path_db or database)
    # Connect without a database (it may not exist yet), then create and select it.
    dsn = urlunsplit((parts.scheme, parts.netloc, "", parts.query, ""))
    where = _redacted(parts)
    try:
        client = clickhouse_connect.get_client(dsn=dsn, settings=settings or {})
    except Exception as exc:
        if is_transient(exc):
            raise StorageUnavailable(f"cannot reach ClickHouse at {where}: {exc}") from exc
        raise StorageError(f"cannot connect to ClickHouse at {where}: {exc}") from exc
    return client, db


def _use_database(client: Client, db: str) -> None:
    try:
        client.command(f"CREATE DATABASE IF NOT EXISTS {db}")
    except Exception as exc:
        if is_transient(exc):
            raise StorageUnavailable(f"cannot create database {db}: {exc}") from exc
        # No CREATE permission is fine when the database already exists.
        exists = client.command(
            "SELECT count() FROM system.databases WHERE name = {db:String}",
            parameters={"db": db},
        )
        if str(exists).strip() in ("", "0"):
            raise StorageError(
                f"database {db} does not exist and cannot be created: {exc}"
            ) from exc
    client.database = db
