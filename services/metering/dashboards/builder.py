"""A small builder for Grafana dashboards (JSON model, schema version 39).

A dashboard is a title, a uid, template variables and panels; each panel has targets:

- :class:`SqlTarget`: a query of the ClickHouse plugin (``grafana-clickhouse-datasource``)
  in SQL-editor mode (``editorType: "sql"``, ``rawSql``), formatted as a table
  (``format: 1``, ``queryType: "table"``) or a time series (``format: 0``,
  ``queryType: "timeSeries"``). It declares the result columns it must return, and
  whether the test's replayed sample must give it rows; ``tests/test_dashboards.py``
  expands the plugin's macros and the template variables and runs it against chDB.
- :class:`PromTarget`: a PromQL query of the Prometheus datasource.

Conventions of the ClickHouse plugin followed by every query (so that the old regex-based
macro expansion and the newer parser give the same SQL):

- time filters with ``$__timeFilter(col)`` (``DateTime``/``DateTime64`` columns) or
  ``$__dateFilter(col)`` (``Date`` columns), time buckets with ``$__timeInterval(col)``,
  interval arithmetic with ``$__interval_s``, range ends with ``$__fromTime``/``$__toTime``;
  macro arguments are plain column names (no nested parentheses or commas);
- time-series queries return ``time`` first and are ordered by it (the plugin turns long
  frames, ``time, label, value...``, into one series per label);
- multi-value variables are used as ``col IN (${var:singlequote})`` inside
  ``$__conditionalAll(condition, $var)`` so that "All" costs no filter at all (the second
  argument is the plain ``$var``, as the plugin requires); text variables are used as
  ``${var:singlequote}`` only;
- no output column is named like a source column that another expression of the same query
  uses (ClickHouse resolves aliases first).

Datasource uids match ``deploy/grafana/provisioning/datasources/datasources.yaml``.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

Json = dict[str, Any]

CLICKHOUSE_UID = "metering-clickhouse"
PROMETHEUS_UID = "metering-prometheus"
CLICKHOUSE: Json = {"type": "grafana-clickhouse-datasource", "uid": CLICKHOUSE_UID}
PROMETHEUS: Json = {"type": "prometheus", "uid": PROMETHEUS_UID}

SCHEMA_VERSION = 39
GRID_WIDTH = 24

PanelType = Literal["timeseries", "table", "stat", "piechart", "bargauge", "barchart"]


def sql(text: str) -> str:
    """Dedent and strip a SQL literal (so queries read well in code and in Grafana).

    The indentation of the first line is removed from every line; lines indented less
    (text interpolated into the literal, such as :func:`where`'s ``AND`` lines) go two
    spaces further in than the line before them."""
    lines = textwrap.dedent(text).strip("\n").splitlines()
    first = next((line for line in lines if line.strip()), "")
    base = len(first) - len(first.lstrip())
    out: list[str] = []
    indent = ""
    for line in lines:
        if not line[:base].strip():
            line = line[base:].rstrip()
            indent = line[: len(line) - len(line.lstrip())]
            out.append(line)
        else:
            out.append(indent + "  " + line.strip())
    return "\n".join(out).strip()


def any_of(column: str, variable: str) -> str:
    """``column IN (<selected values>)``, or no filter when the variable is "All"."""
    return f"$__conditionalAll({column} IN (${{{variable}:singlequote}}), ${variable})"


def selected(value: str, variable: str) -> str:
    """``value`` is among the selected values (e.g. ``'voice'`` for the channel filter of
    call panels), or no filter when the variable is "All"."""
    return f"$__conditionalAll({value} IN (${{{variable}:singlequote}}), ${variable})"


def contains_text(columns: Sequence[str], variable: str) -> str:
    """The text variable is empty, or one of ``columns`` contains it (case-insensitive)."""
    value = f"${{{variable}:singlequote}}"
    tests = " OR ".join(f"positionCaseInsensitive({c}, {value}) > 0" for c in columns)
    return f"({value} = '' OR {tests})"


def where(*conditions: str) -> str:
    """Conditions joined with AND, one per line (indented for a ``WHERE`` clause)."""
    return "\n  AND ".join(conditions)


# --------------------------------------------------------------------------------------
# Template variables.


@dataclass(frozen=True, slots=True)
class QueryVariable:
    """A ``query`` variable. ClickHouse: ``query`` is SQL returning one column of values
    (it may use other variables and the plugin's macros). Prometheus: ``label_values``."""

    name: str
    label: str
    query: str
    datasource: Json = field(default_factory=lambda: CLICKHOUSE)
    multi: bool = True
    include_all: bool = True
    all_value: str | None = None
    refresh: int = 1  # 1: on dashboard load, 2: on time range change
    description: str = ""

    def model(self) -> Json:
        current: Json
        if self.include_all:
            current = (
                {"selected": True, "text": ["All"], "value": ["$__all"]}
                if self.multi
                else {"selected": True, "text": "All", "value": "$__all"}
            )
        else:
            current = {}  # Grafana selects the first option
        out: Json = {
            "name": self.name,
            "label": self.label,
            "description": self.description,
            "type": "query",
            "datasource": dict(self.datasource),
            "query": self.query,
            "definition": self.query,
            "refresh": self.refresh,
            "regex": "",
            "sort": 0,
            "multi": self.multi,
            "includeAll": self.include_all,
            "current": current,
            "options": [],
            "hide": 0,
            "skipUrlSync": False,
        }
        if self.all_value is not None:
            out["allValue"] = self.all_value
        return out


@dataclass(frozen=True, slots=True)
class TextVariable:
    """A ``textbox`` variable (free text; ``default`` when untouched)."""

    name: str
    label: str
    default: str = ""
    description: str = ""

    def model(self) -> Json:
        return {
            "name": self.name,
            "label": self.label,
            "description": self.description,
            "type": "textbox",
            "query": self.default,
            "current": {"selected": False, "text": self.default, "value": self.default},
            "options": [{"selected": True, "text": self.default, "value": self.default}],
            "hide": 0,
            "skipUrlSync": False,
        }


Variable = QueryVariable | TextVariable


# --------------------------------------------------------------------------------------
# Targets.


@dataclass(frozen=True, slots=True)
class SqlTarget:
    """A ClickHouse SQL query and the result columns it must return (in order)."""

    query: str
    columns: tuple[str, ...]
    time_series: bool = False
    nonempty: bool = True
    """The replayed sample gives this query rows when every variable is "All"."""

    def model(self, ref: str) -> Json:
        return {
            "datasource": dict(CLICKHOUSE),
            "editorType": "sql",
            "format": 0 if self.time_series else 1,
            "queryType": "timeSeries" if self.time_series else "table",
            "rawSql": sql(self.query),
            "refId": ref,
        }


@dataclass(frozen=True, slots=True)
class PromTarget:
    """A PromQL query; ``legend`` is the legend format (``{{label}}``)."""

    expr: str
    legend: str = "__auto"
    instant: bool = False

    def model(self, ref: str) -> Json:
        return {
            "datasource": dict(PROMETHEUS),
            "editorMode": "code",
            "expr": self.expr,
            "legendFormat": self.legend,
            "range": not self.instant,
            "instant": self.instant,
            "refId": ref,
        }


Target = SqlTarget | PromTarget


# --------------------------------------------------------------------------------------
# Panels.


@dataclass(frozen=True, slots=True)
class Panel:
    """One panel; ``width``/``height`` in grid units (24 columns), placed in order."""

    title: str
    type: PanelType
    targets: tuple[Target, ...]
    description: str = ""
    width: int = 12
    height: int = 8
    unit: str | None = None
    min_interval: str | None = None
    """Lower bound of ``$__interval`` / ``$__timeInterval`` for this panel (e.g. ``1h``)."""
    stacked: bool = False
    bars: bool = False
    decimals: int | None = None
    overrides: tuple[Json, ...] = ()
    options: Json = field(default_factory=dict)

    @property
    def datasource(self) -> Json:
        kinds = {"sql" if isinstance(t, SqlTarget) else "prom" for t in self.targets}
        if len(kinds) != 1:
            raise ValueError(f"panel {self.title!r} mixes datasources")
        return dict(CLICKHOUSE if kinds == {"sql"} else PROMETHEUS)

    def model(self, panel_id: int, x: int, y: int) -> Json:
        defaults: Json = {"custom": self._custom()}
        if self.unit is not None:
            defaults["unit"] = self.unit
        if self.decimals is not None:
            defaults["decimals"] = self.decimals
        out: Json = {
            "id": panel_id,
            "type": self.type,
            "title": self.title,
            "description": self.description,
            "datasource": self.datasource,
            "gridPos": {"h": self.height, "w": self.width, "x": x, "y": y},
            "targets": [t.model(chr(ord("A") + i)) for i, t in enumerate(self.targets)],
            "fieldConfig": {"defaults": defaults, "overrides": [dict(o) for o in self.overrides]},
            "options": {**self._options(), **self.options},
        }
        if self.min_interval is not None:
            out["interval"] = self.min_interval
        return out

    def _custom(self) -> Json:
        if self.type == "timeseries":
            return {
                "drawStyle": "bars" if self.bars else "line",
                "fillOpacity": 60 if self.bars else 10,
                "lineWidth": 1,
                "showPoints": "never",
                "spanNulls": False,
                "stacking": {"group": "A", "mode": "normal" if self.stacked else "none"},
            }
        if self.type == "table":
            return {"align": "auto", "filterable": True}
        return {}

    def _options(self) -> Json:
        legend = {"displayMode": "list", "placement": "bottom", "showLegend": True, "calcs": []}
        if self.type == "timeseries":
            return {"legend": legend, "tooltip": {"mode": "multi", "sort": "desc"}}
        if self.type == "table":
            return {"showHeader": True, "cellHeight": "sm", "footer": {"show": False}}
        if self.type == "stat":
            return {
                "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                "colorMode": "value",
                "graphMode": "none",
                "justifyMode": "auto",
                "orientation": "auto",
                "textMode": "value_and_name",
            }
        if self.type == "piechart":
            return {
                "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": True},
                "pieType": "donut",
                "legend": {**legend, "placement": "right", "values": ["value", "percent"]},
                "tooltip": {"mode": "single", "sort": "none"},
            }
        if self.type == "bargauge":
            return {
                "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": True},
                "orientation": "horizontal",
                "displayMode": "gradient",
                "showUnfilled": True,
            }
        if self.type == "barchart":
            return {
                "orientation": "auto",
                "stacking": "normal" if self.stacked else "none",
                "legend": legend,
                "tooltip": {"mode": "multi", "sort": "desc"},
                "xTickLabelRotation": 0,
            }
        return {}


def axis_right(field_name: str, unit: str, max_value: float | None = None) -> Json:
    """A field override: ``field_name`` on the right axis with its own unit."""
    props: list[Json] = [
        {"id": "unit", "value": unit},
        {"id": "custom.axisPlacement", "value": "right"},
    ]
    if max_value is not None:
        props.append({"id": "max", "value": max_value})
    return {"matcher": {"id": "byName", "options": field_name}, "properties": props}


def field_unit(field_name: str, unit: str) -> Json:
    """A field override: ``field_name`` shown with ``unit``."""
    return {
        "matcher": {"id": "byName", "options": field_name},
        "properties": [{"id": "unit", "value": unit}],
    }


def cell_gauge(field_name: str, max_value: float) -> Json:
    """A table override: ``field_name`` drawn as a gauge cell from 0 to ``max_value``."""
    return {
        "matcher": {"id": "byName", "options": field_name},
        "properties": [
            {"id": "custom.cellOptions", "value": {"type": "gauge", "mode": "gradient"}},
            {"id": "min", "value": 0},
            {"id": "max", "value": max_value},
            {"id": "unit", "value": "percentunit"},
            {
                "id": "thresholds",
                "value": {
                    "mode": "absolute",
                    "steps": [
                        {"color": "green", "value": None},
                        {"color": "orange", "value": 0.8},
                        {"color": "red", "value": 1},
                    ],
                },
            },
        ],
    }


# --------------------------------------------------------------------------------------
# Dashboards.


@dataclass(frozen=True, slots=True)
class Dashboard:
    """A dashboard; panels are laid out left to right, wrapping at 24 columns."""

    uid: str
    title: str
    description: str
    tags: tuple[str, ...]
    variables: tuple[Variable, ...]
    panels: tuple[Panel, ...]
    time_from: str = "now-24h"
    time_to: str = "now"
    refresh: str = "1m"

    @property
    def filename(self) -> str:
        return f"{self.uid}.json"

    def layout(self) -> list[tuple[Panel, int, int]]:
        """Each panel with its (x, y): rows fill left to right; a row is as tall as its
        tallest panel."""
        placed: list[tuple[Panel, int, int]] = []
        x = y = row_height = 0
        for p in self.panels:
            if not 0 < p.width <= GRID_WIDTH:
                raise ValueError(f"panel {p.title!r}: width {p.width} out of 1..{GRID_WIDTH}")
            if x + p.width > GRID_WIDTH:
                x, y, row_height = 0, y + row_height, 0
            placed.append((p, x, y))
            x += p.width
            row_height = max(row_height, p.height)
        return placed

    def model(self) -> Json:
        return {
            "uid": self.uid,
            "title": self.title,
            "description": self.description,
            "tags": list(self.tags),
            "editable": False,
            "graphTooltip": 1,
            "fiscalYearStartMonth": 0,
            "liveNow": False,
            "id": None,
            "links": [],
            "annotations": {
                "list": [
                    {
                        "builtIn": 1,
                        "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                        "enable": True,
                        "hide": True,
                        "iconColor": "rgba(0, 211, 255, 1)",
                        "name": "Annotations & Alerts",
                        "type": "dashboard",
                    }
                ]
            },
            "templating": {"list": [v.model() for v in self.variables]},
            "panels": [p.model(i + 1, x, y) for i, (p, x, y) in enumerate(self.layout())],
            "time": {"from": self.time_from, "to": self.time_to},
            "timepicker": {},
            "timezone": "utc",
            "refresh": self.refresh,
            "schemaVersion": SCHEMA_VERSION,
            "version": 1,
            "weekStart": "",
        }

    def sql_targets(self) -> list[tuple[Panel, SqlTarget]]:
        return [(p, t) for p in self.panels for t in p.targets if isinstance(t, SqlTarget)]

    def prom_targets(self) -> list[tuple[Panel, PromTarget]]:
        return [(p, t) for p in self.panels for t in p.targets if isinstance(t, PromTarget)]


_VAR_REF = re.compile(r"\$(\w+)|\$\{(\w+)(?::[^}]*)?\}|\[\[(\w+)(?::[^\]]*)?\]\]")


def variable_refs(text: str) -> set[str]:
    """Names of the template variables a query refers to (Grafana's three syntaxes);
    Grafana's global ``$__...`` variables and the plugin's macros are not included."""
    names = {a or b or c for a, b, c in _VAR_REF.findall(text)}
    return {n for n in names if not n.startswith("__")}
