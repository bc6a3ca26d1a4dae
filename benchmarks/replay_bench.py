"""Replay benchmark: prints figures, asserts nothing (run: ``make bench``).

Generates (once, cached under ``benchmarks/out/``) a realistic log of ``--events`` lines
with ``metering simulate``, then measures in the same run, on the same file:

* baseline: a plain ``json.loads`` loop over the lines (the issue's reference point);
* orjson.loads over the same lines (the other fast candidate; parse only, no validation);
* decode only: the msgspec decoder over the same lines (parse + full validation into
  typed events), which is why the service decodes with msgspec;
* engine only: decode + engine, results kept in memory, first with CPython's default
  garbage-collector thresholds, then with those ``metering replay`` and the worker set
  (:mod:`metering.gctune`);
* full replay: decode + engine + ClickHouse writes (embedded chDB, fresh directory),
  exactly what ``metering replay`` does.

Each figure is events/s and a ratio to the baseline measured in the same run, plus the
peak resident memory of a separate process for the full replay (so the runs don't
inflate each other's figure).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

OUT = Path(__file__).resolve().parent / "out"


def ensure_log(events: int, seed: int) -> tuple[Path, Path]:
    from metering.simulate.accounts import make_accounts, write_accounts
    from metering.simulate.config import SimulationConfig
    from metering.simulate.generator import write_log

    OUT.mkdir(exist_ok=True)
    log = OUT / f"events-{events}-{seed}.jsonl"
    accounts = OUT / f"accounts-{events}-{seed}.yaml"
    if not log.exists() or not accounts.exists():
        cfg = SimulationConfig(seed=seed, events=events, days=7, accounts=12)
        obj = make_accounts(cfg)
        write_accounts(accounts, obj)
        t = time.perf_counter()
        summary = write_log(log, cfg, obj)
        print(f"generated {summary.lines:,} lines in {time.perf_counter() - t:.1f}s -> {log}")
    return log, accounts


def baseline(log: Path) -> tuple[int, float]:
    n = 0
    t = time.perf_counter()
    with log.open("rb") as f:
        for line in f:
            try:  # noqa: SIM105 - the plain loop is the baseline; suppress() would add cost
                json.loads(line)
            except ValueError:
                pass
            n += 1
    return n, time.perf_counter() - t


def orjson_only(log: Path) -> float:
    """orjson.loads: the other fast JSON candidate (dicts, still to be validated)."""
    import orjson

    t = time.perf_counter()
    with log.open("rb") as f:
        for line in f:
            try:  # noqa: SIM105 - same plain loop as the baseline
                orjson.loads(line)
            except orjson.JSONDecodeError:
                pass
    return time.perf_counter() - t


def decode_only(log: Path) -> float:
    from metering.events.decode import Decoder

    dec = Decoder().decode
    t = time.perf_counter()
    with log.open("rb") as f:
        for line in f:
            dec(line.rstrip(b"\n"))
    return time.perf_counter() - t


def engine_only(log: Path, accounts: Path, *, gc_tuned: bool) -> float:
    """Decode + engine in this process, with CPython's default collector thresholds or
    with :func:`metering.gctune.tune_gc` (what ``metering replay`` and the worker use)."""
    import gc

    from metering.engine.accounts import load_accounts
    from metering.gctune import tune_gc
    from metering.replay.replay import replay

    defaults = gc.get_threshold()
    if gc_tuned:
        tune_gc()
    try:
        summary, _ = replay(log, load_accounts(accounts), None)
    finally:
        gc.set_threshold(*defaults)
        gc.collect()
    return summary.seconds


def full_replay(log: Path, accounts: Path) -> tuple[float, int, str]:
    """``metering replay`` in a child process: (seconds, peak RSS bytes, its summary)."""
    db = Path(tempfile.mkdtemp(prefix="metering-bench-"))
    try:
        cmd = [
            sys.executable,
            "-c",
            "import sys, resource; from metering.cli import main; rc = main(sys.argv[1:]); "
            "print('MAXRSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); "
            "sys.exit(rc)",
            "replay",
            str(log),
            "--accounts",
            str(accounts),
            "--db",
            str(db / "db"),
            "--quiet",
        ]
        t = time.perf_counter()
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        seconds = time.perf_counter() - t
        rss = next(int(x.split()[1]) for x in out.splitlines() if x.startswith("MAXRSS"))
        summary = "\n".join(x for x in out.splitlines() if not x.startswith("MAXRSS"))
        return seconds, rss * 1024, summary
    finally:
        shutil.rmtree(db, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=1_000_000)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    log, accounts = ensure_log(args.events, args.seed)
    n, base = baseline(log)
    orj = orjson_only(log)
    dec = decode_only(log)
    eng_default = engine_only(log, accounts, gc_tuned=False)
    eng = engine_only(log, accounts, gc_tuned=True)
    full, rss, summary = full_replay(log, accounts)
    print(f"\nlog: {log.name}, {n:,} lines, {log.stat().st_size / 1e6:,.0f} MB")
    print(f"{'run':<40}{'seconds':>9}{'events/s':>12}{'x baseline':>12}")
    rows = [
        ("json.loads loop (baseline)", base),
        ("orjson.loads loop (parse only)", orj),
        ("msgspec decode + validation", dec),
        ("decode + engine, default GC thresholds", eng_default),
        ("decode + engine (in memory)", eng),
        ("full replay: decode + engine + chDB", full),
    ]
    for name, secs in rows:
        print(f"{name:<40}{secs:>9.1f}{n / secs:>12,.0f}{base / secs:>12.2f}")
    print(f"\nfull replay peak RSS: {rss / 2**20:,.0f} MiB (child process, includes chDB)")
    print("full replay summary:\n  " + summary.replace("\n", "\n  "))
    print(
        f"\nself-check: parent max RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MiB"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
