"""The command-line options naming the ClickHouse a command uses (``--db`` or
``--clickhouse-url``), shared by ``metering replay``, ``statement``, ``report`` and
``migrate``. Light to import: the client is loaded when :func:`open_storage` connects."""

from __future__ import annotations

import argparse
import os
from typing import Any

NO_STORAGE = "give --db DIR (embedded ClickHouse) or --clickhouse-url URL"
"""The error of a command given neither storage option."""


def add_storage_options(parser: argparse.ArgumentParser) -> None:
    """``--db DIR`` or ``--clickhouse-url URL`` (default ``$CLICKHOUSE_URL``): the
    ClickHouse a command reads or writes (:func:`open_storage` connects to it)."""
    g = parser.add_mutually_exclusive_group()
    g.add_argument("--db", metavar="DIR", help="embedded ClickHouse (chDB) directory")
    g.add_argument(
        "--clickhouse-url",
        metavar="URL",
        default=os.environ.get("CLICKHOUSE_URL"),
        help="ClickHouse server URL, e.g. http://user:pass@host:8123/metering "
        "(default: $CLICKHOUSE_URL)",
    )


def open_storage(args: argparse.Namespace) -> Any:
    """Connect to the ClickHouse of :func:`add_storage_options` (``--db`` wins; callers
    check first that one of them is given). Raises ``StorageError``."""
    from metering.storage.client import connect

    return connect(db_dir=args.db, url=None if args.db else args.clickhouse_url)
