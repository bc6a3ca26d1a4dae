"""Where the end-to-end stream tests (``tests/test_stream.py``) get Kafka and ClickHouse.

Two backends:

``local``
    The development broker (Tansu, :class:`~metering.kafka.broker.DevBroker`), one per
    test, and embedded ClickHouse (chDB): a directory per worker. What runs on this
    machine (no Docker here).
``docker``
    Apache Kafka in KRaft mode (testcontainers' ``KafkaContainer``, Confluent's
    ``cp-kafka`` image), one container per test, and one ClickHouse server container
    (``clickhouse/clickhouse-server``) for the session, with a fresh database per worker
    (``http://user:password@host:port/DATABASE``). Statements are read back through the
    URL. The worker runs with the ``production`` profile (no Tansu work-arounds).
    **Not run on this machine** (it has no Docker): written against testcontainers' API,
    untested here.

:func:`select_backend` picks one from ``METERING_TEST_BACKEND``:

* ``local``: the local backend, without looking for Docker;
* ``docker``: the Docker backend; when no Docker daemon answers, :class:`BackendUnavailable`
  (the tests that need a backend then fail with the reason, rather than quietly running
  something else);
* unset or ``auto``: Docker when a daemon answers (``docker.from_env().ping()``), else local.

Every selection carries the reason it was made, for the test report.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "ENV",
    "Backend",
    "BackendUnavailable",
    "Kafka",
    "Selection",
    "Storage",
    "docker_reachable",
    "open_backend",
    "select_backend",
]

ENV = "METERING_TEST_BACKEND"
KAFKA_IMAGE = "confluentinc/cp-kafka:7.6.0"
"""Apache Kafka 3.6 as Confluent packages it (the image testcontainers' KafkaContainer
drives); run in KRaft mode."""
CLICKHOUSE_IMAGE = "clickhouse/clickhouse-server:24.8"
CLICKHOUSE_USER = "metering"
CLICKHOUSE_PASSWORD = "metering"
# The simulated logs have fixed (past) dates: keep the server's TTL merges from deleting
# their rows while a test runs (what `set_retention(False)` does for chDB).
_NO_TTL_MERGES = """<clickhouse>
  <merge_tree>
    <max_number_of_merges_with_ttl_in_pool>0</max_number_of_merges_with_ttl_in_pool>
  </merge_tree>
</clickhouse>
"""

Kind = Literal["local", "docker"]


class BackendUnavailable(RuntimeError):
    """The requested backend cannot run here (the message says why)."""


@dataclass(frozen=True)
class Selection:
    kind: Kind
    reason: str


@dataclass(frozen=True)
class Kafka:
    """A running broker for one test."""

    bootstrap: str
    profile: str
    """The worker's ``METERING_PROFILE``: ``embedded`` (Tansu) or ``production``."""
    exact_end_offsets: bool
    """Whether ListOffsets answers the true end offsets (Tansu's are wrong for
    multi-record batches)."""


@dataclass(frozen=True)
class Storage:
    """Where one worker writes: a chDB directory or a ClickHouse URL."""

    db: Path | None = None
    url: str | None = None

    def __post_init__(self) -> None:
        if (self.db is None) == (self.url is None):
            raise ValueError("a Storage is a chDB directory or a ClickHouse URL, not both")

    def worker_args(self) -> list[str]:
        """The worker's command-line flags for it."""
        return (
            ["--db", str(self.db)] if self.db is not None else ["--clickhouse-url", str(self.url)]
        )

    def connect_kwargs(self) -> dict[str, str]:
        """Keyword arguments of :func:`metering.storage.client.connect`."""
        return {"db_dir": str(self.db)} if self.db is not None else {"url": str(self.url)}


def docker_reachable() -> tuple[bool, str]:
    """Whether a Docker daemon answers a ping (and why not)."""
    try:
        import docker
    except ImportError:
        return False, "the docker package is not installed (pip install -e '.[test]')"
    try:
        client = docker.from_env(timeout=5)
        try:
            client.ping()
        finally:
            client.close()
    except Exception as exc:  # DockerException, connection errors, bad DOCKER_HOST ...
        return False, f"no Docker daemon answers ({type(exc).__name__}: {exc})"
    return True, "a Docker daemon answers"


def select_backend(
    env: Mapping[str, str] | None = None,
    probe: Callable[[], tuple[bool, str]] = docker_reachable,
) -> Selection:
    """The backend for ``env`` (default ``os.environ``); see the module docstring."""
    env = os.environ if env is None else env
    wanted = (env.get(ENV) or "auto").strip().lower()
    if wanted == "local":
        return Selection("local", f"{ENV}=local")
    if wanted not in ("docker", "auto"):
        raise BackendUnavailable(f"{ENV} must be local, docker or auto, got {wanted!r}")
    ok, why = probe()
    if ok:
        return Selection("docker", f"{why} ({ENV}={wanted})")
    if wanted == "docker":
        raise BackendUnavailable(f"{ENV}=docker but {why}")
    return Selection("local", f"{why}: the dev broker (Tansu) and chDB")


class Backend:
    """Brokers and storages for the stream tests (use :func:`open_backend`)."""

    def __init__(self, selection: Selection) -> None:
        self.selection = selection
        self.kind: Kind = selection.kind
        self._clickhouse: Any = None
        self._clickhouse_base = ""

    @contextmanager
    def kafka(self) -> Iterator[Kafka]:
        """A fresh broker (no topics, no groups) for one test."""
        if self.kind == "local":
            from metering.kafka.broker import DevBroker

            with DevBroker() as broker:
                yield Kafka(broker.bootstrap, "embedded", exact_end_offsets=False)
            return
        try:
            from testcontainers.community.kafka import KafkaContainer
        except ImportError:  # testcontainers before the community split
            from testcontainers.kafka import KafkaContainer

        with KafkaContainer(KAFKA_IMAGE).with_kraft() as container:
            yield Kafka(container.get_bootstrap_server(), "production", exact_end_offsets=True)

    def storage(self, tmp: Path, name: str) -> Storage:
        """A fresh, empty storage for one worker (or several in turn)."""
        if self.kind == "local":
            return Storage(db=tmp / f"{name}-db")
        return Storage(url=f"{self._clickhouse_base}/t_{uuid.uuid4().hex[:12]}_{name}")

    def start(self, workdir: Path) -> None:
        if self.kind == "local":
            return
        try:
            from testcontainers.community.clickhouse import ClickHouseContainer
        except ImportError:  # testcontainers before the community split
            from testcontainers.clickhouse import ClickHouseContainer
        config = workdir / "no-ttl-merges.xml"
        config.write_text(_NO_TTL_MERGES)
        container = ClickHouseContainer(
            CLICKHOUSE_IMAGE, username=CLICKHOUSE_USER, password=CLICKHOUSE_PASSWORD
        ).with_volume_mapping(str(config), "/etc/clickhouse-server/config.d/zz-no-ttl.xml")
        container.start()
        self._clickhouse = container
        host, port = container.get_container_host_ip(), container.get_exposed_port(8123)
        self._clickhouse_base = f"http://{CLICKHOUSE_USER}:{CLICKHOUSE_PASSWORD}@{host}:{port}"

    def stop(self) -> None:
        if self._clickhouse is not None:
            self._clickhouse.stop()
            self._clickhouse = None


@contextmanager
def open_backend(selection: Selection, workdir: Path) -> Iterator[Backend]:
    """The backend of ``selection``, started (its session-wide parts) and stopped."""
    backend = Backend(selection)
    backend.start(workdir)
    try:
        yield backend
    finally:
        backend.stop()
