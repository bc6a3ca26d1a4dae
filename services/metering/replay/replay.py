"""Offline replay: a JSON-lines event log through the engine into ClickHouse.

The log holds one CloudEvent per line in arrival order (plain or ``.gz``). Each line is
decoded, handed to the engine, and every ``batch_size`` lines the engine is drained and
the sink flushed. Everything written is keyed, so replaying the same log again into the
same database rewrites the same rows and doubles nothing.

Commit order per batch: engine drain -> sink flush (facts; in ``replay_into`` the usage
tiers are derived once at the end). Flushes run on a background thread (``SinkThread``)
while the engine works on the next batch, in order; a failed flush stops the replay with
its error. Replay keeps no offsets: a failed replay is simply run again.
"""

from __future__ import annotations

import gzip
import queue
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol, cast

from metering.engine.accounts import AccountConfig
from metering.engine.engine import Batch, Engine, EngineConfig
from metering.events.decode import Decoder, Rejection


@dataclass(slots=True)
class ReplaySummary:
    lines: int = 0
    accepted: int = 0
    duplicates: int = 0
    dead_letters: Counter[str] = field(default_factory=Counter)
    facts: int = 0
    outputs: int = 0
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        return self.lines / self.seconds if self.seconds else 0.0

    def render(self) -> str:
        dl = sum(self.dead_letters.values())
        reasons = ", ".join(f"{r} {n:,}" for r, n in sorted(self.dead_letters.items()))
        return (
            f"events read     {self.lines:>12,}\n"
            f"accepted        {self.accepted:>12,}\n"
            f"duplicates      {self.duplicates:>12,}\n"
            f"dead-lettered   {dl:>12,}" + (f"  ({reasons})" if reasons else "") + "\n"
            f"facts written   {self.facts:>12,}\n"
            f"output events   {self.outputs:>12,}\n"
            f"elapsed         {self.seconds:>11.1f}s  ({self.rate:,.0f} events/s)"
        )


class Sink(Protocol):
    """What replay needs from a sink (``metering.storage.sink.ClickHouseSink`` has it)."""

    def add(self, item: Any) -> None: ...
    def add_many(self, items: Iterable[Any]) -> None: ...
    def add_dead_letter(
        self,
        rejection: Rejection,
        topic: str | None = None,
        partition: int | None = None,
        offset: int | None = None,
    ) -> None: ...
    def flush(self) -> Any: ...


def open_log(path: str | Path) -> IO[bytes]:
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"event log not found: {p}")
    return cast(IO[bytes], gzip.open(p, "rb") if p.suffix == ".gz" else p.open("rb"))


def iter_lines(stream: IO[bytes]) -> Iterator[bytes]:
    for line in stream:
        line = line.rstrip(b"\r\n")
        if line:
            yield line


def replay(
    path: str | Path,
    accounts: dict[str, AccountConfig],
    sink: Sink | None,
    *,
    config: EngineConfig | None = None,
    batch_size: int = 50_000,
    progress: Callable[[ReplaySummary], None] | None = None,
    engine: Engine | None = None,
) -> tuple[ReplaySummary, Engine]:
    """Replay one log; ``sink`` None keeps results in memory only (tests, benchmarks)."""
    engine = engine or Engine(config, accounts)
    for account, cfg in accounts.items():
        engine.configure(account, cfg)
    decoder = Decoder()
    summary = ReplaySummary()
    started = time.perf_counter()
    process = engine.process
    decode = decoder.decode
    counts = summary.dead_letters
    writer = SinkThread(sink, str(path)) if sink is not None else None
    dead: list[tuple[Rejection, int]] = []
    try:
        with open_log(path) as stream:
            n = 0
            for line in iter_lines(stream):
                n += 1
                ev = decode(line)
                if isinstance(ev, Rejection):
                    counts[ev.reason] += 1
                    dead.append((ev, n))
                    continue
                verdict = process(ev, line)
                if verdict == "accepted":
                    summary.accepted += 1
                elif verdict == "duplicate":
                    summary.duplicates += 1
                if n % batch_size == 0:
                    batch = engine.drain()
                    _count(batch, summary)
                    if writer is not None:
                        writer.submit(batch, dead)
                    dead = []
                    summary.lines = n
                    summary.seconds = time.perf_counter() - started
                    if progress is not None:
                        progress(summary)
            summary.lines = n
        batch = engine.drain()
        _count(batch, summary)
        if writer is not None:
            writer.submit(batch, dead)
    finally:
        if writer is not None:
            writer.close()
    summary.seconds = time.perf_counter() - started
    if progress is not None:
        progress(summary)
    return summary, engine


def replay_into(
    client: Any,
    path: str | Path,
    accounts: dict[str, AccountConfig],
    *,
    config: EngineConfig | None = None,
    batch_size: int = 50_000,
    progress: Callable[[ReplaySummary], None] | None = None,
) -> ReplaySummary:
    """Replay into ClickHouse: facts per batch, usage tiers rebuilt once at the end.

    Offline, the usage aggregates are derived once from the complete fact tables rather
    than after every flush (same result, a fraction of the work).
    """
    from metering.storage.sink import ClickHouseSink, rebuild_usage

    sink = ClickHouseSink(client, aggregate=False)
    summary, engine = replay(
        path, accounts, sink, config=config, batch_size=batch_size, progress=progress
    )
    started = time.perf_counter()
    rebuild_usage(client, engine.accounts())
    summary.seconds += time.perf_counter() - started
    return summary


def _count(batch: Batch, summary: ReplaySummary) -> None:
    for rej in batch.rejections:
        summary.dead_letters[rej.reason] += 1
    summary.accepted -= batch.retracted
    summary.facts += len(batch.facts)
    summary.outputs += len(batch.outputs)


def _write(sink: Sink, batch: Batch, dead: list[tuple[Rejection, int]], source: str) -> None:
    for rej, line_no in dead:
        sink.add_dead_letter(rej, topic=source, partition=0, offset=line_no)
    for rej in batch.rejections:
        sink.add_dead_letter(rej)
    sink.add_many(batch.facts)
    sink.add_many(batch.outputs)
    sink.flush()


class SinkThread:
    """Writes batches to the sink on a background thread, in order, while the engine goes
    on with the next batch (chDB and the network release the GIL while they work).

    At most ``depth`` batches wait; a failure is re-raised by the next ``submit`` or by
    ``close``, so nothing is silently lost.
    """

    def __init__(self, sink: Sink, source: str, depth: int = 2) -> None:
        self._sink = sink
        self._source = source
        self._queue: queue.Queue[tuple[Batch, list[tuple[Rejection, int]]] | None] = queue.Queue(
            maxsize=depth
        )
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="metering-sink", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            if self._error is None:
                try:
                    _write(self._sink, item[0], item[1], self._source)
                except BaseException as exc:  # re-raised in the caller's thread
                    self._error = exc

    def submit(self, batch: Batch, dead: list[tuple[Rejection, int]]) -> None:
        self._raise()
        self._queue.put((batch, dead))

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()
        self._raise()

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error


def progress_printer(every_seconds: float = 2.0) -> Callable[[ReplaySummary], None]:
    """A progress callback writing one line to stderr at most every ``every_seconds``."""
    last = [0.0]

    def show(s: ReplaySummary) -> None:
        now = time.monotonic()
        if now - last[0] >= every_seconds:
            last[0] = now
            print(f"  replay: {s.lines:,} events, {s.rate:,.0f}/s", file=sys.stderr, flush=True)

    return show
