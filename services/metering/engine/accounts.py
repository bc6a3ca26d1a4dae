"""Account configuration (SPEC section 8): YAML file plus ``account.configured`` events.

:class:`AccountConfig` is the resolved form the engine uses: each trunk group maps to the
capacity group that owns its capacity (following ``redundant_for``), with that owner's
capacity (None = unlimited) and bundle. Unconfigured trunk groups own themselves, with
unlimited capacity and bundle ``user``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec
import yaml

from metering.events.models import AccountData


class AccountConfigError(ValueError):
    """An account configuration that cannot be applied (message says which and why)."""


@dataclass(frozen=True, slots=True)
class CapacityGroup:
    owner: str
    capacity: int | None
    bundle: str


@dataclass(frozen=True, slots=True)
class AccountConfig:
    account: str
    timezone: str
    policies: tuple[str, ...]
    groups: Mapping[str, CapacityGroup]
    data: AccountData

    def group(self, trunk_group: str) -> CapacityGroup:
        g = self.groups.get(trunk_group)
        return g if g is not None else CapacityGroup(trunk_group, None, "user")

    def capacity_of(self, owner: str) -> int | None:
        g = self.groups.get(owner)
        return None if g is None else g.capacity


def resolve(account: str, data: AccountData) -> AccountConfig:
    """Validate and resolve one account's configuration."""
    try:
        ZoneInfo(data.timezone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise AccountConfigError(f"account {account}: unknown time zone {data.timezone!r}") from exc
    groups: dict[str, CapacityGroup] = {}
    for tg in data.trunk_groups:
        seen = [tg]
        owner = tg
        while (nxt := data.trunk_groups[owner].redundant_for) is not None:
            if nxt in seen:
                raise AccountConfigError(
                    f"account {account}: redundant_for loop {' -> '.join([*seen, nxt])}"
                )
            seen.append(nxt)
            owner = nxt
            if owner not in data.trunk_groups:
                break
        conf = data.trunk_groups.get(owner)
        groups[tg] = CapacityGroup(
            owner,
            None if conf is None else conf.capacity,
            "user" if conf is None else conf.bundle,
        )
    return AccountConfig(account, data.timezone, tuple(dict.fromkeys(data.policies)), groups, data)


def default_config(account: str) -> AccountConfig:
    return resolve(account, AccountData())


def parse_accounts(obj: Any, origin: str = "accounts") -> dict[str, AccountConfig]:
    """Parse the YAML object ``{accounts: {id: {...}}}`` (an empty file means no accounts)."""
    if obj is None:
        return {}
    if not isinstance(obj, dict) or not isinstance(obj.get("accounts", {}), dict):
        raise AccountConfigError(f"{origin}: expected a mapping with an `accounts` mapping")
    out: dict[str, AccountConfig] = {}
    for account, body in (obj.get("accounts") or {}).items():
        try:
            data = msgspec.convert(body or {}, AccountData)
        except msgspec.ValidationError as exc:
            raise AccountConfigError(f"{origin}: account {account}: {exc}") from exc
        out[str(account)] = resolve(str(account), data)
    return out


def load_accounts(path: str | Path) -> dict[str, AccountConfig]:
    """Load an accounts YAML file (SPEC section 8)."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise AccountConfigError(f"cannot read accounts file {p}: {exc.strerror}") from exc
    try:
        obj = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise AccountConfigError(f"{p}: invalid YAML: {exc}") from exc
    return parse_accounts(obj, str(p))
