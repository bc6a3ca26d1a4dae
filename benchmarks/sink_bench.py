"""Insert throughput of the ClickHouse sink into the embedded chDB (prints figures).

    .venv/bin/python benchmarks/sink_bench.py [--raw 1000000] [--calls 300000] [--batch 100000]

For each workload the same rows are written twice into fresh databases of one chDB
directory:

- ``plain``: ``client.insert(table, columns, column_oriented=True)`` of pre-built columns
  (the floor: serialisation + engine insert only);
- ``sink``: ``ClickHouseSink.add()`` per fact, then ``flush()`` every ``--batch`` facts
  (key collapsing, column building, versions), usage aggregates off;
- ``sink+usage`` (calls only): the same with the usage aggregates recomputed per flush.

Rows/s are wall-clock over the whole workload (median of ``--repeat`` runs, variants
alternating, background merges included); the ratio is sink / plain. The machine's
noise is large (2 CPUs, chDB merges in the background): compare medians.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import orjson

from metering.engine.facts import CallFact, RawEventFact
from metering.storage import ClickHouseSink, Client, connect, migrate
from metering.storage.sink import INSERT_SETTINGS, TABLES

T0 = 1_793_318_400_000  # 2026-10-30T00:00:00Z


def raw_events(n: int) -> list[RawEventFact]:
    out = []
    for i in range(n):
        t = T0 + i * 7
        account = f"acct-{i % 50}"
        payload = orjson.dumps(
            {
                "specversion": "1.0",
                "id": f"{i:012d}",
                "source": "//pbx/us-west-2",
                "type": "call.started",
                "time": "2026-10-30T00:00:00.000Z",
                "subject": account,
                "data": {
                    "call_id": f"c-{i:09d}",
                    "trunk_group": "tg-1",
                    "direction": "inbound",
                    "route_class": "domestic_ld",
                    "user": f"u-{i % 400}",
                    "from": "+16029051404",
                    "to": "+18082162879",
                    "region": "TX",
                    "carrier_class": "rboc",
                },
            }
        )
        out.append(
            RawEventFact(
                account=account,
                source="//pbx/us-west-2",
                id=f"{i:012d}",
                type="call.started",
                time=t,
                cycle="2026-10",
                topic="cpaas.voice",
                payload=payload,
            )
        )
    return out


def call_facts(n: int) -> list[CallFact]:
    out = []
    for i in range(n):
        start = T0 + i * 40
        answered = i % 5 != 0
        secs = 30 + i % 600
        out.append(
            CallFact(
                account=f"acct-{i % 50}",
                call_id=f"c-{i:09d}",
                cycle="2026-10",
                trunk_group="tg-1",
                capacity_group="tg-1",
                direction="outbound" if i % 2 else "inbound",
                route_class=("local", "domestic_ld", "toll_free", "international")[i % 4],
                user=f"u-{i % 400}",
                from_="+16029051404",
                to="+18082162879",
                region=("TX", "CO", "AK", None)[i % 4],
                carrier_class="rboc",
                local_calling_area=None,
                blocked=i % 97 == 0,
                described_by="lifecycle",
                started_at=start,
                answered_at=start + 5000 if answered else None,
                ended_at=start + 5000 + secs * 1000,
                end_at=start + 5000 + secs * 1000,
                timed_out=False,
                over_capacity=False,
                billable_seconds=secs if answered else 0,
                billable_minutes=-(-secs // 60) if answered else 0,
            )
        )
    return out


def plain_columns(facts: list[Any]) -> tuple[str, list[str], list[list[Any]]]:
    """The same columns the sink writes, built up front (not timed)."""
    table = TABLES[type(facts[0])]
    cols = [fn(facts) for _, fn in table.columns]
    if table.day_of is not None:
        cols.append([getattr(f, table.day_of) // 86_400_000 for f in facts])
    cols.append([1] * len(facts))
    return table.name, table.column_names, cols


def fresh(root: str, name: str) -> Client:
    c = connect(db_dir=root, database=name)
    migrate(c)
    return c


def run(fn: Callable[[], None]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def show(label: str, rows: int, seconds: list[float]) -> float:
    """Print the median (and best) of the repetitions; return the median rows/s."""
    med = statistics.median(seconds)
    print(
        f"  {label:<36} {rows:>9,} rows  median {med:6.2f} s  {rows / med:>10,.0f} rows/s"
        f"  (best {rows / min(seconds):,.0f})"
    )
    return rows / med


def bench(
    root: str, label: str, facts: list[Any], batch: int, repeat: int, aggregates: bool
) -> None:
    print(f"{label}:")
    name, names, cols = plain_columns(facts)
    n = len(facts)
    times: dict[str, list[float]] = {}
    variants = ["plain", "sink"] + (["sink+usage"] if aggregates else [])
    for rep in range(repeat):
        for v in variants:
            c = fresh(root, f"b_{name}_{v.replace('+', '_')}_{rep}")
            work: Callable[[], None]
            if v == "plain":

                def insert_plain(c: Client = c) -> None:
                    for s in range(0, n, batch):
                        c.insert(
                            name,
                            [col[s : s + batch] for col in cols],
                            column_names=names,
                            column_oriented=True,
                            settings=INSERT_SETTINGS,
                        )

                work = insert_plain
            else:
                sink = ClickHouseSink(c, aggregate=v == "sink+usage")

                def add_and_flush(sink: ClickHouseSink = sink) -> None:
                    for s in range(0, n, batch):
                        for f in facts[s : s + batch]:
                            sink.add(f)
                        sink.flush()

                work = add_and_flush

            times.setdefault(v, []).append(run(work))
            check = c.command(f"SELECT count() FROM {name} FINAL")
            assert int(str(check)) == n, check
            c.command(f"DROP DATABASE b_{name}_{v.replace('+', '_')}_{rep}")
            c.close()
    base = show("plain client.insert (no buffering)", n, times["plain"])
    for v in variants[1:]:
        what = "sink add+flush" + (" + usage aggregates" if v == "sink+usage" else "")
        rate = show(what, n, times[v])
        print(f"  {'  ratio to plain':<36} {rate / base:>9.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--raw", type=int, default=1_000_000)
    ap.add_argument("--calls", type=int, default=300_000)
    ap.add_argument("--batch", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", help="chDB directory (default: a temporary one, removed after)")
    args = ap.parse_args()
    root = args.dir or tempfile.mkdtemp(prefix="sink_bench_")
    try:
        # warm up: engine start, lazy imports in clickhouse-connect
        c = fresh(root, "warmup")
        ClickHouseSink(c).add(raw_events(1)[0])
        c.insert(
            "events_raw",
            plain_columns(raw_events(10))[2],
            column_names=TABLES[RawEventFact].column_names,
            column_oriented=True,
        )
        c.close()
        print(f"chDB at {root}, batch {args.batch:,} rows per flush, {os.cpu_count()} CPUs")
        print(f"{args.repeat} repetitions, alternating, each in a fresh database")
        bench(
            root,
            "events_raw (RawEventFact)",
            raw_events(args.raw),
            args.batch,
            args.repeat,
            aggregates=False,
        )
        bench(
            root,
            "calls (CallFact)",
            call_facts(args.calls),
            args.batch,
            args.repeat,
            aggregates=True,
        )
    finally:
        if not args.dir:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
