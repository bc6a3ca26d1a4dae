"""Files generated from code (schemas, dashboards): write them, or check they are current."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path


def write_or_check(
    directory: Path,
    *,
    check_only: bool,
    check: Callable[[Path], list[str]],
    write: Callable[[Path], list[str]],
    total: int,
    noun: str,
    command: str,
) -> int:
    """The command body shared by ``metering schemas`` and ``metering dashboards``.

    With ``check_only``: lists stale files and returns 1 when any, else 0. Otherwise
    writes the files and lists the ones that changed.
    """
    if check_only:
        stale = check(directory)
        for rel in stale:
            print(f"stale: {directory / rel}")
        if stale:
            print(f"run `{command}` to regenerate", file=sys.stderr)
            return 1
        print(f"{directory}: up to date ({total} {noun})")
        return 0
    changed = write(directory)
    for rel in changed:
        print(f"updated: {directory / rel}")
    print(f"{directory}: {len(changed)} changed, {total} {noun}")
    return 0
