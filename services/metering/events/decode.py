"""Bytes to validated input events, or a dead letter with a SPEC reason code.

Contract: :meth:`Decoder.decode` never raises on bad input. It returns either an
:data:`~metering.events.models.InputEvent` or a :class:`Rejection` carrying the original
bytes and one of the reason codes of SPEC section 2 (``invalid_json``, ``schema``,
``unknown_type``, ``wrong_topic``). The fast path is one msgspec decode; the slow path
(only for rejected input) classifies the failure.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec

from metering.events.models import (
    MESSAGING_CHANNELS,
    TYPE_TOPIC,
    InputEvent,
    SmartflowTriggered,
    event_type,
)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


def to_ms(ts: datetime) -> int:
    """UTC epoch milliseconds of an aware datetime (sub-millisecond part truncated)."""
    return (ts - EPOCH) // _MS


_DAYS: dict[int, str] = {}


def ms_to_rfc3339(ms: int) -> str:
    """RFC 3339 UTC with milliseconds, e.g. ``2026-11-03T14:05:00.000Z``."""
    day, rest = divmod(ms, 86_400_000)
    prefix = _DAYS.get(day)
    if prefix is None:
        prefix = (EPOCH + timedelta(days=day)).strftime("%Y-%m-%dT")
        if len(_DAYS) < 100_000:
            _DAYS[day] = prefix
    secs, milli = divmod(rest, 1000)
    h, rem = divmod(secs, 3600)
    m, s = divmod(rem, 60)
    return f"{prefix}{h:02d}:{m:02d}:{s:02d}.{milli:03d}Z"


class Rejection(msgspec.Struct, frozen=True):
    """A dead letter: the original bytes, a SPEC reason code and a human-readable detail."""

    raw: bytes
    reason: str
    detail: str
    event_type: str | None = None
    account: str | None = None


class Decoder:
    """Reusable decoder (hold one per consumer; it is not thread-safe)."""

    def __init__(self) -> None:
        self._decoder = msgspec.json.Decoder(InputEvent)

    def decode(self, raw: bytes, topic: str | None = None) -> InputEvent | Rejection:
        """Decode one record. ``topic`` None skips the topic check (replay of a log)."""
        try:
            event: InputEvent = self._decoder.decode(raw)
        except msgspec.DecodeError as exc:
            return _classify(raw, exc)
        etype = event_type(event)
        if topic is not None and TYPE_TOPIC[etype] != topic:
            return Rejection(
                raw,
                "wrong_topic",
                f"{etype} belongs on {TYPE_TOPIC[etype]}, not {topic}",
                etype,
                event.subject,
            )
        if (
            isinstance(event, SmartflowTriggered)
            and event.data.channel in MESSAGING_CHANNELS
            and not (event.data.business_address and event.data.remote_address)
        ):
            return Rejection(
                raw,
                "schema",
                "smartflow.triggered on a messaging channel needs business_address and remote_address",
                etype,
                event.subject,
            )
        return event


def _classify(raw: bytes, exc: Exception) -> Rejection:
    try:
        obj = msgspec.json.decode(raw)
    except msgspec.DecodeError as inner:
        return Rejection(raw, "invalid_json", str(inner))
    if not isinstance(obj, dict):
        return Rejection(raw, "schema", "a CloudEvent must be a JSON object")
    etype = obj.get("type")
    subject = obj.get("subject") if isinstance(obj.get("subject"), str) else None
    if not isinstance(etype, str):
        return Rejection(raw, "schema", f"missing or invalid `type`: {exc}", None, subject)
    if etype not in TYPE_TOPIC:
        return Rejection(raw, "unknown_type", f"unknown event type {etype!r}", etype, subject)
    return Rejection(raw, "schema", str(exc), etype, subject)
