"""What Grafana and the ClickHouse plugin do to a panel's SQL before ClickHouse sees it.

Grafana cannot run here, so the dashboards test uses this to turn every panel query into
the SQL the plugin would send, then runs it against chDB. Three steps, in the plugin's
order:

1. :func:`apply_conditional_all` (plugin frontend): ``$__conditionalAll(cond, $var)``
   becomes ``1=1`` when ``var`` is "All" (or empty), else ``cond``;
2. :func:`replace_variables` (Grafana's template service): ``$var``, ``${var}``,
   ``${var:singlequote}``, ``[[var]]``; "All" stands for every option of the variable;
3. :func:`expand_macros` (plugin backend, ``pkg/macros``): ``$__timeFilter(c)`` ->
   ``c >= toDateTime(from) AND c <= toDateTime(to)`` (Unix seconds), ``$__dateFilter(c)``
   -> ``c >= toDate('YYYY-MM-DD') AND c <= toDate(...)``, ``$__timeInterval(c)`` ->
   ``toStartOfInterval(toDateTime(c), INTERVAL n second)``, ``$__interval_s`` -> ``n``,
   ``$__fromTime``/``$__toTime`` -> ``toDateTime(...)`` (and the ``_ms`` variants).

Stricter than the plugin on purpose: macro arguments must be plain column names (older
plugin versions split arguments with a non-greedy regex, so nested parentheses or commas
would break there), and an unknown ``$__`` macro is an error instead of being passed on.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

ALL = "$__all"
"""The value Grafana gives a variable whose "All" option is selected."""

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")
_MACRO = re.compile(r"\$__(\w+)")
_VAR = re.compile(r"\$(\w+)|\$\{(\w+)(?::([^}]*))?\}|\[\[(\w+)(?::([^\]]*))?\]\]")
_INTERVAL = re.compile(r"^(\d+)(ms|s|m|h|d|w)$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}


class ExpansionError(ValueError):
    """A query the plugin could not (or would not reliably) expand."""


@dataclass(frozen=True, slots=True)
class Selection:
    """A variable's current value(s): ``[ALL]`` for "All"; ``options`` are what its query
    returned (used when "All" is selected)."""

    values: tuple[str, ...]
    options: tuple[str, ...] = ()

    @property
    def is_all(self) -> bool:
        return self.values in ((ALL,), ("",), ())

    def resolved(self) -> tuple[str, ...]:
        return self.options if self.values == (ALL,) else self.values


def interval_seconds(text: str) -> float:
    """Seconds of a Grafana interval such as ``1h`` or ``30s``."""
    m = _INTERVAL.match(text.strip())
    if m is None:
        raise ExpansionError(f"not a Grafana interval: {text!r}")
    return int(m.group(1)) * _UNIT_SECONDS[m.group(2)]


def _macro_args(sql: str, open_paren: int) -> tuple[list[str], int]:
    """Arguments of the call whose ``(`` is at ``open_paren``, split on top-level commas,
    and the index after the matching ``)``."""
    depth = 0
    args: list[str] = []
    start = open_paren + 1
    for i in range(open_paren, len(sql)):
        ch = sql[i]
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0:
                args.append(sql[start:i])
                return args, i + 1
        elif ch == "," and depth == 1:
            args.append(sql[start:i])
            start = i + 1
    raise ExpansionError(f"unbalanced parentheses after position {open_paren}: {sql!r}")


def apply_conditional_all(sql: str, selections: Mapping[str, Selection]) -> str:
    """The plugin's ``$__conditionalAll(condition, $var)`` (innermost/last first)."""
    macro = "$__conditionalAll("
    while (at := sql.rfind(macro)) != -1:
        args, end = _macro_args(sql, at + len(macro) - 1)
        if len(args) != 2:
            raise ExpansionError(f"$__conditionalAll needs 2 arguments, got {args}")
        ref = args[1].strip()
        m = re.fullmatch(r"\$(\w+)", ref)
        if m is None:
            raise ExpansionError(
                f"$__conditionalAll's second argument must be a plain $variable, got {ref!r}"
            )
        sel = selections.get(m.group(1))
        if sel is None:
            raise ExpansionError(f"$__conditionalAll refers to an undefined variable {ref}")
        sql = sql[:at] + ("1=1" if sel.is_all else args[0]) + sql[end:]
    return sql


def _singlequote(value: str) -> str:
    return "'" + value.replace("'", "\\'") + "'"


def _format(values: Sequence[str], fmt: str | None, name: str) -> str:
    if fmt is None:
        # The plugin's default formatter: several values become a quoted list.
        return ",".join(_singlequote(v) for v in values) if len(values) > 1 else "".join(values)
    if fmt == "singlequote":
        return ",".join(_singlequote(v) for v in values)
    if fmt == "csv":
        return ",".join(values)
    if fmt == "raw":
        return ",".join(values)
    raise ExpansionError(f"variable {name}: format {fmt!r} not supported here")


def replace_variables(sql: str, selections: Mapping[str, Selection]) -> str:
    """Grafana's template service: every reference to a known variable is replaced;
    anything else (``$__`` globals and macros, unknown names) is left as it is."""

    def sub(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2) or m.group(4)
        fmt = m.group(3) or m.group(5)
        sel = selections.get(name)
        if sel is None:
            return m.group(0)
        return _format(sel.resolved(), fmt, name)

    return _VAR.sub(sub, sql)


def _dt(ms: int) -> str:
    return f"toDateTime({ms // 1000})"


def _dt64(ms: int) -> str:
    return f"fromUnixTimestamp64Milli({ms})"


def _date(ms: int) -> str:
    return "toDate('" + datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d") + "')"


def expand_macros(sql: str, from_ms: int, to_ms: int, interval_s: float) -> str:
    """The plugin backend's macros for the time range [from_ms, to_ms] and interval."""
    seconds = max(int(interval_s), 1)
    millis = max(int(interval_s * 1000), 1)

    def one(column: str, fmt: Callable[[int], str]) -> str:
        return f"{column} >= {fmt(from_ms)} AND {column} <= {fmt(to_ms)}"

    with_args: dict[str, Callable[[list[str]], str]] = {
        "timeFilter": lambda a: one(a[0], _dt),
        "timeFilter_ms": lambda a: one(a[0], _dt64),
        "dateFilter": lambda a: one(a[0], _date),
        "dateTimeFilter": lambda a: f"({one(a[0], _date)}) AND ({one(a[1], _dt)})",
        "dt": lambda a: f"({one(a[0], _date)}) AND ({one(a[1], _dt)})",
        "timeInterval": lambda a: (
            f"toStartOfInterval(toDateTime({a[0]}), INTERVAL {seconds} second)"
        ),
        "timeInterval_ms": lambda a: (
            f"toStartOfInterval(toDateTime64({a[0]}, 3), INTERVAL {millis} millisecond)"
        ),
    }
    arity = {"dateTimeFilter": 2, "dt": 2}
    bare: dict[str, str] = {
        "fromTime": _dt(from_ms),
        "toTime": _dt(to_ms),
        "fromTime_ms": _dt64(from_ms),
        "toTime_ms": _dt64(to_ms),
        "interval_s": str(seconds),
    }
    out: list[str] = []
    pos = 0
    while (m := _MACRO.search(sql, pos)) is not None:
        name = m.group(1)
        out.append(sql[pos : m.start()])
        if name in with_args:
            if m.end() >= len(sql) or sql[m.end()] != "(":
                raise ExpansionError(f"$__{name} needs arguments")
            args, end = _macro_args(sql, m.end())
            args = [a.strip() for a in args]
            if len(args) != arity.get(name, 1):
                raise ExpansionError(f"$__{name}: wrong number of arguments {args}")
            for a in args:
                if not _IDENT.match(a):
                    raise ExpansionError(
                        f"$__{name}({', '.join(args)}): arguments must be plain column names"
                    )
            out.append(with_args[name](args))
            pos = end
        elif name in bare:
            out.append(bare[name])
            pos = m.end()
        else:
            raise ExpansionError(f"unknown macro $__{name}")
    out.append(sql[pos:])
    return "".join(out)


def expand(
    sql: str,
    selections: Mapping[str, Selection],
    from_ms: int,
    to_ms: int,
    interval_s: float,
) -> str:
    """The SQL the plugin sends for this query, selection, time range and interval."""
    text = apply_conditional_all(sql, selections)
    text = replace_variables(text, selections)
    return expand_macros(text, from_ms, to_ms, interval_s)
