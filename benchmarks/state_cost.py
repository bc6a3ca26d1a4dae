"""State cost: memory and snapshot bytes per live call and per open conversation.

Prints figures (run: ``.venv/bin/python benchmarks/state_cost.py``). Feeds N calls that
are still in progress (started + answered) and N open conversations (one message each)
into a fresh engine, drains, and measures the growth of Python heap memory
(tracemalloc) and of the msgpack snapshot of the account state.
"""

from __future__ import annotations

import sys
import tracemalloc
from datetime import UTC, datetime, timedelta

import msgspec
import orjson

from metering.engine.engine import Engine
from metering.events.decode import Decoder, Rejection

T0 = datetime(2026, 11, 10, 12, tzinfo=UTC)


def ts(seconds: float) -> str:
    return (T0 + timedelta(seconds=seconds)).isoformat(timespec="milliseconds")


def event(i: int, etype: str, t: float, data: dict[str, object]) -> bytes:
    return orjson.dumps(
        {
            "specversion": "1.0",
            "id": f"{etype}-{i}",
            "source": "//pbx/bench",
            "type": etype,
            "time": ts(t),
            "subject": "acct-1",
            "data": data,
        }
    )


def measure(kind: str, n: int) -> tuple[float, float]:
    dec = Decoder()
    lines: list[bytes] = []
    for i in range(n):
        t = i * 0.05
        if kind == "call":
            lines.append(
                event(
                    i,
                    "call.started",
                    t,
                    {
                        "call_id": f"call-{i:08d}",
                        "trunk_group": f"tg-{i % 4}",
                        "direction": "outbound",
                        "route_class": "domestic_ld",
                        "user": f"u-{i % 500}",
                        "from": "+13035550100",
                        "to": "+12125550199",
                        "region": "NY",
                        "carrier_class": "rboc",
                    },
                )
            )
            lines.append(event(i, "call.answered", t + 2, {"call_id": f"call-{i:08d}"}))
        else:
            lines.append(
                event(
                    i,
                    "message.sent",
                    t,
                    {
                        "message_id": f"m-{i}",
                        "channel": "sms",
                        "business_address": "+13035550100",
                        "remote_address": f"+1212{i:07d}",
                        "segments": 1,
                    },
                )
            )
    decoded = [dec.decode(b) for b in lines]
    engine = Engine()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for ev, b in zip(decoded, lines, strict=True):
        assert not isinstance(ev, Rejection)
        engine.process(ev, b)
    engine.drain()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    snap = len(msgspec.msgpack.encode(engine.state("acct-1")))
    return (after - before) / n, snap / n


def main() -> int:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    print(f"{'per':<22}{'heap bytes':>12}{'snapshot bytes':>16}")
    for kind, label in (("call", "live call"), ("conv", "open conversation")):
        heap, snap = measure(kind, n)
        print(f"{label:<22}{heap:>12,.0f}{snap:>16,.0f}")
    print(f"(n = {n:,} each; includes the dedupe keys of the events that created them)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
