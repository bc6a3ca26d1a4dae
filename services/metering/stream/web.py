"""HTTP API of the streaming worker (Faust web views on the worker's web port).

``GET /health``
    200 once the worker has joined its group and restored its state at least once (it is
    consuming), else 503. JSON ``{"status", "consuming", "partitions"}``.
``GET /ready``
    200 only while consuming (not in the middle of a rebalance) *and* ClickHouse takes
    writes; else 503 with ``{"status": "not ready", "reason": ...}``.
``GET /metrics``
    Prometheus text format (``text/plain; version=0.0.4``); see
    :mod:`metering.stream.metrics`.
``GET /statements/{account}/{cycle}``
    The SPEC section 9 statement read from ClickHouse (any worker can answer: the
    statement is built from stored facts). 400 for a malformed cycle, 404 (JSON error)
    when the account has no usage in the cycle, 503 while ClickHouse is not connected.
``GET /concurrency``
    Live concurrency of the accounts this worker owns: calls occupying ports now (at the
    account's watermark: start <= watermark < effective end), per account and capacity
    group. ``?account=ID`` narrows it to one account (404 when not owned here).
``GET /fairuse/{account}``
    Month-to-date fair-use counters and evaluation per (rule, scope) of the account's
    current cycle (the cycle of its watermark; ``?cycle=YYYY-MM`` for another one still
    in memory). Served by the worker that owns the account: another worker forwards the
    request there (Faust's router over the state table's partitions). 404 when no worker
    holds the account.
``GET /partitions``
    For operators: per assigned input partition, the committed offset, high watermark,
    read and fetch positions, records held by the aligner, acked records waiting for a
    commit, and pause flags (:func:`~metering.stream.diagnostics.partition_report`); the
    first place to look when ``MeteringWorkerStalled`` fires. ``?tasks=1`` adds the
    tasks of the Kafka consumer's thread and where each one waits.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from faust.exceptions import SameNode
from faust.web import Request, Response, View
from faust.web.exceptions import ServiceUnavailable

from metering.storage.reader import read_statement
from metering.stream.diagnostics import (
    consumer_thread_tasks,
    main_loop_tasks,
    partition_report,
)
from metering.stream.metrics import CONTENT_TYPE

if TYPE_CHECKING:
    import faust

    from metering.stream.app import StreamRuntime

__all__ = ["CYCLE_RE", "register_views"]

CYCLE_RE = re.compile(r"^[0-9]{4}-(0[1-9]|1[0-2])$")


def register_views(app: faust.App, rt: StreamRuntime) -> None:
    """Add the worker's views to ``app`` (called by :func:`~metering.stream.app.create_app`)."""
    from metering.stream.app import STATE_TABLE

    def status(extra: dict[str, Any] | None = None) -> dict[str, Any]:
        return {
            "consuming": rt.consuming,
            "partitions": sorted(rt.owned),
            "accounts": len(rt.pipeline.loaded),
            **(extra or {}),
        }

    @app.page("/health")
    class Health(View):
        async def get(self, request: Request) -> Response:
            if rt.ever_consumed:
                return self.json(status({"status": "ok"}))
            return self.json(status({"status": "starting"}), status=503)

    @app.page("/ready")
    class Ready(View):
        async def get(self, request: Request) -> Response:
            ok, reason = rt.readiness()
            if ok:
                return self.json(status({"status": "ready"}))
            return self.json(status({"status": "not ready", "reason": reason}), status=503)

    @app.page("/metrics")
    class Metrics(View):
        async def get(self, request: Request) -> Response:
            return self.bytes(rt.metrics.render(), headers={"Content-Type": CONTENT_TYPE})

    @app.page("/statements/{account}/{cycle}")
    class Statement(View):
        async def get(self, request: Request, account: str, cycle: str) -> Response:
            if not CYCLE_RE.match(cycle):
                return self.error(400, f"cycle must look like YYYY-MM, got {cycle!r}")
            if rt.client is None:
                return self.error(503, rt.sink_error or "ClickHouse is not connected yet")
            statement = await rt.run_db(read_statement, rt.client, account, cycle)
            if statement is None:
                return self.error(
                    404,
                    f"no usage for account {account!r} in cycle {cycle}",
                    account=account,
                    cycle=cycle,
                )
            return self.json(statement)

    @app.page("/concurrency")
    class Concurrency(View):
        async def get(self, request: Request) -> Response:
            wanted = request.query.get("account")
            accounts = sorted(rt.pipeline.loaded)
            if wanted is not None:
                if wanted not in rt.pipeline.loaded:
                    return self.error(
                        404,
                        f"account {wanted!r} is not owned by this worker",
                        partitions=sorted(rt.owned),
                    )
                accounts = [wanted]
            return self.json(
                {
                    "partitions": sorted(rt.owned),
                    "accounts": {a: rt.pipeline.live_concurrency(a) for a in accounts},
                }
            )

    @app.page("/fairuse/{account}")
    class FairUse(View):
        async def get(self, request: Request, account: str) -> Response:
            cycle = request.query.get("cycle")
            if cycle is not None and not CYCLE_RE.match(cycle):
                return self.error(400, f"cycle must look like YYYY-MM, got {cycle!r}")
            if account in rt.pipeline.loaded:
                return self.json(rt.pipeline.fairuse(account, cycle))
            # not here: ask the worker that owns the account's partition (Faust's router
            # proxies the request there; SameNode when that is this worker)
            try:
                return await app.router.route_req(STATE_TABLE, account.encode(), self.web, request)
            except (SameNode, ServiceUnavailable, KeyError, OSError):
                pass
            return self.error(
                404, f"account {account!r} is not held by any worker", account=account
            )

    @app.page("/partitions")
    class Partitions(View):
        async def get(self, request: Request) -> Response:
            report = partition_report(rt)
            if request.query.get("tasks") == "1":
                report["consumer_tasks"] = consumer_thread_tasks(rt.app.consumer)
                report["main_tasks"] = main_loop_tasks()
            return self.json(report)
