"""Voice and capacity: concurrency against capacity, cycle peaks, blocked and
over-capacity calls, answer ratio, call duration, minutes by route class, calls per second.

Concurrency comes from ``concurrency_minute`` (the per-minute peak of each capacity group,
3 days), cycle peaks and ``peak_at`` from ``cycle_peaks``, call counts and minutes from the
usage tiers, calls per second from the call records (``calls``, 60 days).
"""

from __future__ import annotations

from metering.dashboards.builder import (
    Dashboard,
    Panel,
    QueryVariable,
    SqlTarget,
    any_of,
    axis_right,
    field_unit,
    where,
)

UID = "metering-voice"

ACCOUNT = any_of("account", "account")
TRUNK_GROUP = any_of("trunk_group", "trunk_group")
CALL_FILTERS = (
    ACCOUNT,
    TRUNK_GROUP,
    any_of("route_class", "route_class"),
    any_of("region", "region"),
)
_TG_PREFIX = "trunk_group:"
_SCOPE_GROUP = f"substring(scope, {len(_TG_PREFIX) + 1})"
"""The capacity group of a ``trunk_group:ID`` scope."""


def _call_values(column: str) -> str:
    return (
        f"SELECT DISTINCT {column} FROM usage_day "
        f"WHERE kind = 'call' AND {column} != '' AND {ACCOUNT} ORDER BY {column}"
    )


VARIABLES = (
    QueryVariable(
        "account",
        "Account",
        "SELECT DISTINCT account FROM usage_day WHERE kind = 'call' ORDER BY account",
    ),
    QueryVariable(
        "trunk_group",
        "Trunk group",
        "SELECT DISTINCT trunk_group FROM ("
        "SELECT account, trunk_group FROM usage_day WHERE kind = 'call' "
        "UNION ALL SELECT account, trunk_group FROM concurrency_minute"
        f") WHERE trunk_group != '' AND {ACCOUNT} ORDER BY trunk_group",
        description="Concurrency and peaks are per capacity group: a trunk group together "
        "with the groups configured as redundant_for it.",
    ),
    QueryVariable("route_class", "Route class", _call_values("route_class")),
    QueryVariable("region", "Region", _call_values("region")),
)

_CONCURRENCY = """
    SELECT $__timeInterval(minute) AS time, concat(account, ' ', trunk_group{suffix}) AS series,
           max({value}) AS concurrent
    FROM concurrency_minute FINAL
    WHERE {where}
    GROUP BY time, series
    ORDER BY time, series
"""

PANELS = (
    Panel(
        "Concurrent calls per trunk group against capacity",
        "timeseries",
        (
            SqlTarget(
                _CONCURRENCY.format(
                    suffix="",
                    value="peak",
                    where=where("$__timeFilter(minute)", ACCOUNT, TRUNK_GROUP),
                ),
                ("time", "series", "concurrent"),
                time_series=True,
            ),
            SqlTarget(
                _CONCURRENCY.format(
                    suffix=", ' capacity'",
                    value="assumeNotNull(capacity)",
                    where=where(
                        "$__timeFilter(minute)", "capacity IS NOT NULL", ACCOUNT, TRUNK_GROUP
                    ),
                ),
                ("time", "series", "concurrent"),
                time_series=True,
            ),
        ),
        description="Largest number of calls occupying ports of each capacity group per "
        "interval (per-minute peaks, kept 3 days), and the group's configured capacity.",
        width=24,
        height=9,
    ),
    Panel(
        "Cycle peaks (month to date) and when they happened",
        "table",
        (
            SqlTarget(
                f"""
                SELECT account, cycle,
                       if(scope = 'account', '(account)', {_SCOPE_GROUP}) AS capacity_group,
                       peak, peak_at, capacity,
                       if(capacity IS NULL OR capacity = 0, NULL, peak / capacity) AS of_capacity
                FROM cycle_peaks FINAL
                WHERE {
                    where(
                        "cycle >= formatDateTime($__fromTime, '%Y-%m')",
                        "cycle <= formatDateTime($__toTime, '%Y-%m')",
                        ACCOUNT,
                        "(scope = 'account' OR " + any_of(_SCOPE_GROUP, "trunk_group") + ")",
                    )
                }
                ORDER BY cycle DESC, account, scope = 'account' DESC, capacity_group
                """,
                (
                    "account",
                    "cycle",
                    "capacity_group",
                    "peak",
                    "peak_at",
                    "capacity",
                    "of_capacity",
                ),
            ),
        ),
        description="Billing cycles overlapping the time range: the account peak (largest "
        "number of calls occupying any of its trunk groups at one instant) and each capacity "
        "group's peak, with the first instant it was reached.",
        overrides=(field_unit("of_capacity", "percentunit"),),
        width=12,
        height=9,
    ),
    Panel(
        "Voice totals",
        "stat",
        (
            SqlTarget(
                f"""
                SELECT sum(calls) AS attempts, sum(answered) AS answered_calls,
                       sum(blocked) AS blocked_calls, sum(over_capacity) AS over_capacity_calls,
                       sum(timed_out) AS timed_out_calls, sum(billable_minutes) AS minutes,
                       if(attempts - blocked_calls = 0, 0,
                          answered_calls / (attempts - blocked_calls)) AS answer_ratio,
                       if(answered_calls = 0, 0,
                          sum(billable_seconds) / answered_calls) AS mean_duration_s
                FROM usage_day FINAL
                WHERE {where("$__dateFilter(bucket)", "kind = 'call'", "deleted = 0", *CALL_FILTERS)}
                """,
                (
                    "attempts",
                    "answered_calls",
                    "blocked_calls",
                    "over_capacity_calls",
                    "timed_out_calls",
                    "minutes",
                    "answer_ratio",
                    "mean_duration_s",
                ),
            ),
        ),
        description="Over the time range (account-local days). Answer ratio: answered / "
        "non-blocked attempts. Mean duration: billable seconds per answered call.",
        overrides=(
            field_unit("answer_ratio", "percentunit"),
            field_unit("mean_duration_s", "s"),
        ),
        width=12,
        height=9,
    ),
    Panel(
        "Blocked and over-capacity calls",
        "timeseries",
        (
            SqlTarget(
                f"""
                SELECT $__timeInterval(bucket) AS time,
                       sum(blocked) AS blocked_calls, sum(over_capacity) AS over_capacity_calls,
                       sum(timed_out) AS timed_out_calls
                FROM usage_hour FINAL
                WHERE {where("$__timeFilter(bucket)", "kind = 'call'", "deleted = 0", *CALL_FILTERS)}
                GROUP BY time
                ORDER BY time
                """,
                ("time", "blocked_calls", "over_capacity_calls", "timed_out_calls"),
                time_series=True,
            ),
        ),
        description="Blocked: rejected by the platform, all ports in use. Over capacity: "
        "started while the capacity group was full. Timed out: no end within the maximum "
        "call duration.",
        min_interval="1h",
        bars=True,
    ),
    Panel(
        "Answer ratio and mean call duration",
        "timeseries",
        (
            SqlTarget(
                f"""
                SELECT $__timeInterval(bucket) AS time,
                       sum(calls) - sum(blocked) AS non_blocked,
                       if(non_blocked = 0, 0, sum(answered) / non_blocked) AS answer_ratio,
                       if(sum(answered) = 0, 0,
                          sum(billable_seconds) / sum(answered)) AS mean_duration_s
                FROM usage_hour FINAL
                WHERE {where("$__timeFilter(bucket)", "kind = 'call'", "deleted = 0", *CALL_FILTERS)}
                GROUP BY time
                ORDER BY time
                """,
                ("time", "non_blocked", "answer_ratio", "mean_duration_s"),
                time_series=True,
            ),
        ),
        description="Answered / non-blocked calls started in the interval, and billable "
        "seconds per answered call (right axis).",
        min_interval="1h",
        unit="percentunit",
        overrides=(
            axis_right("mean_duration_s", "s"),
            {
                "matcher": {"id": "byName", "options": "non_blocked"},
                "properties": [
                    {
                        "id": "custom.hideFrom",
                        "value": {"viz": True, "legend": True, "tooltip": False},
                    }
                ],
            },
        ),
    ),
    Panel(
        "Minutes by route class",
        "timeseries",
        (
            SqlTarget(
                f"""
                SELECT $__timeInterval(bucket) AS time, route_class,
                       sum(billable_minutes) AS minutes
                FROM usage_hour FINAL
                WHERE {where("$__timeFilter(bucket)", "kind = 'call'", "deleted = 0", *CALL_FILTERS)}
                GROUP BY time, route_class
                ORDER BY time, route_class
                """,
                ("time", "route_class", "minutes"),
                time_series=True,
            ),
        ),
        description="Billable minutes of answered calls, by the interval of the call's start.",
        min_interval="1h",
        stacked=True,
        bars=True,
        width=16,
    ),
    Panel(
        "Minutes by route class (range)",
        "piechart",
        (
            SqlTarget(
                f"""
                SELECT route_class, sum(billable_minutes) AS minutes
                FROM usage_day FINAL
                WHERE {where("$__dateFilter(bucket)", "kind = 'call'", "deleted = 0", *CALL_FILTERS)}
                GROUP BY route_class
                ORDER BY minutes DESC
                """,
                ("route_class", "minutes"),
            ),
        ),
        width=8,
    ),
    Panel(
        "Calls per second",
        "timeseries",
        (
            SqlTarget(
                f"""
                SELECT $__timeInterval(second_start) AS time,
                       max(starts) AS peak_cps, sum(starts) / $__interval_s AS mean_cps
                FROM (
                    SELECT toStartOfSecond(started_at) AS second_start, count() AS starts
                    FROM calls FINAL
                    WHERE {where("$__timeFilter(started_at)", "deleted = 0", *CALL_FILTERS)}
                    GROUP BY second_start
                )
                GROUP BY time
                ORDER BY time
                """,
                ("time", "peak_cps", "mean_cps"),
                time_series=True,
            ),
        ),
        description="call.started per second (blocked included): the busiest whole second "
        "and the mean of each interval. The calls_per_second fair-use rule (150) uses sliding "
        "1-second windows; see the Fair use dashboard for its exact month-to-date value.",
        unit="reqps",
        width=24,
    ),
)


def build() -> Dashboard:
    return Dashboard(
        uid=UID,
        title="Metering / Voice and capacity",
        description="Concurrency against capacity, peaks, blocked and over-capacity calls, "
        "answer ratio, call duration, minutes by route class and calls per second.",
        tags=("metering", "voice"),
        variables=VARIABLES,
        panels=PANELS,
        time_from="now-24h",
    )
