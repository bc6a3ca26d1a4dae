"""The event contract files under ``schemas/`` against the code's models.

(a) the committed files are what ``metering.events.schemagen`` generates (drift check);
(b) every schema is a valid Draft 2020-12 schema;
(c) realistic sample events (``tests/samples/valid``) validate against their schema and
    decode with the service's decoders;
(d) invalid samples (``tests/samples/invalid``) are rejected by the schema and by the
    decoders (reason ``schema`` for inputs);
(e) property tests: instances generated from the msgspec models validate against the
    schemas, and random mutations of them are accepted by the schema exactly when the
    decoder accepts them (model <=> schema, both ways, around the valid region);
(f) the AsyncAPI document is valid AsyncAPI 3.0.0 (official JSON Schema of the spec,
    vendored in ``tests/samples/asyncapi``), every ``$ref`` resolves and every topic and
    type is described.

Known, accepted differences (the schema is the stricter side, except the last one):
the decoder also takes lower-case ``t``/``z``, a space for ``T`` and ``+hhmm`` offsets in
input times; an output time matching the pattern but naming an impossible date
(``2026-02-30``) passes the output model and fails the schema's ``format: date-time``;
JSON Schema counts ``1.0`` as an integer where msgspec wants ``1`` (so the generated
mutations never use integral floats).
"""

from __future__ import annotations

import base64
import copy
import json
import typing
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import msgspec
import msgspec.inspect as mi
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft7Validator, Draft202012Validator

from metering.engine import rules
from metering.events import outputs, schemagen
from metering.events.decode import Decoder, Rejection, ms_to_rfc3339
from metering.events.models import INPUT_TYPES, MESSAGING_CHANNELS, TOPIC_TYPES, TYPE_TOPIC
from metering.events.outputs import OUTPUT_TOPIC_TYPES, OUTPUT_TYPES

ROOT = Path(__file__).resolve().parents[1]
SCHEMAS = ROOT / "schemas"
SAMPLES = Path(__file__).resolve().parent / "samples"
VALID = sorted((SAMPLES / "valid").glob("*.json"))
INVALID = sorted((SAMPLES / "invalid").glob("*.json"))
ASYNCAPI_SPEC_SCHEMA = SAMPLES / "asyncapi" / "asyncapi-3.0.0.schema.json"

FORMAT_CHECKER = Draft202012Validator.FORMAT_CHECKER
ALL_TYPES = {**INPUT_TYPES, **OUTPUT_TYPES}
PROPERTY_SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


def schema_path(event_type: str) -> Path:
    if event_type in INPUT_TYPES:
        return SCHEMAS / schemagen.input_path(event_type)
    return SCHEMAS / schemagen.output_path(event_type)


def load_schema(event_type: str) -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(schema_path(event_type).read_text(encoding="utf-8"))
    return schema


VALIDATORS = {
    t: Draft202012Validator(load_schema(t), format_checker=FORMAT_CHECKER) for t in ALL_TYPES
}
DECODER = Decoder()


def sample_type(path: Path) -> str:
    """Samples are named ``<event type>--<case>.json``."""
    return path.name.split("--", 1)[0]


def accepted(event_type: str, raw: bytes) -> bool:
    """Does the service's decoder accept ``raw`` as an event of ``event_type``?"""
    cls = ALL_TYPES[event_type]
    if event_type in INPUT_TYPES:
        return isinstance(DECODER.decode(raw), cls)
    try:  # like a consumer: the union, so the `type` tag is required and checked
        event = msgspec.json.decode(raw, type=outputs.OutputCloudEvent)
    except msgspec.ValidationError:
        return False
    return isinstance(event, cls)


def schema_valid(event_type: str, doc: Any) -> bool:
    return bool(VALIDATORS[event_type].is_valid(doc))


# --------------------------------------------------------------------------- (a) drift


def test_committed_files_are_generated() -> None:
    stale = schemagen.check(SCHEMAS)
    assert stale == [], f"stale schema files {stale}: run `metering schemas`"


def test_one_schema_file_per_event_type() -> None:
    inputs = {p.name for p in (SCHEMAS / "input").glob("*.schema.json")}
    outs = {p.name for p in (SCHEMAS / "output").glob("*.schema.json")}
    assert inputs == {f"{t}.schema.json" for t in INPUT_TYPES}
    assert outs == {f"{t}.schema.json" for t in OUTPUT_TYPES}
    assert set(OUTPUT_TYPES) == {
        "interaction.opened",
        "interaction.closed",
        "concurrency.peak",
        "capacity.exceeded",
        "fairuse.warning",
        "fairuse.breach",
        "fairuse.cleared",
        "deadletter",
    }


def test_check_finds_missing_stale_and_extra_files_and_write_fixes_them(tmp_path: Path) -> None:
    assert len(schemagen.check(tmp_path)) == len(schemagen.documents())
    schemagen.write(tmp_path)
    assert schemagen.check(tmp_path) == []
    stale = tmp_path / "input" / "call.started.schema.json"
    doc = json.loads(stale.read_text())
    doc["required"].remove("subject")
    stale.write_text(json.dumps(doc))
    (tmp_path / "output" / "deadletter.schema.json").unlink()
    (tmp_path / "output" / "gone.schema.json").write_text("{}")
    (tmp_path / "asyncapi.yaml").write_text("asyncapi: [")
    assert sorted(schemagen.check(tmp_path)) == [
        "asyncapi.yaml",
        "input/call.started.schema.json",
        "output/deadletter.schema.json",
        "output/gone.schema.json",
    ]
    assert sorted(schemagen.write(tmp_path)) == [
        "asyncapi.yaml",
        "input/call.started.schema.json",
        "output/deadletter.schema.json",
        "output/gone.schema.json",
    ]
    assert schemagen.check(tmp_path) == []
    assert not (tmp_path / "output" / "gone.schema.json").exists()


def test_formatting_alone_is_not_stale(tmp_path: Path) -> None:
    schemagen.write(tmp_path)
    path = tmp_path / "input" / "nlp.used.schema.json"
    path.write_text(json.dumps(json.loads(path.read_text())))  # compact, same content
    assert schemagen.check(tmp_path) == []


def test_main_write_then_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert schemagen.main(["--check", str(tmp_path)]) == 1
    assert schemagen.main([str(tmp_path)]) == 0
    assert schemagen.main(["--check", str(tmp_path)]) == 0
    assert "up to date" in capsys.readouterr().out
    assert schemagen.write(tmp_path) == []  # idempotent: nothing rewritten


def test_default_dir_is_schemas_at_repo_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT / "tests" / "samples")
    assert schemagen.default_dir() == SCHEMAS


# --------------------------------------------------------------------------- (b) meta


@pytest.mark.parametrize("event_type", sorted(ALL_TYPES))
def test_schema_is_valid_draft_2020_12(event_type: str) -> None:
    schema = load_schema(event_type)
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"].endswith(schema_path(event_type).relative_to(SCHEMAS).as_posix())
    assert schema["title"] == event_type
    assert schema["description"]
    assert schema["properties"]["type"] == {
        "enum": [event_type],
        "description": "The CloudEvents type.",
    }
    # self-contained: every $ref is local and resolves
    for ref in _refs(schema):
        assert ref.startswith("#/$defs/"), ref
        assert ref.removeprefix("#/$defs/") in schema["$defs"]


def test_date_time_format_is_checked() -> None:
    """`format: date-time` is asserted only when rfc3339-validator is installed."""
    assert "date-time" in FORMAT_CHECKER.checkers, "pip install rfc3339-validator"


def _refs(node: Any) -> list[str]:
    found: list[str] = []
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "$ref" and isinstance(v, str):
                found.append(v)
            else:
                found.extend(_refs(v))
    elif isinstance(node, list):
        for v in node:
            found.extend(_refs(v))
    return found


# --------------------------------------------------------------------------- (c) valid samples


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.name)
def test_valid_sample(path: Path) -> None:
    event_type = sample_type(path)
    raw = path.read_bytes()
    doc = json.loads(raw)
    assert doc["type"] == event_type
    errors = [e.message for e in VALIDATORS[event_type].iter_errors(doc)]
    assert errors == []
    if event_type in INPUT_TYPES:
        event = DECODER.decode(raw, TYPE_TOPIC[event_type])
        assert isinstance(event, INPUT_TYPES[event_type]), event
    else:
        published: outputs.OutputCloudEvent = msgspec.json.decode(
            raw, type=outputs.OutputCloudEvent
        )
        assert isinstance(published, OUTPUT_TYPES[event_type])
        # what the service would publish for it is valid too, and the same event
        again = json.loads(outputs.encode(published))
        assert schema_valid(event_type, again)
        assert again == doc


def test_samples_cover_every_type_and_the_awkward_cases() -> None:
    types = {sample_type(p) for p in VALID}
    assert types == set(ALL_TYPES)
    docs = [json.loads(p.read_bytes()) for p in VALID]
    cdrs = [d for d in docs if d["type"] == "call.completed"]
    assert any(d["data"]["answered_at"] is None for d in cdrs)
    # both sides of the America/Denver fall-back hour
    times = {d["time"] for d in docs}
    assert any(t.endswith("-06:00") for t in times)
    assert any(t.endswith("-07:00") for t in times)
    assert {sample_type(p) for p in INVALID} == set(ALL_TYPES)


# --------------------------------------------------------------------------- (d) invalid samples


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.name)
def test_invalid_sample_is_rejected_by_schema_and_decoder(path: Path) -> None:
    event_type = sample_type(path)
    raw = path.read_bytes()
    assert not schema_valid(event_type, json.loads(raw))
    if event_type in INPUT_TYPES:
        rejection = DECODER.decode(raw, TYPE_TOPIC[event_type])
        assert isinstance(rejection, Rejection), rejection
        assert rejection.reason == "schema", rejection
    else:
        with pytest.raises(msgspec.ValidationError):
            msgspec.json.decode(raw, type=outputs.OutputCloudEvent)


# --------------------------------------------------------------------------- (e) properties

INT64 = (-(2**63), 2**63 - 1)
MS_RANGE = (-30_610_224_000_000, 253_402_300_799_999)  # 1000-01-01 .. 9999-12-31 (UTC ms)
OFFSETS = st.integers(-(24 * 60 - 1), 24 * 60 - 1).map(lambda m: timezone(timedelta(minutes=m)))


def strategy(t: mi.Type) -> st.SearchStrategy[Any]:
    """Values of a msgspec type, honouring its constraints (built from msgspec.inspect)."""
    if isinstance(t, mi.Metadata):
        return strategy(t.type)
    if isinstance(t, mi.StrType):
        if t.pattern == outputs.UTC_MS_PATTERN:
            # what the producer (ms_to_rfc3339) writes: real instants, years 1000-9999. The
            # pattern alone would also allow 2026-02-30, which `format: date-time` rejects.
            return st.integers(MS_RANGE[0], MS_RANGE[1]).map(ms_to_rfc3339)
        if t.pattern is not None:
            s: st.SearchStrategy[Any] = st.from_regex(t.pattern, fullmatch=True)
        else:
            s = st.text(min_size=t.min_length or 0, max_size=t.max_length)
        lo, hi = t.min_length or 0, t.max_length
        return s.filter(lambda v: lo <= len(v) and (hi is None or len(v) <= hi))
    if isinstance(t, mi.BoolType):
        return st.booleans()
    if isinstance(t, mi.IntType):
        lo = t.ge if t.ge is not None else (t.gt + 1 if t.gt is not None else INT64[0])
        hi = t.le if t.le is not None else (t.lt - 1 if t.lt is not None else INT64[1])
        return st.integers(lo, hi)
    if isinstance(t, mi.FloatType):
        return st.floats(allow_nan=False, allow_infinity=False, min_value=t.ge, max_value=t.le)
    if isinstance(t, mi.NoneType):
        return st.none()
    if isinstance(t, mi.LiteralType):
        return st.sampled_from(t.values)
    if isinstance(t, mi.UnionType):
        return st.one_of(*(strategy(x) for x in t.types))
    if isinstance(t, mi.ListType):
        return st.lists(strategy(t.item_type), min_size=t.min_length or 0, max_size=4)
    if isinstance(t, mi.DictType):
        return st.dictionaries(strategy(t.key_type), strategy(t.value_type), max_size=3)
    if isinstance(t, mi.DateTimeType):
        assert t.tz is True, "input times are aware"
        return st.datetimes(timezones=OFFSETS)
    if isinstance(t, mi.StructType):
        required = {f.name: strategy(f.type) for f in t.fields if f.required}
        optional = {f.name: strategy(f.type) for f in t.fields if not f.required}
        cls = t.cls

        def build(kwargs: dict[str, Any]) -> Any:
            try:
                return cls(**kwargs)
            except ValueError:  # a cross-field rule of __post_init__
                return None

        return (
            st.fixed_dictionaries(required, optional=optional)
            .map(build)
            .filter(lambda v: v is not None)
        )
    raise NotImplementedError(f"no strategy for {t!r}")


INSTANCES = {t: strategy(mi.type_info(cls)) for t, cls in ALL_TYPES.items()}


def _is_exempt(event_type: str, instance: Any) -> bool:
    """Instances the model allows but the contract forbids (rule kept in the decoder)."""
    if event_type != "smartflow.triggered":
        return False
    d = instance.data
    return d.channel in MESSAGING_CHANNELS and not (d.business_address and d.remote_address)


@pytest.mark.parametrize("event_type", sorted(ALL_TYPES))
@PROPERTY_SETTINGS
@given(data=st.data())
def test_model_instances_validate_against_schema(event_type: str, data: st.DataObject) -> None:
    instance = data.draw(INSTANCES[event_type])
    raw = msgspec.json.encode(instance)
    doc = json.loads(raw)
    valid = schema_valid(event_type, doc)
    assert valid == accepted(event_type, raw), doc
    assert valid != _is_exempt(event_type, instance), doc
    if valid:  # and the schema-valid document round-trips through the model
        assert msgspec.json.decode(raw, type=ALL_TYPES[event_type]) == instance


JSON_LEAF = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(INT64[0], INT64[1]),
    st.floats(allow_nan=False, allow_infinity=False).filter(lambda f: not f.is_integer()),
    st.text(max_size=10),
    st.sampled_from(
        [
            "",
            "x" * 129,
            0,
            1,
            -1,
            2,
            "1.0",
            "sms",
            "mms",
            "voice",
            "api",
            "local",
            "outbound",
            "rboc",
            "call_path",
            "mitel_us",
            "account",
            "user:u-1",
            "trunk_group:tg-1",
            "0.00",
            "12.5",
            "2026-11",
            "2026-13",
            "2026-11-03T14:05:00Z",
            "2026-11-03T14:05:00.000Z",
            "2026-11-03T14:05:00",
            "2026-11-03T14:05:00.123+05:30",
            "2026-02-30T00:00:00Z",
            "deadline",
            "merged",
            "breach",
            "orphan",
            "ew==",
            "call.started",
            "call.ended",
            "1.0",
        ]
    ),
)
JSON_VALUE = st.recursive(
    JSON_LEAF,
    lambda inner: (
        st.lists(inner, max_size=2) | st.dictionaries(st.text(max_size=4), inner, max_size=2)
    ),
    max_leaves=4,
)


def _containers(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Paths of every object and array in ``node``."""
    found = []
    if isinstance(node, dict | list):
        found.append(path)
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for k, v in items:
            found.extend(_containers(v, (*path, k)))
    return found


def _at(doc: Any, path: tuple[Any, ...]) -> Any:
    for k in path:
        doc = doc[k]
    return doc


@st.composite
def mutated(draw: st.DrawFn, event_type: str) -> tuple[Any, str]:
    """A model instance's JSON with one random edit: drop, replace or add a member."""
    doc = json.loads(msgspec.json.encode(draw(INSTANCES[event_type])))
    doc = copy.deepcopy(doc)
    path = draw(st.sampled_from(_containers(doc)))
    node = _at(doc, path)
    keys = list(node) if isinstance(node, dict) else list(range(len(node)))
    ops = ["add"] if isinstance(node, dict) else []
    if keys:
        ops += ["drop", "replace"]
    if not ops:
        return doc, "noop"
    op = draw(st.sampled_from(ops))
    if op == "add":
        key = draw(st.text(max_size=6) | st.sampled_from(["from", "subject", "extra", "tz"]))
        node[key] = draw(JSON_VALUE)
        return doc, f"add {path}/{key}"
    key = draw(st.sampled_from(keys))
    if op == "drop":
        del node[key]
    else:
        node[key] = draw(JSON_VALUE)
    return doc, f"{op} {path}/{key}"


@pytest.mark.parametrize("event_type", sorted(ALL_TYPES))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_schema_and_decoder_agree_on_mutations(event_type: str, data: st.DataObject) -> None:
    doc, edit = data.draw(mutated(event_type))
    raw = json.dumps(doc).encode()
    assert schema_valid(event_type, doc) == accepted(event_type, raw), (edit, doc)


@pytest.mark.parametrize("event_type", sorted(ALL_TYPES))
def test_schema_properties_mirror_model_fields(event_type: str) -> None:
    """Every model field is a schema property (by its JSON name), required exactly when
    the model requires it, recursively through nested Structs; and nothing else is."""
    schema = load_schema(event_type)

    def compare(info: mi.StructType, node: dict[str, Any], where: str) -> None:
        props = node["properties"]
        names = {f.encode_name for f in info.fields}
        if info.tag_field is not None:
            names.add(info.tag_field)
        assert set(props) == names, where
        required = {f.encode_name for f in info.fields if f.required}
        if info.tag_field is not None:
            required.add(info.tag_field)
        assert set(node.get("required", [])) == required, where
        assert node.get("additionalProperties", True) is not info.forbid_unknown_fields, where
        for f in info.fields:
            for sub in _structs(f.type):
                ref = next(r for r in _refs(props[f.encode_name]) if r.endswith(sub.cls.__name__))
                compare(sub, schema["$defs"][ref.removeprefix("#/$defs/")], f"{where}.{f.name}")

    compare(typing.cast(mi.StructType, mi.type_info(ALL_TYPES[event_type])), schema, event_type)


def _structs(t: mi.Type) -> list[mi.StructType]:
    if isinstance(t, mi.StructType):
        return [t]
    if isinstance(t, mi.Metadata):
        return _structs(t.type)
    if isinstance(t, mi.UnionType):
        return [s for x in t.types for s in _structs(x)]
    if isinstance(t, mi.DictType):
        return _structs(t.value_type)
    if isinstance(t, mi.ListType):
        return _structs(t.item_type)
    return []


# --------------------------------------------------------------------------- outputs helpers


def test_output_vocabularies_match_the_engine() -> None:
    assert set(typing.get_args(outputs.RuleName)) == set(rules.RULES)
    assert set(typing.get_args(outputs.Status)) == set(typing.get_args(rules.Status))


def test_cloudevent_builds_valid_events_and_rejects_bad_data() -> None:
    data = {
        "scope": "trunk_group:tg-1",
        "cycle": "2026-11",
        "peak": 3,
        "peak_at": "2026-11-03T14:05:00.120Z",
        "capacity": 20,
        "version": 2,
    }
    event = outputs.cloudevent("concurrency.peak", "p-1", 1_793_714_700_120, "acct-1", data)
    assert isinstance(event, outputs.ConcurrencyPeak)
    doc = json.loads(outputs.encode(event))
    assert doc["time"] == "2026-11-03T14:05:00.120Z"
    assert doc["source"] == "metering" and doc["subject"] == "acct-1"
    assert schema_valid("concurrency.peak", doc)
    with pytest.raises(msgspec.ValidationError):
        outputs.cloudevent("concurrency.peak", "p-1", 0, "acct-1", {**data, "peak_at": "now"})
    with pytest.raises(msgspec.ValidationError):  # only a deadletter may lack a subject
        outputs.cloudevent("concurrency.peak", "p-1", 0, None, data)


@pytest.mark.parametrize(
    ("raw", "text"),
    [(b'{"type": "call.started"', '{"type": "call.started"'), (b"\xff\xd8\xff\xe0", None)],
)
def test_deadletter_from_rejection(raw: bytes, text: str | None) -> None:
    rejection = DECODER.decode(raw, "cpaas.voice")
    assert isinstance(rejection, Rejection) and rejection.reason == "invalid_json"
    data = outputs.deadletter_data(rejection, topic="cpaas.voice", partition=2, offset=40)
    event = outputs.cloudevent("deadletter", "dl-1", 0, rejection.account, data)
    doc = json.loads(outputs.encode(event))
    assert schema_valid("deadletter", doc)
    assert "subject" not in doc
    assert doc["data"]["original"] == text
    if text is None:
        assert base64.b64decode(doc["data"]["original_base64"]) == raw


def test_output_topics_cover_every_output_type() -> None:
    assert sorted(t for ts in OUTPUT_TOPIC_TYPES.values() for t in ts) == sorted(OUTPUT_TYPES)


# --------------------------------------------------------------------------- (f) asyncapi


@pytest.fixture(scope="module")
def asyncapi_doc() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((SCHEMAS / "asyncapi.yaml").read_text(encoding="utf-8"))
    return doc


def test_asyncapi_is_valid_against_the_official_spec_schema(asyncapi_doc: dict[str, Any]) -> None:
    spec_schema = json.loads(ASYNCAPI_SPEC_SCHEMA.read_text(encoding="utf-8"))
    validator = Draft7Validator(spec_schema)
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(asyncapi_doc)]
    assert errors == []
    broken = copy.deepcopy(asyncapi_doc)
    broken["operations"]["receive.cpaas.voice"]["action"] = "consume"
    assert not validator.is_valid(broken)


def _resolve_local(doc: dict[str, Any], ref: str) -> Any:
    """The target of a local ``$ref``, following chains of references."""
    assert ref.startswith("#/"), ref
    node: Any = doc
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    if isinstance(node, dict) and set(node) == {"$ref"}:
        return _resolve_local(doc, node["$ref"])
    return node


def test_asyncapi_refs_resolve(asyncapi_doc: dict[str, Any]) -> None:
    refs = _refs(asyncapi_doc)
    assert refs
    files = set()
    for ref in refs:
        if ref.startswith("#/"):
            _resolve_local(asyncapi_doc, ref)
        else:
            target = (SCHEMAS / ref).resolve()
            assert target.is_file(), ref
            assert SCHEMAS in target.parents
            json.loads(target.read_text(encoding="utf-8"))
            files.add(target)
    assert files == {schema_path(t).resolve() for t in ALL_TYPES}


def test_asyncapi_describes_every_topic_key_and_type(asyncapi_doc: dict[str, Any]) -> None:
    assert asyncapi_doc["asyncapi"] == "3.0.0"
    assert {"info", "channels", "operations", "components"} <= set(asyncapi_doc)
    channels = asyncapi_doc["channels"]
    operations = asyncapi_doc["operations"]
    messages = asyncapi_doc["components"]["messages"]
    topics = {
        **{k: ("receive", v) for k, v in TOPIC_TYPES.items()},
        **{k: ("send", v) for k, v in OUTPUT_TOPIC_TYPES.items()},
    }
    assert {c["address"] for c in channels.values()} == set(topics)
    for topic, (action, types) in topics.items():
        (cid,) = [k for k, c in channels.items() if c["address"] == topic]
        channel = channels[cid]
        assert channel["bindings"]["kafka"]["topic"] == topic
        channel_types = {
            _resolve_local(asyncapi_doc, m["$ref"])["name"] for m in channel["messages"].values()
        }
        assert channel_types == set(types)
        ops = [o for o in operations.values() if o["channel"]["$ref"] == f"#/channels/{cid}"]
        assert [o["action"] for o in ops] == [action]
        assert {_resolve_local(asyncapi_doc, m["$ref"])["name"] for m in ops[0]["messages"]} == set(
            types
        )
        policy = channel["bindings"]["kafka"].get("topicConfiguration", {}).get("cleanup.policy")
        assert policy == (["compact"] if topic == "cpaas.accounts" else None)
    assert {m["name"] for m in messages.values()} == set(ALL_TYPES)
    for message in messages.values():
        name = message["name"]
        schema_ref = message["payload"]["schema"]["$ref"]
        assert (SCHEMAS / schema_ref).resolve() == schema_path(name).resolve()
        assert json.loads((SCHEMAS / schema_ref).read_text())["title"] == name
        key = message["bindings"]["kafka"]["key"]
        assert "string" in (key["type"] if isinstance(key["type"], list) else [key["type"]])
        assert "account id" in key["description"]


def test_asyncapi_yaml_round_trips_and_pins_versions() -> None:
    text = (SCHEMAS / "asyncapi.yaml").read_text(encoding="utf-8")
    assert yaml.safe_load(text) == schemagen.asyncapi()
    spec_meta = json.loads(ASYNCAPI_SPEC_SCHEMA.read_text(encoding="utf-8"))
    assert spec_meta["$id"] == "http://asyncapi.com/definitions/3.0.0/asyncapi.json"


# --------------------------------------------------------------------------- sanity of the times


def test_input_time_pattern_matches_what_the_decoder_takes() -> None:
    """The schema's time rule is the decoder's, minus the decoder's lenient extras."""
    good = [
        "2026-11-03T14:05:00Z",
        "2026-11-03T14:05:00.123456789+05:30",
        "2026-11-01T01:30:00-06:00",
    ]
    bad = [
        "2026-11-03T14:05:00",
        "2026-11-03T14:05Z",
        "2026-11-03T24:00:00Z",
        "2026-11-03T23:59:60Z",
        "2026-02-30T00:00:00Z",
        "2026-11-03T14:05:00+24:00",
    ]
    lenient = ["2026-11-03t14:05:00z", "2026-11-03 14:05:00Z", "2026-11-03T14:05:00+0100"]
    base = json.loads((SAMPLES / "valid" / "call.ended--dst-mst-offset.json").read_bytes())
    for value, schema_ok, decoder_ok in (
        [(v, True, True) for v in good]
        + [(v, False, False) for v in bad]
        + [(v, False, True) for v in lenient]
    ):
        doc = {**base, "time": value}
        assert schema_valid("call.ended", doc) is schema_ok, value
        assert accepted("call.ended", json.dumps(doc).encode()) is decoder_ok, value
    assert datetime.fromisoformat("2026-11-01T01:30:00-06:00") < datetime.fromisoformat(
        "2026-11-01T01:10:00-07:00"
    )
