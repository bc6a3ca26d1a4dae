"""Statements (SPEC section 9) read back from ClickHouse.

:func:`read_statement_facts` fills the same :class:`~metering.engine.statement.StatementFacts`
the in-memory engine fills, from the fact tables (``FINAL``, retracted rows excluded), so
:func:`~metering.engine.statement.render` gives the identical statement.

- time zone / policies: ``accounts`` (defaults ``UTC`` and all three presets);
- interactions per channel: non-deleted interactions whose ``cycle`` is the cycle;
- messages and segments of the cycle;
- voice: attempts = non-deleted calls of the cycle (blocked included); answered,
  timed_out, over_capacity count non-blocked calls; blocked; minutes by route class =
  billable minutes of answered non-blocked calls;
- peak / peak_at: ``cycle_peaks`` scope ``account``; trunk groups: scopes
  ``trunk_group:ID`` with a peak of at least 1;
- fair use: ``fairuse_counters`` of the rules of the account's presets, plus zero
  counters for the account scope of account rules when none is stored (the account is
  always listed).
"""

from __future__ import annotations

from typing import Any

from metering.engine.rules import RULES, rules_for
from metering.engine.statement import Counter, StatementFacts, render
from metering.storage.client import Client

__all__ = ["DEFAULT_POLICIES", "list_statements", "read_statement", "read_statement_facts"]

DEFAULT_POLICIES: tuple[str, ...] = ("mitel_us", "intelepeer_uc", "intelepeer_cap")
TRUNK_GROUP_SCOPE = "trunk_group:"

_WHERE = "account = {a:String} AND cycle = {c:String}"


def _rows(client: Client, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in client.query(sql, parameters=params).result_rows]


def account_config(client: Client, account: str) -> tuple[str, tuple[str, ...]]:
    """(timezone, policies) of an account, with the SPEC defaults when not configured."""
    rows = _rows(
        client,
        "SELECT timezone, policies FROM accounts FINAL WHERE account = {a:String}",
        {"a": account},
    )
    if not rows:
        return "UTC", DEFAULT_POLICIES
    tz, policies = rows[0]
    return (str(tz) or "UTC"), tuple(str(p) for p in policies)


def read_statement_facts(client: Client, account: str, cycle: str) -> StatementFacts | None:
    """The statement figures of (account, cycle); None when nothing is stored for them."""
    p = {"a": account, "c": cycle}
    timezone, policies = account_config(client, account)
    f = StatementFacts(account=account, cycle=cycle, timezone=timezone, policies=policies)
    found = False

    for route_class, attempts, blocked, answered, timed_out, over_cap, minutes in _rows(
        client,
        "SELECT route_class, count(), countIf(blocked), "
        "countIf(answered_at IS NOT NULL AND NOT blocked), countIf(timed_out AND NOT blocked), "
        "countIf(over_capacity AND NOT blocked), "
        "sumIf(billable_minutes, answered_at IS NOT NULL AND NOT blocked) "
        f"FROM calls FINAL WHERE {_WHERE} AND deleted = 0 GROUP BY route_class",
        p,
    ):
        found = True
        f.attempts += int(attempts)
        f.blocked += int(blocked)
        f.answered += int(answered)
        f.timed_out += int(timed_out)
        f.over_capacity += int(over_cap)
        rc = str(route_class)
        f.minutes_by_route_class[rc] = f.minutes_by_route_class.get(rc, 0) + int(minutes)

    (messages, segments), = _rows(
        client, f"SELECT count(), sum(segments) FROM messages FINAL WHERE {_WHERE}", p
    )
    f.messages, f.segments = int(messages), int(segments)
    found = found or f.messages > 0

    for channel, n in _rows(
        client,
        f"SELECT channel, count() FROM interactions FINAL WHERE {_WHERE} AND deleted = 0 "
        "GROUP BY channel",
        p,
    ):
        found = True
        f.interactions[str(channel)] = int(n)

    (executions,), = _rows(client, f"SELECT count() FROM executions FINAL WHERE {_WHERE}", p)
    found = found or int(executions) > 0

    for scope, peak, peak_at, capacity in _rows(
        client,
        "SELECT scope, peak, toUnixTimestamp64Milli(peak_at), capacity "
        f"FROM cycle_peaks FINAL WHERE {_WHERE}",
        p,
    ):
        found = True
        at = None if peak_at is None else int(peak_at)
        scope = str(scope)
        if scope == "account":
            f.peak, f.peak_at = int(peak), at
        elif scope.startswith(TRUNK_GROUP_SCOPE) and int(peak) >= 1:
            cap = None if capacity is None else int(capacity)
            f.trunk_groups[scope[len(TRUNK_GROUP_SCOPE):]] = (int(peak), at, cap)

    wanted = rules_for(policies)
    for rule, scope, num, den, aux in _rows(
        client,
        f"SELECT rule, scope, num, den, aux FROM fairuse_counters FINAL WHERE {_WHERE}",
        p,
    ):
        found = True
        if str(rule) in wanted:
            f.fair_use[(str(rule), str(scope))] = Counter(int(num), int(den), int(aux))

    if not found:
        return None
    for rule in wanted:
        if RULES[rule].scope == "account":
            f.fair_use.setdefault((rule, "account"), Counter())
    return f


def read_statement(client: Client, account: str, cycle: str) -> dict[str, Any] | None:
    """The SPEC section 9 statement object, or None when (account, cycle) has no data."""
    facts = read_statement_facts(client, account, cycle)
    return None if facts is None else render(facts)


def list_statements(client: Client) -> list[tuple[str, str]]:
    """Every (account, cycle) with stored data, sorted."""
    rows = _rows(
        client,
        "SELECT DISTINCT account, cycle FROM ("
        " SELECT account, cycle FROM calls FINAL WHERE deleted = 0"
        " UNION ALL SELECT account, cycle FROM messages FINAL"
        " UNION ALL SELECT account, cycle FROM interactions FINAL WHERE deleted = 0"
        " UNION ALL SELECT account, cycle FROM executions FINAL"
        " UNION ALL SELECT account, cycle FROM cycle_peaks FINAL"
        " UNION ALL SELECT account, cycle FROM fairuse_counters FINAL"
        ") ORDER BY account, cycle",
        {},
    )
    return [(str(a), str(c)) for a, c in rows]
