"""The test ClickHouse HTTP front (``tests/chfront.py``) through clickhouse-connect's HTTP
client, the production path of ``--clickhouse-url``: a bug of the front shows here rather
than as a puzzling difference in the streaming tests (test 6 of ``test_stream.py``)."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import clickhouse_connect
import pytest
from clickhouse_connect.driver.exceptions import DatabaseError

from chfront import FrontProcess, start_front
from metering.kafka.broker import free_port
from metering.storage.client import Client, StorageUnavailable, connect, is_transient

COLUMNS = ["id", "name", "at", "tags", "kind", "amount", "maybe"]
TABLE = """CREATE TABLE t (
    id UInt64, name String, at DateTime64(3, 'UTC'), tags Array(String),
    kind LowCardinality(String), amount Decimal(18, 6), maybe Nullable(Int32)
) ENGINE = MergeTree ORDER BY id"""


def rows(start: int, n: int) -> list[list[Any]]:
    return [
        [
            i,
            f"name-{i}\t'quoted'\n",
            datetime(2026, 11, 10, 12, 0, i % 60, (i % 1000) * 1000, tzinfo=UTC),
            [f"t{j}" for j in range(i % 4)],
            ("a", "b", "c")[i % 3],
            Decimal(i) / 8,  # exact in Decimal(18, 6)
            None if i % 5 == 0 else -i,
        ]
        for i in range(start, start + n)
    ]


def normalized(got: Sequence[Sequence[Any]]) -> list[list[Any]]:
    return [[*r[:2], r[2].replace(tzinfo=UTC), list(r[3]), *r[4:]] for r in got]


@pytest.fixture
def front(tmp_path: Path) -> Iterator[FrontProcess]:
    f = start_front(tmp_path / "db", free_port(), tmp_path / "front.log")
    try:
        yield f
    finally:
        f.kill()


def test_ping_and_plain_http(front: FrontProcess) -> None:
    with urllib.request.urlopen(front.url + "/ping", timeout=5) as resp:
        assert resp.read() == b"Ok.\n"
    with urllib.request.urlopen(front.url + "/?query=SELECT%201%2B1", timeout=5) as resp:
        assert resp.read() == b"2\n"
        assert resp.headers["X-ClickHouse-Format"] == "TabSeparated"
        assert resp.headers["X-ClickHouse-Query-Id"]


def test_inserts_and_selects_round_trip(front: FrontProcess) -> None:
    client = connect(url=front.url + "/roundtrip")
    try:
        assert client.command("SELECT currentDatabase()") == "roundtrip"
        client.command(TABLE)
        # the default client compresses inserts (lz4); every compression it offers, and none
        for i, compress in enumerate((True, "zstd", "gzip", False)):
            other = clickhouse_connect.get_client(dsn=front.url, compress=compress)
            other.database = "roundtrip"
            other.insert("t", rows(i * 1000, 700), column_names=COLUMNS)
            other.close()
        client.insert("t", rows(10_000, 3), column_names=COLUMNS)
        assert client.command("SELECT count() FROM t") == 4 * 700 + 3
        got = client.query(f"SELECT {', '.join(COLUMNS)} FROM t ORDER BY id").result_rows
        want = [r for i in range(4) for r in rows(i * 1000, 700)] + rows(10_000, 3)
        assert normalized(got) == want
        # column-oriented inserts, as the sink does (a reused insert context)
        ctx = client.create_insert_context("t", column_names=COLUMNS)
        ctx.column_oriented = True
        ctx.data = [list(col) for col in zip(*rows(20_000, 5), strict=True)]
        client.data_insert(ctx)
        assert client.command("SELECT count() FROM t WHERE id >= 20000") == 5
        # bound parameters: in the URL, and in a multipart form once they are long
        ids = list(range(0, 4000, 3))
        for chosen in (ids[:5], ids):
            got = client.query(
                "SELECT id FROM t WHERE id IN {ids:Array(UInt64)} AND kind != {k:String} "
                "ORDER BY id",
                parameters={"ids": chosen, "k": "zzz"},
            ).result_rows
            assert [r[0] for r in got] == [i for i in chosen if i % 1000 < 700]
        # command(): a result, an empty result, a statement without one
        assert client.command("SELECT sum(id) FROM t WHERE id < 3") == 3
        assert client.command("SELECT id FROM t WHERE id > 1e9") == ""
        assert not isinstance(client.command("ALTER TABLE t DELETE WHERE id = 1"), str | int)
        # per-request settings (not kept by later requests)
        assert client.command("SELECT getSetting('max_threads')", settings={"max_threads": 3}) == 3
        assert client.command("SELECT getSetting('max_threads')") != 3
    finally:
        client.close()


def test_errors_are_clickhouse_errors(front: FrontProcess) -> None:
    client = connect(url=front.url)
    try:
        with pytest.raises(DatabaseError) as unknown:
            client.query("SELECT * FROM no_such_table")
        assert unknown.value.code == 60 and "UNKNOWN_TABLE" in str(unknown.value)
        with pytest.raises(DatabaseError) as syntax:
            client.command("SELEKT 1")
        assert syntax.value.code == 62
        assert not is_transient(unknown.value) and not is_transient(syntax.value)
        assert client.command("SELECT 1") == 1  # the front is fine afterwards
    finally:
        client.close()


def test_killed_front_is_unavailable_and_comes_back_with_its_data(
    front: FrontProcess, tmp_path: Path
) -> None:
    """What test 6 of test_stream.py relies on: a SIGKILLed front is a transient failure
    for clickhouse-connect, and a front restarted on the same directory has the data."""
    client: Client = connect(url=front.url + "/k")
    try:
        client.command("CREATE TABLE kept (x UInt32) ENGINE = MergeTree ORDER BY x")
        client.insert("kept", [[1], [2], [3]], column_names=["x"])
        front.kill()
        with pytest.raises(Exception) as down:
            client.command("SELECT count() FROM kept")
        assert is_transient(down.value), repr(down.value)
        with pytest.raises(StorageUnavailable):
            connect(url=front.url)
        again = start_front(front.db, front.port, tmp_path / "front2.log")
        try:
            assert client.command("SELECT count() FROM kept") == 3  # the same client
        finally:
            again.kill()
    finally:
        client.close()
