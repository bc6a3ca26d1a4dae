"""The ``metering`` command.

Subcommands: ``simulate`` (sample traffic), ``replay`` (log -> engine -> ClickHouse),
``statement`` (SPEC section 9 JSON from ClickHouse), ``demo`` (what ``make run`` does),
``schemas`` (regenerate/check the JSON Schemas and AsyncAPI document).
Errors are one clear line on stderr and a non-zero exit status, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from metering.engine.accounts import AccountConfig, AccountConfigError, load_accounts
from metering.engine.engine import EngineConfig
from metering.storage_options import NO_STORAGE, add_storage_options, open_storage


class CliError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


def _engine_config(args: argparse.Namespace) -> EngineConfig:
    return EngineConfig(
        allowed_lateness_ms=int(args.allowed_lateness * 1000),
        dedupe_horizon_ms=int(args.dedupe_horizon * 1000),
        max_call_duration_ms=int(args.max_call_duration * 1000),
    )


def _add_engine_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("time rules (SPEC sections 2, 3 and 5)")
    g.add_argument(
        "--allowed-lateness",
        type=float,
        default=900,
        metavar="SECONDS",
        help="allowed lateness behind an account's watermark (default 900)",
    )
    g.add_argument(
        "--dedupe-horizon",
        type=float,
        default=86_400,
        metavar="SECONDS",
        help="how long (source, id) pairs are remembered (default 86400)",
    )
    g.add_argument(
        "--max-call-duration",
        type=float,
        default=14_400,
        metavar="SECONDS",
        help="calls longer than this time out (default 14400)",
    )


def _connect(args: argparse.Namespace) -> Any:
    from metering.storage.schema import migrate, set_retention

    if not args.db and not args.clickhouse_url:
        raise CliError(NO_STORAGE)
    client = open_storage(args)
    migrate(client)
    if args.db:
        # The embedded engine holds replays of logs of any age; retention (TTL deletes)
        # is enforced by ClickHouse servers (see docs/design.md, "Retention").
        set_retention(client, False)
    return client


def _accounts(path: str | None) -> dict[str, AccountConfig]:
    if path is None:
        return {}
    try:
        return load_accounts(path)
    except AccountConfigError as exc:
        raise CliError(str(exc)) from exc


def cmd_replay(args: argparse.Namespace) -> int:
    from metering.gctune import tune_gc
    from metering.replay.replay import progress_printer, replay_into

    tune_gc()
    accounts = _accounts(args.accounts)
    client = _connect(args)
    try:
        summary = replay_into(
            client,
            args.events,
            accounts,
            config=_engine_config(args),
            batch_size=args.batch_size,
            progress=None if args.quiet else progress_printer(),
        )
    except FileNotFoundError as exc:
        raise CliError(str(exc)) from exc
    print(summary.render())
    return 0


def cmd_statement(args: argparse.Namespace) -> int:
    from metering.storage.reader import read_statement

    _check_cycle(args.cycle)
    client = _connect(args)
    st = read_statement(client, args.account, args.cycle)
    if st is None:
        raise CliError(f"no usage for account {args.account!r} in cycle {args.cycle}")
    print(json.dumps(st, indent=2 if args.pretty else None))
    return 0


def _check_cycle(cycle: str) -> None:
    if (
        len(cycle) != 7
        or cycle[4] != "-"
        or not (cycle[:4] + cycle[5:]).isdigit()
        or not (1 <= int(cycle[5:]) <= 12)
    ):
        raise CliError(f"cycle must look like YYYY-MM, got {cycle!r}")


def cmd_schemas(args: argparse.Namespace) -> int:
    from metering.events.schemagen import main as schemas_main

    argv = ["--check"] if args.check else []
    return schemas_main([*argv, *([args.dir] if args.dir else [])])


def cmd_dashboards(args: argparse.Namespace) -> int:
    from metering.dashboards import main as dashboards_main

    argv = ["--check"] if args.check else []
    return dashboards_main([*argv, *([args.dir] if args.dir else [])])


def cmd_demo(args: argparse.Namespace) -> int:
    from metering.demo import run_demo

    return run_demo(
        Path(args.workdir),
        events=args.events,
        days=args.days,
        accounts=args.accounts,
        seed=args.seed,
    )


def _run_broker(port: int) -> int:
    from metering.kafka.broker import run_broker

    return run_broker(port)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="metering",
        description="Usage metering: Interactions, call minutes, concurrency peaks and "
        "fair-use rules (see README.md).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("replay", help="replay a JSON-lines event log into ClickHouse")
    p.add_argument("events", help="event log, one CloudEvent per line (plain or .gz)")
    p.add_argument("--accounts", metavar="ACCOUNTS.yaml", help="account configuration")
    p.add_argument(
        "--batch-size",
        type=int,
        default=50_000,
        help="events between engine drains and sink flushes (default 50000)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    add_storage_options(p)
    _add_engine_options(p)
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("statement", help="print an account's statement for a cycle (JSON)")
    p.add_argument("--account", required=True)
    p.add_argument("--cycle", required=True, metavar="YYYY-MM")
    p.add_argument("--pretty", action="store_true", help="indent the JSON")
    add_storage_options(p)
    p.set_defaults(func=cmd_statement)

    from metering.stream.cli import (
        add_up_arguments,
        add_worker_arguments,
        run_up,
        run_worker,
    )

    p = sub.add_parser("worker", help="run one streaming worker (Faust on Kafka)")
    add_worker_arguments(p)
    p.set_defaults(func=run_worker)

    p = sub.add_parser(
        "up", help="the embedded stack: dev broker, one worker, a steady simulated stream"
    )
    add_up_arguments(p)
    p.set_defaults(func=run_up)

    from metering.report.cli import add_report_arguments, run_report

    p = sub.add_parser(
        "report", help="write an account's cycle as a self-contained HTML page (charts, evidence)"
    )
    add_report_arguments(p)
    p.set_defaults(func=run_report)

    from metering.simulate.generator import DESCRIPTION, add_arguments, run_cli

    p = sub.add_parser(
        "simulate", help="generate sample traffic (JSON lines)", description=DESCRIPTION
    )
    add_arguments(p)
    p.set_defaults(func=run_cli)

    p = sub.add_parser("broker", help="run the dev Kafka broker (Tansu) on 127.0.0.1")
    p.add_argument("--port", type=int, default=9092, help="listen port (default 9092)")
    p.set_defaults(func=lambda a: _run_broker(a.port))

    from metering.kafka.produce import add_arguments as add_produce_arguments
    from metering.kafka.produce import run_cli as run_produce

    p = sub.add_parser("produce", help="publish a JSON-lines log to the input topics")
    add_produce_arguments(p)
    p.set_defaults(func=run_produce)

    p = sub.add_parser("schemas", help="write or check schemas/ (JSON Schema, AsyncAPI)")
    p.add_argument(
        "--check",
        action="store_true",
        help="only check that the files are up to date (exit 1 when stale)",
    )
    p.add_argument("dir", nargs="?", help="schema directory (default: ./schemas)")
    p.set_defaults(func=cmd_schemas)

    from metering.storage.cli import add_migrate_arguments, run_migrate

    p = sub.add_parser("migrate", help="apply the ClickHouse schema migrations (or list them)")
    add_migrate_arguments(p)
    p.set_defaults(func=run_migrate)

    p = sub.add_parser("dashboards", help="write or check deploy/grafana/dashboards (Grafana)")
    p.add_argument(
        "--check",
        action="store_true",
        help="only check that the files are up to date (exit 1 when stale)",
    )
    p.add_argument("dir", nargs="?", help="default: deploy/grafana/dashboards at the repo root")
    p.set_defaults(func=cmd_dashboards)

    p = sub.add_parser(
        "demo",
        help="simulate, replay into embedded ClickHouse, print statements (what `make run` does)",
    )
    p.add_argument("--workdir", default=".metering")
    p.add_argument("--events", type=int, default=200_000)
    p.add_argument("--days", type=float, default=4)
    p.add_argument("--accounts", type=int, default=6)
    p.add_argument("--seed", type=int, default=7)
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        rc: int = args.func(args)
        return rc
    except CliError as exc:
        print(f"metering: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("metering: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
