"""Prometheus metrics of the streaming worker (served at ``GET /metrics``).

Everything lives in the worker's own :class:`~prometheus_client.CollectorRegistry` (so
several workers in one test process, or a library user's registry, never clash).

Label cardinality is bounded on purpose. The labels and why each is bounded:

* ``topic``: the 4 input topics, the 4 output topics and the state changelog (fixed).
* ``type``: CloudEvent types of SPEC sections 2 and 7 (fixed set; only *validated*
  events are labelled with their type, so garbage input cannot invent new values).
* ``verdict``: ``accepted``, ``duplicate``, ``rejected``. ``reason``: the six dead-letter
  reason codes. ``table``: the ClickHouse tables the sink writes; ``phase``: those tables
  plus the sink's ``dirty`` and ``usage`` steps. ``rule``: the nine
  fair-use rules. ``step``: the fixed batch steps. ``close_reason``: ``deadline``,
  ``wall_clock``, ``merged``.
* ``partition``: bounded by the configured partition count.
* ``account``: bounded by the number of customers, and only on a few gauges that are
  removed when the worker stops owning the account.
* ``trunk_group``: capacity groups of one account, capped at
  :data:`MAX_GROUPS_PER_ACCOUNT` series per account (the busiest ones) because unknown
  trunk group ids can arrive in events.

Never used as labels: call ids, event ids, message ids, user ids, interaction ids (each is
unbounded and would make one series per event).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)

__all__ = ["CONTENT_TYPE", "MAX_GROUPS_PER_ACCOUNT", "WorkerMetrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""The Prometheus text exposition format 0.0.4."""

MAX_GROUPS_PER_ACCOUNT = 50

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_SIZE_BUCKETS = (1, 5, 10, 50, 100, 250, 500, 1000, 2000, 5000, 10_000, 50_000)
_BYTES_BUCKETS = (1e3, 1e4, 1e5, 3e5, 1e6, 3e6, 1e7, 3e7)


class WorkerMetrics:
    """The worker's metrics (see the module docstring for the label policy)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        self.records_consumed = Counter(
            "metering_records_consumed",
            "Input records fully handled (flushed, published, checkpointed; acked next)",
            ["topic"],
            registry=r,
        )
        self.events = Counter(
            "metering_events",
            "Decoded input events by engine verdict",
            ["topic", "type", "verdict"],
            registry=r,
        )
        self.duplicates = Counter(
            "metering_duplicates",
            "Input events ignored as repeats of a (source, id) pair",
            ["topic"],
            registry=r,
        )
        self.skipped = Counter(
            "metering_records_skipped",
            "Re-delivered records skipped because their account's checkpoint already has "
            "them (below its stored offset)",
            ["topic"],
            registry=r,
        )
        self.backlog = Gauge(
            "metering_backlog_records",
            "Records admitted but not handled yet (waiting in the aligner or for a step)",
            registry=r,
        )
        self.align_timeouts = Gauge(
            "metering_align_timeouts",
            "Times a partition's events went ahead without a lagging input topic "
            "(METERING_ALIGN_WAIT ran out)",
            registry=r,
        )
        self.dead_letters = Counter(
            "metering_dead_letters",
            "Records and events dead-lettered, by reason code",
            ["reason"],
            registry=r,
        )
        self.rerouted = Counter(
            "metering_records_rerouted",
            "Records found on a partition other than their account's and re-produced "
            "keyed by account",
            ["topic"],
            registry=r,
        )
        self.batch_records = Histogram(
            "metering_batch_records", "Records per batch", buckets=_SIZE_BUCKETS, registry=r
        )
        self.step_seconds = Histogram(
            "metering_batch_step_seconds",
            "Wall time of each step of a batch (decode_process, drain, flush, publish, checkpoint)",
            ["step"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.engine_seconds = Histogram(
            "metering_engine_seconds",
            "Engine time per batch (process + drain)",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.sink_seconds = Histogram(
            "metering_sink_flush_seconds",
            "ClickHouse flush time per batch (successful attempts)",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.sink_phase_seconds = Counter(
            "metering_sink_phase_seconds",
            "ClickHouse flush time by phase (dirty-bucket bookkeeping, each fact table, usage "
            "aggregates), from the sink's FlushStats",
            ["phase"],
            registry=r,
        )
        self.sink_rows = Counter(
            "metering_sink_rows", "Rows written to ClickHouse by table", ["table"], registry=r
        )
        self.sink_retries = Counter(
            "metering_sink_retries", "Failed ClickHouse flushes that were retried", registry=r
        )
        self.sink_up = Gauge(
            "metering_sink_up", "1 while the last ClickHouse flush succeeded", registry=r
        )
        self.ready = Gauge(
            "metering_ready", "1 while consuming with a healthy sink (GET /ready)", registry=r
        )
        self.outputs = Counter(
            "metering_outputs_published",
            "Output events delivered to Kafka",
            ["topic", "type"],
            registry=r,
        )
        self.checkpoint_bytes = Histogram(
            "metering_checkpoint_bytes",
            "Size of one account checkpoint (after compression)",
            buckets=_BYTES_BUCKETS,
            registry=r,
        )
        self.interactions_opened = Counter(
            "metering_interactions_opened", "interaction.opened events emitted", registry=r
        )
        self.interactions_closed = Counter(
            "metering_interactions_closed",
            "interaction.closed events emitted",
            ["close_reason"],
            registry=r,
        )
        self.account_concurrency = Gauge(
            "metering_concurrency_current",
            "Calls occupying ports at the account's watermark",
            ["account"],
            registry=r,
        )
        self.group_concurrency = Gauge(
            "metering_trunk_group_concurrency_current",
            "Calls occupying ports of a capacity group at the account's watermark",
            ["account", "trunk_group"],
            registry=r,
        )
        self.fairuse_value = Gauge(
            "metering_fairuse_value",
            "Month-to-date value of a fair-use rule in the account's current cycle (the "
            "worst scope for user and trunk-group rules)",
            ["account", "rule"],
            registry=r,
        )
        self.fairuse_failing = Gauge(
            "metering_fairuse_failing_scopes",
            "Scopes of a rule currently in breach (account's current cycle)",
            ["account", "rule"],
            registry=r,
        )
        self.fairuse_events = Counter(
            "metering_fairuse_events",
            "fairuse.warning / breach / cleared events emitted",
            ["rule", "type"],
            registry=r,
        )
        self.consumer_position = Gauge(
            "metering_consumer_position",
            "Next offset to process per input partition (last handled offset + 1)",
            ["topic", "partition"],
            registry=r,
        )
        self.accounts_owned = Gauge(
            "metering_accounts_owned", "Accounts whose state this worker holds", registry=r
        )
        self.rebalances = Counter(
            "metering_rebalances", "Partition assignments received", registry=r
        )
        self.redelivered = Counter(
            "metering_records_redelivered",
            "Input records the consumer delivered twice in one rebalance generation (handled once)",
            ["topic"],
            registry=r,
        )
        self.heals = Counter(
            "metering_partition_heals",
            "Input partitions read again from their next expected offset because records "
            "past it arrived without it, or the consumer's position stayed past it, and the "
            "broker has it (the consumer lost it on the way), or the broker did not answer "
            "whether it has it",
            ["topic"],
            registry=r,
        )
        self.offset_holes = Counter(
            "metering_offset_holes",
            "Input offsets the broker's log does not have (compaction, transaction "
            "markers), found by asking it after records past them arrived; the worker "
            "passes them without reading again",
            ["topic"],
            registry=r,
        )
        self.out_of_order = Counter(
            "metering_records_out_of_order",
            "Input records received below an offset already received from their partition "
            "in this assignment (a consumer seek back); checkpoints then keep their "
            "offset floor below such records until they are applied",
            ["topic"],
            registry=r,
        )
        self.offset_commit_failures = Counter(
            "metering_offset_commit_failures",
            "Offset commits that failed or were cancelled (the next step retries)",
            registry=r,
        )
        self.stale_acks = Counter(
            "metering_stale_acks_refused",
            "Acks of input records Faust skipped (fetched before a rebalance) kept from "
            "the consumer, so no commit covers them before they are applied",
            registry=r,
        )
        # process_resident_memory_bytes and friends (worker memory on the dashboards)
        ProcessCollector(registry=r)
        self.input_end_offset = Gauge(
            "metering_input_end_offset",
            "Log end offset (high-water mark) of each assigned input partition; with "
            "metering_consumer_position it shows a worker falling behind or stalling",
            ["topic", "partition"],
            registry=r,
        )
        self.calls_blocked = Counter(
            "metering_calls_blocked",
            "Accepted calls the platform blocked (all ports in use)",
            registry=r,
        )
        self.fairuse_warning = Gauge(
            "metering_fairuse_warning_scopes",
            "Scopes of a rule at its warning step (80% of a max threshold) this cycle",
            ["account", "rule"],
            registry=r,
        )
        self._groups: dict[str, set[str]] = {}
        self._fairuse_rules: dict[str, set[str]] = {}

    def render(self) -> bytes:
        return generate_latest(self.registry)

    # ------------------------------------------------------------------ per-account gauges
    def set_concurrency(self, account: str, total: int, groups: Mapping[str, int]) -> None:
        self.account_concurrency.labels(account).set(total)
        top = sorted(groups.items(), key=lambda kv: (-kv[1], kv[0]))[:MAX_GROUPS_PER_ACCOUNT]
        keep = {g for g, _ in top}
        for g in self._groups.get(account, set()) - keep:
            self.group_concurrency.remove(account, g)
        for g, n in top:
            self.group_concurrency.labels(account, g).set(n)
        self._groups[account] = keep

    def set_fairuse(
        self,
        account: str,
        values: Mapping[str, float],
        failing: Mapping[str, int],
        warning: Mapping[str, int] | None = None,
    ) -> None:
        for rule in self._fairuse_rules.get(account, set()) - values.keys():
            self.fairuse_value.remove(account, rule)
            self.fairuse_failing.remove(account, rule)
            self.fairuse_warning.remove(account, rule)
        for rule, v in values.items():
            self.fairuse_value.labels(account, rule).set(v)
            self.fairuse_failing.labels(account, rule).set(failing.get(rule, 0))
            self.fairuse_warning.labels(account, rule).set((warning or {}).get(rule, 0))
        self._fairuse_rules[account] = set(values)

    def forget_accounts(self, accounts: Iterable[str]) -> None:
        """Drop the per-account series of accounts this worker no longer owns."""
        for account in accounts:
            for g in self._groups.pop(account, set()):
                self.group_concurrency.remove(account, g)
            for rule in self._fairuse_rules.pop(account, set()):
                self.fairuse_value.remove(account, rule)
                self.fairuse_failing.remove(account, rule)
                self.fairuse_warning.remove(account, rule)
            with contextlib.suppress(KeyError):
                self.account_concurrency.remove(account)
