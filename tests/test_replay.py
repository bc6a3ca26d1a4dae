"""End to end through the real commands: simulate -> replay (twice) -> statement.

The statements printed by ``metering statement`` (read back from chDB) must equal the
engine's own figures for the same log, and a second replay of the same log into the same
database must change nothing: no statement, no row count.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from metering.engine.accounts import load_accounts
from metering.engine.statement import render
from metering.replay.replay import replay

METERING = [sys.executable, "-m", "metering.cli"]
TABLES = (
    "events_raw",
    "calls",
    "messages",
    "interactions",
    "executions",
    "cycle_peaks",
    "concurrency_minute",
    "fairuse_counters",
    "dead_letters",
    "usage_hour",
)


def run(*args: str) -> str:
    done = subprocess.run([*METERING, *args], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def workload(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    d = tmp_path_factory.mktemp("replay")
    log, accounts = d / "events.jsonl.gz", d / "accounts.yaml"
    run(
        "simulate",
        "--out",
        str(log),
        "--accounts-out",
        str(accounts),
        "--events",
        "12000",
        "--days",
        "3",
        "--accounts",
        "3",
        "--seed",
        "5",
        "--quiet",
    )
    return log, accounts, d / "db"


def counts(db: Path) -> dict[str, int]:
    code = (
        "import json, sys; from metering.storage.client import connect; "
        f"c = connect(db_dir={str(db)!r}); "
        f"print(json.dumps({{t: c.query(f'SELECT count() FROM {{t}} FINAL').result_rows[0][0] "
        f"for t in {TABLES!r}}}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    return dict(json.loads(out))


def statements(db: Path, keys: list[tuple[str, str]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (a, c): json.loads(run("statement", "--db", str(db), "--account", a, "--cycle", c))
        for a, c in keys
    }


def test_replay_statements_equal_engine_and_second_replay_changes_nothing(
    workload: tuple[Path, Path, Path],
) -> None:
    log, accounts, db = workload
    summary_text = run("replay", str(log), "--accounts", str(accounts), "--db", str(db), "--quiet")
    assert "events read" in summary_text and "dead-lettered" in summary_text

    summary, engine = replay(log, load_accounts(accounts), None)
    expected = {
        (a, c): render(f)
        for a in engine.accounts()
        for c in engine.cycles_of(a)
        if (f := engine.statement_facts(a, c)) is not None
    }
    assert len(expected) >= 6  # 3 accounts x 2 cycles (the log crosses a month boundary)
    first = statements(db, list(expected))
    assert first == expected
    rows = counts(db)
    assert rows["dead_letters"] == sum(summary.dead_letters.values()) > 0
    # raw events: everything accepted at intake, including events found to be orphans or
    # duplicate descriptions later (those are in dead_letters too)
    later = summary.dead_letters["orphan"] + summary.dead_letters["duplicate_call"]
    assert summary.accepted <= rows["events_raw"] <= summary.accepted + later

    run("replay", str(log), "--accounts", str(accounts), "--db", str(db), "--quiet")
    assert statements(db, list(expected)) == first
    assert counts(db) == rows


def test_statement_errors_are_one_line(workload: tuple[Path, Path, Path]) -> None:
    _, _, db = workload
    for args, msg in (
        (["--account", "nobody", "--cycle", "2026-11"], "no usage for account 'nobody'"),
        (["--account", "acct-1", "--cycle", "2026-13"], "cycle must look like YYYY-MM"),
    ):
        done = subprocess.run(
            [*METERING, "statement", "--db", str(db), *args],
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 2
        assert done.stderr.strip().count("\n") == 0 and msg in done.stderr
