"""Offline replay: a JSON-lines event log through the engine into ClickHouse.

The log holds one CloudEvent per line in arrival order (plain or ``.gz``). Each line is
decoded, handed to the engine, and every ``batch_size`` lines the engine is drained and
the sink flushed. Everything written is keyed, so replaying the same log again into the
same database rewrites the same rows and doubles nothing.

Commit order per batch: engine drain -> sink flush (facts, then aggregates). Replay keeps
no offsets: a failed replay is simply run again.
"""

from __future__ import annotations

import gzip
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
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
    dead = summary.dead_letters
    source_name = str(path)
    with open_log(path) as stream:
        n = 0
        for line in iter_lines(stream):
            n += 1
            ev = decode(line)
            if isinstance(ev, Rejection):
                dead[ev.reason] += 1
                if sink is not None:
                    sink.add_dead_letter(ev, topic=source_name, partition=0, offset=n)
                continue
            verdict = process(ev, line)
            if verdict == "accepted":
                summary.accepted += 1
            elif verdict == "duplicate":
                summary.duplicates += 1
            if n % batch_size == 0:
                _flush(engine.drain(), sink, summary)
                summary.lines = n
                summary.seconds = time.perf_counter() - started
                if progress is not None:
                    progress(summary)
        summary.lines = n
    _flush(engine.drain(), sink, summary)
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


def _flush(batch: Batch, sink: Sink | None, summary: ReplaySummary) -> None:
    for rej in batch.rejections:
        summary.dead_letters[rej.reason] += 1
    summary.accepted -= batch.retracted
    summary.facts += len(batch.facts)
    summary.outputs += len(batch.outputs)
    if sink is None:
        return
    for rej in batch.rejections:
        sink.add_dead_letter(rej)
    for f in batch.facts:
        sink.add(f)
    for o in batch.outputs:
        sink.add(o)
    sink.flush()


def progress_printer(every_seconds: float = 2.0) -> Callable[[ReplaySummary], None]:
    """A progress callback writing one line to stderr at most every ``every_seconds``."""
    last = [0.0]

    def show(s: ReplaySummary) -> None:
        now = time.monotonic()
        if now - last[0] >= every_seconds:
            last[0] = now
            print(f"  replay: {s.lines:,} events, {s.rate:,.0f}/s", file=sys.stderr, flush=True)

    return show
