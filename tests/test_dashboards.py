"""Grafana dashboards (``deploy/grafana/dashboards``) against the code and a replayed sample.

Grafana cannot run here, so:

(a) the committed JSON files are what ``metering.dashboards`` generates (drift check), and
    ``main`` writes/checks them like ``metering schemas``;
(b) every dashboard is structurally sound: unique uids and panel ids, panels inside the
    24-column grid and not overlapping, every datasource reference resolves to a data
    source provisioned in ``deploy/grafana/provisioning``, every template variable a
    query uses is defined (and defined before any variable whose query uses it), every
    ClickHouse target is a SQL-editor query of the plugin (``editorType``, ``rawSql``,
    ``format``/``queryType`` agreeing);
(c) the macro/variable expansion (``metering.dashboards.grafana``) matches the plugin's
    documented outputs;
(d) every ClickHouse panel query is expanded for several selections (every variable
    "All"; the first option of each; the first two; values with quotes) and run against
    chDB holding a replayed simulated sample (~30k events over 3.5 days): no error, the
    declared columns in order, time series ordered by ``time``, rows for every query with
    "All", and result columns named like a variable only hold selected values;
(e) the checks of (d) do fail on broken targets (wrong columns, no rows, SQL errors);
(f) Prometheus panels: PromQL parses (``promtool``, when installed) and every metric and
    label exists in the worker's registry (``metering.stream.metrics``).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from metering.dashboards import generate, insights
from metering.dashboards.builder import (
    Dashboard,
    Panel,
    QueryVariable,
    SqlTarget,
    TextVariable,
    variable_refs,
)
from metering.dashboards.grafana import (
    ALL,
    ExpansionError,
    Selection,
    apply_conditional_all,
    expand,
    expand_macros,
    interval_seconds,
    replace_variables,
)
from metering.engine.accounts import parse_accounts
from metering.replay.replay import replay_into
from metering.simulate.accounts import make_accounts
from metering.simulate.config import SimulationConfig
from metering.simulate.generator import write_log
from metering.storage import Client, connect, migrate
from metering.storage.schema import set_retention

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD_DIR = ROOT / "deploy" / "grafana" / "dashboards"
DATASOURCES = ROOT / "deploy" / "grafana" / "provisioning" / "datasources" / "datasources.yaml"

DASHBOARDS = generate.dashboards()
BY_UID = {d.uid: d for d in DASHBOARDS}
INTERVAL_S = 300  # Grafana's auto interval for ~3.5 days on a ~1000 px wide panel
COLUMN_VARIABLES = ("account", "channel", "direction", "route_class", "trunk_group")


def _sql_cases() -> list[Any]:
    cases = []
    for d in DASHBOARDS:
        for panel, target in d.sql_targets():
            ref = chr(ord("A") + panel.targets.index(target))
            cases.append(pytest.param(d.uid, panel.title, ref, id=f"{d.uid}:{panel.title}:{ref}"))
    return cases


def _target(uid: str, title: str, ref: str) -> tuple[Dashboard, Panel, SqlTarget]:
    d = BY_UID[uid]
    panel = next(p for p in d.panels if p.title == title)
    target = panel.targets[ord(ref) - ord("A")]
    assert isinstance(target, SqlTarget)
    return d, panel, target


# --------------------------------------------------------------------------------------
# (a) files


def test_committed_files_are_generated() -> None:
    stale = generate.check(DASHBOARD_DIR)
    assert stale == [], f"stale dashboard files {stale}: run `metering dashboards`"


def test_main_write_then_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert generate.main(["--check", str(tmp_path)]) == 1
    assert generate.main([str(tmp_path)]) == 0
    assert generate.main(["--check", str(tmp_path)]) == 0
    (tmp_path / "old.json").write_text("{}")
    (tmp_path / "README.md").write_text("kept")
    doc = tmp_path / f"{insights.UID}.json"
    doc.write_text(doc.read_text().replace('"Metering / Insights"', '"Edited"'))
    assert sorted(generate.check(tmp_path)) == sorted(["old.json", doc.name])
    assert generate.main([str(tmp_path)]) == 0
    assert generate.check(tmp_path) == []
    assert not (tmp_path / "old.json").exists() and (tmp_path / "README.md").exists()
    assert "up to date" in capsys.readouterr().out


def test_default_dir_is_under_the_repo_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT / "services")
    assert generate.default_dir() == DASHBOARD_DIR


# --------------------------------------------------------------------------------------
# (b) structure


def _provisioned() -> dict[str, str]:
    doc = yaml.safe_load(DATASOURCES.read_text())
    return {ds["uid"]: ds["type"] for ds in doc["datasources"]}


def _datasource_refs(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        ds = node.get("datasource")
        if isinstance(ds, dict) and ds.get("type") != "grafana":
            yield ds
        for v in node.values():
            yield from _datasource_refs(v)
    elif isinstance(node, list):
        for v in node:
            yield from _datasource_refs(v)


def test_dashboards_have_unique_uids_titles_and_files() -> None:
    assert len({d.uid for d in DASHBOARDS}) == len(DASHBOARDS)
    assert len({d.title for d in DASHBOARDS}) == len(DASHBOARDS)
    assert {f"{d.uid}.json" for d in DASHBOARDS} == {p.name for p in DASHBOARD_DIR.glob("*.json")}
    assert {d.uid for d in DASHBOARDS} == {
        "metering-insights",
        "metering-voice",
        "metering-fairuse",
        "metering-health",
    }


@pytest.mark.parametrize("uid", sorted(BY_UID))
def test_structure(uid: str) -> None:
    model = BY_UID[uid].model()
    panels = model["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    cells: set[tuple[int, int]] = set()
    for p in panels:
        g = p["gridPos"]
        assert g["w"] > 0 and g["h"] > 0 and g["x"] >= 0 and g["y"] >= 0
        assert g["x"] + g["w"] <= 24, p["title"]
        mine = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not (mine & cells), f"{p['title']} overlaps another panel"
        cells |= mine
        assert p["targets"], p["title"]
        assert len({t["refId"] for t in p["targets"]}) == len(p["targets"])
    # datasources resolve to provisioned ones, with the right type
    provisioned = _provisioned()
    refs = list(_datasource_refs(model))
    assert refs
    for ref in refs:
        assert provisioned.get(ref["uid"]) == ref["type"], ref
    # ClickHouse targets follow the plugin's SQL-editor model
    for p in panels:
        for t in p["targets"]:
            if t["datasource"]["type"] != "grafana-clickhouse-datasource":
                assert t["expr"] and t["refId"]
                continue
            assert t["editorType"] == "sql" and t["rawSql"].strip()
            assert (t["format"], t["queryType"]) in ((0, "timeSeries"), (1, "table"))
    # every variable used is defined, and defined before the variables whose query uses it
    names = [v["name"] for v in model["templating"]["list"]]
    assert len(names) == len(set(names))
    for i, v in enumerate(model["templating"]["list"]):
        if v["type"] == "query":
            assert variable_refs(str(v["query"])) <= set(names[:i]), v["name"]
    for p in panels:
        for t in p["targets"]:
            used = variable_refs(t.get("rawSql") or t.get("expr") or "")
            assert used <= set(names), (p["title"], used - set(names))
    # time series targets return `time` first
    for _panel, target in BY_UID[uid].sql_targets():
        if target.time_series:
            assert target.columns[0] == "time"


def test_every_query_variable_is_used() -> None:
    for d in DASHBOARDS:
        text = " ".join(
            [t.query for _, t in d.sql_targets()]
            + [t.expr for _, t in d.prom_targets()]
            + [v.query for v in d.variables if isinstance(v, QueryVariable)]
        )
        for v in d.variables:
            assert v.name in variable_refs(text), f"{d.uid}: variable {v.name} is never used"


# --------------------------------------------------------------------------------------
# (c) expansion, as the plugin documents it


def test_macros_expand_like_the_plugin() -> None:
    f, t = 1_415_792_726_123, 1_447_328_726_456
    assert expand_macros("WHERE $__timeFilter(ts)", f, t, 20) == (
        "WHERE ts >= toDateTime(1415792726) AND ts <= toDateTime(1447328726)"
    )
    assert expand_macros("$__dateFilter(d)", f, t, 20) == (
        "d >= toDate('2014-11-12') AND d <= toDate('2015-11-12')"
    )
    assert expand_macros("$__timeInterval(ts)", f, t, 20) == (
        "toStartOfInterval(toDateTime(ts), INTERVAL 20 second)"
    )
    assert expand_macros("$__fromTime $__toTime $__interval_s", f, t, 0.2) == (
        "toDateTime(1415792726) toDateTime(1447328726) 1"
    )
    assert expand_macros("$__fromTime_ms", f, t, 1) == "fromUnixTimestamp64Milli(1415792726123)"
    with pytest.raises(ExpansionError, match="plain column names"):
        expand_macros("$__timeFilter(toDateTime(ts))", f, t, 1)
    with pytest.raises(ExpansionError, match="unknown macro"):
        expand_macros("$__nope(ts)", f, t, 1)
    assert interval_seconds("1h") == 3600 and interval_seconds("1d") == 86_400


def test_conditional_all_and_variable_formats() -> None:
    sql = "WHERE $__conditionalAll(a IN (${a:singlequote}), $a) AND b = ${b:singlequote}"
    sels = {"a": Selection((ALL,), ("x", "y")), "b": Selection(("it's",))}
    assert expand(sql, sels, 0, 0, 1) == "WHERE 1=1 AND b = 'it\\'s'"
    sels["a"] = Selection(("x", "y"), ("x", "y", "z"))
    assert expand(sql, sels, 0, 0, 1) == "WHERE a IN ('x','y') AND b = 'it\\'s'"
    # "All" without $__conditionalAll: every option, quoted
    assert replace_variables("${a:singlequote}", {"a": Selection((ALL,), ("x", "y"))}) == (
        "'x','y'"
    )
    # nested: the condition may hold parentheses and commas
    nested = "$__conditionalAll(ifNull(r, '') IN (${r:singlequote}), $r)"
    assert apply_conditional_all(nested, {"r": Selection(("CA",))}) == (
        "ifNull(r, '') IN (${r:singlequote})"
    )
    with pytest.raises(ExpansionError, match="plain \\$variable"):
        apply_conditional_all("$__conditionalAll(a = 1, ${a:singlequote})", {})
    assert replace_variables("$unknown $__interval", {}) == "$unknown $__interval"


# --------------------------------------------------------------------------------------
# (d) every ClickHouse query against a replayed sample


@dataclass
class Sample:
    client: Client
    from_ms: int
    to_ms: int


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sample]:
    root = tmp_path_factory.mktemp("dashboards")
    cfg = SimulationConfig(seed=3, events=30_000, days=3.5, accounts=4)
    accounts = make_accounts(cfg)
    summary = write_log(root / "events.jsonl", cfg, accounts)
    client = connect(db_dir=str(root / "ch"))
    try:
        migrate(client)
        set_retention(client, False)  # the sample's dates are older than the retention
        replay_into(client, root / "events.jsonl", parse_accounts(accounts))
        assert summary.first_time_ms is not None and summary.last_time_ms is not None
        yield Sample(client, summary.first_time_ms, summary.last_time_ms)
    finally:
        client.close()


def _options(
    sample: Sample, variable: QueryVariable, sels: dict[str, Selection]
) -> tuple[str, ...]:
    sql = expand(variable.query, sels, sample.from_ms, sample.to_ms, INTERVAL_S)
    result = sample.client.query(sql)
    assert len(result.column_names) == 1, variable.name
    return tuple(str(r[0]) for r in result.result_rows)


def selections(sample: Sample, d: Dashboard, mode: str) -> dict[str, Selection]:
    """Cascading like Grafana: each variable's options come from its query expanded with
    the selections made before it. ``mode``: all | first | pair | quotes."""
    sels: dict[str, Selection] = {}
    for v in d.variables:
        if isinstance(v, TextVariable):
            text = {"all": "", "first": "+1", "pair": "55", "quotes": "O'Brien"}[mode]
            sels[v.name] = Selection((text,))
            continue
        opts = _options(sample, v, sels)
        assert opts, f"{d.uid}: variable {v.name} has no options on the sample"
        if not v.include_all or mode != "all":
            n = 2 if mode == "pair" and v.multi else 1
            values = opts[:n]
            if mode == "quotes" and v.multi:
                values = (*values, "it's", "back\\slash")
        else:
            values = (ALL,)
        sels[v.name] = Selection(values, opts)
    return sels


def check_target(
    sample: Sample, panel: Panel, target: SqlTarget, sels: dict[str, Selection], need_rows: bool
) -> list[tuple[Any, ...]]:
    """Run one target; assert the declared columns, ordering and filters. Returns rows."""
    interval = max(INTERVAL_S, interval_seconds(panel.min_interval) if panel.min_interval else 0)
    sql = expand(target.query, sels, sample.from_ms, sample.to_ms, interval)
    assert "$" not in sql.replace("'$", ""), f"unexpanded reference in {sql}"
    # Column names from DESCRIBE: an empty result carries none through the chDB client.
    names = tuple(str(r[0]) for r in sample.client.query(f"DESCRIBE TABLE ({sql})").result_rows)
    assert names == target.columns, (panel.title, names)
    rows = [tuple(r) for r in sample.client.query(sql).result_rows]
    if need_rows:
        assert rows, f"{panel.title}: no rows on the sample"
    if target.time_series and rows:
        times = [r[0] for r in rows]
        assert all(isinstance(t, datetime) for t in times), panel.title
        assert times == sorted(times), f"{panel.title}: not ordered by time"
    for i, col in enumerate(names):
        sel = sels.get(col)
        if col in COLUMN_VARIABLES and sel is not None and not sel.is_all:
            assert {r[i] for r in rows} <= set(sel.values), (panel.title, col)
    return rows


@pytest.mark.parametrize(("uid", "title", "ref"), _sql_cases())
def test_clickhouse_query_runs_on_the_sample(
    sample: Sample, uid: str, title: str, ref: str
) -> None:
    d, panel, target = _target(uid, title, ref)
    all_rows = check_target(sample, panel, target, selections(sample, d, "all"), target.nonempty)
    for mode in ("first", "pair", "quotes"):
        rows = check_target(sample, panel, target, selections(sample, d, mode), False)
        if mode == "quotes" or "LIMIT" in target.query:
            continue
        assert len(rows) <= len(all_rows), (title, mode)
    # each filter of the query on its own (the others "All"): some value selects rows
    base = selections(sample, d, "all")
    for v in d.variables:
        if v.name not in variable_refs(target.query) or (
            isinstance(v, QueryVariable) and not v.include_all
        ):
            continue
        candidates = ("+1",) if isinstance(v, TextVariable) else base[v.name].options[:12]
        found = False
        for value in candidates:
            sels = {**base, v.name: Selection((value,), base[v.name].options)}
            if check_target(sample, panel, target, sels, False):
                found = True
                break
        assert found or not all_rows, f"{title}: no value of ${v.name} selects rows"


def test_variables_cascade(sample: Sample) -> None:
    """Selecting one account narrows the options of the variables that depend on it."""
    d = BY_UID["metering-insights"]
    users = next(v for v in d.variables if v.name == "user")
    assert isinstance(users, QueryVariable)
    every = _options(sample, users, {"account": Selection((ALL,))})
    one = _options(sample, users, {"account": Selection(("acct-1",))})
    assert one and set(one) < set(every)
    assert all(u.startswith("u-1-") for u in one)


# --------------------------------------------------------------------------------------
# (e) the checks catch broken targets


def test_checks_fail_on_broken_targets(sample: Sample) -> None:
    d, panel, good = _target("metering-voice", "Minutes by route class (range)", "A")
    sels = selections(sample, d, "all")
    assert check_target(sample, panel, good, sels, True)
    wrong_columns = SqlTarget(good.query, ("route_class", "billable_minutes"))
    with pytest.raises(AssertionError):
        check_target(sample, panel, wrong_columns, sels, True)
    no_rows = SqlTarget(good.query.replace("kind = 'call'", "kind = 'none'"), good.columns)
    with pytest.raises(AssertionError, match="no rows"):
        check_target(sample, panel, no_rows, sels, True)
    bad_sql = SqlTarget(good.query.replace("usage_day", "usage_week"), good.columns)
    with pytest.raises(Exception, match="usage_week"):
        check_target(sample, panel, bad_sql, sels, True)
    account_rows = SqlTarget(
        "SELECT account, count() AS n FROM usage_day GROUP BY account ORDER BY account",
        ("account", "n"),
    )
    with pytest.raises(AssertionError):  # a result ignoring the selection is caught
        check_target(sample, panel, account_rows, {"account": Selection(("acct-1",))}, True)


# --------------------------------------------------------------------------------------
# (f) Prometheus


def _prom_exprs() -> list[str]:
    return [t.expr for d in DASHBOARDS for _, t in d.prom_targets()]


def _grafana_free(expr: str) -> str:
    """PromQL with Grafana's variables replaced as Grafana would (All = ``.*``)."""
    expr = re.sub(r"\$__(rate_interval|interval|range)\b", "5m", expr)
    return re.sub(r"\$(\w+)", ".*", expr)


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_promql_parses(tmp_path: Path) -> None:
    rules = {
        "groups": [
            {
                "name": "dashboards",
                "rules": [
                    {"record": f"metering:dashboard_expr_{i}", "expr": _grafana_free(e)}
                    for i, e in enumerate(_prom_exprs())
                ],
            }
        ]
    }
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump(rules))
    out = subprocess.run(
        ["promtool", "check", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stdout + out.stderr
    # and promtool does reject a broken expression
    path.write_text(
        yaml.safe_dump(
            {"groups": [{"name": "x", "rules": [{"record": "a:b", "expr": "sum by (x (y)"}]}]}
        )
    )
    bad = subprocess.run(
        ["promtool", "check", "rules", str(path)], capture_output=True, check=False
    )
    assert bad.returncode != 0


def _worker_metrics() -> dict[str, set[str]]:
    """Exposed series names of the worker's registry -> label names."""
    from prometheus_client.metrics import MetricWrapperBase

    from metering.stream.metrics import WorkerMetrics

    wm = WorkerMetrics()
    suffixes = {
        "counter": ("_total", "_created"),
        "gauge": ("",),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "summary": ("_sum", "_count", "_created", ""),
    }
    names: dict[str, set[str]] = {}
    for m in vars(wm).values():
        if isinstance(m, MetricWrapperBase):
            labels = set(m._labelnames)
            assert m._type is not None, m
            for s in suffixes[m._type]:
                names[m._name + s] = labels | ({"le"} if s == "_bucket" else set())
    for family in wm.registry.collect():  # collectors registered directly (e.g. process_*)
        for sample in family.samples:
            names.setdefault(sample.name, set(sample.labels))
    return names


_SELECTOR = re.compile(r"\b([a-z_][a-z0-9_]*)(\{[^}]*\})?\[?")
_PROMQL_WORDS = {
    "sum", "max", "min", "rate", "increase", "histogram_quantile", "by", "without", "le",
    "avg", "count", "irate", "topk",
}  # fmt: skip
_TARGET_LABELS = {"instance", "job", "service"}  # added by Prometheus / the scrape config


def _metric_uses(expr: str) -> list[tuple[str, set[str]]]:
    expr = re.sub(r"\$__\w+", "", expr)
    grouped = {g.strip() for grp in re.findall(r"by \(([^)]*)\)", expr) for g in grp.split(",")}
    expr = re.sub(r"by \([^)]*\)", "", expr)
    uses: list[tuple[str, set[str]]] = []
    for m in _SELECTOR.finditer(expr):
        name, matchers = m.group(1), m.group(2) or ""
        if name in _PROMQL_WORDS or expr[m.end(1) : m.end(1) + 1] == "(":
            continue
        uses.append((name, set(re.findall(r"(\w+)\s*=~?", matchers))))
    return [(n, labels | grouped) for n, labels in uses]


def test_prometheus_metrics_exist() -> None:
    exported = _worker_metrics()
    missing_memory = "process_resident_memory_bytes" not in exported
    problems = []
    for expr in _prom_exprs():
        for name, labels in _metric_uses(expr):
            if name == "process_resident_memory_bytes" and missing_memory:
                continue  # reported by test_worker_memory_is_exported
            if name not in exported:
                problems.append(f"{name} (in {expr})")
                continue
            unknown = labels - exported[name] - _TARGET_LABELS
            if unknown:
                problems.append(f"{name}: labels {sorted(unknown)} (in {expr})")
    assert not problems, problems


def test_metric_check_catches_unknown_names() -> None:
    exported = _worker_metrics()
    uses = _metric_uses('sum by (reason) (rate(metering_dead_letter_total{instance=~".*"}[5m]))')
    assert uses == [("metering_dead_letter_total", {"instance", "reason"})]
    assert "metering_dead_letter_total" not in exported
    assert exported["metering_dead_letters_total"] == {"reason"}


def test_worker_memory_is_exported() -> None:
    if "process_resident_memory_bytes" not in _worker_metrics():
        pytest.xfail(
            "metering.stream.metrics registers no ProcessCollector: the Worker memory panel "
            "stays empty until WorkerMetrics adds ProcessCollector(registry=r)"
        )
