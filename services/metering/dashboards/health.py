"""Service health (Prometheus): throughput, consumer position, dead letters by reason, the
delivery guard, sink latency and retries, worker memory.

Metric names are those of :mod:`metering.stream.metrics` as exposed by
``prometheus_client`` (counters end in ``_total``, histograms in ``_bucket``/``_sum``/
``_count``), scraped by the ``metering-worker`` job of ``deploy/prometheus/prometheus.yml``.
Worker memory uses the standard ``process_resident_memory_bytes``, which the worker
exposes once its registry includes a ``prometheus_client.ProcessCollector``.
"""

from __future__ import annotations

from metering.dashboards.builder import (
    PROMETHEUS,
    Dashboard,
    Panel,
    PromTarget,
    QueryVariable,
)

UID = "metering-health"

SEL = 'instance=~"$instance"'
RATE = "$__rate_interval"

VARIABLES = (
    QueryVariable(
        "instance",
        "Worker",
        "label_values(metering_ready, instance)",
        datasource=PROMETHEUS,
        all_value=".*",
        refresh=2,
    ),
)


def _quantile(q: float, metric: str, by: str = "") -> str:
    group = f"le, {by}" if by else "le"
    return f"histogram_quantile({q}, sum by ({group}) (rate({metric}_bucket{{{SEL}}}[{RATE}])))"


PANELS = (
    Panel(
        "Records consumed per second",
        "timeseries",
        (
            PromTarget(
                f"sum by (topic) (rate(metering_records_consumed_total{{{SEL}}}[{RATE}]))",
                "{{topic}}",
            ),
        ),
        description="Input records fully handled (flushed, published, checkpointed).",
        unit="ops",
    ),
    Panel(
        "Events by verdict",
        "timeseries",
        (
            PromTarget(
                f"sum by (verdict) (rate(metering_events_total{{{SEL}}}[{RATE}]))", "{{verdict}}"
            ),
        ),
        description="Decoded input events: accepted, duplicate (a repeated source/id), rejected.",
        unit="ops",
        stacked=True,
    ),
    Panel(
        "Consumer position",
        "timeseries",
        (
            PromTarget(
                f"max by (topic, partition) (metering_consumer_position{{{SEL}}})",
                "{{topic}}/{{partition}}",
            ),
        ),
        description="Next offset to process per input partition. Compare with the topic's "
        "end offsets (e.g. a Kafka exporter) for the lag.",
        unit="none",
    ),
    Panel(
        "Consumer progress (offsets per second)",
        "timeseries",
        (
            PromTarget(
                f"sum by (topic) (rate(metering_consumer_position{{{SEL}}}[{RATE}]))",
                "{{topic}}",
            ),
        ),
        description="How fast the committed position moves; zero while records arrive means "
        "the worker is stuck.",
        unit="ops",
    ),
    Panel(
        "Dead letters by reason",
        "timeseries",
        (
            PromTarget(
                f"sum by (reason) (increase(metering_dead_letters_total{{{SEL}}}[{RATE}]))",
                "{{reason}}",
            ),
        ),
        description="Records sent to metering.deadletter: invalid_json, schema, unknown_type, "
        "wrong_topic, orphan, duplicate_call.",
        bars=True,
        stacked=True,
    ),
    Panel(
        "Delivery guard",
        "timeseries",
        (
            PromTarget(
                f"sum by (topic) (increase(metering_partition_heals_total{{{SEL}}}[{RATE}]))",
                "read again {{topic}}",
            ),
            PromTarget(
                f"sum by (topic) (increase(metering_offset_holes_total{{{SEL}}}[{RATE}]))",
                "log holes {{topic}}",
            ),
            PromTarget(
                f"sum by (topic) (increase(metering_records_redelivered_total{{{SEL}}}[{RATE}]))",
                "copies {{topic}}",
            ),
        ),
        description="Seeks back to a record that did not arrive while later ones did (alert "
        "MeteringPartitionReadAgain), offsets the broker's log does not have (compaction, "
        "transaction markers; passed), and records delivered twice in one rebalance "
        "generation (handled once).",
        bars=True,
    ),
    Panel(
        "Sink flush latency",
        "timeseries",
        (
            PromTarget(_quantile(0.5, "metering_sink_flush_seconds"), "p50"),
            PromTarget(_quantile(0.99, "metering_sink_flush_seconds"), "p99"),
            PromTarget(_quantile(0.99, "metering_batch_step_seconds", "step"), "p99 {{step}}"),
        ),
        description="ClickHouse flush time per batch, and the p99 of every batch step.",
        unit="s",
    ),
    Panel(
        "Sink retries and health",
        "timeseries",
        (
            PromTarget(f"sum(increase(metering_sink_retries_total{{{SEL}}}[{RATE}]))", "retries"),
            PromTarget(f"min(metering_sink_up{{{SEL}}})", "sink up"),
            PromTarget(f"min(metering_ready{{{SEL}}})", "ready"),
        ),
        description="Failed ClickHouse flushes that were retried; sink up / ready are 1 "
        "while healthy.",
    ),
    Panel(
        "Rows written to ClickHouse",
        "timeseries",
        (
            PromTarget(
                f"sum by (table) (rate(metering_sink_rows_total{{{SEL}}}[{RATE}]))", "{{table}}"
            ),
        ),
        unit="rowsps",
        stacked=True,
    ),
    Panel(
        "Worker memory",
        "timeseries",
        (
            PromTarget(f"process_resident_memory_bytes{{{SEL}}}", "{{instance}} RSS"),
            PromTarget(f"sum(metering_accounts_owned{{{SEL}}})", "accounts owned"),
        ),
        description="Resident memory of each worker process (engine state grows with the "
        "accounts a worker owns).",
        unit="bytes",
        overrides=(
            {
                "matcher": {"id": "byName", "options": "accounts owned"},
                "properties": [
                    {"id": "unit", "value": "none"},
                    {"id": "custom.axisPlacement", "value": "right"},
                ],
            },
        ),
    ),
    Panel(
        "Fair-use and capacity events",
        "timeseries",
        (
            PromTarget(
                f"sum by (type) (increase(metering_fairuse_events_total{{{SEL}}}[{RATE}]))",
                "{{type}}",
            ),
            PromTarget(
                f'sum(increase(metering_outputs_published_total{{{SEL}, type="capacity.exceeded"}}[{RATE}]))',
                "capacity.exceeded",
            ),
        ),
        bars=True,
    ),
)


def build() -> Dashboard:
    return Dashboard(
        uid=UID,
        title="Metering / Service health",
        description="The streaming worker: throughput, consumer position, dead letters, sink "
        "latency and retries, memory.",
        tags=("metering", "health"),
        variables=VARIABLES,
        panels=PANELS,
        time_from="now-6h",
        refresh="30s",
    )
