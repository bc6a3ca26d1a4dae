"""The ``metering report`` command.

``metering report --account ID --cycle YYYY-MM [--db DIR | --clickhouse-url URL] --out FILE.html``
writes the page and prints one line saying where. Errors (unknown account or cycle,
malformed cycle, no database given, unwritable output, storage failures) are one line
on stderr and exit status 2, never a traceback.

Wiring into ``metering.cli.build_parser``::

    from metering.report.cli import add_report_arguments, run_report

    p = sub.add_parser("report", help="write an account's cycle as a self-contained HTML page")
    add_report_arguments(p)
    p.set_defaults(func=run_report)
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from metering.storage_options import NO_STORAGE, add_storage_options, open_storage

__all__ = ["add_report_arguments", "build_parser", "main", "run_report"]

_CYCLE = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")


class ReportError(Exception):
    """A user-facing error: one line on stderr, exit status 2."""


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``metering report``."""
    parser.add_argument("--account", required=True, help="account id")
    parser.add_argument("--cycle", required=True, metavar="YYYY-MM", help="billing cycle")
    parser.add_argument("--out", required=True, metavar="FILE.html", help="page to write")
    add_storage_options(parser)
    parser.add_argument(
        "--max-call-duration",
        type=float,
        default=14_400,
        metavar="SECONDS",
        help="a call not ended yet occupies its port until start + this (default 14400, "
        "as in replay)",
    )


def _write(path: Path, text: str) -> None:
    """Write atomically (a reader never sees half a page)."""
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise ReportError(f"output directory does not exist: {parent}")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise ReportError(f"cannot write {path}: {exc}") from exc


def _report(args: argparse.Namespace) -> int:
    from metering.report.data import ReportNotFound, load_report
    from metering.report.render import render_html
    from metering.storage.client import StorageError
    from metering.storage.schema import migrate

    if not _CYCLE.match(args.cycle):
        raise ReportError(f"cycle must look like YYYY-MM, got {args.cycle!r}")
    if not args.db and not args.clickhouse_url:
        raise ReportError(NO_STORAGE)
    if args.max_call_duration <= 0:
        raise ReportError("--max-call-duration must be > 0")
    out = Path(args.out)
    if out.is_dir():
        raise ReportError(f"--out is a directory: {out}")
    try:
        client = open_storage(args)
    except StorageError as exc:
        raise ReportError(str(exc)) from exc
    try:
        migrate(client)
        data = load_report(
            client,
            args.account,
            args.cycle,
            max_call_duration_ms=int(args.max_call_duration * 1000),
        )
    except ReportNotFound as exc:
        raise ReportError(str(exc)) from exc
    except StorageError as exc:
        raise ReportError(str(exc)) from exc
    finally:
        client.close()
    page = render_html(data)
    _write(out, page)
    print(f"wrote {out} ({len(page.encode()):,} bytes): {args.account} {args.cycle}")
    return 0


def run_report(args: argparse.Namespace) -> int:
    """Run ``metering report`` with parsed arguments; 0 on success, 2 on a user error."""
    try:
        return _report(args)
    except ReportError as exc:
        print(f"metering report: error: {exc}", file=sys.stderr)
        return 2


def build_parser(prog: str = "metering report") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Write an account's billing cycle as a self-contained HTML page: the "
        "statement's figures, charts and the evidence behind each charge.",
    )
    add_report_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_report(build_parser().parse_args(argv))
