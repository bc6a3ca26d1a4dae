"""Settings of the streaming worker (``metering worker``), from CLI flags and the environment.

A command-line flag wins over its environment variable, which wins over the default.

Environment variables
---------------------
``KAFKA_BOOTSTRAP_SERVERS``
    Kafka brokers, ``host:port[,host:port...]`` (flag ``--bootstrap``; default
    ``127.0.0.1:9092``).
``KAFKA_SECURITY_PROTOCOL``, ``KAFKA_SASL_MECHANISM``, ``KAFKA_SASL_USERNAME``,
``KAFKA_SASL_PASSWORD``, ``KAFKA_SSL_CAFILE``, ``KAFKA_SSL_CERTFILE``,
``KAFKA_SSL_KEYFILE``, ``KAFKA_SSL_KEY_PASSWORD``
    SASL / TLS, exactly as documented in :mod:`metering.kafka.topics`
    (:func:`~metering.kafka.topics.kafka_client_options`); used for the topic admin client
    and for Faust's consumer and producer.
``CLICKHOUSE_URL``
    ClickHouse server, ``http[s]://user:password@host:port[/database]`` (flag
    ``--clickhouse-url``). Exactly one of this and ``METERING_DB_DIR`` is needed.
``METERING_DB_DIR``
    Embedded ClickHouse (chDB) directory (flag ``--db``). chDB allows one process per
    directory: give every worker its own, or use a ClickHouse server.
``METERING_ACCOUNTS``
    Accounts YAML of SPEC section 8 loaded at start (flag ``--accounts``; optional:
    ``account.configured`` events on ``cpaas.accounts`` configure accounts too).
``METERING_PARTITIONS``
    Partitions of every input and output topic and of the state changelog when the
    worker creates them (flag ``--partitions``; default 4). Existing input topics must
    all have this count.
``METERING_STATE_STORE``
    Faust table store for the engine checkpoints (flag ``--state-store``): ``rocksdb://``
    (the ``production`` profile's default: local RocksDB through rocksdict under
    ``METERING_DATA_DIR``, so a restart replays only the changelog's tail) or
    ``memory://`` (the ``embedded`` profile's default, for tests and ``metering up``:
    state rebuilt from the changelog topic at every start, which a compacted changelog
    keeps to about one checkpoint per account). Both are covered by the SIGKILL/restart
    tests (``tests/test_stream.py`` tests 2 and 7; docs/runbook.md, "Known defects",
    has the history of the RocksDB store).
``METERING_DATA_DIR``
    Faust's data directory (RocksDB files live here; flag ``--data-dir``; default
    ``./.metering/worker-data``).
``METERING_WEB_PORT``
    Port of the worker's HTTP API (``/health``, ``/ready``, ``/metrics``, ...; flag
    ``--web-port``; default 6066).
``METERING_WEB_HOST``
    Host name other workers use to reach this one (Faust's ``web_host``, used to route
    ``/fairuse/{account}`` to the worker that owns the account; flag ``--web-host``;
    default ``127.0.0.1``). The server itself listens on ``METERING_WEB_BIND``
    (default ``0.0.0.0``).
``METERING_PROFILE``
    ``embedded`` (default; the development broker, Tansu) or ``production`` (Apache
    Kafka). ``embedded`` turns on the Tansu work-arounds: one record per producer batch
    (``producer_max_batch_size=1``: Tansu reports the end offset of a partition as the
    start of its last batch + 1, so Faust's changelog recovery would stop early on
    multi-record batches), and short group timeouts (session 6 s, heartbeat 1 s,
    rebalance 10 s; Tansu group joins are slow with the defaults).
``METERING_BATCH_SIZE``
    Records per commit (flag ``--batch-size``; default 50000): a commit (checkpoint,
    ClickHouse flush, output events, offsets) runs once this many records are processed
    and uncommitted. Each commit has a fixed cost (the flush above all), so big commits
    make a backlog go faster; the batch window bounds the latency of steady traffic.
``METERING_BATCH_WINDOW``
    A commit also runs once the oldest uncommitted record is this many seconds old
    (flag ``--batch-window``; default 1.0), except while a backlog is being caught up
    (consumer lag above a batch), when it waits for a full batch or 10 windows.
``METERING_ALLOWED_LATENESS``, ``METERING_DEDUPE_HORIZON``, ``METERING_MAX_CALL_DURATION``
    The time rules of SPEC sections 2, 3 and 5, in seconds (flags ``--allowed-lateness``,
    ``--dedupe-horizon``, ``--max-call-duration``; defaults 900, 86400, 14400), as for
    ``metering replay``.
``METERING_IDLE_CHECK``
    Seconds between wall-clock checks that close idle Interactions (flag
    ``--idle-check``; default 30; 0 turns the check off).
``METERING_IDLE_AFTER``
    An account's Interactions are closed on the wall clock only once no event of that
    account has arrived for this many seconds (flag ``--idle-after``; default 60). It
    keeps a backlog or a backfill of old events (event time far behind the wall clock)
    from being closed early while its events are still arriving.
``METERING_ALIGN_WAIT``
    The four input topics are merged per partition in event-time order (see
    :class:`metering.stream.pipeline.Aligner`); a topic-partition that has not delivered
    up to its high watermark holds back the others of its partition until its records
    come, or until the worker has idled this many seconds (flag ``--align-wait``; default
    2; at most 10 times that in all).
``METERING_CHECKPOINT_COMPRESSION``
    ``zlib`` (default) or ``none``: compression of the engine checkpoints written to the
    changelog (a busy account's state is a few MB of msgpack; zlib level 1 shrinks it
    about 4x for ~8 ms/MB).
``METERING_LOG_LEVEL``
    ``DEBUG``, ``INFO`` (default), ``WARNING`` or ``ERROR`` (flag ``--log-level``).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from metering.engine.engine import EngineConfig
from metering.kafka.topics import bootstrap_from_env, kafka_client_options

__all__ = ["Profile", "SettingsError", "WorkerSettings", "add_settings_arguments"]

Profile = Literal["embedded", "production"]
PROFILES: tuple[str, ...] = ("embedded", "production")
STORES: tuple[str, ...] = ("memory", "rocksdb")
DEFAULT_STORES: dict[str, str] = {"embedded": "memory://", "production": "rocksdb://"}
"""The state store when ``METERING_STATE_STORE`` / ``--state-store`` is not given."""
LOG_LEVELS: tuple[str, ...] = ("DEBUG", "INFO", "WARNING", "ERROR")


class SettingsError(ValueError):
    """An invalid setting (the message names the flag / variable)."""


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    """Everything the worker needs; build with :meth:`from_env` or :meth:`from_args`."""

    bootstrap: str = "127.0.0.1:9092"
    clickhouse_url: str | None = None
    db_dir: str | None = None
    accounts_file: str | None = None
    partitions: int = 4
    state_store: str = "memory://"
    data_dir: str = ".metering/worker-data"
    web_port: int = 6066
    web_host: str = "127.0.0.1"
    web_bind: str = "0.0.0.0"
    profile: Profile = "embedded"
    batch_size: int = 50_000
    batch_window_s: float = 1.0
    allowed_lateness_s: float = 900.0
    dedupe_horizon_s: float = 86_400.0
    max_call_duration_s: float = 14_400.0
    idle_check_s: float = 30.0
    idle_after_s: float = 60.0
    align_wait_s: float = 2.0
    checkpoint_compression: Literal["zlib", "none"] = "zlib"
    log_level: str = "INFO"
    #: aiokafka security keyword arguments (from the KAFKA_* variables)
    client_options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def embedded(self) -> bool:
        return self.profile == "embedded"

    def engine_config(self) -> EngineConfig:
        return EngineConfig(
            allowed_lateness_ms=round(self.allowed_lateness_s * 1000),
            dedupe_horizon_ms=round(self.dedupe_horizon_s * 1000),
            max_call_duration_ms=round(self.max_call_duration_s * 1000),
        )

    def validate(self) -> WorkerSettings:
        if (self.db_dir is None) == (self.clickhouse_url is None):
            raise SettingsError(
                "give exactly one of --db DIR / METERING_DB_DIR (embedded ClickHouse) and "
                "--clickhouse-url URL / CLICKHOUSE_URL"
            )
        if self.partitions < 1:
            raise SettingsError(f"--partitions must be >= 1, got {self.partitions}")
        if self.profile not in PROFILES:
            raise SettingsError(f"METERING_PROFILE must be one of {PROFILES}, got {self.profile!r}")
        scheme = self.state_store.split("://", 1)[0]
        if "://" not in self.state_store or scheme not in STORES:
            raise SettingsError(
                f"METERING_STATE_STORE must be memory:// or rocksdb://, got {self.state_store!r}"
            )
        if not 0 < self.web_port < 65536:
            raise SettingsError(f"--web-port must be a TCP port, got {self.web_port}")
        if self.batch_size < 1:
            raise SettingsError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.batch_window_s <= 0:
            raise SettingsError(f"--batch-window must be > 0, got {self.batch_window_s}")
        for name in ("allowed_lateness_s", "dedupe_horizon_s", "max_call_duration_s"):
            if getattr(self, name) < 0:
                raise SettingsError(f"{name} must be >= 0")
        if self.idle_check_s < 0 or self.idle_after_s < 0:
            raise SettingsError("--idle-check and --idle-after must be >= 0")
        if self.align_wait_s < 0:
            raise SettingsError("--align-wait must be >= 0")
        if self.checkpoint_compression not in ("zlib", "none"):
            raise SettingsError(
                "METERING_CHECKPOINT_COMPRESSION must be zlib or none, "
                f"got {self.checkpoint_compression!r}"
            )
        if self.log_level not in LOG_LEVELS:
            raise SettingsError(f"--log-level must be one of {LOG_LEVELS}, got {self.log_level!r}")
        return self

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> WorkerSettings:
        """Settings from the environment (see the module docstring), then ``overrides``
        (keyword = field name; None values are ignored)."""
        env = os.environ if env is None else env
        d = cls()

        def get(name: str) -> str | None:
            value = env.get(name)
            return value.strip() if value and value.strip() else None

        def num(name: str, default: float, kind: type = float) -> Any:
            text = get(name)
            if text is None:
                return default
            try:
                return kind(text)
            except ValueError:
                raise SettingsError(f"{name}={text!r} is not a valid {kind.__name__}") from None

        profile = (get("METERING_PROFILE") or d.profile).lower()
        if profile not in PROFILES:
            raise SettingsError(f"METERING_PROFILE must be one of {PROFILES}, got {profile!r}")
        store = get("METERING_STATE_STORE")
        try:
            client_options = kafka_client_options(env)
        except ValueError as exc:
            raise SettingsError(str(exc)) from exc
        settings = cls(
            bootstrap=bootstrap_from_env(env),
            clickhouse_url=get("CLICKHOUSE_URL"),
            db_dir=get("METERING_DB_DIR"),
            accounts_file=get("METERING_ACCOUNTS"),
            partitions=num("METERING_PARTITIONS", d.partitions, int),
            state_store=store or DEFAULT_STORES[profile],
            data_dir=get("METERING_DATA_DIR") or d.data_dir,
            web_port=num("METERING_WEB_PORT", d.web_port, int),
            web_host=get("METERING_WEB_HOST") or d.web_host,
            web_bind=get("METERING_WEB_BIND") or d.web_bind,
            profile=profile,  # type: ignore[arg-type]  # checked just above
            batch_size=num("METERING_BATCH_SIZE", d.batch_size, int),
            batch_window_s=num("METERING_BATCH_WINDOW", d.batch_window_s),
            allowed_lateness_s=num("METERING_ALLOWED_LATENESS", d.allowed_lateness_s),
            dedupe_horizon_s=num("METERING_DEDUPE_HORIZON", d.dedupe_horizon_s),
            max_call_duration_s=num("METERING_MAX_CALL_DURATION", d.max_call_duration_s),
            idle_check_s=num("METERING_IDLE_CHECK", d.idle_check_s),
            idle_after_s=num("METERING_IDLE_AFTER", d.idle_after_s),
            align_wait_s=num("METERING_ALIGN_WAIT", d.align_wait_s),
            checkpoint_compression=(
                get("METERING_CHECKPOINT_COMPRESSION") or d.checkpoint_compression
            ).lower(),  # type: ignore[arg-type]  # validated by validate()
            log_level=(get("METERING_LOG_LEVEL") or d.log_level).upper(),
            client_options=client_options,
        )
        given: dict[str, Any] = {k: v for k, v in overrides.items() if v is not None}
        # a storage flag replaces the other kind of storage given in the environment
        if "db_dir" in given:
            given["clickhouse_url"] = None
        elif "clickhouse_url" in given:
            given["db_dir"] = None
        if store is None and "state_store" not in given and "profile" in given:
            given["state_store"] = DEFAULT_STORES.get(given["profile"], settings.state_store)
        return replace(settings, **given)

    @classmethod
    def from_args(
        cls, args: argparse.Namespace, env: Mapping[str, str] | None = None
    ) -> WorkerSettings:
        """Settings from parsed :func:`add_settings_arguments` flags over the environment."""
        db = getattr(args, "db", None)
        return cls.from_env(
            env,
            bootstrap=args.bootstrap,
            db_dir=str(Path(db).expanduser()) if db else None,
            clickhouse_url=args.clickhouse_url,
            accounts_file=args.accounts,
            partitions=args.partitions,
            state_store=args.state_store,
            data_dir=args.data_dir,
            web_port=args.web_port,
            web_host=args.web_host,
            profile=args.profile,
            batch_size=args.batch_size,
            batch_window_s=args.batch_window,
            allowed_lateness_s=args.allowed_lateness,
            dedupe_horizon_s=args.dedupe_horizon,
            max_call_duration_s=args.max_call_duration,
            idle_check_s=args.idle_check,
            idle_after_s=args.idle_after,
            align_wait_s=args.align_wait,
            log_level=args.log_level.upper() if args.log_level else None,
        ).validate()


def add_settings_arguments(p: argparse.ArgumentParser) -> None:
    """The worker's flags; every one defaults to its environment variable (module doc)."""
    p.add_argument(
        "--bootstrap",
        metavar="HOST:PORT",
        help="Kafka bootstrap servers (default: $KAFKA_BOOTSTRAP_SERVERS or 127.0.0.1:9092)",
    )
    p.add_argument(
        "--accounts",
        metavar="ACCOUNTS.yaml",
        help="accounts YAML loaded at start (default: $METERING_ACCOUNTS)",
    )
    db = p.add_mutually_exclusive_group()
    db.add_argument(
        "--db",
        metavar="DIR",
        help="embedded ClickHouse (chDB) directory (default: $METERING_DB_DIR)",
    )
    db.add_argument(
        "--clickhouse-url", metavar="URL", help="ClickHouse server URL (default: $CLICKHOUSE_URL)"
    )
    p.add_argument(
        "--web-port",
        type=int,
        metavar="PORT",
        help="HTTP API port (default: $METERING_WEB_PORT or 6066)",
    )
    p.add_argument(
        "--web-host",
        metavar="HOST",
        help="host name other workers reach this one at (default: $METERING_WEB_HOST or 127.0.0.1)",
    )
    p.add_argument(
        "--partitions",
        type=int,
        metavar="N",
        help="partitions of the topics the worker creates (default: $METERING_PARTITIONS or 4)",
    )
    p.add_argument(
        "--profile",
        choices=PROFILES,
        help="embedded (development broker, default) or production (default: $METERING_PROFILE)",
    )
    p.add_argument(
        "--state-store",
        metavar="URL",
        help="memory:// or rocksdb:// (default: $METERING_STATE_STORE, else by profile)",
    )
    p.add_argument(
        "--data-dir",
        metavar="DIR",
        help="Faust data directory (default: $METERING_DATA_DIR or .metering/worker-data)",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        metavar="N",
        help="records per commit (default: $METERING_BATCH_SIZE or 50000)",
    )
    p.add_argument(
        "--batch-window",
        type=float,
        metavar="SECONDS",
        help="commit once the oldest uncommitted record is this old (default: "
        "$METERING_BATCH_WINDOW or 1.0)",
    )
    p.add_argument(
        "--idle-check",
        type=float,
        metavar="SECONDS",
        help="wall-clock closing of idle Interactions every SECONDS, 0 = off "
        "(default: $METERING_IDLE_CHECK or 30)",
    )
    p.add_argument(
        "--idle-after",
        type=float,
        metavar="SECONDS",
        help="only for accounts without events for SECONDS (default: $METERING_IDLE_AFTER or 60)",
    )
    p.add_argument(
        "--align-wait",
        type=float,
        metavar="SECONDS",
        help="longest wait for a lagging input topic before events of the other topics "
        "of its partition go ahead (default: $METERING_ALIGN_WAIT or 2)",
    )
    p.add_argument(
        "--log-level",
        choices=[lv.lower() for lv in LOG_LEVELS],
        help="log level (default: $METERING_LOG_LEVEL or info)",
    )
    g = p.add_argument_group("time rules (SPEC sections 2, 3 and 5)")
    g.add_argument(
        "--allowed-lateness",
        type=float,
        metavar="SECONDS",
        help="allowed lateness (default: $METERING_ALLOWED_LATENESS or 900)",
    )
    g.add_argument(
        "--dedupe-horizon",
        type=float,
        metavar="SECONDS",
        help="dedupe horizon (default: $METERING_DEDUPE_HORIZON or 86400)",
    )
    g.add_argument(
        "--max-call-duration",
        type=float,
        metavar="SECONDS",
        help="max call duration (default: $METERING_MAX_CALL_DURATION or 14400)",
    )
