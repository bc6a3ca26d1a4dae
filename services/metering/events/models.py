"""Input event models: CloudEvents 1.0 (structured JSON mode), SPEC section 2.

Each input type is a msgspec ``Struct`` tagged on the CloudEvents ``type`` attribute, so
one ``msgspec.json.Decoder`` over :data:`InputEvent` validates envelope and ``data`` in a
single pass. The JSON Schema files under ``schemas/`` are generated from these classes
(``metering schemas``); a test fails when the two drift apart.

Unknown envelope attributes (``datacontenttype``, extensions) are accepted and ignored.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import msgspec
from msgspec import Meta, Struct

EventId = Annotated[str, Meta(min_length=1, max_length=128)]
NonEmpty = Annotated[str, Meta(min_length=1)]
AwareTime = Annotated[datetime, Meta(tz=True)]

Direction = Literal["inbound", "outbound"]
RouteClass = Literal["local", "domestic_ld", "toll_free", "international"]
CarrierClass = Literal["rboc", "itoc", "ilec", "clec", "wireless", "unknown"]
MessageChannel = Literal["sms", "mms", "whatsapp", "facebook"]
FlowChannel = Literal["voice", "sms", "mms", "whatsapp", "facebook", "api"]
NlpKind = Literal["voice", "text"]
Segments = Annotated[int, Meta(ge=1)]

ROUTE_CLASSES: tuple[str, ...] = ("local", "domestic_ld", "toll_free", "international")
MESSAGING_CHANNELS: frozenset[str] = frozenset({"sms", "mms", "whatsapp", "facebook"})


class CallStartedData(Struct, forbid_unknown_fields=False):
    call_id: NonEmpty
    trunk_group: NonEmpty
    direction: Direction
    route_class: RouteClass
    user: str | None = None
    from_: str | None = msgspec.field(default=None, name="from")
    to: str | None = None
    region: str | None = None
    carrier_class: CarrierClass = "unknown"
    local_calling_area: str | None = None
    blocked: bool = False


class CallRefData(Struct):
    call_id: NonEmpty


class CallCompletedData(Struct):
    call_id: NonEmpty
    trunk_group: NonEmpty
    direction: Direction
    route_class: RouteClass
    started_at: AwareTime
    answered_at: AwareTime | None
    ended_at: AwareTime
    user: str | None = None
    from_: str | None = msgspec.field(default=None, name="from")
    to: str | None = None
    region: str | None = None
    carrier_class: CarrierClass = "unknown"
    local_calling_area: str | None = None
    blocked: bool = False


class MessageData(Struct):
    message_id: NonEmpty
    channel: MessageChannel
    business_address: NonEmpty
    remote_address: NonEmpty
    segments: Segments = 1


class SmartflowData(Struct):
    execution_id: NonEmpty
    flow_id: NonEmpty
    channel: FlowChannel
    business_address: str | None = None
    remote_address: str | None = None


class NlpData(Struct):
    execution_id: NonEmpty
    kind: NlpKind


class TrunkGroupConfig(Struct, forbid_unknown_fields=True):
    """One trunk group of an account (SPEC section 8).

    ``capacity`` None means unlimited; ``redundant_for`` names the group whose capacity
    this one shares.
    """

    capacity: Annotated[int, Meta(ge=0)] | None = None
    bundle: Literal["user", "call_path", "basic_port"] = "user"
    redundant_for: str | None = None


Policy = Literal["mitel_us", "intelepeer_uc", "intelepeer_cap"]
ALL_POLICIES: tuple[Policy, ...] = ("mitel_us", "intelepeer_uc", "intelepeer_cap")


class AccountData(Struct, forbid_unknown_fields=True):
    """An account's configuration: the YAML object of SPEC section 8."""

    timezone: str = "UTC"
    policies: list[Policy] = msgspec.field(default_factory=lambda: list(ALL_POLICIES))
    trunk_groups: dict[str, TrunkGroupConfig] = msgspec.field(default_factory=dict)


class _Envelope(Struct, tag_field="type"):
    specversion: Literal["1.0"]
    id: EventId
    source: NonEmpty
    time: AwareTime
    subject: NonEmpty


class CallStarted(_Envelope, tag="call.started"):
    data: CallStartedData


class CallAnswered(_Envelope, tag="call.answered"):
    data: CallRefData


class CallEnded(_Envelope, tag="call.ended"):
    data: CallRefData


class CallCompleted(_Envelope, tag="call.completed"):
    data: CallCompletedData


class MessageSent(_Envelope, tag="message.sent"):
    data: MessageData


class MessageReceived(_Envelope, tag="message.received"):
    data: MessageData


class SmartflowTriggered(_Envelope, tag="smartflow.triggered"):
    data: SmartflowData


class NlpUsed(_Envelope, tag="nlp.used"):
    data: NlpData


class AccountConfigured(_Envelope, tag="account.configured"):
    data: AccountData


InputEvent = (
    CallStarted
    | CallAnswered
    | CallEnded
    | CallCompleted
    | MessageSent
    | MessageReceived
    | SmartflowTriggered
    | NlpUsed
    | AccountConfigured
)

INPUT_TYPES: dict[str, type[_Envelope]] = {
    "call.started": CallStarted,
    "call.answered": CallAnswered,
    "call.ended": CallEnded,
    "call.completed": CallCompleted,
    "message.sent": MessageSent,
    "message.received": MessageReceived,
    "smartflow.triggered": SmartflowTriggered,
    "nlp.used": NlpUsed,
    "account.configured": AccountConfigured,
}

EVENT_TYPE: dict[type, str] = {cls: tag for tag, cls in INPUT_TYPES.items()}

TOPIC_TYPES: dict[str, tuple[str, ...]] = {
    "cpaas.voice": ("call.started", "call.answered", "call.ended", "call.completed"),
    "cpaas.messaging": ("message.sent", "message.received"),
    "cpaas.smartflows": ("smartflow.triggered", "nlp.used"),
    "cpaas.accounts": ("account.configured",),
}
TYPE_TOPIC: dict[str, str] = {t: topic for topic, types in TOPIC_TYPES.items() for t in types}


def event_type(event: InputEvent) -> str:
    """The CloudEvents ``type`` of a decoded event (msgspec keeps the tag on the class)."""
    tag = event.__struct_config__.tag
    assert isinstance(tag, str)
    return tag
