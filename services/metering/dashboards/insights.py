"""Insights: Interactions, messages, SmartFlows, conversations, and the call records.

Reads the usage tiers (``usage_hour`` 14 days, ``usage_day`` 90 days) for the series and
totals, ``interactions`` (3 years) for the top conversations and ``calls`` (60 days) for the
call records. Filters: account, channel, direction, route class, region, trunk group and
user (multi-value, "All" = no filter) and a caller/called party search (text).

Dimensions that do not apply to a panel's facts are not applied to it: region, route
class, trunk group and user describe calls only; a channel selection without ``voice``
hides the call panels.
"""

from __future__ import annotations

from metering.dashboards.builder import (
    Dashboard,
    Panel,
    QueryVariable,
    SqlTarget,
    TextVariable,
    any_of,
    axis_right,
    contains_text,
    field_unit,
    selected,
    where,
)

UID = "metering-insights"

ACCOUNT = any_of("account", "account")
CHANNEL = any_of("channel", "channel")
DIRECTION = any_of("direction", "direction")
VOICE = selected("'voice'", "channel")
CALL_DIMS = (
    any_of("region", "region"),
    any_of("route_class", "route_class"),
    any_of("trunk_group", "trunk_group"),
    any_of("`user`", "user"),
)


def _call_values(column: str) -> str:
    return (
        f"SELECT DISTINCT {column} FROM usage_day "
        f"WHERE kind = 'call' AND {column} != '' AND {ACCOUNT} ORDER BY {column}"
    )


VARIABLES = (
    QueryVariable("account", "Account", "SELECT DISTINCT account FROM usage_day ORDER BY account"),
    QueryVariable(
        "channel",
        "Channel",
        "SELECT DISTINCT channel FROM usage_day WHERE channel != '' ORDER BY channel",
        description="Interactions count sms and mms together as sms.",
    ),
    QueryVariable(
        "direction",
        "Direction",
        f"SELECT DISTINCT direction FROM usage_day WHERE direction != '' AND {ACCOUNT} "
        "ORDER BY direction",
        description="inbound/outbound (calls), sent/received (messages).",
    ),
    QueryVariable("region", "Region", _call_values("region")),
    QueryVariable("route_class", "Route class", _call_values("route_class")),
    QueryVariable("trunk_group", "Trunk group", _call_values("trunk_group")),
    QueryVariable("user", "User", _call_values("`user`")),
    TextVariable(
        "party",
        "Caller / called party",
        description="Part of a phone number or address (calls: from/to; conversations: "
        "business/remote address).",
    ),
)


def _interactions_series(table: str, time_filter: str, title: str, interval: str) -> Panel:
    return Panel(
        title,
        "timeseries",
        (
            SqlTarget(
                f"""
                SELECT $__timeInterval(bucket) AS time, channel,
                       sum(interactions) AS interaction_count
                FROM {table} FINAL
                WHERE {where(time_filter, "kind = 'interaction'", "deleted = 0", ACCOUNT, CHANNEL)}
                GROUP BY time, channel
                ORDER BY time, channel
                """,
                ("time", "channel", "interaction_count"),
                time_series=True,
            ),
        ),
        description="Interactions by the bucket of their origin (SPEC section 4), per channel.",
        min_interval=interval,
        stacked=True,
        bars=True,
    )


PANELS = (
    _interactions_series(
        "usage_hour", "$__timeFilter(bucket)", "Interactions per hour by channel", "1h"
    ),
    _interactions_series(
        "usage_day", "$__dateFilter(bucket)", "Interactions per day by channel", "1d"
    ),
    Panel(
        "Interactions by channel",
        "piechart",
        (
            SqlTarget(
                f"""
                SELECT channel, sum(interactions) AS interaction_count
                FROM usage_day FINAL
                WHERE {where("$__dateFilter(bucket)", "kind = 'interaction'", "deleted = 0", ACCOUNT, CHANNEL)}
                GROUP BY channel
                ORDER BY interaction_count DESC
                """,
                ("channel", "interaction_count"),
            ),
        ),
        description="Total over the time range (daily tier, account-local days).",
        width=6,
    ),
    Panel(
        "Messages and segments",
        "timeseries",
        (
            SqlTarget(
                f"""
                SELECT $__timeInterval(bucket) AS time,
                       sum(messages) AS message_count, sum(segments) AS segment_count
                FROM usage_hour FINAL
                WHERE {where("$__timeFilter(bucket)", "kind = 'message'", "deleted = 0", ACCOUNT, CHANNEL, DIRECTION)}
                GROUP BY time
                ORDER BY time
                """,
                ("time", "message_count", "segment_count"),
                time_series=True,
            ),
        ),
        description="Messages sent and received and their segments.",
        min_interval="1h",
        width=9,
    ),
    Panel(
        "Messages by channel and direction",
        "table",
        (
            SqlTarget(
                f"""
                SELECT channel, direction,
                       sum(messages) AS message_count, sum(segments) AS segment_count
                FROM usage_day FINAL
                WHERE {where("$__dateFilter(bucket)", "kind = 'message'", "deleted = 0", ACCOUNT, CHANNEL, DIRECTION)}
                GROUP BY channel, direction
                ORDER BY message_count DESC
                """,
                ("channel", "direction", "message_count", "segment_count"),
            ),
        ),
        width=9,
    ),
    Panel(
        "SmartFlow executions and NLP share",
        "timeseries",
        (
            SqlTarget(
                f"""
                SELECT $__timeInterval(bucket) AS time,
                       sum(executions) AS execution_count,
                       sum(nlp_executions) AS with_nlp,
                       if(execution_count = 0, 0, with_nlp / execution_count) AS nlp_share
                FROM usage_hour FINAL
                WHERE {where("$__timeFilter(bucket)", "kind = 'execution'", "deleted = 0", ACCOUNT, CHANNEL)}
                GROUP BY time
                ORDER BY time
                """,
                ("time", "execution_count", "with_nlp", "nlp_share"),
                time_series=True,
            ),
        ),
        description="Executions (smartflow.triggered), those with at least one nlp.used, "
        "and their share (right axis; the nlp_share fair-use rule allows 30% per cycle).",
        min_interval="1h",
        overrides=(axis_right("nlp_share", "percentunit", 1),),
        width=12,
    ),
    Panel(
        "NLP share over the range",
        "stat",
        (
            SqlTarget(
                f"""
                SELECT sum(executions) AS execution_count,
                       sum(nlp_executions) AS with_nlp,
                       if(execution_count = 0, 0, with_nlp / execution_count) AS nlp_share
                FROM usage_day FINAL
                WHERE {where("$__dateFilter(bucket)", "kind = 'execution'", "deleted = 0", ACCOUNT, CHANNEL)}
                """,
                ("execution_count", "with_nlp", "nlp_share"),
            ),
        ),
        overrides=(field_unit("nlp_share", "percentunit"),),
        width=6,
        height=8,
    ),
    Panel(
        "Top conversations",
        "table",
        (
            SqlTarget(
                f"""
                SELECT account, channel, business_address, remote_address,
                       count() AS interaction_count, sum(items) AS item_count,
                       max(origin) AS last_origin
                FROM interactions FINAL
                WHERE {
                    where(
                        "$__timeFilter(origin)",
                        "deleted = 0",
                        "business_address IS NOT NULL",
                        ACCOUNT,
                        CHANNEL,
                        contains_text(
                            ("ifNull(business_address, '')", "ifNull(remote_address, '')"),
                            "party",
                        ),
                    )
                }
                GROUP BY account, channel, business_address, remote_address
                ORDER BY item_count DESC, interaction_count DESC, last_origin DESC
                LIMIT 20
                """,
                (
                    "account",
                    "channel",
                    "business_address",
                    "remote_address",
                    "interaction_count",
                    "item_count",
                    "last_origin",
                ),
            ),
        ),
        description="Conversations (account, channel family, business and remote address) "
        "with the most items (messages and SmartFlows) in Interactions opened in the range.",
        width=18,
        height=10,
    ),
    Panel(
        "Calls and minutes by region",
        "table",
        (
            SqlTarget(
                f"""
                SELECT if(region = '', 'unknown', region) AS location,
                       sum(calls) AS call_count, sum(answered) AS answered_count,
                       sum(billable_minutes) AS minutes
                FROM usage_day FINAL
                WHERE {where("$__dateFilter(bucket)", "kind = 'call'", "deleted = 0", ACCOUNT, VOICE, DIRECTION, *CALL_DIMS)}
                GROUP BY location
                ORDER BY minutes DESC, location
                """,
                ("location", "call_count", "answered_count", "minutes"),
            ),
        ),
        description="Region: two-letter US state or territory of the far end.",
        width=8,
        height=10,
    ),
    Panel(
        "Call records",
        "table",
        (
            SqlTarget(
                f"""
                SELECT started_at, account, trunk_group, direction, route_class,
                       ifNull(region, '') AS location, ifNull(`user`, '') AS user_id,
                       ifNull(from_, '') AS caller, ifNull(`to`, '') AS called,
                       answered_at IS NOT NULL AS was_answered, billable_minutes,
                       blocked, over_capacity, timed_out
                FROM calls FINAL
                WHERE {
                    where(
                        "$__timeFilter(started_at)",
                        "deleted = 0",
                        ACCOUNT,
                        VOICE,
                        DIRECTION,
                        any_of("ifNull(region, '')", "region"),
                        any_of("route_class", "route_class"),
                        any_of("trunk_group", "trunk_group"),
                        any_of("ifNull(`user`, '')", "user"),
                        contains_text(("ifNull(from_, '')", "ifNull(`to`, '')"), "party"),
                    )
                }
                ORDER BY started_at DESC
                LIMIT 500
                """,
                (
                    "started_at",
                    "account",
                    "trunk_group",
                    "direction",
                    "route_class",
                    "location",
                    "user_id",
                    "caller",
                    "called",
                    "was_answered",
                    "billable_minutes",
                    "blocked",
                    "over_capacity",
                    "timed_out",
                ),
            ),
        ),
        description="The raw call records (kept 60 days), newest first; filter by caller or "
        "called party with the text box.",
        width=16,
        height=10,
    ),
)


def build() -> Dashboard:
    return Dashboard(
        uid=UID,
        title="Metering / Insights",
        description="Interactions, messages, SmartFlows, conversations and call records.",
        tags=("metering", "insights"),
        variables=VARIABLES,
        panels=PANELS,
        time_from="now-7d",
    )
