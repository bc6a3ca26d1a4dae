"""``metering migrate``: apply the schema migrations (:mod:`metering.storage.schema`).

The same migrations run when any command opens the storage and when the streaming worker
starts; this command applies them explicitly (deployments run it before rolling out
workers) and lists what the database holds::

    metering migrate --db .metering/db
    metering migrate --clickhouse-url http://user:pass@host:8123/metering
    metering migrate --db .metering/db --status     # list, change nothing

Exit status 0 when the database is at the code's head version, 2 on errors (one line on
stderr).
"""

from __future__ import annotations

import argparse
import sys

from metering.storage.client import StorageError
from metering.storage.schema import MIGRATIONS, applied_migrations, migrate
from metering.storage_options import NO_STORAGE, add_storage_options, open_storage

__all__ = ["add_migrate_arguments", "run_migrate"]


def add_migrate_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``metering migrate``."""
    add_storage_options(parser)
    parser.add_argument(
        "--status",
        action="store_true",
        help="only list the applied and pending migrations (change nothing)",
    )


def run_migrate(args: argparse.Namespace) -> int:
    """Apply the pending migrations (or, with ``--status``, list them); print one line per
    migration and a summary."""
    if not args.db and not args.clickhouse_url:
        print(
            f"metering: error: {NO_STORAGE}",
            file=sys.stderr,
        )
        return 2
    try:
        client = open_storage(args)
    except StorageError as exc:
        print(f"metering: error: {exc}", file=sys.stderr)
        return 2
    try:
        names = {m.version: m.name for m in MIGRATIONS}
        head = MIGRATIONS[-1].version
        if args.status:
            applied = applied_migrations(client)
            for m in MIGRATIONS:
                state = "applied" if m.version in applied else "pending"
                print(f"{state:8} {m.version:>3}  {m.name}")
            unknown = sorted(set(applied) - set(names))
            for v in unknown:
                print(f"{'unknown':8} {v:>3}  (applied by a newer version of the code)")
            pending = [m.version for m in MIGRATIONS if m.version not in applied]
            print(f"head {head}: {len(pending)} pending")
            return 0
        done = migrate(client)
        for v in done:
            print(f"applied  {v:>3}  {names[v]}")
        print(
            f"database at version {head}: {len(done)} applied now, "
            f"{len(MIGRATIONS) - len(done)} already applied"
        )
        return 0
    except Exception as exc:  # one line, never a traceback (the CLI's convention)
        print(f"metering: error: migration failed: {exc}", file=sys.stderr)
        return 2
    finally:
        client.close()
