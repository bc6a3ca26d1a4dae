"""Every output event the engine emits on a realistic log fits the published contract.

Each ``OutputEvent`` is turned into its CloudEvent (``metering.events.outputs``), encoded
as it would be on Kafka, and validated against ``schemas/output/<type>.schema.json``;
every dead letter likewise against ``deadletter.schema.json``.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import jsonschema
import msgspec
import pytest

from metering.engine.accounts import parse_accounts
from metering.engine.engine import Engine
from metering.events.decode import Decoder, Rejection
from metering.events.outputs import cloudevent, deadletter_data, encode
from metering.simulate.accounts import make_accounts
from metering.simulate.config import SimulationConfig
from metering.simulate.generator import iter_events

SCHEMAS = Path(__file__).resolve().parent.parent / "schemas" / "output"


def validator(etype: str) -> jsonschema.Draft202012Validator:
    schema = json.loads((SCHEMAS / f"{etype}.schema.json").read_text())
    return jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )


@pytest.fixture(scope="module")
def emitted() -> tuple[list[bytes], list[bytes]]:
    cfg = SimulationConfig(seed=4, events=15_000, days=3, accounts=4, malformed_rate=0.01)
    accounts = make_accounts(cfg)
    engine = Engine(accounts=parse_accounts(accounts))
    decoder = Decoder()
    outputs: list[bytes] = []
    dead: list[bytes] = []
    for i, line in enumerate(iter_events(cfg, accounts)):
        ev = decoder.decode(line, None)
        if isinstance(ev, Rejection):
            rejections = [ev]
        else:
            engine.process(ev, line)
            rejections = []
        if i % 2000 == 0 or isinstance(ev, Rejection):
            batch = engine.drain()
            rejections += batch.rejections
            outputs += [
                encode(cloudevent(o.type, o.id, o.time, o.account, o.data)) for o in batch.outputs
            ]
        for j, rej in enumerate(rejections):
            data = deadletter_data(rej, topic="cpaas.voice", partition=0, offset=i * 10 + j)
            dead.append(encode(cloudevent("deadletter", f"dl-{i}-{j}", 0, rej.account, data)))
    batch = engine.drain()
    outputs += [encode(cloudevent(o.type, o.id, o.time, o.account, o.data)) for o in batch.outputs]
    return outputs, dead


def test_every_output_event_validates(emitted: tuple[list[bytes], list[bytes]]) -> None:
    outputs, _ = emitted
    kinds: Counter[str] = Counter()
    for raw in outputs:
        obj = msgspec.json.decode(raw)
        validator(obj["type"]).validate(obj)
        kinds[obj["type"]] += 1
    # the log is rich enough to exercise most output types
    assert {
        "interaction.opened",
        "interaction.closed",
        "concurrency.peak",
        "capacity.exceeded",
        "fairuse.breach",
    } <= set(kinds), kinds


def test_every_dead_letter_validates(emitted: tuple[list[bytes], list[bytes]]) -> None:
    _, dead = emitted
    reasons: Counter[str] = Counter()
    v = validator("deadletter")
    for raw in dead:
        obj = msgspec.json.decode(raw)
        v.validate(obj)
        reasons[obj["data"]["reason"]] += 1
    assert {"invalid_json", "schema", "unknown_type"} <= set(reasons), reasons


def test_output_ids_are_unique_per_emission(emitted: tuple[list[bytes], list[bytes]]) -> None:
    outputs, _ = emitted
    ids = Counter(msgspec.json.decode(raw)["id"] for raw in outputs)
    assert max(ids.values()) == 1
