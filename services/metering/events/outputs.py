"""Output event models: the CloudEvents the service publishes (SPEC section 7).

Every output event is CloudEvents 1.0 JSON (structured mode) with ``specversion`` "1.0",
a deterministic ``id``, ``source`` "metering", ``type``, ``time`` (RFC 3339 UTC with
milliseconds), ``subject`` (the account id) and ``data``. The ``data`` shapes are those of
the "Output events" table of ``docs/design.md``; each also carries ``version``, which grows
with every re-emission of the same thing (a correction is re-emitted with a higher one).

The JSON Schema files under ``schemas/output/`` are generated from these classes
(:mod:`metering.events.schemagen`); a test fails when the two drift apart.

Producers build an event with :func:`cloudevent` (which validates ``data`` against its
model) and encode it with :func:`encode`.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

from metering.events.decode import Rejection, ms_to_rfc3339

UTC_MS_PATTERN = (
    r"^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"
    r"T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]\.[0-9]{3}Z$"
)
"""RFC 3339 UTC with milliseconds, as written by :func:`metering.events.decode.ms_to_rfc3339`."""

UtcTime = Annotated[
    str,
    Meta(
        pattern=UTC_MS_PATTERN,
        extra_json_schema={"format": "date-time"},
        description="RFC 3339 UTC time with milliseconds, e.g. 2026-11-03T14:05:00.000Z.",
    ),
]
EventId = Annotated[str, Meta(min_length=1, max_length=128)]
NonEmpty = Annotated[str, Meta(min_length=1)]
Cycle = Annotated[
    str,
    Meta(
        pattern=r"^[0-9]{4}-(0[1-9]|1[0-2])$",
        description="Billing cycle YYYY-MM, in the account's time zone.",
    ),
]
Version = Annotated[
    int,
    Meta(
        ge=0,
        description="0 on the first emission; grows with each re-emission of the same thing "
        "(the highest version wins).",
    ),
]
Count = Annotated[int, Meta(ge=0)]
Usd = Annotated[
    str,
    Meta(
        pattern=r"^-?[0-9]+\.[0-9]{2}$",
        description="US dollars as a decimal string with two decimals.",
    ),
]
Base64 = Annotated[str, Meta(pattern=r"^[A-Za-z0-9+/]*={0,2}$")]

InteractionChannel = Literal["sms", "whatsapp", "facebook", "voice", "api"]
CloseReason = Literal["deadline", "wall_clock", "merged"]
RuleName = Literal[
    "alaska_hawaii_share",
    "bundle_sharing",
    "call_completion",
    "calls_per_second",
    "local_calling_area",
    "minutes_per_user",
    "nlp_share",
    "rboc_mix",
    "toll_free_share",
]
Status = Literal["ok", "warning", "breach", "insufficient_data"]
DeadletterReason = Literal[
    "invalid_json", "schema", "unknown_type", "wrong_topic", "orphan", "duplicate_call"
]
PeakScope = Annotated[
    str,
    Meta(pattern=r"^(account|trunk_group:.+)$", description="`account` or `trunk_group:ID`."),
]
FairUseScope = Annotated[
    str,
    Meta(
        pattern=r"^(account|user:.+|trunk_group:.+)$",
        description="`account`, `user:ID` or `trunk_group:ID`.",
    ),
]


# --------------------------------------------------------------------------- data


class InteractionOpenedData(Struct, kw_only=True):
    """An Interaction (SPEC section 4). ``channel`` is the statement's channel key (``sms``
    covers sms and mms); the addresses are null for ``voice`` and ``api`` SmartFlows."""

    interaction_id: NonEmpty
    channel: InteractionChannel
    business_address: str | None
    remote_address: str | None
    origin: UtcTime
    deadline: UtcTime
    cycle: Cycle
    version: Version


class InteractionClosedData(InteractionOpenedData, kw_only=True):
    """A closed Interaction: ``items`` it holds and why it closed (``merged``: a late item
    merged it into an earlier origin, so it no longer counts)."""

    items: Count
    reason: CloseReason


class ConcurrencyPeakData(Struct, kw_only=True):
    """A new concurrency peak of a cycle, per capacity group or for the account.
    ``peak_at`` is null when the peak is 0; ``capacity`` null means unlimited (always null
    for the account scope)."""

    scope: PeakScope
    cycle: Cycle
    peak: Count
    peak_at: UtcTime | None
    capacity: Count | None
    version: Version


class CapacityExceededData(Struct, kw_only=True):
    """A non-blocked call started while its capacity group was full (``at`` = its start;
    ``trunk_group`` = the group that owns the capacity)."""

    trunk_group: NonEmpty
    call_id: NonEmpty
    at: UtcTime
    occupied: Count
    capacity: Count | None
    cycle: Cycle
    version: Version


class FairUseData(Struct, kw_only=True):
    """A fair-use rule evaluation (SPEC section 6). ``value`` is rounded to 4 decimals for
    ratios; ``acd_seconds`` is present for ``call_completion`` only."""

    rule: RuleName
    scope: FairUseScope
    cycle: Cycle
    value: float
    threshold: float
    status: Status
    charge_usd: Usd
    acd_seconds: float | UnsetType = UNSET
    version: Version


class DeadletterData(Struct, kw_only=True):
    """Rejected input. ``original`` holds the record's bytes as text, or ``original_base64``
    when they are not UTF-8; exactly one of the two is set. ``topic``, ``partition`` and
    ``offset`` locate the record (null in an offline replay)."""

    reason: DeadletterReason
    detail: str
    event_type: str | None
    account: str | None
    topic: str | None
    partition: Count | None
    offset: Count | None
    original: str | None
    original_base64: Base64 | None
    version: Version

    def __post_init__(self) -> None:
        if (self.original is None) == (self.original_base64 is None):
            raise ValueError("exactly one of `original` and `original_base64` must be set")


# --------------------------------------------------------------------------- envelopes


class _OutputEnvelope(Struct, tag_field="type", kw_only=True):
    specversion: Literal["1.0"]
    id: EventId
    source: Literal["metering"]
    time: UtcTime


class _AccountEnvelope(_OutputEnvelope, kw_only=True):
    subject: NonEmpty


class InteractionOpened(_AccountEnvelope, tag="interaction.opened", kw_only=True):
    data: InteractionOpenedData


class InteractionClosed(_AccountEnvelope, tag="interaction.closed", kw_only=True):
    data: InteractionClosedData


class ConcurrencyPeak(_AccountEnvelope, tag="concurrency.peak", kw_only=True):
    data: ConcurrencyPeakData


class CapacityExceeded(_AccountEnvelope, tag="capacity.exceeded", kw_only=True):
    data: CapacityExceededData


class FairUseWarning(_AccountEnvelope, tag="fairuse.warning", kw_only=True):
    data: FairUseData


class FairUseBreach(_AccountEnvelope, tag="fairuse.breach", kw_only=True):
    data: FairUseData


class FairUseCleared(_AccountEnvelope, tag="fairuse.cleared", kw_only=True):
    data: FairUseData


class Deadletter(_OutputEnvelope, tag="deadletter", kw_only=True):
    """``subject`` is the account id when it is known, absent otherwise."""

    subject: NonEmpty | UnsetType = UNSET
    data: DeadletterData


OutputCloudEvent = (
    InteractionOpened
    | InteractionClosed
    | ConcurrencyPeak
    | CapacityExceeded
    | FairUseWarning
    | FairUseBreach
    | FairUseCleared
    | Deadletter
)

OUTPUT_TYPES: dict[str, type[_OutputEnvelope]] = {
    "interaction.opened": InteractionOpened,
    "interaction.closed": InteractionClosed,
    "concurrency.peak": ConcurrencyPeak,
    "capacity.exceeded": CapacityExceeded,
    "fairuse.warning": FairUseWarning,
    "fairuse.breach": FairUseBreach,
    "fairuse.cleared": FairUseCleared,
    "deadletter": Deadletter,
}

OUTPUT_TOPIC_TYPES: dict[str, tuple[str, ...]] = {
    "metering.interactions": ("interaction.opened", "interaction.closed"),
    "metering.concurrency": ("concurrency.peak", "capacity.exceeded"),
    "metering.fairuse": ("fairuse.warning", "fairuse.breach", "fairuse.cleared"),
    "metering.deadletter": ("deadletter",),
}
OUTPUT_TYPE_TOPIC: dict[str, str] = {
    t: topic for topic, types in OUTPUT_TOPIC_TYPES.items() for t in types
}

_encoder = msgspec.json.Encoder()


def cloudevent(
    event_type: str,
    event_id: str,
    time_ms: int,
    subject: str | None,
    data: Mapping[str, Any] | Struct,
) -> OutputCloudEvent:
    """Build (and validate) an output CloudEvent.

    ``data`` may be a mapping (validated against the type's data model) or an instance of
    it. ``subject`` None is allowed only for ``deadletter``. Raises
    :class:`msgspec.ValidationError` when ``data`` does not fit the contract.
    """
    cls = OUTPUT_TYPES[event_type]
    raw: dict[str, Any] = {
        "type": event_type,
        "specversion": "1.0",
        "id": event_id,
        "source": "metering",
        "time": ms_to_rfc3339(time_ms),
        "data": msgspec.to_builtins(data) if isinstance(data, Struct) else dict(data),
    }
    if subject is not None:
        raw["subject"] = subject
    return msgspec.convert(raw, cls)  # type: ignore[return-value]


def encode(event: OutputCloudEvent) -> bytes:
    """The JSON bytes of an output event (the Kafka record value)."""
    return _encoder.encode(event)


def deadletter_data(
    rejection: Rejection,
    *,
    version: int = 0,
    topic: str | None = None,
    partition: int | None = None,
    offset: int | None = None,
) -> DeadletterData:
    """The ``deadletter`` data of a :class:`~metering.events.decode.Rejection`."""
    try:
        original: str | None = rejection.raw.decode("utf-8")
        original_b64: str | None = None
    except UnicodeDecodeError:
        original = None
        original_b64 = base64.b64encode(rejection.raw).decode("ascii")
    return DeadletterData(
        reason=rejection.reason,  # type: ignore[arg-type]
        detail=rejection.detail,
        event_type=rejection.event_type,
        account=rejection.account,
        topic=topic,
        partition=partition,
        offset=offset,
        original=original,
        original_base64=original_b64,
        version=version,
    )
