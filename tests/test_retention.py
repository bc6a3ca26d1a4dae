"""Migrations and retention (SPEC section 7) against the embedded chDB.

(a) A database created by an older version of the code (migrated to version k, holding
    data) and then upgraded ends up identical to a fresh one migrated to head: same tables,
    same ``SHOW CREATE TABLE``, same ``schema_migrations`` rows; the upgrade keeps the data
    within the retention and drops what is already beyond it. Re-running is a no-op.
(b) Each tier keeps a row just inside its limit and drops one just outside, once a merge
    applies the TTL (``OPTIMIZE TABLE ... FINAL``). Each check is first run with the TTL
    merges stopped, where the same rows all survive the same merge: the rows were written
    and only the TTL removes the old one (so the assertion can fail).
(c) ``metering migrate`` (``metering.storage.cli``) applies and lists migrations.
(d) Messages expose caller and called party (``from_``/``to``) like calls.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from metering.storage import MIGRATIONS, Client, applied_migrations, connect, migrate
from metering.storage.cli import add_migrate_arguments, run_migrate
from metering.storage.schema import MIGRATIONS_TABLE, set_retention

HOUR = "INTERVAL 1 HOUR"


@pytest.fixture
def client(tmp_path: Path) -> Iterator[Client]:
    c = connect(db_dir=str(tmp_path / "ch"))
    yield c
    c.close()


def tables(c: Client) -> list[str]:
    return sorted(str(r[0]) for r in c.query("SHOW TABLES").result_rows)


def schema(c: Client) -> dict[str, str]:
    """``SHOW CREATE TABLE`` of every table, without the database name."""
    db = c.database
    out = {}
    for t in tables(c):
        text = str(c.command(f"SHOW CREATE TABLE {t}"))
        out[t] = text.replace("\\n", "\n").replace("\\'", "'").replace(f"{db}.", "<db>.")
    return out


def migration_rows(c: Client) -> list[tuple[int, str, str]]:
    rows = c.query(
        f"SELECT version, name, checksum FROM {MIGRATIONS_TABLE} FINAL ORDER BY version"
    ).result_rows
    return [(int(v), str(n), str(s)) for v, n, s in rows]


# --------------------------------------------------------------------------------------
# (a) fresh == upgraded


def _old_and_recent_rows(c: Client) -> None:
    """Rows an older version wrote: per tier one far beyond its limit, one recent."""
    c.command(
        "INSERT INTO usage_minute (account, bucket, kind) "
        "SELECT 'old', now64(3) - INTERVAL 10 DAY, 'call' "
        "UNION ALL SELECT 'recent', now64(3) - INTERVAL 1 HOUR, 'call'"
    )
    c.command(
        "INSERT INTO calls (account, call_id, started_at) "
        "SELECT 'old', 'c1', now64(3) - INTERVAL 100 DAY "
        "UNION ALL SELECT 'recent', 'c2', now64(3) - INTERVAL 1 DAY"
    )
    c.command(
        "INSERT INTO messages (account, source, id, time, direction, business_address, "
        "remote_address) SELECT 'recent', 's', 'm1', now64(3) - INTERVAL 100 DAY, 'sent', "
        "'+1555', '+1666'"
    )


@pytest.mark.parametrize("old_version", [m.version for m in MIGRATIONS[:-1]])
def test_upgraded_database_equals_a_fresh_one(tmp_path: Path, old_version: int) -> None:
    path = str(tmp_path / "ch")
    fresh = connect(db_dir=path, database="fresh")
    old = connect(db_dir=path, database="upgraded")
    try:
        assert migrate(fresh) == [m.version for m in MIGRATIONS]
        older = [m for m in MIGRATIONS if m.version <= old_version]
        assert migrate(old, older) == [m.version for m in older]
        _old_and_recent_rows(old)
        before = schema(old)
        assert before != schema(fresh)  # the comparison below can tell them apart
        assert migrate(old) == [m.version for m in MIGRATIONS if m.version > old_version]
        assert schema(old) == schema(fresh)
        assert tables(old) == tables(fresh)
        assert migration_rows(old) == migration_rows(fresh)
        assert migration_rows(fresh) == [(m.version, m.name, m.checksum) for m in MIGRATIONS]
        assert applied_migrations(old) == applied_migrations(fresh)
        # re-running changes nothing
        assert migrate(old) == [] and migrate(fresh) == []
        assert schema(old) == schema(fresh)
        # the upgrade kept what is within the retention and dropped what is beyond it
        old.command("OPTIMIZE TABLE usage_minute FINAL")
        old.command("OPTIMIZE TABLE calls FINAL")
        assert _accounts(old, "usage_minute") == ["recent"]
        assert _accounts(old, "calls") == ["recent"]
        assert _accounts(old, "messages") == ["recent"]  # 3 years
    finally:
        old.close()
        fresh.close()


def _accounts(c: Client, table: str) -> list[str]:
    return sorted(str(r[0]) for r in c.query(f"SELECT account FROM {table}").result_rows)


def test_head_schema_has_the_retention_of_the_spec(client: Client) -> None:
    migrate(client)
    ttl = {
        t: s.split("\nTTL ", 1)[1].split("\n")[0] if "\nTTL " in s else ""
        for t, s in schema(client).items()
    }
    assert ttl == {
        "usage_minute": "toDateTime(bucket) + toIntervalDay(3)",
        "concurrency_minute": "toDateTime(minute) + toIntervalDay(3)",
        "usage_hour": "toDateTime(bucket) + toIntervalDay(14)",
        "usage_day": "bucket + toIntervalDay(90)",
        "calls": "toDateTime(started_at) + toIntervalDay(60)",
        "events_raw": "toDateTime(time) + toIntervalDay(60) WHERE type LIKE 'call.%', "
        "toDateTime(time) + toIntervalYear(3)",
        "messages": "toDateTime(time) + toIntervalYear(3)",
        "interactions": "toDateTime(origin) + toIntervalYear(3)",
        "executions": "toDateTime(time) + toIntervalYear(3)",
        "output_events": "toDateTime(time) + toIntervalYear(3)",
        "cycle_peaks": "(toDate(concat(CAST(cycle, 'String'), '-01')) + toIntervalMonth(1)) "
        "+ toIntervalYear(3)",
        "fairuse_counters": "(toDate(concat(CAST(cycle, 'String'), '-01')) + toIntervalMonth(1)) "
        "+ toIntervalYear(3)",
        "cycle_voice": "(toDate(concat(CAST(cycle, 'String'), '-01')) + toIntervalMonth(1)) "
        "+ toIntervalYear(3)",
        "usage_dirty": "created + toIntervalDay(1)",
        # what the tiers are summed from: a day longer than the daily tier
        "usage_items": "minute + toIntervalDay(91)",
        "accounts": "",
        "dead_letters": "",
        MIGRATIONS_TABLE: "",
    }


# --------------------------------------------------------------------------------------
# (b) each tier keeps and drops what it should


def _cycle(d: date) -> str:
    return f"{d.year:04d}-{d.month:02d}"


def _previous_cycle(d: date) -> str:
    first = d.replace(day=1) - timedelta(days=1)
    return _cycle(first)


def _cases() -> list[tuple[str, str, str, str]]:
    """(table, inserted columns, values of the row just inside, just outside)."""
    today = datetime.now(UTC).date()
    three_years_ago = today.replace(year=today.year - 3, day=min(today.day, 28))

    def timed(table: str, cols: str, values: str, limit: str) -> tuple[str, str, str, str]:
        inside = f"now64(3) - INTERVAL {limit} + {HOUR}"
        outside = f"now64(3) - INTERVAL {limit} - {HOUR}"
        return (table, cols, values.format(t=inside), values.format(t=outside))

    cycle_in, cycle_out = _cycle(three_years_ago), _previous_cycle(three_years_ago)
    return [
        timed("usage_minute", "account, bucket", "{{label}}, {t}", "3 DAY"),
        timed("concurrency_minute", "account, minute", "{{label}}, {t}", "3 DAY"),
        timed("usage_hour", "account, bucket", "{{label}}, {t}", "14 DAY"),
        (
            "usage_day",
            "account, bucket",
            "{label}, today() - 89",
            "{label}, today() - 90",
        ),
        timed("usage_items", "account, minute", "{{label}}, {t}", "91 DAY"),
        timed("calls", "account, started_at", "{{label}}, {t}", "60 DAY"),
        timed("events_raw", "account, type, time", "{{label}}, 'call.completed', {t}", "60 DAY"),
        timed("events_raw", "account, type, time", "{{label}}, 'message.sent', {t}", "3 YEAR"),
        timed("messages", "account, time", "{{label}}, {t}", "3 YEAR"),
        timed("interactions", "account, origin", "{{label}}, {t}", "3 YEAR"),
        timed("executions", "account, time", "{{label}}, {t}", "3 YEAR"),
        timed("output_events", "account, id, time", "{{label}}, {{label}}, {t}", "3 YEAR"),
        ("cycle_peaks", "account, cycle", f"{{label}}, '{cycle_in}'", f"{{label}}, '{cycle_out}'"),
        (
            "fairuse_counters",
            "account, cycle",
            f"{{label}}, '{cycle_in}'",
            f"{{label}}, '{cycle_out}'",
        ),
    ]


CASES = _cases()


def _labels(c: Client, table: str, prefix: str) -> list[str]:
    rows = c.query(
        f"SELECT account FROM {table} WHERE startsWith(account, {{p:String}}) ORDER BY account",
        parameters={"p": prefix},
    ).result_rows
    return [str(r[0])[len(prefix) :] for r in rows]


def _insert_cases(c: Client) -> list[tuple[str, str]]:
    """Insert every case; returns (table, label prefix) per case."""
    out = []
    for i, (table, cols, inside, outside) in enumerate(CASES):
        prefix = f"case{i}-"
        rows = " UNION ALL ".join(
            f"SELECT {values.format(label=repr(prefix + label))}"
            for label, values in (("inside", inside), ("outside", outside))
        )
        c.command(f"INSERT INTO {table} ({cols}) {rows}")
        out.append((table, prefix))
    # never expire: configuration and dead letters
    c.command("INSERT INTO accounts (account) SELECT 'keep-account'")
    c.command(
        "INSERT INTO dead_letters (account, reason, original) SELECT 'keep-dl', 'schema', 'x'"
    )
    return out


def _optimize_all(c: Client) -> None:
    for t in {case[0] for case in CASES} | {"accounts", "dead_letters"}:
        c.command(f"OPTIMIZE TABLE {t} FINAL")


def test_each_tier_keeps_and_drops_what_it_should(client: Client) -> None:
    migrate(client)
    set_retention(client, False)
    cases = _insert_cases(client)
    # TTL merges stopped: a full merge keeps both rows of every case (they were written,
    # and nothing but the TTL would remove the old one)
    _optimize_all(client)
    for table, prefix in cases:
        assert _labels(client, table, prefix) == ["inside", "outside"], (table, prefix)
    # TTL merges on: the same merge drops exactly the rows beyond each tier's limit
    set_retention(client, True)
    _optimize_all(client)
    for table, prefix in cases:
        assert _labels(client, table, prefix) == ["inside"], (table, prefix)
    assert _accounts(client, "accounts") == ["keep-account"]
    dl = client.query("SELECT account FROM dead_letters").result_rows
    assert [r[0] for r in dl] == ["keep-dl"]


_REOPEN = """
import json, sys
sys.path.insert(0, {tests!r})
from test_retention import CASES, _labels, _optimize_all
from metering.storage import connect
from metering.storage.schema import set_retention
c = connect(db_dir={path!r})
_optimize_all(c)  # a full merge: it would apply any TTL the tables still had
def labels():
    return {{f"{{i}}/{{t}}": _labels(c, t, f"case{{i}}-") for i, (t, *_) in enumerate(CASES)}}
before = labels()
if {enable!r}:
    set_retention(c, True)
    _optimize_all(c)
after = labels()
print(json.dumps([before, after]))
c.close()
"""


def _reopen(path: Path, enable: bool) -> list[dict[str, list[str]]]:
    code = _REOPEN.format(tests=str(Path(__file__).parent), path=str(path), enable=enable)
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    out: list[dict[str, list[str]]] = json.loads(done.stdout.strip().splitlines()[-1])
    return out


def test_retention_off_holds_when_the_directory_is_opened_again(tmp_path: Path) -> None:
    """Retention switched off is stored with the tables: another process opening the
    directory (and merging) keeps the old rows until retention is switched on again."""
    path = tmp_path / "ch"
    c = connect(db_dir=str(path))
    try:
        migrate(c)
        set_retention(c, False)
        _insert_cases(c)
    finally:
        c.close()
    both = ["inside", "outside"]
    before, after = _reopen(path, enable=False)
    assert set(map(tuple, before.values())) == {tuple(both)}
    assert after == before
    before, after = _reopen(path, enable=True)  # a third process: still there, until on
    assert set(map(tuple, before.values())) == {tuple(both)}
    assert set(map(tuple, after.values())) == {("inside",)}


def test_call_events_expire_before_other_raw_events(client: Client) -> None:
    migrate(client)
    client.command(
        "INSERT INTO events_raw (account, source, id, type, time) "
        "SELECT 'a', 's', 'call', 'call.started', now64(3) - INTERVAL 61 DAY "
        "UNION ALL SELECT 'a', 's', 'msg', 'message.received', now64(3) - INTERVAL 61 DAY "
        "UNION ALL SELECT 'a', 's', 'cfg', 'account.configured', now64(3) - INTERVAL 61 DAY"
    )
    client.command("OPTIMIZE TABLE events_raw FINAL")
    ids = sorted(str(r[0]) for r in client.query("SELECT id FROM events_raw").result_rows)
    assert ids == ["cfg", "msg"]


# --------------------------------------------------------------------------------------
# (c) metering migrate


def _args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_migrate_arguments(parser)
    return parser.parse_args(argv)


def test_migrate_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = str(tmp_path / "ch")
    assert run_migrate(_args(["--db", db, "--status"])) == 0
    out = capsys.readouterr().out
    assert out.count("pending") == len(MIGRATIONS) + 1  # one per migration + summary
    assert run_migrate(_args(["--db", db])) == 0
    out = capsys.readouterr().out
    for m in MIGRATIONS:
        assert f"applied  {m.version:>3}  {m.name}" in out
    assert f"database at version {MIGRATIONS[-1].version}: {len(MIGRATIONS)} applied now" in out
    assert run_migrate(_args(["--db", db])) == 0
    assert "0 applied now" in capsys.readouterr().out
    assert run_migrate(_args(["--db", db, "--status"])) == 0
    assert f"head {MIGRATIONS[-1].version}: 0 pending" in capsys.readouterr().out


def test_migrate_command_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_migrate(argparse.Namespace(db=None, clickhouse_url=None, status=False)) == 2
    assert "give --db DIR" in capsys.readouterr().err
    assert run_migrate(_args(["--clickhouse-url", "http://u:secret@127.0.0.1:1/metering"])) == 2
    err = capsys.readouterr().err
    assert err.startswith("metering: error:") and "secret" not in err
    with pytest.raises(SystemExit):
        _args(["--db", str(tmp_path), "--clickhouse-url", "http://x:8123"])


# --------------------------------------------------------------------------------------
# (d) Insights dimensions


def test_messages_have_caller_and_called_party(client: Client) -> None:
    migrate(client)
    client.command(
        "INSERT INTO messages (account, source, id, time, direction, business_address, "
        "remote_address) VALUES ('a', 's', '1', now64(3), 'sent', '+1800', '+1555'), "
        "('a', 's', '2', now64(3), 'received', '+1800', '+1666')"
    )
    rows = client.query("SELECT id, from_, `to` FROM messages ORDER BY id").result_rows
    assert [tuple(r) for r in rows] == [("1", "+1800", "+1555"), ("2", "+1666", "+1800")]
    cols = {str(r[0]) for r in client.query("DESCRIBE TABLE calls").result_rows}
    assert {"from_", "to", "region", "trunk_group", "user", "route_class", "direction"} <= cols
