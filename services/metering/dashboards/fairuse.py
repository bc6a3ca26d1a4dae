"""Fair use: every rule's month-to-date value against its threshold, per account, user and
trunk group; warnings and breaches over time; the projected overage of the cycle.

Values, statuses and charges come from ``fairuse_counters`` (what the engine evaluated,
SPEC section 6); the events from ``output_events`` (``fairuse.warning`` / ``breach`` /
``cleared``). Rule metadata (direction, threshold, rates) is taken from
:mod:`metering.engine.rules`, so the dashboard cannot drift from the engine.

Projection: counts grow linearly over the cycle. ``minutes_per_user`` projects the user's
minutes to the cycle end and charges what exceeds the threshold; the surcharge rules
(``rboc_mix``, ``call_completion``) keep their current status and project the surcharge
with the account's minutes. Cycles are taken as UTC months here (the engine uses each
account's time zone), so the projection is approximate near the cycle boundaries.
"""

from __future__ import annotations

import textwrap

from metering.dashboards.builder import (
    Dashboard,
    Panel,
    QueryVariable,
    SqlTarget,
    any_of,
    cell_gauge,
    field_unit,
    sql,
    where,
)
from metering.engine.rules import MINUTES_OVERAGE_RATE, RULE_ORDER, RULES, charge_kind

UID = "metering-fairuse"

ACCOUNT = any_of("account", "account")
RULE = any_of("rule", "rule")
CYCLE = "cycle = ${cycle:singlequote}"
FAIRUSE_TYPES = ("fairuse.warning", "fairuse.breach", "fairuse.cleared")


def _quoted(names: tuple[str, ...]) -> str:
    return ", ".join(f"'{n}'" for n in names)


MIN_RULES = tuple(n for n in RULE_ORDER if RULES[n].kind == "min")
SURCHARGE_RULES = tuple(n for n in RULE_ORDER if charge_kind(n) == "surcharge")
OVERAGE_RULES = tuple(n for n in RULE_ORDER if charge_kind(n) == "overage")
assert OVERAGE_RULES == ("minutes_per_user",), OVERAGE_RULES
_OVERAGE_THRESHOLD = int(RULES["minutes_per_user"].threshold)

VARIABLES = (
    QueryVariable(
        "cycle",
        "Cycle",
        "SELECT DISTINCT cycle FROM fairuse_counters ORDER BY cycle DESC",
        multi=False,
        include_all=False,
        description="Billing cycle (YYYY-MM, the account's local calendar month).",
    ),
    QueryVariable(
        "account",
        "Account",
        "SELECT DISTINCT account FROM fairuse_counters WHERE cycle = ${cycle:singlequote} "
        "ORDER BY account",
    ),
    QueryVariable(
        "rule",
        "Rule",
        "SELECT DISTINCT rule FROM fairuse_counters WHERE cycle = ${cycle:singlequote} "
        "ORDER BY rule",
    ),
)

_PROJECTION = """WITH toDateTime(concat(${cycle:singlequote}, '-01 00:00:00'), 'UTC') AS cycle_start,
                     cycle_start + INTERVAL 1 MONTH AS cycle_end,
                     dateDiff('second', cycle_start, cycle_end) AS cycle_seconds,
                     least(greatest(dateDiff('second', cycle_start, $__toTime), 3600),
                           cycle_seconds) AS elapsed_seconds,
                     cycle_seconds / elapsed_seconds AS factor"""
"""The projection's time factor (cycle length / elapsed part of it, at least an hour) of
the cycle variable, for the projected-overage panels."""

_EVENTS = f"""
    SELECT time AS at, account, type,
           JSONExtractString(data, 'rule') AS rule_name,
           JSONExtractString(data, 'scope') AS scope,
           JSONExtractFloat(data, 'value') AS rule_value,
           JSONExtractFloat(data, 'threshold') AS rule_threshold,
           JSONExtractString(data, 'charge_usd') AS charge_usd
    FROM output_events FINAL
    WHERE {where("$__timeFilter(time)", f"type IN ({_quoted(FAIRUSE_TYPES)})", ACCOUNT)}
"""
_EVENTS_SUBQUERY = textwrap.indent(sql(_EVENTS), " " * 20)
"""The events as a subquery of the panel literals below (indented like them)."""

PANELS = (
    Panel(
        "Rules month to date against their thresholds",
        "table",
        (
            SqlTarget(
                f"""
                SELECT account, rule, scope, value AS rule_value,
                       if(rule IN ({_quoted(MIN_RULES)}), '>=', '<=') AS passes_when,
                       threshold, status, charge_usd,
                       if(threshold = 0, 0,
                          if(rule IN ({_quoted(MIN_RULES)}),
                             if(value = 0, 1, threshold / value),
                             value / threshold)) AS of_threshold
                FROM fairuse_counters FINAL
                WHERE {where(CYCLE, ACCOUNT, RULE)}
                ORDER BY status = 'breach' DESC, of_threshold DESC, account, rule, scope
                """,
                (
                    "account",
                    "rule",
                    "scope",
                    "rule_value",
                    "passes_when",
                    "threshold",
                    "status",
                    "charge_usd",
                    "of_threshold",
                ),
            ),
        ),
        description="One row per rule and scope (account, user:ID, trunk_group:ID) with "
        "counters in the cycle. of_threshold: how far the value is towards failing (1 = at "
        "the threshold; for >= rules, threshold / value). Status insufficient_data: the "
        "rule's sample floor is not met yet.",
        overrides=(cell_gauge("of_threshold", 1.5),),
        width=24,
        height=10,
    ),
    Panel(
        "Scopes by status",
        "barchart",
        (
            SqlTarget(
                f"""
                SELECT rule,
                       countIf(status = 'ok') AS ok,
                       countIf(status = 'warning') AS warning,
                       countIf(status = 'breach') AS breach,
                       countIf(status = 'insufficient_data') AS insufficient_data
                FROM fairuse_counters FINAL
                WHERE {where(CYCLE, ACCOUNT, RULE)}
                GROUP BY rule
                ORDER BY rule
                """,
                ("rule", "ok", "warning", "breach", "insufficient_data"),
            ),
        ),
        stacked=True,
        width=10,
        height=9,
    ),
    Panel(
        "Breaches and warnings over time",
        "timeseries",
        (
            SqlTarget(
                f"""
                SELECT $__timeInterval(at) AS time, type, count() AS event_count
                FROM (
{_EVENTS_SUBQUERY}
                )
                WHERE {any_of("rule_name", "rule")}
                GROUP BY time, type
                ORDER BY time, type
                """,
                ("time", "type", "event_count"),
                time_series=True,
            ),
        ),
        description="fairuse.warning (a max rule reached 80% of its threshold), "
        "fairuse.breach (a rule failed), fairuse.cleared (a failing ratio rule passes again); "
        "each at most once per rule, scope and cycle.",
        bars=True,
        stacked=True,
        width=14,
        height=9,
    ),
    Panel(
        "Projected overage for the cycle",
        "table",
        (
            SqlTarget(
                f"""
                {_PROJECTION}
                SELECT account, rule, scope, status,
                       toFloat64(charge_usd) AS charge_to_date_usd,
                       round(multiIf(
                           rule = 'minutes_per_user',
                           greatest(num * factor - {_OVERAGE_THRESHOLD}, 0) * {MINUTES_OVERAGE_RATE},
                           status = 'breach', toFloat64(charge_usd) * factor,
                           0), 2) AS projected_usd,
                       round(factor, 3) AS cycle_factor
                FROM fairuse_counters FINAL
                WHERE {where(CYCLE, f"rule IN ({_quoted(OVERAGE_RULES + SURCHARGE_RULES)})", ACCOUNT, RULE)}
                ORDER BY projected_usd DESC, charge_to_date_usd DESC, account, rule, scope
                LIMIT 200
                """,
                (
                    "account",
                    "rule",
                    "scope",
                    "status",
                    "charge_to_date_usd",
                    "projected_usd",
                    "cycle_factor",
                ),
            ),
        ),
        description="Month-to-date charge and its projection to the end of the cycle "
        "(counts extrapolated linearly from the cycle start to the end of the time range; "
        "cycle_factor = cycle length / elapsed). minutes_per_user: (projected minutes - "
        f"{_OVERAGE_THRESHOLD}) x ${MINUTES_OVERAGE_RATE}; surcharges: the current surcharge "
        "scaled, while the rule fails.",
        overrides=(
            field_unit("charge_to_date_usd", "currencyUSD"),
            field_unit("projected_usd", "currencyUSD"),
        ),
        width=14,
        height=10,
    ),
    Panel(
        "Projected overage by account",
        "bargauge",
        (
            SqlTarget(
                f"""
                {_PROJECTION}
                SELECT account,
                       round(sum(multiIf(
                           rule = 'minutes_per_user',
                           greatest(num * factor - {_OVERAGE_THRESHOLD}, 0) * {MINUTES_OVERAGE_RATE},
                           status = 'breach', toFloat64(charge_usd) * factor,
                           0)), 2) AS projected_usd
                FROM fairuse_counters FINAL
                WHERE {where(CYCLE, f"rule IN ({_quoted(OVERAGE_RULES + SURCHARGE_RULES)})", ACCOUNT, RULE)}
                GROUP BY account
                ORDER BY projected_usd DESC, account
                """,
                ("account", "projected_usd"),
            ),
        ),
        unit="currencyUSD",
        width=10,
        height=10,
    ),
    Panel(
        "Fair-use events",
        "table",
        (
            SqlTarget(
                f"""
                SELECT at, account, type, rule_name, scope, rule_value, rule_threshold, charge_usd
                FROM (
{_EVENTS_SUBQUERY}
                )
                WHERE {any_of("rule_name", "rule")}
                ORDER BY at DESC
                LIMIT 500
                """,
                (
                    "at",
                    "account",
                    "type",
                    "rule_name",
                    "scope",
                    "rule_value",
                    "rule_threshold",
                    "charge_usd",
                ),
            ),
        ),
        description="The latest warnings, breaches and clearances in the time range.",
        width=24,
        height=9,
    ),
)


def build() -> Dashboard:
    return Dashboard(
        uid=UID,
        title="Metering / Fair use",
        description="Month-to-date fair-use rules against thresholds, breaches and warnings, "
        "projected overage.",
        tags=("metering", "fair-use"),
        variables=VARIABLES,
        panels=PANELS,
        time_from="now-30d",
    )
