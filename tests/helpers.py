"""Builders for test events: CloudEvents as bytes, decoded through the real decoder."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from metering.events.decode import Decoder, Rejection
from metering.events.models import InputEvent

T0 = datetime(2026, 11, 10, 12, 0, tzinfo=UTC)
_DECODER = Decoder()
_SEQ = [0]


def at(minutes: float = 0, seconds: float = 0, base: datetime = T0) -> str:
    t = base + timedelta(minutes=minutes, seconds=seconds)
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def raw(
    etype: str,
    time: str,
    data: dict[str, Any],
    *,
    account: str = "acct-1",
    source: str = "//test",
    eid: str | None = None,
) -> bytes:
    if eid is None:
        _SEQ[0] += 1
        eid = f"e{_SEQ[0]}"
    return orjson.dumps(
        {
            "specversion": "1.0",
            "id": eid,
            "source": source,
            "type": etype,
            "time": time,
            "subject": account,
            "data": data,
        }
    )


def decode(b: bytes) -> InputEvent:
    ev = _DECODER.decode(b)
    assert not isinstance(ev, Rejection), ev
    return ev


def call_started(
    call_id: str,
    time: str,
    *,
    tg: str = "tg-1",
    direction: str = "outbound",
    route_class: str = "local",
    **extra: Any,
) -> bytes:
    data = {
        "call_id": call_id,
        "trunk_group": tg,
        "direction": direction,
        "route_class": route_class,
        **extra,
    }
    return raw("call.started", time, data, **_acct(extra, data))


def _acct(extra: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k in ("account", "source", "eid"):
        if k in data:
            out[k] = data.pop(k)
    return out


def call_answered(call_id: str, time: str, **kw: Any) -> bytes:
    return raw("call.answered", time, {"call_id": call_id}, **kw)


def call_ended(call_id: str, time: str, **kw: Any) -> bytes:
    return raw("call.ended", time, {"call_id": call_id}, **kw)


def cdr(
    call_id: str,
    started: str,
    answered: str | None,
    ended: str,
    *,
    tg: str = "tg-1",
    direction: str = "outbound",
    route_class: str = "local",
    account: str = "acct-1",
    source: str = "//test",
    eid: str | None = None,
    **extra: Any,
) -> bytes:
    data = {
        "call_id": call_id,
        "trunk_group": tg,
        "direction": direction,
        "route_class": route_class,
        "started_at": started,
        "answered_at": answered,
        "ended_at": ended,
        **extra,
    }
    return raw("call.completed", ended, data, account=account, source=source, eid=eid)


def message(
    kind: str,
    time: str,
    *,
    channel: str = "sms",
    business: str = "+1000",
    remote: str = "+2000",
    segments: int = 1,
    message_id: str | None = None,
    **kw: Any,
) -> bytes:
    _SEQ[0] += 1
    data = {
        "message_id": message_id or f"m{_SEQ[0]}",
        "channel": channel,
        "business_address": business,
        "remote_address": remote,
        "segments": segments,
    }
    return raw(kind, time, data, **kw)


def smartflow(
    execution_id: str,
    time: str,
    *,
    channel: str = "voice",
    flow_id: str = "f1",
    business: str | None = None,
    remote: str | None = None,
    **kw: Any,
) -> bytes:
    data: dict[str, Any] = {"execution_id": execution_id, "flow_id": flow_id, "channel": channel}
    if business is not None:
        data["business_address"] = business
        data["remote_address"] = remote
    return raw("smartflow.triggered", time, data, **kw)


def nlp(execution_id: str, time: str, kind: str = "text", **kw: Any) -> bytes:
    return raw("nlp.used", time, {"execution_id": execution_id, "kind": kind}, **kw)
