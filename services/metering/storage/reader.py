"""Statements (SPEC section 9) read back from ClickHouse.

:func:`read_statement_facts` fills the same :class:`~metering.engine.statement.StatementFacts`
the in-memory engine fills, from the fact tables (``FINAL``, retracted rows excluded), so
:func:`~metering.engine.statement.render` gives the identical statement.

- time zone / policies: ``accounts`` (defaults ``UTC`` and all three presets);
- interactions per channel: non-deleted interactions whose ``cycle`` is the cycle;
- messages and segments of the cycle;
- voice: ``cycle_voice``, the engine's per-cycle call counts, kept as long as statements
  (3 years) while call records are kept 60 days. For a database written before
  migration 4 (no such row): attempts = non-deleted calls of the cycle (blocked
  included); answered, timed_out, over_capacity count non-blocked calls; blocked;
  minutes by route class = billable minutes of answered non-blocked calls;
- peak / peak_at: ``cycle_peaks`` scope ``account``; trunk groups: scopes
  ``trunk_group:ID`` with a peak of at least 1 (capacity from the account's current
  configuration when it has one, as the engine does);
- fair use: every rule of the account's presets for each scope the SPEC lists (users with
  a non-blocked call of the cycle, ``call_path`` capacity groups that carried one, the
  account), with the counters of ``fairuse_counters`` (zero when none is stored). The
  scopes also include every scope stored (not deleted) in ``fairuse_counters``, so they
  outlive the call records.
  Counters stored for scopes that no longer qualify (their calls were retracted) are
  ignored, like the engine ignores them.

A statement exists (not None) when the cycle has a call, message, execution or
interaction, or an account peak above zero (the engine's rule).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from metering.engine.rules import RULES, rules_for
from metering.engine.statement import Counter, StatementFacts, render
from metering.events.models import ROUTE_CLASSES
from metering.storage.client import Client

__all__ = ["DEFAULT_POLICIES", "list_statements", "read_statement", "read_statement_facts"]

DEFAULT_POLICIES: tuple[str, ...] = ("mitel_us", "intelepeer_uc", "intelepeer_cap")
TRUNK_GROUP_SCOPE = "trunk_group:"

_WHERE = "account = {a:String} AND cycle = {c:String}"


def _rows(client: Client, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in client.query(sql, parameters=params).result_rows]


@dataclass(frozen=True, slots=True)
class AccountRow:
    """An account's configuration as stored (SPEC defaults when not configured)."""

    timezone: str
    policies: tuple[str, ...]
    trunk_groups: dict[str, dict[str, Any]] | None  # None: not configured

    def _conf(self, group: str) -> dict[str, Any]:
        """The configuration of the group that owns ``group``'s capacity (``redundant_for``
        followed, as the engine resolves it: a group made redundant after it carried
        calls shows its owner's capacity)."""
        groups = self.trunk_groups or {}
        conf = groups.get(group) or {}
        seen = {group}
        while (owner := conf.get("redundant_for")) and owner not in seen:
            seen.add(owner)
            conf = groups.get(owner) or {}
        return conf

    def bundle(self, owner: str) -> str:
        return str(self._conf(owner).get("bundle") or "user")

    def capacity(self, owner: str, stored: int | None) -> int | None:
        if self.trunk_groups is None:
            return stored
        cap = self._conf(owner).get("capacity")
        return None if cap is None else int(cap)


def account_config(client: Client, account: str) -> AccountRow:
    """The stored configuration of an account, with the SPEC defaults when absent."""
    rows = _rows(
        client,
        "SELECT timezone, policies, trunk_groups FROM accounts FINAL WHERE account = {a:String}",
        {"a": account},
    )
    if not rows:
        return AccountRow("UTC", DEFAULT_POLICIES, None)
    tz, policies, groups = rows[0]
    parsed = orjson.loads(groups) if groups else {}
    return AccountRow(
        str(tz) or "UTC",
        tuple(str(p) for p in policies),
        parsed if isinstance(parsed, dict) else {},
    )


def read_statement_facts(client: Client, account: str, cycle: str) -> StatementFacts | None:
    """The statement figures of (account, cycle); None when nothing is stored for them."""
    p = {"a": account, "c": cycle}
    cfg = account_config(client, account)
    f = StatementFacts(account=account, cycle=cycle, timezone=cfg.timezone, policies=cfg.policies)

    stored_voice = _rows(
        client,
        "SELECT attempts, answered, blocked, timed_out, over_capacity, minutes_local, "
        "minutes_domestic_ld, minutes_toll_free, minutes_international "
        f"FROM cycle_voice FINAL WHERE {_WHERE}",
        p,
    )
    for row in stored_voice:
        f.attempts, f.answered, f.blocked, f.timed_out, f.over_capacity = map(int, row[:5])
        f.minutes_by_route_class = dict(zip(ROUTE_CLASSES, (int(x) for x in row[5:]), strict=True))
    # databases written before migration 4 have no cycle_voice: aggregate the calls
    for route_class, attempts, blocked, answered, timed_out, over_cap, minutes in (
        []
        if stored_voice
        else _rows(
            client,
            "SELECT route_class, count(), countIf(blocked), "
            "countIf(answered_at IS NOT NULL AND NOT blocked), countIf(timed_out AND NOT blocked), "
            "countIf(over_capacity AND NOT blocked), "
            "sumIf(billable_minutes, answered_at IS NOT NULL AND NOT blocked) "
            f"FROM calls FINAL WHERE {_WHERE} AND deleted = 0 GROUP BY route_class",
            p,
        )
    ):
        f.attempts += int(attempts)
        f.blocked += int(blocked)
        f.answered += int(answered)
        f.timed_out += int(timed_out)
        f.over_capacity += int(over_cap)
        rc = str(route_class)
        f.minutes_by_route_class[rc] = f.minutes_by_route_class.get(rc, 0) + int(minutes)

    ((messages, segments),) = _rows(
        client, f"SELECT count(), sum(segments) FROM messages FINAL WHERE {_WHERE}", p
    )
    f.messages, f.segments = int(messages), int(segments)

    for channel, n in _rows(
        client,
        f"SELECT channel, count() FROM interactions FINAL WHERE {_WHERE} AND deleted = 0 "
        "GROUP BY channel",
        p,
    ):
        f.interactions[str(channel)] = int(n)

    ((executions,),) = _rows(client, f"SELECT count() FROM executions FINAL WHERE {_WHERE}", p)

    for scope, peak, peak_at, capacity in _rows(
        client,
        "SELECT scope, peak, toUnixTimestamp64Milli(peak_at), capacity "
        f"FROM cycle_peaks FINAL WHERE {_WHERE}",
        p,
    ):
        at = None if peak_at is None else int(peak_at)
        scope = str(scope)
        if scope == "account":
            f.peak, f.peak_at = int(peak), at
        elif scope.startswith(TRUNK_GROUP_SCOPE) and int(peak) >= 1:
            owner = scope[len(TRUNK_GROUP_SCOPE) :]
            stored = None if capacity is None else int(capacity)
            f.trunk_groups[owner] = (int(peak), at, cfg.capacity(owner, stored))

    if not (f.attempts or f.messages or int(executions) or any(f.interactions.values()) or f.peak):
        return None

    users: list[str] = []
    groups: list[str] = []
    for user, group in _rows(
        client,
        "SELECT DISTINCT `user`, capacity_group FROM calls FINAL "
        f"WHERE {_WHERE} AND deleted = 0 AND NOT blocked",
        p,
    ):
        if user is not None:
            users.append(str(user))
        if cfg.bundle(str(group)) == "call_path":
            groups.append(str(group))
    stored_counters = {
        (str(rule), str(scope)): Counter(int(num), int(den), int(aux))
        for rule, scope, num, den, aux in _rows(
            client,
            "SELECT rule, scope, num, den, aux FROM fairuse_counters FINAL "
            f"WHERE {_WHERE} AND deleted = 0",
            p,
        )
    }
    # scopes stored by the engine outlive the call records they came from (60 days)
    for _rule, scope in stored_counters:
        if scope.startswith("user:"):
            users.append(scope[len("user:") :])
        elif scope.startswith(TRUNK_GROUP_SCOPE):
            groups.append(scope[len(TRUNK_GROUP_SCOPE) :])
    for rule in rules_for(cfg.policies):
        kind = RULES[rule].scope
        if kind == "user":
            scopes = [f"user:{u}" for u in sorted(set(users))]
        elif kind == "trunk_group":
            scopes = [f"{TRUNK_GROUP_SCOPE}{g}" for g in sorted(set(groups))]
        else:
            scopes = ["account"]
        for scope in scopes:
            f.fair_use[(rule, scope)] = stored_counters.get((rule, scope), Counter())
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
        " UNION ALL SELECT account, cycle FROM cycle_voice FINAL WHERE attempts > 0"
        " UNION ALL SELECT account, cycle FROM messages FINAL"
        " UNION ALL SELECT account, cycle FROM interactions FINAL WHERE deleted = 0"
        " UNION ALL SELECT account, cycle FROM executions FINAL"
        " UNION ALL SELECT account, cycle FROM cycle_peaks FINAL"
        "  WHERE scope = 'account' AND peak > 0"
        ") ORDER BY account, cycle",
        {},
    )
    return [(str(a), str(c)) for a, c in rows]
