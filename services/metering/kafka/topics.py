"""The service's Kafka topics (SPEC sections 2 and 7), creating them, and client settings.

Topics
------
Input (record key = account id): ``cpaas.voice``, ``cpaas.messaging``, ``cpaas.smartflows``
and the compacted ``cpaas.accounts``. All four MUST have the same number of partitions:
the worker joins them by account key (co-partitioning), so account ``a`` has to land on
the same partition number in every input topic. :func:`ensure_topics` refuses to go on
when an existing input topic has a different count.

Output (key = account id): ``metering.interactions``, ``metering.concurrency``,
``metering.fairuse``, ``metering.deadletter``.

Connection settings (environment)
---------------------------------
:func:`kafka_client_options` turns these variables into aiokafka keyword arguments
(valid for ``AIOKafkaProducer``, ``AIOKafkaConsumer`` and ``AIOKafkaAdminClient``):

``KAFKA_BOOTSTRAP_SERVERS``
    ``host:port[,host:port...]``; read by the commands, not by this function
    (default ``127.0.0.1:9092``).
``KAFKA_SECURITY_PROTOCOL``
    ``PLAINTEXT`` (default), ``SSL``, ``SASL_PLAINTEXT`` or ``SASL_SSL``.
``KAFKA_SASL_MECHANISM``
    ``PLAIN`` (default when SASL is used), ``SCRAM-SHA-256`` or ``SCRAM-SHA-512``.
``KAFKA_SASL_USERNAME`` / ``KAFKA_SASL_PASSWORD``
    SASL credentials; both required with a ``SASL_*`` protocol.
``KAFKA_SSL_CAFILE``
    PEM file of the CA(s) that signed the brokers' certificates (``SSL``/``SASL_SSL``;
    default: the system trust store).
``KAFKA_SSL_CERTFILE`` / ``KAFKA_SSL_KEYFILE``
    client certificate and key (PEM) for mutual TLS; the key file defaults to the
    certificate file when only the latter is given.
``KAFKA_SSL_KEY_PASSWORD``
    password of an encrypted client key (optional).

An SSL context is built with ``aiokafka.helpers.create_ssl_context`` (hostname checking
on). Settings that do not fit the protocol (e.g. SASL credentials with ``SSL``) are an
error rather than silently ignored.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ACCOUNTS_TOPIC",
    "DEFAULT_BOOTSTRAP",
    "INPUT_TOPICS",
    "OUTPUT_TOPICS",
    "KafkaConfigError",
    "TopicMismatchError",
    "TopicSpec",
    "bootstrap_from_env",
    "ensure_topics",
    "kafka_client_options",
    "topic_specs",
]

log = logging.getLogger(__name__)

INPUT_TOPICS: tuple[str, ...] = (
    "cpaas.voice",
    "cpaas.messaging",
    "cpaas.smartflows",
    "cpaas.accounts",
)
OUTPUT_TOPICS: tuple[str, ...] = (
    "metering.interactions",
    "metering.concurrency",
    "metering.fairuse",
    "metering.deadletter",
)
ACCOUNTS_TOPIC = "cpaas.accounts"
DEFAULT_BOOTSTRAP = "127.0.0.1:9092"
SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
TOPIC_ALREADY_EXISTS = 36
RETRIABLE_ERRORS = frozenset({3, 5})  # UNKNOWN_TOPIC_OR_PARTITION, LEADER_NOT_AVAILABLE


class KafkaConfigError(ValueError):
    """Inconsistent or invalid Kafka connection settings."""


class TopicMismatchError(RuntimeError):
    """An existing topic does not have the partition count the service needs."""


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """One topic as the service wants it. ``retention_ms`` None = the broker default."""

    name: str
    partitions: int
    compacted: bool = False
    retention_ms: int | None = None

    def configs(self) -> dict[str, str]:
        out: dict[str, str] = {}
        if self.compacted:
            out["cleanup.policy"] = "compact"
        if self.retention_ms is not None:
            out["retention.ms"] = str(self.retention_ms)
        return out


def topic_specs(partitions: int, extra: Iterable[TopicSpec] = ()) -> list[TopicSpec]:
    """The 8 service topics, each with ``partitions`` partitions (``cpaas.accounts``
    compacted), followed by ``extra`` (e.g. the worker's changelog topics).

    Every input topic gets the same count (co-partitioning by account key). An ``extra``
    spec naming a service topic replaces it, except that it may not change an input
    topic's partition count.
    """
    if partitions < 1:
        raise ValueError(f"partitions must be >= 1, got {partitions}")
    specs: dict[str, TopicSpec] = {
        name: TopicSpec(name, partitions, compacted=name == ACCOUNTS_TOPIC)
        for name in (*INPUT_TOPICS, *OUTPUT_TOPICS)
    }
    for spec in extra:
        if spec.partitions < 1:
            raise ValueError(f"{spec.name}: partitions must be >= 1, got {spec.partitions}")
        if spec.name in INPUT_TOPICS and spec.partitions != partitions:
            raise ValueError(
                f"{spec.name}: every input topic needs {partitions} partitions "
                f"(co-partitioned by account), got {spec.partitions}"
            )
        specs[spec.name] = spec
    return list(specs.values())


# ---------------------------------------------------------------------------- settings


def bootstrap_from_env(env: Mapping[str, str] = os.environ) -> str:
    """``KAFKA_BOOTSTRAP_SERVERS`` or ``127.0.0.1:9092``."""
    return env.get("KAFKA_BOOTSTRAP_SERVERS", "").strip() or DEFAULT_BOOTSTRAP


def kafka_client_options(env: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """aiokafka keyword arguments for the security settings in ``env`` (see module doc).

    Returns ``{}`` for PLAINTEXT with nothing else set, so the result can always be
    splatted into a client: ``AIOKafkaProducer(bootstrap_servers=b, **options)``.
    """

    def get(name: str) -> str | None:
        value = env.get(name)
        return value.strip() if value and value.strip() else None

    protocol = (get("KAFKA_SECURITY_PROTOCOL") or "PLAINTEXT").upper().replace("-", "_")
    if protocol not in SECURITY_PROTOCOLS:
        raise KafkaConfigError(
            f"KAFKA_SECURITY_PROTOCOL={protocol!r}: expected one of {', '.join(SECURITY_PROTOCOLS)}"
        )
    sasl = protocol.startswith("SASL_")
    ssl = protocol in ("SSL", "SASL_SSL")
    mechanism = get("KAFKA_SASL_MECHANISM")
    username = get("KAFKA_SASL_USERNAME")
    password = env.get("KAFKA_SASL_PASSWORD") or None  # passwords may have edge spaces
    cafile = get("KAFKA_SSL_CAFILE")
    certfile = get("KAFKA_SSL_CERTFILE")
    keyfile = get("KAFKA_SSL_KEYFILE")
    key_password = env.get("KAFKA_SSL_KEY_PASSWORD") or None

    options: dict[str, Any] = {}
    if protocol != "PLAINTEXT":
        options["security_protocol"] = protocol

    if sasl:
        mech = (mechanism or "PLAIN").upper()
        if mech not in SASL_MECHANISMS:
            raise KafkaConfigError(
                f"KAFKA_SASL_MECHANISM={mechanism!r}: expected one of {', '.join(SASL_MECHANISMS)}"
            )
        if not username or not password:
            raise KafkaConfigError(
                f"KAFKA_SECURITY_PROTOCOL={protocol} needs KAFKA_SASL_USERNAME and "
                "KAFKA_SASL_PASSWORD"
            )
        options["sasl_mechanism"] = mech
        options["sasl_plain_username"] = username
        options["sasl_plain_password"] = password
    else:
        stray = [
            n
            for n, v in (
                ("KAFKA_SASL_MECHANISM", mechanism),
                ("KAFKA_SASL_USERNAME", username),
                ("KAFKA_SASL_PASSWORD", password),
            )
            if v
        ]
        if stray:
            raise KafkaConfigError(
                f"{', '.join(stray)} set but KAFKA_SECURITY_PROTOCOL={protocol} does not use "
                "SASL (use SASL_PLAINTEXT or SASL_SSL)"
            )

    if ssl:
        from aiokafka.helpers import create_ssl_context

        for name, path in (
            ("KAFKA_SSL_CAFILE", cafile),
            ("KAFKA_SSL_CERTFILE", certfile),
            ("KAFKA_SSL_KEYFILE", keyfile),
        ):
            if path and not os.path.isfile(path):
                raise KafkaConfigError(f"{name}={path}: no such file")
        if keyfile and not certfile:
            raise KafkaConfigError("KAFKA_SSL_KEYFILE needs KAFKA_SSL_CERTFILE")
        try:
            options["ssl_context"] = create_ssl_context(
                cafile=cafile, certfile=certfile, keyfile=keyfile, password=key_password
            )
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            raise KafkaConfigError(f"cannot build the TLS context: {exc}") from exc
    else:
        stray = [
            n
            for n, v in (
                ("KAFKA_SSL_CAFILE", cafile),
                ("KAFKA_SSL_CERTFILE", certfile),
                ("KAFKA_SSL_KEYFILE", keyfile),
            )
            if v
        ]
        if stray:
            raise KafkaConfigError(
                f"{', '.join(stray)} set but KAFKA_SECURITY_PROTOCOL={protocol} does not use "
                "TLS (use SSL or SASL_SSL)"
            )
    return options


# ---------------------------------------------------------------------------- topics


async def ensure_topics(
    bootstrap: str,
    specs: Sequence[TopicSpec] | Iterable[TopicSpec],
    *,
    client_options: dict[str, Any] | None = None,
    timeout_s: float = 30,
    replication_factor: int | None = None,
) -> list[str]:
    """Create the missing topics of ``specs``; return the names created (in spec order).

    Existing topics are checked: an input topic (``INPUT_TOPICS``) with a different
    partition count raises :class:`TopicMismatchError` (co-partitioning would be broken);
    any other topic with a different count is logged as a warning and left alone. A
    compacted spec whose existing topic is not compacted is also a warning. Safe to run
    concurrently with another instance ("already exists" is fine).

    ``replication_factor`` None = ``min(3, number of brokers)``.

    Only topics known to exist are ever described: metadata requests for unknown topics
    would make brokers with ``auto.create.topics.enable`` (and Tansu) create them with the
    wrong partition count.
    """
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    wanted = list(specs)
    names = [s.name for s in wanted]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate topic names in specs: {names}")
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap,
        request_timeout_ms=int(timeout_s * 1000),
        client_id="metering-topics",
        **(client_options or {}),
    )

    async def run() -> list[str]:
        await admin.start()
        existing = set(await admin.list_topics())
        missing = [s for s in wanted if s.name not in existing]
        created: list[str] = []
        if missing:
            rf = replication_factor
            if rf is None:
                cluster = await admin.describe_cluster()
                rf = max(1, min(3, len(cluster.get("brokers", ())) or 1))
            response = await admin.create_topics(
                [
                    NewTopic(s.name, s.partitions, rf, topic_configs=s.configs() or None)
                    for s in missing
                ],
                timeout_ms=int(timeout_s * 1000),
            )
            errors = {t[0]: (t[1], t[2] if len(t) > 2 else None) for t in response.topic_errors}
            failed: list[str] = []
            for s in missing:
                code, message = errors.get(s.name, (0, None))
                if code == 0:
                    created.append(s.name)
                elif code != TOPIC_ALREADY_EXISTS:
                    failed.append(f"{s.name}: error {code} {message or ''}".strip())
            if failed:
                raise RuntimeError("could not create topics: " + "; ".join(failed))
        await _verify(admin, wanted, set(created))
        return created

    try:
        return await asyncio.wait_for(run(), timeout_s)
    except TimeoutError:
        raise TimeoutError(
            f"Kafka at {bootstrap} did not answer within {timeout_s:.0f} s while ensuring topics"
        ) from None
    finally:
        try:
            await admin.close()
        except Exception:  # pragma: no cover - closing a half-started client
            log.debug("admin client close failed", exc_info=True)


async def _describe(admin: Any, names: list[str]) -> dict[str, Any]:
    """describe_topics, retried while a topic is still unknown or leaderless: a broker's
    metadata can lag a moment behind the controller after CreateTopics. (Bounded by the
    caller's overall timeout.)"""
    while True:
        by_name = {d["topic"]: d for d in await admin.describe_topics(names)}
        if all(
            n in by_name and by_name[n].get("error_code", 0) not in RETRIABLE_ERRORS for n in names
        ):
            return by_name
        await asyncio.sleep(0.2)


async def _verify(admin: Any, specs: list[TopicSpec], created: set[str]) -> None:
    by_name = await _describe(admin, [s.name for s in specs])
    problems: list[str] = []
    for spec in specs:
        info = by_name.get(spec.name)
        if info is None or info.get("error_code", 0) != 0:
            code = None if info is None else info.get("error_code")
            problems.append(f"{spec.name}: not found after creation (error {code})")
            continue
        count = len(info.get("partitions", ()))
        if count == spec.partitions:
            continue
        message = f"topic {spec.name} has {count} partitions, expected {spec.partitions}" + (
            " (just created)" if spec.name in created else ""
        )
        if spec.name in INPUT_TOPICS:
            problems.append(
                message + ": all input topics must have the same partition count "
                "(co-partitioned by account key); recreate it or start with "
                f"--partitions {count} if every input topic has {count}"
            )
        else:
            log.warning("%s; leaving it as it is", message)
    if problems:
        raise TopicMismatchError("; ".join(problems))
    await _check_compaction(admin, [s for s in specs if s.compacted and s.name not in created])


async def _check_compaction(admin: Any, specs: list[TopicSpec]) -> None:
    if not specs:
        return
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    try:
        responses = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, s.name) for s in specs]
        )
    except Exception as exc:  # not every broker/ACL allows it; only a warning is at stake
        log.warning("could not check cleanup.policy of %s: %s", [s.name for s in specs], exc)
        return
    for response in responses:
        for resource in response.resources:
            name, entries = resource[3], resource[4]
            policy = next((e[1] for e in entries if e[0] == "cleanup.policy"), None)
            if policy is not None and "compact" not in policy:
                log.warning(
                    "topic %s has cleanup.policy=%s, expected compact: old account "
                    "configurations will be deleted by retention",
                    name,
                    policy,
                )
