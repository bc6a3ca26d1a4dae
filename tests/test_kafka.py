"""Kafka plumbing against a real broker (Tansu, in memory) and real clients (aiokafka, kcat).

One broker serves the whole module (``broker`` fixture). kcat talks to it through
``metering.kafka.kcat.KcatProxy`` (Debian's kcat is built on librdkafka 2.0.2, which
cannot parse Tansu's ApiVersions response); the kcat checks skip when kcat is missing.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest
import yaml

from holes import produce_with_holes
from metering.events.models import TYPE_TOPIC
from metering.kafka.broker import BrokerError, DevBroker, probe_metadata, tansu_path
from metering.kafka.kcat import KcatProxy, KcatRecord, kcat_consume, kcat_metadata
from metering.kafka.offsets import OffsetProbe
from metering.kafka.produce import (
    ProduceSummary,
    make_producer,
    produce_lines,
    produce_log,
    route_line,
)
from metering.kafka.produce import main as produce_main
from metering.kafka.topics import (
    INPUT_TOPICS,
    OUTPUT_TOPICS,
    KafkaConfigError,
    TopicMismatchError,
    TopicSpec,
    ensure_topics,
    kafka_client_options,
    topic_specs,
)

ROOT = Path(__file__).resolve().parents[1]
PARTITIONS = 3
ALL_TOPICS = (*INPUT_TOPICS, *OUTPUT_TOPICS)

requires_kcat = pytest.mark.skipif(
    shutil.which("kcat") is None,
    reason="kcat is not installed (apt-get install -y kcat; `make test` installs it)",
)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


@pytest.fixture(scope="module")
def broker() -> Any:
    with DevBroker() as b:
        yield b


@pytest.fixture(scope="module")
def topics(broker: DevBroker) -> list[str]:
    """The 8 service topics, created once (returns the names created)."""
    created: list[str] = run(ensure_topics(broker.bootstrap, topic_specs(PARTITIONS)))
    return created


async def _describe(bootstrap: str, names: list[str]) -> dict[str, int]:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        # Only describe existing topics: Tansu auto-creates the others.
        described = await admin.describe_topics([n for n in names if n in existing])
    finally:
        await admin.close()
    return {d["topic"]: len(d["partitions"]) for d in described}


async def _list_topics(bootstrap: str) -> set[str]:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


# ---------------------------------------------------------------------------- broker


def test_tansu_binary_is_found() -> None:
    path = tansu_path()
    assert path.name == "tansu" and os.access(path, os.X_OK)


def test_dev_broker_starts_and_stops() -> None:
    b = DevBroker()
    assert not b.running
    with b:
        assert b.running
        assert b.bootstrap == f"127.0.0.1:{b.port}"
        assert probe_metadata(b.bootstrap) == 1
        with pytest.raises(BrokerError, match="already in use"):
            DevBroker(b.port).start()
    assert not b.running
    with pytest.raises(OSError):
        probe_metadata(b.bootstrap, timeout_s=0.5)


def test_dev_broker_start_failure_shows_tansu_output(monkeypatch: pytest.MonkeyPatch) -> None:
    original = DevBroker.command

    def broken(self: DevBroker) -> list[str]:
        return [*original(self), "--no-such-flag"]

    monkeypatch.setattr(DevBroker, "command", broken)
    b = DevBroker(timeout_s=10)
    started = time.monotonic()
    with pytest.raises(BrokerError, match="no-such-flag") as info:
        b.start()
    assert "Tansu did not start" in str(info.value)
    assert time.monotonic() - started < 5  # noticed the exit, did not wait for the timeout
    assert not b.running


def test_run_broker_foreground_until_sigterm(tmp_path: Path) -> None:
    from metering.kafka.broker import free_port

    port = free_port()
    code = f"import sys; from metering.kafka.broker import run_broker; sys.exit(run_broker({port}))"
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL
    )
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline().decode()
        assert f"listening on 127.0.0.1:{port}" in line
        assert probe_metadata(f"127.0.0.1:{port}") == 1
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    with pytest.raises(OSError):  # Tansu went with it
        probe_metadata(f"127.0.0.1:{port}", timeout_s=0.5)


# ---------------------------------------------------------------------------- topics


def test_topic_specs() -> None:
    specs = {s.name: s for s in topic_specs(6)}
    assert list(specs) == list(ALL_TOPICS)
    assert all(s.partitions == 6 for s in specs.values())
    assert [n for n, s in specs.items() if s.compacted] == ["cpaas.accounts"]
    assert specs["cpaas.accounts"].configs() == {"cleanup.policy": "compact"}
    extra = TopicSpec("metering-changelog", 6, compacted=True, retention_ms=1000)
    more = topic_specs(6, [extra, TopicSpec("metering.deadletter", 2, retention_ms=60_000)])
    assert more[-1] == extra and extra.configs()["retention.ms"] == "1000"
    assert {s.name: s.partitions for s in more}["metering.deadletter"] == 2
    with pytest.raises(ValueError, match="co-partitioned"):
        topic_specs(6, [TopicSpec("cpaas.voice", 3)])
    with pytest.raises(ValueError):
        topic_specs(0)


def test_ensure_topics_creates_all_with_their_partition_counts(
    broker: DevBroker, topics: list[str]
) -> None:
    assert sorted(topics) == sorted(ALL_TOPICS)
    assert run(_describe(broker.bootstrap, list(ALL_TOPICS))) == dict.fromkeys(
        ALL_TOPICS, PARTITIONS
    )
    # Idempotent: nothing more to create, and no stray topic appeared.
    assert run(ensure_topics(broker.bootstrap, topic_specs(PARTITIONS))) == []
    assert set(ALL_TOPICS) <= run(_list_topics(broker.bootstrap))


def test_ensure_topics_sets_compaction(broker: DevBroker, topics: list[str]) -> None:
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    async def configs() -> dict[str, dict[str, str]]:
        admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
        await admin.start()
        try:
            responses = await admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, t) for t in INPUT_TOPICS]
            )
        finally:
            await admin.close()
        return {r[3]: {e[0]: e[1] for e in r[4]} for resp in responses for r in resp.resources}

    got = run(configs())
    assert got["cpaas.accounts"].get("cleanup.policy") == "compact"
    assert got["cpaas.voice"].get("cleanup.policy", "delete") == "delete"


@requires_kcat
def test_kcat_sees_the_topics(broker: DevBroker, topics: list[str]) -> None:
    md = kcat_metadata(broker.bootstrap)
    counts = {t["topic"]: len(t["partitions"]) for t in md["topics"]}
    for name in ALL_TOPICS:
        assert counts.get(name) == PARTITIONS, (name, counts.get(name))
    assert len(md["brokers"]) == 1


def test_ensure_topics_refuses_a_partition_mismatch(
    broker: DevBroker, topics: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(TopicMismatchError, match=r"cpaas\.voice has 3 partitions, expected 6"):
        run(ensure_topics(broker.bootstrap, topic_specs(6)))
    # Output topics only warn (no co-partitioning); new topics are still created.
    caplog.set_level("WARNING")
    specs = [TopicSpec("metering.fairuse", 5), TopicSpec("test.fresh", 2)]
    assert run(ensure_topics(broker.bootstrap, specs)) == ["test.fresh"]
    assert "metering.fairuse has 3 partitions, expected 5" in caplog.text
    assert run(_describe(broker.bootstrap, ["test.fresh"])) == {"test.fresh": 2}


def test_ensure_topics_reports_an_unreachable_broker() -> None:
    from metering.kafka.broker import free_port

    with pytest.raises(Exception, match=r"127\.0\.0\.1"):
        run(ensure_topics(f"127.0.0.1:{free_port()}", topic_specs(1), timeout_s=5))


# ---------------------------------------------------------------------------- options


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    cert, key = tmp_path / "client.pem", tmp_path / "client.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=metering-test", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def test_client_options_plaintext_is_empty() -> None:
    assert kafka_client_options({}) == {}
    assert kafka_client_options({"KAFKA_SECURITY_PROTOCOL": "plaintext"}) == {}


def test_client_options_sasl() -> None:
    env = {
        "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "KAFKA_SASL_USERNAME": "svc",
        "KAFKA_SASL_PASSWORD": "s3cret",
    }
    assert kafka_client_options(env) == {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "PLAIN",
        "sasl_plain_username": "svc",
        "sasl_plain_password": "s3cret",
    }
    for mech in ("SCRAM-SHA-256", "scram-sha-512"):
        opts = kafka_client_options({**env, "KAFKA_SASL_MECHANISM": mech})
        assert opts["sasl_mechanism"] == mech.upper()


def test_client_options_sasl_ssl_with_mutual_tls(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    env = {
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "KAFKA_SASL_USERNAME": "svc",
        "KAFKA_SASL_PASSWORD": "s3cret",
        "KAFKA_SSL_CAFILE": str(cert),
        "KAFKA_SSL_CERTFILE": str(cert),
        "KAFKA_SSL_KEYFILE": str(key),
    }
    opts = kafka_client_options(env)
    assert opts["security_protocol"] == "SASL_SSL"
    assert opts["sasl_mechanism"] == "SCRAM-SHA-512"
    ctx = opts["ssl_context"]
    assert isinstance(ctx, ssl.SSLContext)
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert any(c.get("subject") for c in ctx.get_ca_certs())
    # The options are accepted by the real clients.
    from aiokafka import AIOKafkaConsumer
    from aiokafka.admin import AIOKafkaAdminClient

    async def build() -> None:
        make_producer("127.0.0.1:1", opts)
        AIOKafkaConsumer(bootstrap_servers="127.0.0.1:1", **opts)
        AIOKafkaAdminClient(bootstrap_servers="127.0.0.1:1", **opts)

    run(build())


def test_client_options_ssl_with_system_trust_store() -> None:
    opts = kafka_client_options({"KAFKA_SECURITY_PROTOCOL": "SSL"})
    assert opts["security_protocol"] == "SSL" and isinstance(opts["ssl_context"], ssl.SSLContext)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"KAFKA_SECURITY_PROTOCOL": "TLS"}, "expected one of"),
        ({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "needs KAFKA_SASL_USERNAME"),
        (
            {
                "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
                "KAFKA_SASL_MECHANISM": "GSSAPI",
                "KAFKA_SASL_USERNAME": "u",
                "KAFKA_SASL_PASSWORD": "p",
            },
            "KAFKA_SASL_MECHANISM",
        ),
        ({"KAFKA_SASL_USERNAME": "u"}, "does not use SASL"),
        ({"KAFKA_SSL_CAFILE": "/etc/hosts"}, "does not use TLS"),
        (
            {"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CAFILE": "/no/such/ca.pem"},
            "no such file",
        ),
        (
            {"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CAFILE": "/etc/hostname"},
            "cannot build the TLS context",
        ),
    ],
)
def test_client_options_errors(env: dict[str, str], message: str) -> None:
    if env.get("KAFKA_SSL_CAFILE") == "/etc/hostname" and not Path("/etc/hostname").is_file():
        pytest.skip("/etc/hostname missing")
    with pytest.raises(KafkaConfigError, match=message):
        kafka_client_options(env)


# ---------------------------------------------------------------------------- produce


def test_route_line() -> None:
    def ev(etype: Any, subject: Any = "acct-7") -> bytes:
        return json.dumps({"type": etype, "subject": subject, "data": {}}).encode()

    for etype, topic in TYPE_TOPIC.items():
        assert route_line(ev(etype)) == (topic, b"acct-7")
    assert route_line(ev("account.configured", "ü-1")) == ("cpaas.accounts", "ü-1".encode())
    bad = [
        b"{not json",
        b"\xff\xfe garbage",
        b"[1, 2]",
        b'"call.started"',
        ev("call.transferred"),
        ev(None),
        ev(7),
        ev("call.started", None),
        ev("call.started", 12),
        b'{"type": "call.started", "subject": "a"} trailing',
    ]
    for line in bad:
        assert route_line(line) == ("cpaas.messaging", None), line
        assert route_line(line, "cpaas.smartflows") == ("cpaas.smartflows", None)


def _expected(lines: list[bytes]) -> dict[str, list[tuple[bytes | None, bytes]]]:
    """Independent routing (json, not msgspec): topic -> [(key, value)] in log order."""
    out: dict[str, list[tuple[bytes | None, bytes]]] = defaultdict(list)
    for line in lines:
        try:
            obj = json.loads(line)
        except ValueError:
            obj = None
        etype = obj.get("type") if isinstance(obj, dict) else None
        subject = obj.get("subject") if isinstance(obj, dict) else None
        topic = TYPE_TOPIC.get(etype) if isinstance(etype, str) else None
        if topic is None or not isinstance(subject, str):
            out["cpaas.messaging"].append((None, line))
        else:
            out[topic].append((subject.encode(), line))
    return out


def _murmur_partition(key: bytes, n: int) -> int:
    from aiokafka.partitioner import murmur2

    h: int = murmur2(key)  # aiokafka is untyped
    return (h & 0x7FFFFFFF) % n


@pytest.fixture(scope="module")
def sample_log(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[bytes]]:
    from metering.simulate.accounts import make_accounts
    from metering.simulate.config import SimulationConfig
    from metering.simulate.generator import write_log

    out = tmp_path_factory.mktemp("log")
    cfg = SimulationConfig(seed=3, accounts=5, events=12_000, days=1.0, malformed_rate=0.02)
    accounts = make_accounts(cfg)
    plain = out / "events.jsonl"
    write_log(plain, cfg, accounts)
    lines = [ln for ln in plain.read_bytes().split(b"\n") if ln]
    # Account configurations (the simulator writes none) and a few hand-made bad lines.
    for acct, obj in accounts["accounts"].items():
        lines.append(
            json.dumps(
                {"specversion": "1.0", "id": f"cfg-{acct}", "source": "//test",
                 "type": "account.configured", "time": "2026-10-30T00:00:00Z",
                 "subject": acct, "data": obj}
            ).encode()
        )  # fmt: skip
    lines += [b'{"type": "call.started"}', b"[]", b'{"type": "x.y", "subject": "acct-1"}']
    path = out / "events.jsonl.gz"
    with gzip.open(path, "wb") as f:
        f.write(b"\n".join(lines) + b"\n\n")  # a blank line is skipped, as in replay
    return path, lines


@requires_kcat
def test_produce_log_routes_every_line(
    broker: DevBroker, topics: list[str], sample_log: tuple[Path, list[bytes]]
) -> None:
    path, lines = sample_log
    before = {t: len(kcat_consume(broker.bootstrap, t)) for t in INPUT_TOPICS}
    progress: list[int] = []
    summary = run(produce_log(path, broker.bootstrap, progress=lambda s: progress.append(s.lines)))
    expected = _expected(lines)
    assert isinstance(summary, ProduceSummary)
    assert summary.lines == len(lines)
    assert dict(summary.topics) == {t: len(v) for t, v in expected.items()}
    assert summary.bad_lines == sum(1 for k, _ in expected["cpaas.messaging"] if k is None)
    assert summary.bad_lines > 20  # unparsable / unknown-type lines of the simulator + ours
    assert summary.bytes == sum(map(len, lines))
    assert len(lines) > 10_000 and progress == [
        10_000 * i for i in range(1, len(lines) // 10_000 + 1)
    ]
    assert len(expected["cpaas.accounts"]) == 5

    for topic in INPUT_TOPICS:
        got: list[KcatRecord] = kcat_consume(broker.bootstrap, topic)[before[topic] :]
        got.sort(key=lambda r: (r.partition, r.offset))
        want = expected.get(topic, [])
        # Same records (key and value) ...
        assert Counter((r.key, r.value) for r in got) == Counter(want), topic
        # ... keyed records on the murmur2 partition of their account (co-partitioning),
        # in log order within each partition.
        got_order: dict[int, list[bytes | None]] = defaultdict(list)
        for r in got:
            if r.key is not None:
                got_order[r.partition].append(r.value)
        want_order: dict[int, list[bytes | None]] = defaultdict(list)
        for key, value in want:
            if key is not None:
                want_order[_murmur_partition(key, PARTITIONS)].append(value)
        assert got_order == want_order, topic


def test_produce_log_needs_existing_topics(tmp_path: Path) -> None:
    log = tmp_path / "one.jsonl"
    log.write_bytes(b'{"type": "nlp.used", "subject": "a"}\n')
    with DevBroker() as fresh:
        with pytest.raises(TopicMismatchError, match="do not exist"):
            run(produce_log(log, fresh.bootstrap))
        assert not run(_list_topics(fresh.bootstrap)) & set(INPUT_TOPICS)  # none auto-created
        summary = run(produce_log(log, fresh.bootstrap, partitions=2))
        assert summary.lines == 1 and summary.topics == Counter({"cpaas.smartflows": 1})
        assert run(_describe(fresh.bootstrap, list(ALL_TOPICS))) == dict.fromkeys(ALL_TOPICS, 2)


async def _consume(
    bootstrap: str, topic: str, n: int, match: bytes, timeout: float = 20
) -> list[Any]:
    """The records of ``topic`` whose value contains ``match``, read from the beginning
    until ``n`` of them are seen (Tansu's end offsets are unreliable) or ``timeout``."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        out: list[Any] = []
        deadline = time.monotonic() + timeout
        while len(out) < n and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=100)).values():
                out.extend(r for r in records if match in r.value)
        return out
    finally:
        await consumer.stop()


def test_produce_lines_many_small_batches_lose_nothing(
    broker: DevBroker, topics: list[str]
) -> None:
    """Tiny batches: every few records a batch is full and sent while others are open;
    key-less records hop partitions between batches and must join, not replace, the
    open batch of keyed records there."""
    from aiokafka import AIOKafkaProducer

    lines = []
    for i in range(3_000):
        if i % 3 == 0:
            lines.append(b'{"type": "no.such.type", "run": "small", "n": %d}' % i)  # null key
        else:
            account = b"small-%d" % (i % 7)
            lines.append(
                b'{"type": "nlp.used", "subject": "%s", "run": "small", "n": %d}' % (account, i)
            )

    async def scenario() -> list[Any]:
        producer = AIOKafkaProducer(
            bootstrap_servers=broker.bootstrap, acks="all", max_batch_size=600
        )
        await producer.start()
        try:
            n = await produce_lines(lines, producer, bad_lines_topic="cpaas.smartflows")
            assert n == len(lines)
        finally:
            await producer.stop()
        return await _consume(broker.bootstrap, "cpaas.smartflows", len(lines), b'"small"')

    got = run(scenario())
    assert sorted(r.value for r in got) == sorted(lines)
    for r in got:
        if r.key is not None:
            assert r.partition == _murmur_partition(r.key, PARTITIONS)


def test_produce_lines_paces_and_lingers(broker: DevBroker, topics: list[str]) -> None:
    """``rate`` paces the stream; a slow async source still gets each record out within
    about the linger time, not when a batch fills."""

    def line(i: int, account: str) -> bytes:
        return json.dumps({"type": "call.answered", "subject": account, "id": str(i)}).encode()

    async def consume_until(account: bytes, n: int, timeout: float = 10) -> float:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        tp = TopicPartition("cpaas.voice", _murmur_partition(account, PARTITIONS))
        consumer = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap, enable_auto_commit=False)
        await consumer.start()
        try:
            consumer.assign([tp])
            await consumer.seek_to_beginning(tp)
            seen = 0
            deadline = time.monotonic() + timeout
            while seen < n and time.monotonic() < deadline:
                batch = await consumer.getmany(tp, timeout_ms=100)
                seen += sum(1 for m in batch.get(tp, []) if m.key == account)
            assert seen == n
            return time.monotonic()
        finally:
            await consumer.stop()

    async def scenario() -> None:
        producer = make_producer(broker.bootstrap)
        await producer.start()
        try:
            began = time.monotonic()
            n = await produce_lines((line(i, "pace-1") for i in range(200)), producer, rate=500)
            assert n == 200
            assert 0.3 <= time.monotonic() - began < 3  # 200 lines at 500/s: ~0.4 s

            sent_at: list[float] = []

            async def slow() -> Any:
                for i in range(3):
                    yield line(i, "linger-1")
                sent_at.append(time.monotonic())
                await asyncio.sleep(5)  # the source stalls; the records must not wait

            task = asyncio.ensure_future(produce_lines(slow(), producer))
            seen_at = await consume_until(b"linger-1", 3)
            assert seen_at - sent_at[0] < 3
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        finally:
            await producer.stop()

    run(scenario())


def test_produce_cli(
    broker: DevBroker, topics: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "cli.jsonl"
    log.write_bytes(b'{"type": "message.sent", "subject": "cli-1"}\n{"type": "nope"}\nnot json\n')
    rc = produce_main(
        [str(log), "--bootstrap", broker.bootstrap, "--bad-lines-topic", "cpaas.smartflows"]
    )
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "records sent" in out and "cpaas.messaging" in out and "events/s" in out
    assert "cpaas.smartflows" in out and "bad lines" in out

    assert produce_main([str(tmp_path / "missing.jsonl"), "--bootstrap", broker.bootstrap]) == 2
    assert "not found" in capsys.readouterr().err
    from metering.kafka.broker import free_port

    assert produce_main([str(log), "--bootstrap", f"127.0.0.1:{free_port()}", "--quiet"]) == 2
    assert "error" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        produce_main([str(log), "--bad-lines-topic", "cpaas.accounts"])


# ---------------------------------------------------------------------------- kcat shim


@requires_kcat
def test_kcat_proxy_keeps_null_and_binary_keys(broker: DevBroker, topics: list[str]) -> None:
    async def send() -> None:
        producer = make_producer(broker.bootstrap)
        await producer.start()
        try:
            for key, value in ((None, b"v0"), (b"", b"v1"), (b"\x00\xff\t\n", b"a\tb\nc")):
                await (await producer.send("metering.deadletter", value, key=key, partition=1))
        finally:
            await producer.stop()

    run(send())
    with KcatProxy(broker.bootstrap) as proxy:
        assert proxy.bootstrap != broker.bootstrap
        got = kcat_consume(proxy.bootstrap, "metering.deadletter", proxy=False)
    tail = [(r.key, r.value) for r in got if r.partition == 1][-3:]
    assert tail == [(None, b"v0"), (b"", b"v1"), (b"\x00\xff\t\n", b"a\tb\nc")]


# ---------------------------------------------------------------------------- deployment


def _compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def test_compose_services_and_wiring() -> None:
    compose = _compose()
    services = compose["services"]
    assert {"kafka", "clickhouse", "worker", "prometheus", "grafana"} <= set(services)

    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    env = kafka["environment"]
    assert "controller" in env["KAFKA_PROCESS_ROLES"]  # KRaft, no ZooKeeper
    assert "INTERNAL://kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"]
    assert "EXTERNAL://127.0.0.1:9092" in env["KAFKA_ADVERTISED_LISTENERS"]
    listeners = dict(item.split("://") for item in env["KAFKA_LISTENERS"].split(","))
    assert listeners["INTERNAL"] == ":9092"
    assert f"127.0.0.1:9092:{listeners['EXTERNAL'].lstrip(':')}" in kafka["ports"]
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"

    worker = services["worker"]
    command = worker["command"]
    assert command[:2] == ["metering", "worker"]
    opts = dict(zip(command[2::2], command[3::2], strict=True))
    assert opts["--bootstrap"] == "kafka:9092"
    assert opts["--clickhouse-url"].startswith("http://default:@clickhouse:8123/")
    assert worker["build"]["dockerfile"] == "Dockerfile" and (ROOT / "Dockerfile").is_file()
    assert set(worker["depends_on"]) >= {"kafka", "clickhouse"}
    web_port = opts["--web-port"]
    assert f"127.0.0.1:{web_port}:{web_port}" in worker["ports"]
    # Apache Kafka here: the production profile, state on the worker's named volume
    from metering.stream.settings import WorkerSettings

    settings = WorkerSettings.from_env(worker["environment"])
    assert settings.profile == "production" and not settings.embedded
    assert settings.state_store == "rocksdb://"  # the production profile's default
    data_mount = next(v for v in worker["volumes"] if v.startswith("worker-data:"))
    assert settings.data_dir.startswith(data_mount.split(":")[1] + "/")
    config_mount = next(v for v in worker["volumes"] if v.endswith(":/config:ro"))
    assert opts["--accounts"].startswith("/config/")
    accounts_file = ROOT / config_mount.split(":")[0] / opts["--accounts"].removeprefix("/config/")
    from metering.engine.accounts import load_accounts

    assert load_accounts(accounts_file)  # the mounted accounts file is valid

    assert services["clickhouse"]["image"].startswith("clickhouse/clickhouse-server:")
    assert services["clickhouse"]["environment"]["CLICKHOUSE_DB"] == "metering"

    # Every bind mount points at a file or directory of the repository.
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), (name, source)
            else:
                assert source in compose["volumes"], (name, source)


def test_state_store_default_follows_the_profile() -> None:
    """RocksDB in production, memory for the embedded profile (tests, ``metering up``);
    an explicit store wins, from the environment or a flag."""
    from metering.stream.settings import WorkerSettings

    def store(env: dict[str, str], **flags: Any) -> str:
        return WorkerSettings.from_env(env, **flags).state_store

    assert store({}) == "memory://"
    assert store({"METERING_PROFILE": "production"}) == "rocksdb://"
    assert store({}, profile="production") == "rocksdb://"  # --profile production
    assert store({"METERING_PROFILE": "production"}, profile="embedded") == "memory://"
    prod_memory = {"METERING_PROFILE": "production", "METERING_STATE_STORE": "memory://"}
    assert store(prod_memory) == "memory://"
    assert store({"METERING_STATE_STORE": "memory://"}, profile="production") == "memory://"
    assert store({}, profile="production", state_store="memory://") == "memory://"
    assert store({}, state_store="rocksdb://") == "rocksdb://"


def test_prometheus_scrapes_the_worker() -> None:
    compose = _compose()
    services = compose["services"]
    mount = next(v for v in services["prometheus"]["volumes"] if v.endswith("/prometheus.yml:ro"))
    prom = yaml.safe_load((ROOT / mount.split(":")[0]).read_text())
    jobs = {j["job_name"]: j for j in prom["scrape_configs"]}
    worker_job = jobs["metering-worker"]
    assert worker_job.get("metrics_path", "/metrics") == "/metrics"
    targets = [t for sc in worker_job["static_configs"] for t in sc["targets"]]
    command = services["worker"]["command"]
    web_port = command[command.index("--web-port") + 1]
    assert targets == [f"worker:{web_port}"]


def test_grafana_provisioning() -> None:
    services = _compose()["services"]
    grafana = services["grafana"]
    assert "grafana-clickhouse-datasource" in grafana["environment"]["GF_INSTALL_PLUGINS"]
    mounts = dict(v.split(":")[:2] for v in grafana["volumes"] if v.startswith("./"))
    provisioning = ROOT / next(s for s, t in mounts.items() if t == "/etc/grafana/provisioning")
    datasources = yaml.safe_load((provisioning / "datasources/datasources.yaml").read_text())
    by_type = {d["type"]: d for d in datasources["datasources"]}
    ch = by_type["grafana-clickhouse-datasource"]["jsonData"]
    assert (ch["host"], ch["port"], ch["protocol"]) == ("clickhouse", 8123, "http")
    assert ch["defaultDatabase"] == services["clickhouse"]["environment"]["CLICKHOUSE_DB"]
    users = (ROOT / "deploy/clickhouse/users.d/grafana.xml").read_text()
    assert f"<{ch['username']}>" in users and "<readonly>2</readonly>" in users
    assert by_type["prometheus"]["url"] == "http://prometheus:9090"
    providers = yaml.safe_load((provisioning / "dashboards/dashboards.yaml").read_text())
    path = providers["providers"][0]["options"]["path"]
    dashboards = ROOT / next(s for s, t in mounts.items() if t == path)
    assert (dashboards / "README.md").is_file()


def test_dockerfile_and_dockerignore() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert dockerfile.startswith("#") and "FROM python:3.11-slim" in dockerfile
    assert "pip install ." in dockerfile and "USER " in dockerfile
    ignored = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert ".venv" in ignored and ".git" in ignored
    for needed in ("pyproject.toml", "services"):
        assert needed not in ignored


def test_kcat_shim_rewrites() -> None:
    import struct

    from metering.kafka.kcat import fix_api_versions, fix_metadata

    # ApiVersions v3 as Tansu sends it: one api key, then all four tagged fields.
    tansu = (
        b"\x00\x00"  # error_code
        + b"\x02"  # compact array: 1 entry
        + struct.pack(">hhh", 18, 0, 4)
        + b"\x00"  # entry tags
        + struct.pack(">i", 0)  # throttle_time_ms
        + bytes.fromhex("0400010101" + "0108ffffffffffffffff" + "020101" + "030100")
    )
    fixed = fix_api_versions(tansu, 3)
    assert fixed == tansu[: 2 + 1 + 6 + 1 + 4] + b"\x00"
    assert fix_api_versions(b"\x00\x00anything", 2) == b"\x00\x00anything"

    ports = {9092: 40000}
    # Metadata v4 (what librdkafka 2.0.2 asks for): throttle, brokers, rack.
    v4 = (
        struct.pack(">i", 0)
        + struct.pack(">i", 1)
        + struct.pack(">ih", 111, 9)
        + b"127.0.0.1"
        + struct.pack(">i", 9092)
        + struct.pack(">h", -1)
        + b"rest"
    )
    assert fix_metadata(v4, 4, ports) == v4.replace(
        struct.pack(">i", 9092), struct.pack(">i", 40000)
    )
    # Metadata v12 (flexible): header tags, compact array and strings, entry tags.
    v12 = (
        b"\x00"
        + struct.pack(">i", 0)
        + b"\x02"
        + struct.pack(">i", 111)
        + b"\x0a127.0.0.1"
        + struct.pack(">i", 9092)
        + b"\x00\x00"
        + b"rest"
    )
    assert fix_metadata(v12, 12, ports) == v12.replace(
        struct.pack(">i", 9092), struct.pack(">i", 40000)
    )
    assert fix_metadata(v12, 12, {1: 2}) == v12


def test_offset_probe_reports_the_offsets_a_partition_has(broker: DevBroker) -> None:
    """OffsetProbe tells offsets with a record from offsets the log does not have (here
    holes made on the dev broker by a batch whose offset deltas skip values)."""
    run(ensure_topics(broker.bootstrap, [TopicSpec("probe.test", 1)]))
    records = [(b"k", b"v%d" % i) for i in range(5)]
    base = run(produce_with_holes(broker.bootstrap, "probe.test", 0, records, [0, 1, 3, 6, 7]))
    tail = run(produce_with_holes(broker.bootstrap, "probe.test", 0, records[:1], [0]))
    assert tail == base + 8  # the batch took offsets up to its last delta

    async def ask(start: int, end: int) -> tuple[list[int], int]:
        probe = OffsetProbe(broker.bootstrap)
        try:
            first = await probe.existing("probe.test", 0, start, end)
            again = await probe.existing("probe.test", 0, start, end)  # same consumer
            assert again == first and first.log_start is None
            return first.offsets, first.covered
        finally:
            await probe.close()

    b = base
    assert run(ask(b, b + 9)) == ([b, b + 1, b + 3, b + 6, b + 7, b + 8], b + 9)
    assert run(ask(b + 2, b + 6)) == ([b + 3], b + 6)  # 2, 4 and 5 are holes
    assert run(ask(b + 4, b + 6)) == ([], b + 6)  # answered by the record at 6
    assert run(ask(b + 5, b + 5)) == ([], b + 5)  # an empty range asks nothing
