"""Prometheus rules of the worker (deploy/prometheus/rules/): promtool and consistency checks.

``promtool check rules`` and ``promtool test rules`` come from Debian's ``prometheus``
package (``scripts/ensure-tools.sh`` installs it). Without promtool those two tests skip,
except in CI (``CI=true``), where they fail.

The Python checks need no tool: every alert has a severity, a summary, a description and a
runbook line pointing at its section of docs/runbook.md; every metric the rules (and the
unit tests' input series) use is exposed by :class:`metering.stream.metrics.WorkerMetrics`
or is one of the documented proposals in :data:`PROPOSED`; every alert has unit tests in
which it fires and in which it does not.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from metering.stream.metrics import WorkerMetrics

ROOT = Path(__file__).resolve().parents[1]
RULES_DIR = ROOT / "deploy" / "prometheus" / "rules"
RULES = RULES_DIR / "metering.rules.yml"
RULE_TESTS = RULES_DIR / "metering.rules.test.yml"
RUNBOOK = ROOT / "docs" / "runbook.md"

SEVERITIES = {"critical", "warning", "info"}

#: Metrics the rules use that metrics.py does not define yet: name -> (type, labels).
#: Documented in docs/runbook.md ("Metrics the alerts need") and the rules file header.
#: (empty: metering_input_end_offset, metering_calls_blocked_total and
#: metering_fairuse_warning_scopes, once proposals, are exported by WorkerMetrics now)
PROPOSED: dict[str, tuple[str, tuple[str, ...]]] = {}

#: Labels Prometheus adds to every scraped series (target labels).
TARGET_LABELS = {"instance", "job", "namespace", "pod", "service", "container", "endpoint"}

_PROMQL_WORDS = {
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "inf",
    "nan",
    "atan2",
}


# ----------------------------------------------------------------------------- helpers
def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        msg = "promtool is not installed (scripts/ensure-tools.sh: apt-get install prometheus)"
        if _in_ci():
            pytest.fail(f"{msg}; CI=true needs it")
        pytest.skip(msg)
    return path


def _load(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict), path
    return data


def _rules() -> list[dict[str, Any]]:
    return [rule for group in _load(RULES)["groups"] for rule in group["rules"]]


def _alerts() -> list[dict[str, Any]]:
    return [r for r in _rules() if "alert" in r]


def _family_samples(kind: str, name: str) -> set[str]:
    """Sample names a metric family of ``kind`` exposes (text format 0.0.4)."""
    if kind == "counter":
        return {f"{name}_total", f"{name}_created"}
    if kind == "histogram":
        return {f"{name}_bucket", f"{name}_count", f"{name}_sum", f"{name}_created"}
    if kind == "summary":
        return {name, f"{name}_count", f"{name}_sum", f"{name}_created"}
    return {name}


def _exposed() -> dict[str, set[str]]:
    """Sample name -> label names, for WorkerMetrics' registry plus :data:`PROPOSED`."""
    out: dict[str, set[str]] = {}
    metrics = WorkerMetrics()
    for family in metrics.registry.collect():
        labels: set[str] = set()
        for value in vars(metrics).values():
            if getattr(value, "_name", None) == family.name:
                labels = set(getattr(value, "_labelnames", ()))
        for sample in _family_samples(family.type, family.name):
            out[sample] = labels | ({"le"} if sample.endswith("_bucket") else set())
    for name, (kind, proposed_labels) in PROPOSED.items():
        for sample in _family_samples(kind, name):
            out.setdefault(sample, set(proposed_labels))
    return out


def _selectors(expr: str) -> list[tuple[str, set[str]]]:
    """(metric name, label names matched) of every vector selector of a PromQL ``expr``."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    matchers: list[tuple[int, set[str]]] = []
    for m in re.finditer(r"\{([^}]*)\}", s):
        matched = set(re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)", m.group(1)))
        matchers.append((m.start(), matched))
    s = re.sub(r"\{[^}]*\}", lambda m: " " * len(m.group(0)), s)
    unbraced = s
    s = re.sub(r"\[[^\]]*\]", lambda m: " " * len(m.group(0)), s)  # ranges, subqueries
    s = re.sub(
        r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)",
        lambda m: " " * len(m.group(0)),
        s,
    )
    found: list[tuple[str, set[str]]] = []
    for m in re.finditer(r"(?<![\w.:])[A-Za-z_:][A-Za-z0-9_:]*", s):
        token = m.group(0)
        if token in _PROMQL_WORDS or s[m.end() :].lstrip().startswith("("):
            continue  # keyword, function or aggregation
        keys: set[str] = set()
        for start, ks in matchers:
            if start >= m.end() and not unbraced[m.end() : start].strip():
                keys = ks
        found.append((token, keys))
    return found


def _slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _runbook_anchors() -> set[str]:
    text = RUNBOOK.read_text(encoding="utf-8")
    return {_slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*$", text, re.M)}


# ----------------------------------------------------------------------------- promtool
def test_promtool_check_rules(promtool: str) -> None:
    proc = subprocess.run(
        [promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_promtool_test_rules(promtool: str) -> None:
    proc = subprocess.run(
        [promtool, "test", "rules", RULE_TESTS.name],
        cwd=RULES_DIR,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


# ----------------------------------------------------------------------------- structure
def test_every_alert_has_severity_summary_description_runbook() -> None:
    alerts = _alerts()
    assert alerts
    anchors = _runbook_anchors()
    for rule in alerts:
        name = rule["alert"]
        assert rule.get("labels", {}).get("severity") in SEVERITIES, name
        annotations = rule.get("annotations", {})
        for key in ("summary", "description", "runbook"):
            assert str(annotations.get(key, "")).strip(), f"{name}: no {key}"
        runbook = annotations["runbook"]
        assert "\n" not in runbook.strip(), f"{name}: runbook must be one line"
        m = re.search(r"docs/runbook\.md#([\w-]+)\s*$", runbook)
        assert m, f"{name}: runbook must end with docs/runbook.md#<anchor>"
        assert m.group(1) == name.lower(), f"{name}: runbook anchor {m.group(1)}"
        assert m.group(1) in anchors, f"{name}: no section {m.group(1)} in docs/runbook.md"


def test_rule_names_are_unique_and_recordings_follow_the_convention() -> None:
    rules = _rules()
    names = [r.get("alert") or r.get("record") for r in rules]
    assert len(names) == len(set(names)), names
    for rule in rules:
        if "record" in rule:
            assert re.fullmatch(r"metering:[a-z0-9_]+:[a-z0-9_]+", rule["record"]), rule
            assert "labels" not in rule or "severity" not in rule["labels"]


def test_rules_use_only_metrics_the_worker_exposes_or_proposed_ones() -> None:
    exposed = _exposed()
    recorded = {r["record"] for r in _rules() if "record" in r}
    used: set[str] = set()
    for rule in _rules():
        for name, labels in _selectors(str(rule["expr"])):
            used.add(name)
            if name in recorded:
                continue
            assert name in exposed, (
                f"{rule.get('alert') or rule.get('record')}: {name} is neither in "
                "metering.stream.metrics nor in PROPOSED"
            )
            unknown = labels - exposed[name] - TARGET_LABELS
            assert not unknown, f"{name} has no label(s) {sorted(unknown)}"
        names = {n for n, _ in _selectors(str(rule["expr"]))}
        if not names & recorded:  # grouping labels exist on the metrics grouped
            available = set().union(*(exposed[n] for n in names)) | TARGET_LABELS
            for group in re.findall(
                r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", str(rule["expr"])
            ):
                grouped = {g.strip() for g in group.split(",") if g.strip()}
                assert grouped <= available, f"{rule}: no label(s) {grouped - available}"
    # every proposal is used (otherwise drop it from PROPOSED and the runbook)
    for name, (kind, _labels) in PROPOSED.items():
        assert used & _family_samples(kind, name), f"proposed {name} is not used"
    # the selectors were found at all (guards the tokenizer)
    assert {"metering_sink_up", "metering_consumer_position"} <= used


def test_proposed_metrics_match_metrics_py_once_added() -> None:
    """A proposal that metrics.py now defines must have the proposed type and labels."""
    metrics = WorkerMetrics()
    families = {f.name: f.type for f in metrics.registry.collect()}
    text = RUNBOOK.read_text(encoding="utf-8")
    for name, (kind, labels) in PROPOSED.items():
        full = f"{name}_total" if kind == "counter" else name
        assert f"`{full}`" in text, f"{full} is not documented in docs/runbook.md"
        if name in families:
            assert families[name] == kind, name
            for value in vars(metrics).values():
                if getattr(value, "_name", None) == name:
                    assert tuple(getattr(value, "_labelnames", ())) == labels, name


def test_unit_tests_cover_every_alert_firing_and_not_firing() -> None:
    tests = _load(RULE_TESTS)
    assert tests["rule_files"] == [RULES.name]
    firing: set[str] = set()
    quiet: set[str] = set()
    exposed = _exposed()
    recorded = {r["record"] for r in _rules() if "record" in r}
    for group in tests["tests"]:
        for series in group.get("input_series", []):
            head = re.match(r"[A-Za-z_:][A-Za-z0-9_:]*", series["series"])
            assert head and head.group(0) in exposed, series["series"]
        for case in group.get("alert_rule_test", []):
            (firing if case.get("exp_alerts") else quiet).add(case["alertname"])
        for case in group.get("promql_expr_test", []):
            for name, _labels in _selectors(case["expr"]):
                assert name in recorded or name in exposed, name
    alerts = {a["alert"] for a in _alerts()}
    assert alerts <= firing, f"no firing case for {sorted(alerts - firing)}"
    assert alerts <= quiet, f"no not-firing case for {sorted(alerts - quiet)}"
    assert firing | quiet <= alerts, f"tests of unknown alerts {sorted((firing | quiet) - alerts)}"


def test_selector_parser() -> None:
    expr = (
        'sum by (topic) (rate(metering_records_consumed_total{topic=~"cpaas\\\\.v.*"}[5m]))'
        " / on (topic) metering:records_consumed:rate5m > 1e5 and absent(metering_ready)"
    )
    assert _selectors(expr) == [
        ("metering_records_consumed_total", {"topic"}),
        ("metering:records_consumed:rate5m", set()),
        ("metering_ready", set()),
    ]
