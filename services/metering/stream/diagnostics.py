"""What a worker knows about each of its input partitions, for ``GET /partitions`` and
for the stall watch.

The report reads Faust's and aiokafka's bookkeeping (private attributes, read only and
each guarded: a missing one shows as None), because a partition that stops committing is
explained there: records fetched but not delivered, delivered but held by the aligner,
processed but not acked, acked but not contiguous with the committed offset, or a paused
partition.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from itertools import pairwise
from typing import TYPE_CHECKING, Any

from faust.types import TP

from metering.kafka.topics import INPUT_TOPICS

if TYPE_CHECKING:
    from metering.stream.app import StreamRuntime

__all__ = [
    "STALL_AFTER_S",
    "StallWatch",
    "commit_report",
    "commit_task_alive",
    "consumer_thread_tasks",
    "main_loop_tasks",
    "partition_report",
]

log = logging.getLogger(__name__)

STALL_AFTER_S = 60.0
"""A partition whose committed offset has not moved for this long while the broker holds
later records is reported as stalled (once per stall, in the log)."""


def _get(obj: Any, *path: str) -> Any:
    for name in path:
        if obj is None:
            return None
        obj = getattr(obj, name, None)
    return obj


def _aiokafka_state(consumer: Any, tp: TP) -> dict[str, Any]:
    """aiokafka's own view of ``tp``: fetch position and pause flag (None if unknown)."""
    try:
        aiok = consumer._thread._ensure_consumer()
        assignment = aiok._subscription.subscription.assignment
        state = assignment.state_value(tp)
    except Exception:
        return {"position": None, "paused": None}
    if state is None:
        return {"position": None, "paused": None}
    position = state.position if state.has_valid_position else None
    return {"position": position, "paused": bool(state.paused)}


def fetch_position(consumer: Any, tp: TP) -> int | None:
    """The next offset of ``tp`` aiokafka hands to Faust (None: unknown or not assigned);
    read from the main thread, as the reports do."""
    position: int | None = _aiokafka_state(consumer, tp)["position"]
    return position


def _future_state(fut: Any) -> str | None:
    if fut is None:
        return None
    try:
        return "done" if fut.done() else "pending"
    except Exception:
        return "unknown"


def commit_report(consumer: Any) -> dict[str, Any]:
    """The offset-commit path: Faust's in-flight commit (one at a time: later commits
    wait for it) and aiokafka's group coordinator (generation, member, coordinator node,
    commit lock)."""
    out: dict[str, Any] = {
        "faust_commit": _future_state(_get(consumer, "_commit_fut")),
        "faust_commit_task": commit_task_alive(consumer),
    }
    try:
        coordinator = consumer._thread._ensure_consumer()._coordinator
    except Exception:
        return out
    lock = getattr(coordinator, "_commit_lock", None)
    out.update(
        group_generation=getattr(coordinator, "generation", None),
        member_id=getattr(coordinator, "member_id", None),
        coordinator_id=getattr(coordinator, "coordinator_id", None),
        commit_lock_held=lock.locked() if lock is not None else None,
    )
    return out


def _next_commit(acked: list[int], committed: int | None) -> dict[str, Any]:
    """What Faust's next commit would take for one partition (``Consumer._new_offset``
    and ``_should_commit`` without their side effects): the first run of consecutive
    acked offsets, the offset it would commit, and whether that passes the committed
    one."""
    if not acked:
        return {"acked_head": [], "runs": 0, "would_commit": None}
    ordered = sorted(acked)
    first_run = 1
    while first_run < len(ordered) and ordered[first_run] == ordered[first_run - 1] + 1:
        first_run += 1
    runs = 1 + sum(1 for a, b in pairwise(ordered) if b != a + 1)
    offset = ordered[first_run - 1] + 1
    if committed and ordered[0] - committed > 1:
        would: int | None = None
    else:
        would = offset if committed is None or offset > committed else None
    return {"acked_head": ordered[:6], "runs": runs, "would_commit": would}


def consumer_thread_tasks(consumer: Any, limit: int = 40) -> list[str]:
    """One line per task of the consumer thread's event loop: its coroutine and where it
    waits (innermost frame). Read from another thread: best effort, for the stall log."""
    loop = _get(consumer, "_thread", "thread_loop")
    if loop is None:
        return []
    return _describe_tasks(loop, limit)


def main_loop_tasks(limit: int = 80) -> list[str]:
    """The same for the running (main) event loop's tasks."""
    return _describe_tasks(asyncio.get_running_loop(), limit)


def _await_chain(coro: Any, depth: int = 12) -> list[str]:
    """The coroutines ``coro`` awaits, outermost first (``cr_await`` / ``ag_await``),
    each as ``qualname:line``; a plain future ends the chain."""
    chain: list[str] = []
    while coro is not None and len(chain) < depth:
        name = getattr(coro, "__qualname__", None)
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "ag_frame", None)
        if name is None:
            chain.append(type(coro).__name__)
            break
        chain.append(f"{name}:{frame.f_lineno}" if frame is not None else name)
        coro = getattr(coro, "cr_await", None) or getattr(coro, "ag_await", None)
    return chain


def _describe_tasks(loop: asyncio.AbstractEventLoop, limit: int) -> list[str]:
    lines: list[str] = []
    try:
        tasks = list(asyncio.all_tasks(loop))
    except Exception as exc:  # the set changed while iterating: try again next time
        return [f"(tasks unavailable: {exc})"]
    for task in tasks[:limit]:
        try:
            lines.append(" > ".join(_await_chain(task.get_coro())))
        except Exception as exc:
            lines.append(f"(task unavailable: {exc})")
    return sorted(lines)


def commit_task_alive(consumer: Any) -> bool | None:
    """Whether Faust's periodic offset-commit task (``Consumer._commit_handler``) still
    runs on the main loop (None: cannot tell)."""
    futures = _get(consumer, "_futures")
    if futures is None:
        return None
    for fut in list(futures):
        get_coro = getattr(fut, "get_coro", None)
        if get_coro is not None and any(
            "_commit_handler" in step for step in _await_chain(get_coro())
        ):
            return True
    return False


def partition_report(rt: StreamRuntime) -> dict[str, Any]:
    """Per owned input topic-partition: the group's committed offset (Faust's copy), the
    broker's high watermark, Faust's read offset, aiokafka's fetch position and pause
    flag, the delivery guard's frontier, records held by the aligner, acked records
    waiting for a commit (count and lowest offset), Faust's offset gaps, and unacked
    messages; plus the worker's step state and the guard's counts."""
    app = rt.app
    consumer = _get(app, "_consumer") or _get(app, "consumer")
    committed = _get(consumer, "_committed_offset") or {}
    read = _get(consumer, "_read_offset") or {}
    acked = _get(consumer, "_acked") or {}
    gaps = _get(consumer, "_gap") or {}
    paused = _get(consumer, "_paused_partitions") or set()
    unacked: dict[TP, int] = {}
    for message in list(_get(consumer, "_unacked_messages") or ()):
        tp = getattr(message, "tp", None)
        if tp is not None:
            unacked[tp] = unacked.get(tp, 0) + 1
    try:
        assignment = set(consumer.assignment()) if consumer is not None else set()
    except Exception:
        assignment = set()
    aligner = rt.pipeline.aligner
    partitions: list[dict[str, Any]] = []
    for tp in sorted(tp for tp in assignment if tp.topic in INPUT_TOPICS):
        acked_tp = list(acked.get(tp, ()))
        committed_tp = committed.get(tp)
        entry: dict[str, Any] = {
            "topic": tp.topic,
            "partition": tp.partition,
            "committed": committed_tp,
            "highwater": rt.highwater(tp.topic, tp.partition),
            "read": read.get(tp),
            "received": aligner.next_offset(tp.topic, tp.partition),
            "frontier": rt.deliveries.frontier(tp),
            "held": aligner.held_for(tp.topic, tp.partition),
            "blocked_s": aligner.blocked_for(tp.partition),
            "acked_waiting": len(acked_tp),
            "acked_lowest": min(acked_tp) if acked_tp else None,
            "gaps": len(gaps.get(tp, ())),
            "unacked": unacked.get(tp, 0),
            "faust_paused": tp in paused,
        }
        entry.update(_next_commit(acked_tp, committed_tp))
        entry.update(_aiokafka_state(consumer, tp))
        partitions.append(entry)
    uncommitted = rt.uncommitted_records
    phase, since = rt.phase
    return {
        "generation": rt.generation,
        "consumer_generation": _get(app, "consumer_generation_id"),
        "consuming": rt.consuming,
        "step_running": rt.lock.locked(),
        "phase": phase,
        "phase_s": round(time.monotonic() - since, 3),
        "backlog": rt.pipeline.backlog,
        "uncommitted": uncommitted,
        "flow_active": _get(consumer, "flow_active"),
        "stale_acks_refused": rt.acks.refused,
        "redelivered": rt.deliveries.redelivered,
        "rewound": rt.deliveries.rewound,
        "heals": rt.deliveries.heals,
        "holes": rt.deliveries.holes,
        "commit": commit_report(consumer),
        "partitions": partitions,
    }


class StallWatch:
    """Logs a warning, with :func:`partition_report`'s entry, for each input partition
    whose committed offset has not moved for ``after_s`` while its high watermark is
    beyond it (once per stall; again after it moved)."""

    def __init__(
        self,
        after_s: float = STALL_AFTER_S,
        monotonic: Callable[[], float] = time.monotonic,
        tasks: Callable[[], list[str]] | None = None,
    ) -> None:
        self.after_s = after_s
        self._tasks = tasks
        self._monotonic = monotonic
        self._since: dict[tuple[str, int], tuple[int | None, float]] = {}
        self._reported: set[tuple[str, int]] = set()

    def check(self, report: dict[str, Any]) -> list[dict[str, Any]]:
        """The partitions newly found stalled in ``report`` (each also logged)."""
        now = self._monotonic()
        stalled: list[dict[str, Any]] = []
        seen: set[tuple[str, int]] = set()
        for entry in report["partitions"]:
            key = (entry["topic"], entry["partition"])
            seen.add(key)
            committed, hw = entry["committed"], entry["highwater"]
            last = self._since.get(key)
            if last is None or last[0] != committed:
                self._since[key] = (committed, now)
                self._reported.discard(key)
                continue
            behind = hw is not None and hw > (committed or 0)
            if not behind:
                self._since[key] = (committed, now)
                continue
            if now - last[1] >= self.after_s and key not in self._reported:
                self._reported.add(key)
                stalled.append(entry)
        self._forget(set(self._since) - seen)
        if stalled:
            context = {k: v for k, v in report.items() if k != "partitions"}
            log.warning(
                "no commit for %.0f s on %d input partition(s) with records to read: %s; "
                "worker: %s",
                self.after_s,
                len(stalled),
                stalled,
                context,
            )
            if self._tasks is not None:
                log.warning("event loop tasks:\n  %s", "\n  ".join(self._tasks()))
        return stalled

    def _forget(self, keys: Iterable[tuple[str, int]]) -> None:
        for key in keys:
            self._since.pop(key, None)
            self._reported.discard(key)
