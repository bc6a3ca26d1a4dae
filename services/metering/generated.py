"""Files generated from code (schemas, dashboards): write them, or check they are current."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path


def repo_dir(relative: str | Path, start: Path | None = None) -> Path:
    """``relative`` under the nearest ancestor of ``start`` (default: the working
    directory) holding ``pyproject.toml``; under ``start`` when there is none."""
    start = (start or Path.cwd()).resolve()
    for d in (start, *start.parents):
        if (d / "pyproject.toml").is_file():
            return d / relative
    return start / relative


def main(
    argv: Sequence[str] | None,
    *,
    prog: str,
    description: str,
    relative: str,
    check: Callable[[Path], list[str]],
    write: Callable[[Path], list[str]],
    total: int,
    noun: str,
) -> int:
    """``[--check|--write] [DIR]``: write the files (default) or check them (exit 1 if
    stale); DIR defaults to ``relative`` at the repository root."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="fail if the files are stale")
    mode.add_argument("--write", action="store_true", help="write the files (default)")
    parser.add_argument(
        "dir", nargs="?", type=Path, help=f"default: {relative} at the repository root"
    )
    args = parser.parse_args(argv)
    directory: Path = args.dir or repo_dir(relative)
    return write_or_check(
        directory,
        check_only=args.check,
        check=check,
        write=write,
        total=total,
        noun=noun,
        command=prog,
    )


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
