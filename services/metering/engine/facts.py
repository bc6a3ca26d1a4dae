"""What the engine hands to its adapters: fact rows and output events.

Contract: every fact is the *current* state of one keyed thing (a call, an interaction,
a cycle peak, a fair-use counter, ...). A later fact with the same key replaces an
earlier one, so a sink that stores them in a replacing table (latest insert wins) is
idempotent: writing the same facts twice, or re-deriving them after a crash, never
doubles anything. Keys are listed on each class. Times are UTC epoch milliseconds.
``cycle`` is ``YYYY-MM`` in the account's time zone.
"""

from __future__ import annotations

from typing import Any

from msgspec import Struct


class CallFact(Struct, kw_only=True):
    """One call (key: account, call_id). ``deleted`` retracts a call that lost to another
    description of the same call (``duplicate_call``)."""

    account: str
    call_id: str
    cycle: str
    trunk_group: str
    capacity_group: str
    direction: str
    route_class: str
    user: str | None
    from_: str | None
    to: str | None
    region: str | None
    carrier_class: str
    local_calling_area: str | None
    blocked: bool
    described_by: str  # "lifecycle" | "cdr"
    started_at: int
    answered_at: int | None
    ended_at: int | None  # reported end, None while unknown
    end_at: int | None  # effective end (timed-out calls end at start + max duration)
    timed_out: bool
    over_capacity: bool
    billable_seconds: int
    billable_minutes: int
    deleted: bool = False


class MessageFact(Struct, kw_only=True):
    """One accepted message (key: account, source, id)."""

    account: str
    source: str
    id: str
    message_id: str
    cycle: str
    time: int
    direction: str  # "sent" | "received"
    channel: str
    business_address: str
    remote_address: str
    segments: int
    interaction_id: str


class InteractionFact(Struct, kw_only=True):
    """One Interaction (key: account, interaction_id).

    ``channel`` is the statement's channel key: ``sms`` (sms and mms), ``whatsapp``,
    ``facebook``, ``voice`` or ``api``. ``deleted`` retracts an interaction that a late
    item merged into an earlier origin.
    """

    account: str
    interaction_id: str
    cycle: str
    channel: str
    business_address: str | None
    remote_address: str | None
    origin: int
    deadline: int
    items: int
    closed: bool
    deleted: bool = False


class ExecutionFact(Struct, kw_only=True):
    """One SmartFlow execution (key: account, execution_id)."""

    account: str
    execution_id: str
    flow_id: str
    channel: str
    cycle: str
    time: int
    nlp_uses: int


class PeakFact(Struct, kw_only=True):
    """A cycle's concurrency peak (key: account, cycle, scope).

    ``scope`` is ``account`` or ``trunk_group:ID`` (ID = the group that owns the capacity).
    ``capacity`` None means unlimited (and always None for the account scope).
    """

    account: str
    cycle: str
    scope: str
    peak: int
    peak_at: int | None
    capacity: int | None


class MinutePeakFact(Struct, kw_only=True):
    """Peak concurrent calls of one capacity group within one UTC minute
    (key: account, trunk_group, minute)."""

    account: str
    trunk_group: str
    minute: int
    peak: int
    capacity: int | None


class CycleVoiceFact(Struct, kw_only=True):
    """Month-to-date call counts of one cycle (key: account, cycle).

    Kept as long as statements (3 years), while call records are kept 60 days: the
    statement's ``voice`` section is read from here, not aggregated from ``calls``.
    """

    account: str
    cycle: str
    attempts: int
    answered: int
    blocked: int
    timed_out: int
    over_capacity: int
    minutes_local: int
    minutes_domestic_ld: int
    minutes_toll_free: int
    minutes_international: int


class FairUseFact(Struct, kw_only=True):
    """Month-to-date counters and evaluation of one (rule, scope, cycle)
    (key: account, cycle, rule, scope).

    ``num``/``den``/``aux`` are the raw integer counters the rule is evaluated from (see
    :mod:`metering.engine.rules`); ``value``, ``status`` and ``charge_usd`` are that
    evaluation, stored for dashboards. The statement re-evaluates from the counters.
    """

    account: str
    cycle: str
    rule: str
    scope: str
    num: int
    den: int
    aux: int
    value: float
    threshold: float
    status: str
    charge_usd: str
    #: the scope no longer exists in the cycle (its only call was retracted)
    deleted: bool = False


class AccountFact(Struct, kw_only=True):
    """An account's configuration as the engine applies it (key: account)."""

    account: str
    timezone: str
    policies: list[str]
    trunk_groups: dict[str, dict[str, Any]]


class RawEventFact(Struct, kw_only=True):
    """One accepted input event, as received (key: account, source, id).

    Written by the adapter, not the engine, once the engine has accepted the event.
    """

    account: str
    source: str
    id: str
    type: str
    time: int
    cycle: str
    topic: str | None
    payload: bytes


class OutputEvent(Struct, kw_only=True):
    """A CloudEvent for an output topic of SPEC section 7 (key = account id).

    ``id`` is deterministic (derived from what the event reports and its version), so a
    re-emission after a crash carries the same id and consumers can dedupe on it.
    """

    topic: str
    account: str
    id: str
    type: str
    time: int
    data: dict[str, Any]


Fact = (
    CallFact
    | MessageFact
    | InteractionFact
    | ExecutionFact
    | PeakFact
    | MinutePeakFact
    | FairUseFact
    | CycleVoiceFact
    | AccountFact
    | RawEventFact
)
