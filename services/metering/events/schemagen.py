"""Generate the event contract files under ``schemas/`` from the msgspec models.

* ``schemas/input/<type>.schema.json``: one JSON Schema (Draft 2020-12) per input event
  type, generated from :mod:`metering.events.models` with :func:`msgspec.json.schema`.
* ``schemas/output/<type>.schema.json``: one per output event type, generated from
  :mod:`metering.events.outputs`.
* ``schemas/asyncapi.yaml``: an AsyncAPI 3.0.0 document with every topic, its key and its
  message types, whose payloads ``$ref`` the schema files above.

msgspec's output is post-processed into self-contained documents (``$schema``, ``$id``,
``title``, ``description``, local ``$defs``), with the rules msgspec cannot express added:

* input times must be RFC 3339 with an offset (a ``pattern`` next to ``format``, since
  ``format`` is only an annotation by default);
* ``smartflow.triggered`` on a messaging channel requires ``business_address`` and
  ``remote_address`` (``if``/``then``; the decoder enforces the same rule);
* ``deadletter`` data carries exactly one of ``original`` and ``original_base64``
  (``oneOf``; the model's ``__post_init__`` enforces the same rule).

Usage: ``python -m metering.events.schemagen [--check|--write] [DIR]`` (``DIR`` defaults to
``schemas/`` at the repository root found from the working directory). Everything except
:func:`write` and :func:`main` is pure.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec
import yaml

from metering import generated
from metering.events.models import INPUT_TYPES, MESSAGING_CHANNELS, TOPIC_TYPES
from metering.events.outputs import OUTPUT_TOPIC_TYPES, OUTPUT_TYPES
from metering.generated import repo_dir

DIALECT = "https://json-schema.org/draft/2020-12/schema"
BASE_URI = "https://metering.example/schemas/"
ASYNCAPI_FILE = "asyncapi.yaml"
KAFKA_BINDING_VERSION = "0.5.0"
CONTENT_TYPE = "application/cloudevents+json"
SCHEMA_FORMAT = "application/schema+json;version=draft-2020-12"

RFC3339_PATTERN = (
    r"^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])T"
    r"([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]+)?"
    r"(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$"
)
"""RFC 3339 date-time with a mandatory ``+hh:mm``/``Z`` offset and upper-case ``T``/``Z``.

What producers must send. The decoder is slightly more lenient (it also takes lower-case
``t``/``z``, a space for ``T`` and ``+hhmm`` offsets); it rejects a leap second (``:60``),
so the pattern does too."""

Json = dict[str, Any]

INPUT_DESCRIPTIONS: dict[str, tuple[str, str]] = {
    # type: (what it is, what `time` means)
    "call.started": (
        "A call attempt seized a port of a trunk group (or was blocked because all ports "
        "were in use).",
        "When the port was seized.",
    ),
    "call.answered": ("A call was answered (answer supervision).", "When it was answered."),
    "call.ended": ("A call released its port.", "When the port was released."),
    "call.completed": (
        "A call detail record: every call.started field plus started_at, answered_at "
        "(null when unanswered) and ended_at. It stands for the three lifecycle events of "
        "the call; a call is described either by lifecycle events or by one CDR.",
        "The call's end (equal to data.ended_at).",
    ),
    "message.sent": ("A message sent from a business address to a remote address.", "When sent."),
    "message.received": (
        "A message received by a business address from a remote address.",
        "When received.",
    ),
    "smartflow.triggered": (
        "A SmartFlow execution started. On a messaging channel (sms, mms, whatsapp, "
        "facebook) business_address and remote_address are required.",
        "When the execution started.",
    ),
    "nlp.used": ("An NLP use inside a SmartFlow execution.", "When NLP was used."),
    "account.configured": (
        "An account's configuration (timezone, policies, trunk_groups), as in the YAML "
        "accounts file; the later of the file and the events wins.",
        "When the configuration was made.",
    ),
}

OUTPUT_DESCRIPTIONS: dict[str, str] = {
    "interaction.opened": "An Interaction opened: the first item of a conversation, or a "
    "SmartFlow on voice or api.",
    "interaction.closed": "An Interaction closed: its deadline plus the allowed lateness "
    "passed (watermark or wall clock), or a late item merged it into an earlier one.",
    "concurrency.peak": "A new concurrency peak of a billing cycle, for a capacity group "
    "(scope trunk_group:ID) or the whole account (scope account).",
    "capacity.exceeded": "A non-blocked call started while its capacity group already had "
    "`capacity` calls occupying ports.",
    "fairuse.warning": "A fair-use rule with a warning step first reached 80% of its "
    "threshold in a cycle (sample floor met).",
    "fairuse.breach": "A fair-use rule first failed in a cycle.",
    "fairuse.cleared": "A failing ratio rule passes again.",
    "deadletter": "Input the service rejected, with the original record and a reason code.",
}

ENVELOPE_DESCRIPTIONS: dict[str, str] = {
    "specversion": "CloudEvents version.",
    "id": "Event id (1-128 characters); the pair (source, id) identifies the event.",
    "source": "The event's producer.",
    "subject": "The account id (also the Kafka record key).",
}

TOPIC_DESCRIPTIONS: dict[str, str] = {
    "cpaas.voice": "Call lifecycle events and call detail records.",
    "cpaas.messaging": "Messages sent and received on sms, mms, whatsapp and facebook.",
    "cpaas.smartflows": "SmartFlow executions and their NLP uses.",
    "cpaas.accounts": "Account configurations. Compacted: the latest record per account "
    "(key) is kept.",
    "metering.interactions": "Interactions opened and closed.",
    "metering.concurrency": "Concurrency peaks per cycle and capacity alerts.",
    "metering.fairuse": "Fair-use warnings, breaches and clearances.",
    "metering.deadletter": "Rejected input with a reason code (invalid_json, schema, "
    "unknown_type, wrong_topic, orphan, duplicate_call).",
}
COMPACTED_TOPICS: frozenset[str] = frozenset({"cpaas.accounts"})


# --------------------------------------------------------------------------- schemas


def input_path(event_type: str) -> str:
    """Path of an input schema, relative to the schemas directory."""
    return f"input/{event_type}.schema.json"


def output_path(event_type: str) -> str:
    """Path of an output schema, relative to the schemas directory."""
    return f"output/{event_type}.schema.json"


def _self_contained(cls: type[msgspec.Struct], rel_path: str, title: str, description: str) -> Json:
    """msgspec's schema of ``cls`` with the root inlined and 2020-12 metadata added."""
    generated = msgspec.json.schema(cls)
    defs: Json = generated["$defs"]
    root: Json = defs.pop(generated["$ref"].rsplit("/", 1)[1])
    doc: Json = {
        "$schema": DIALECT,
        "$id": BASE_URI + rel_path,
        "$comment": f"Generated from {cls.__module__}.{cls.__qualname__} by "
        "metering.events.schemagen; do not edit.",
        "title": title,
        "description": description,
    }
    doc.update({k: v for k, v in root.items() if k not in ("title", "description")})
    if defs:
        doc["$defs"] = defs
    _walk(doc, _tidy_description)
    return doc


def _walk(node: Any, visit: Any) -> None:
    if isinstance(node, dict):
        visit(node)
        for value in node.values():
            _walk(value, visit)
    elif isinstance(node, list):
        for value in node:
            _walk(value, visit)


def _tidy_description(node: Json) -> None:
    """Docstrings become descriptions: drop their line breaks and indentation."""
    text = node.get("description")
    if isinstance(text, str) and "\n" in text:
        paragraphs = text.split("\n\n")
        node["description"] = "\n\n".join(" ".join(p.split()) for p in paragraphs)


def _require_offset(node: Json) -> None:
    if node.get("format") == "date-time" and "pattern" not in node:
        node["pattern"] = RFC3339_PATTERN


def _describe_envelope(doc: Json, time_description: str) -> None:
    props: Json = doc["properties"]
    props["type"]["description"] = "The CloudEvents type."
    for name, text in ENVELOPE_DESCRIPTIONS.items():
        if name in props:
            props[name].setdefault("description", text)
    props["time"].setdefault("description", time_description)


def input_schema(event_type: str) -> Json:
    """The JSON Schema of one input event type (SPEC section 2)."""
    cls = INPUT_TYPES[event_type]
    what, when = INPUT_DESCRIPTIONS[event_type]
    doc = _self_contained(cls, input_path(event_type), event_type, what)
    _walk(doc, _require_offset)
    _describe_envelope(
        doc, when + " RFC 3339 with an offset; the service works in UTC milliseconds."
    )
    if event_type == "smartflow.triggered":
        address = {"type": "string", "minLength": 1}
        doc["$defs"]["SmartflowData"].update(
            {
                "if": {
                    "properties": {"channel": {"enum": sorted(MESSAGING_CHANNELS)}},
                    "required": ["channel"],
                },
                "then": {
                    "properties": {"business_address": address, "remote_address": address},
                    "required": ["business_address", "remote_address"],
                },
            }
        )
    return doc


def output_schema(event_type: str) -> Json:
    """The JSON Schema of one output event type (SPEC section 7, docs/design.md)."""
    cls = OUTPUT_TYPES[event_type]
    doc = _self_contained(cls, output_path(event_type), event_type, OUTPUT_DESCRIPTIONS[event_type])
    _describe_envelope(doc, "When the event was emitted (RFC 3339 UTC, milliseconds).")
    if event_type == "deadletter":
        doc["properties"]["subject"]["description"] = (
            "The account id when it is known; absent otherwise."
        )
        doc["$defs"]["DeadletterData"]["oneOf"] = [
            {"properties": {"original": {"type": "string"}, "original_base64": {"type": "null"}}},
            {"properties": {"original": {"type": "null"}, "original_base64": {"type": "string"}}},
        ]
    return doc


# --------------------------------------------------------------------------- asyncapi


def _message_id(event_type: str) -> str:
    return event_type


def _channel_id(topic: str) -> str:
    return topic


def _operation_id(action: str, topic: str) -> str:
    return f"{action}.{topic}"


def _message(event_type: str, schema_ref: str, summary: str, key: Json) -> Json:
    return {
        "name": event_type,
        "title": event_type,
        "summary": summary,
        "contentType": CONTENT_TYPE,
        "payload": {"schemaFormat": SCHEMA_FORMAT, "schema": {"$ref": schema_ref}},
        "bindings": {"kafka": {"key": key, "bindingVersion": KAFKA_BINDING_VERSION}},
    }


def asyncapi() -> Json:
    """The AsyncAPI 3.0.0 document of every topic the service reads and writes."""
    account_key: Json = {"type": "string", "description": "The account id (CloudEvents subject)."}
    deadletter_key: Json = {
        "type": ["string", "null"],
        "description": "The account id when it is known, else null.",
    }
    channels: Json = {}
    operations: Json = {}
    messages: Json = {}
    plan: list[tuple[str, str, tuple[str, ...]]] = [
        ("receive", topic, types) for topic, types in TOPIC_TYPES.items()
    ] + [("send", topic, types) for topic, types in OUTPUT_TOPIC_TYPES.items()]
    for action, topic, types in plan:
        for t in types:
            if action == "receive":
                summary = INPUT_DESCRIPTIONS[t][0]
                ref = "./" + input_path(t)
            else:
                summary = OUTPUT_DESCRIPTIONS[t]
                ref = "./" + output_path(t)
            key = deadletter_key if t == "deadletter" else account_key
            messages[_message_id(t)] = _message(t, ref, summary, key)
        kafka: Json = {"topic": topic}
        if topic in COMPACTED_TOPICS:
            kafka["topicConfiguration"] = {"cleanup.policy": ["compact"]}
        kafka["bindingVersion"] = KAFKA_BINDING_VERSION
        cid = _channel_id(topic)
        channels[cid] = {
            "address": topic,
            "title": topic,
            "description": TOPIC_DESCRIPTIONS[topic],
            "messages": {
                _message_id(t): {"$ref": f"#/components/messages/{_message_id(t)}"} for t in types
            },
            "bindings": {"kafka": kafka},
        }
        operation: Json = {
            "action": action,
            "title": f"{'Consume' if action == 'receive' else 'Publish'} {topic}",
            "channel": {"$ref": f"#/channels/{cid}"},
            "messages": [{"$ref": f"#/channels/{cid}/messages/{_message_id(t)}"} for t in types],
        }
        if action == "receive":
            operation["bindings"] = {
                "kafka": {
                    "groupId": {"type": "string", "enum": ["metering"]},
                    "bindingVersion": KAFKA_BINDING_VERSION,
                }
            }
        operations[_operation_id(action, topic)] = operation
    return {
        "asyncapi": "3.0.0",
        "id": "urn:metering:events",
        "info": {
            "title": "Metering events",
            "version": "1.0.0",
            "description": "Topics the metering service consumes and produces (SPEC sections "
            "2 and 7). Every record is a CloudEvents 1.0 event in structured JSON mode, one "
            "per record, keyed by the account id. Payload schemas are JSON Schema Draft "
            "2020-12 files next to this document, generated from the service's models by "
            "`metering schemas`; do not edit by hand.",
        },
        "defaultContentType": CONTENT_TYPE,
        "servers": {
            "kafka": {
                "host": "{bootstrap}",
                "protocol": "kafka",
                "description": "The Kafka cluster.",
                "variables": {"bootstrap": {"default": "localhost:9092"}},
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages},
    }


# --------------------------------------------------------------------------- files


def documents() -> dict[str, Json]:
    """Every generated document, by path relative to the schemas directory."""
    docs: dict[str, Json] = {}
    for t in INPUT_TYPES:
        docs[input_path(t)] = input_schema(t)
    for t in OUTPUT_TYPES:
        docs[output_path(t)] = output_schema(t)
    docs[ASYNCAPI_FILE] = asyncapi()
    return docs


def render(rel_path: str, doc: Json) -> str:
    """The file text of a generated document."""
    if rel_path.endswith(".yaml"):
        header = "# Generated by metering.events.schemagen (`metering schemas`); do not edit.\n"
        unshared = json.loads(json.dumps(doc))  # no YAML anchors/aliases for shared nodes
        return header + yaml.safe_dump(unshared, sort_keys=False, allow_unicode=True, width=100)
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def _parse(rel_path: str, text: str) -> Any:
    if rel_path.endswith(".yaml"):
        return yaml.safe_load(text)
    return json.loads(text)


def _extra_files(directory: Path, expected: set[str]) -> list[str]:
    extra = []
    for sub in ("input", "output"):
        for p in sorted((directory / sub).glob("*.schema.json")):
            rel = p.relative_to(directory).as_posix()
            if rel not in expected:
                extra.append(rel)
    return extra


def check(directory: Path | str) -> list[str]:
    """Paths (relative to ``directory``) that are missing, stale or not generated.

    Files are compared by content (parsed JSON/YAML), so formatting alone never counts.
    """
    directory = Path(directory)
    docs = documents()
    bad: list[str] = []
    for rel, doc in docs.items():
        path = directory / rel
        try:
            current = _parse(rel, path.read_text(encoding="utf-8"))
        except (OSError, ValueError, yaml.YAMLError):
            bad.append(rel)
            continue
        if current != _parse(rel, render(rel, doc)):
            bad.append(rel)
    return bad + _extra_files(directory, set(docs))


def write(directory: Path | str) -> list[str]:
    """Write every document under ``directory`` and delete schema files no longer generated.

    Returns the paths written or deleted (relative to ``directory``).
    """
    directory = Path(directory)
    docs = documents()
    changed: list[str] = []
    for rel in _extra_files(directory, set(docs)):
        (directory / rel).unlink()
        changed.append(rel)
    for rel, doc in docs.items():
        path = directory / rel
        text = render(rel, doc)
        if path.exists() and path.read_text(encoding="utf-8") == text:
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        changed.append(rel)
    return changed


def default_dir(start: Path | None = None) -> Path:
    """``schemas/`` at the repository root: the nearest ancestor of ``start`` (default: the
    working directory) holding ``pyproject.toml``; ``start/schemas`` when there is none."""
    return repo_dir("schemas", start)


def main(argv: Sequence[str] | None = None) -> int:
    """``[--check|--write] [DIR]``: write the files (default) or check them (exit 1 if stale)."""
    return generated.main(
        argv,
        prog="metering schemas",
        description="Generate (or check) the JSON Schemas and the AsyncAPI document of the "
        "metering events from the code's models.",
        relative="schemas",
        check=check,
        write=write,
        total=len(documents()),
        noun="files",
    )


if __name__ == "__main__":
    sys.exit(main())
