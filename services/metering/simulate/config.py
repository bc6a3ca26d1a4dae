"""Configuration and summary of a simulation run (shared by the account and event generators)."""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

HOUR_MS = 3_600_000
MINUTE_MS = 60_000
DAY_MS = 86_400_000
MAX_CALL_DURATION_MS = 4 * HOUR_MS
"""SPEC section 5 default ``max_call_duration``: calls without an end time out after it."""


@dataclass(frozen=True)
class SimulationConfig:
    """Everything that determines a simulated log: same config, same bytes.

    ``events`` is the approximate number of lines wanted (duplicates and malformed lines
    included); the traffic rates are derived from it, so the actual count is close to it
    but not exact (Poisson arrivals, call tails running past the end of the window).
    Rates are probabilities per event (``duplicate_rate``, ``malformed_rate``) or per
    call (the others).
    """

    seed: int = 1
    start: datetime = datetime(2026, 10, 30, tzinfo=UTC)
    """Aware start of the traffic window. The default crosses the 2026-10/2026-11 cycle
    boundary (and the US end of DST on 2026-11-01) once ``days`` >= 3."""
    days: float = 3.0
    accounts: int = 8
    events: int = 100_000
    lateness_ms: int = 900_000
    """Allowed lateness (SPEC section 3). Every event arrives strictly less than this
    behind the largest event time already emitted (for any account, hence for its own)."""
    late_share: float = 0.25
    """Share of events delayed by up to 0.9 x ``lateness_ms``; the others arrive within
    ``jitter_ms`` of their time (a realistic mix: most records are nearly in order)."""
    jitter_ms: int = 3_000
    duplicate_rate: float = 0.01
    malformed_rate: float = 0.001
    cdr_share: float = 0.3
    """Share of calls described by one ``call.completed`` CDR instead of lifecycle events."""
    orphan_rate: float = 0.0005
    """Share of lifecycle calls whose ``call.started`` is never sent (orphans)."""
    double_report_rate: float = 0.0003
    """Share of lifecycle calls *also* reported by a CDR (deliberate ``duplicate_call``)."""
    no_end_rate: float = 0.002
    """Share of answered lifecycle calls that never send ``call.ended`` (time out)."""
    long_cdr_rate: float = 0.002
    """Share of answered CDR calls longer than the maximum call duration."""

    def __post_init__(self) -> None:
        if self.start.tzinfo is None or self.start.utcoffset() is None:
            raise ValueError("SimulationConfig.start must be an aware datetime")
        if self.days <= 0:
            raise ValueError("days must be > 0")
        if self.accounts < 1:
            raise ValueError("accounts must be >= 1")
        if self.events < 1:
            raise ValueError("events must be >= 1")
        if self.lateness_ms < 10:
            raise ValueError("lateness_ms must be >= 10")
        for name in (
            "late_share",
            "duplicate_rate",
            "malformed_rate",
            "cdr_share",
            "orphan_rate",
            "double_report_rate",
            "no_end_rate",
            "long_cdr_rate",
        ):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be within [0, 1], got {value}")

    @property
    def start_ms(self) -> int:
        return (self.start - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)

    @property
    def end_ms(self) -> int:
        """End of the window in which new calls, conversations and flows begin."""
        return self.start_ms + round(self.days * DAY_MS)

    @property
    def max_delay_ms(self) -> int:
        """Largest arrival delay used (strictly below the allowed lateness)."""
        return max(1, (self.lateness_ms * 9) // 10)


@dataclass
class SimulationSummary:
    """What a run produced (filled in while the lines are generated)."""

    lines: int = 0
    """Lines emitted: valid events + duplicates + malformed lines."""
    events: int = 0
    """Distinct valid events (duplicates and malformed lines excluded)."""
    by_type: Counter[str] = field(default_factory=Counter)
    duplicates: int = 0
    malformed: int = 0
    malformed_by_kind: Counter[str] = field(default_factory=Counter)
    calls: int = 0
    cdr_calls: int = 0
    blocked_calls: int = 0
    over_capacity_calls: int = 0
    """Calls let through although their capacity group was full, as the generator saw it
    (it takes equal start times in its own order; the engine's count can differ a little)."""
    no_end_calls: int = 0
    long_cdrs: int = 0
    orphans: int = 0
    double_reported: int = 0
    conversations: int = 0
    executions: int = 0
    first_time_ms: int | None = None
    last_time_ms: int | None = None

    def note_time(self, ms: int) -> None:
        if self.first_time_ms is None or ms < self.first_time_ms:
            self.first_time_ms = ms
        if self.last_time_ms is None or ms > self.last_time_ms:
            self.last_time_ms = ms

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["by_type"] = dict(sorted(self.by_type.items()))
        out["malformed_by_kind"] = dict(sorted(self.malformed_by_kind.items()))
        for key in ("first_time_ms", "last_time_ms"):
            ms = out[key]
            out[key.replace("_ms", "")] = (
                None
                if ms is None
                else (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)).isoformat()
            )
        return out
