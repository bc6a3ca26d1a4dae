"""Write (or check) the Grafana dashboard files under ``deploy/grafana/dashboards/``.

Usage: ``metering dashboards [--check] [DIR]`` or ``python -m metering.dashboards``
(``DIR`` defaults to ``deploy/grafana/dashboards`` at the repository root found from the
working directory). Grafana provisions every ``*.json`` file of that folder (see
``deploy/grafana/provisioning/dashboards/dashboards.yaml``); other files there are left
alone. Everything except :func:`write` and :func:`main` is pure.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

from metering import generated
from metering.dashboards import fairuse, health, insights, voice
from metering.dashboards.builder import Dashboard, Json
from metering.generated import repo_dir

DASHBOARD_DIR = Path("deploy") / "grafana" / "dashboards"


def dashboards() -> list[Dashboard]:
    """Every dashboard, in a fixed order."""
    return [insights.build(), voice.build(), fairuse.build(), health.build()]


def documents() -> dict[str, Json]:
    """Every dashboard's JSON model, by file name."""
    return {d.filename: d.model() for d in dashboards()}


def render(doc: Json) -> str:
    """The file text of a dashboard model."""
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def _extra_files(directory: Path, expected: set[str]) -> list[str]:
    return sorted(p.name for p in directory.glob("*.json") if p.name not in expected)


def check(directory: Path | str) -> list[str]:
    """File names that are missing, stale (compared as parsed JSON) or not generated."""
    directory = Path(directory)
    docs = documents()
    bad: list[str] = []
    for name, doc in docs.items():
        try:
            current = json.loads((directory / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            bad.append(name)
            continue
        if current != json.loads(render(doc)):
            bad.append(name)
    return bad + _extra_files(directory, set(docs))


def write(directory: Path | str) -> list[str]:
    """Write every dashboard and delete ``*.json`` files no longer generated; returns the
    file names written or deleted."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    docs = documents()
    changed: list[str] = []
    for name in _extra_files(directory, set(docs)):
        (directory / name).unlink()
        changed.append(name)
    for name, doc in docs.items():
        path = directory / name
        text = render(doc)
        if path.exists() and path.read_text(encoding="utf-8") == text:
            continue
        path.write_text(text, encoding="utf-8")
        changed.append(name)
    return changed


def default_dir(start: Path | None = None) -> Path:
    """``deploy/grafana/dashboards`` under the nearest ancestor of ``start`` (default: the
    working directory) holding ``pyproject.toml``; under ``start`` when there is none."""
    return repo_dir(DASHBOARD_DIR, start)


def main(argv: Sequence[str] | None = None) -> int:
    """``[--check|--write] [DIR]``: write the files (default) or check them (exit 1 if stale)."""
    return generated.main(
        argv,
        prog="metering dashboards",
        description="Generate (or check) the Grafana dashboards provisioned from "
        "deploy/grafana/dashboards.",
        relative=str(DASHBOARD_DIR),
        check=check,
        write=write,
        total=len(documents()),
        noun="dashboards",
    )


if __name__ == "__main__":
    sys.exit(main())
