"""``metering demo`` (what ``make run`` does): simulate, replay, print the statements.

1. generates a realistic sample log (``metering simulate``) under the work directory,
2. replays it through the engine into embedded ClickHouse (``<workdir>/db``),
3. reads every account's statement for every cycle back from ClickHouse and prints them
   as a table, with the command that prints one as the SPEC's JSON.

Re-running it regenerates the same log (fixed seed) and rewrites the same rows.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from metering.engine.accounts import parse_accounts


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_demo(workdir: Path, *, events: int, days: float, accounts: int, seed: int) -> int:
    from metering.replay.replay import progress_printer, replay_into
    from metering.simulate.accounts import make_accounts, write_accounts
    from metering.simulate.config import SimulationConfig
    from metering.simulate.generator import write_log
    from metering.storage.client import connect
    from metering.storage.reader import list_statements, read_statement
    from metering.storage.schema import migrate, set_retention

    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "events.jsonl.gz"
    accounts_file = workdir / "accounts.yaml"
    db = workdir / "db"

    cfg = SimulationConfig(seed=seed, events=events, days=days, accounts=accounts)
    _say(f"[1/3] simulating ~{events:,} events over {days:g} days for {accounts} accounts -> {log}")
    t0 = time.perf_counter()
    accounts_obj = make_accounts(cfg)
    write_accounts(accounts_file, accounts_obj)
    sim = write_log(log, cfg, accounts_obj)
    _say(
        f"      {sim.lines:,} lines ({sim.duplicates:,} duplicates, {sim.malformed:,} "
        f"malformed) in {time.perf_counter() - t0:.1f}s"
    )

    _say(f"[2/3] replaying into embedded ClickHouse at {db}")
    client = connect(db_dir=str(db.resolve()))
    migrate(client)
    set_retention(client, False)  # the sample log has fixed dates; see docs/design.md
    summary = replay_into(
        client,
        log,
        parse_accounts(accounts_obj, str(accounts_file)),
        progress=progress_printer(),
    )
    for line in summary.render().splitlines():
        _say("      " + line)

    _say("[3/3] statements, read back from ClickHouse")
    rows = []
    for account, cycle in list_statements(client):
        st = read_statement(client, account, cycle)
        if st is not None:
            rows.append(_row(st))
    print(_table(rows))
    if rows:
        acct, cycle = rows[0][0], rows[0][1]
        print(
            f"\nOne statement as JSON:  .venv/bin/metering statement --db {db} "
            f"--account {acct} --cycle {cycle} --pretty"
        )
    return 0


HEADERS = (
    "account",
    "cycle",
    "tz",
    "interactions",
    "messages",
    "calls",
    "answered",
    "blocked",
    "over cap",
    "minutes",
    "peak",
    "breaches",
    "warnings",
    "overage $",
    "surcharge $",
)


def _row(st: dict[str, Any]) -> tuple[str, ...]:
    v = st["voice"]
    breaches = sum(r["status"] == "breach" for r in st["fair_use"])
    warnings = sum(r["status"] == "warning" for r in st["fair_use"])
    return (
        st["account"],
        st["cycle"],
        st["timezone"],
        f"{st['interactions']['total']:,}",
        f"{st['messages']['total']:,}",
        f"{v['attempts']:,}",
        f"{v['answered']:,}",
        f"{v['blocked']:,}",
        f"{v['over_capacity']:,}",
        f"{v['billable_minutes']:,}",
        str(st["concurrency"]["peak"]),
        str(breaches),
        str(warnings),
        st["charges"]["overage_usd"],
        st["charges"]["surcharge_usd"],
    )


def _table(rows: list[tuple[str, ...]]) -> str:
    if not rows:
        return "(no statements)"
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(HEADERS)]
    numeric = set(range(3, len(HEADERS)))

    def fmt(cells: tuple[str, ...]) -> str:
        return "  ".join(
            c.rjust(w) if i in numeric else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    lines = [fmt(HEADERS), "  ".join("-" * w for w in widths)]
    lines += [fmt(r) for r in rows]
    return "\n".join(lines)
