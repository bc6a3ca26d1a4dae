"""Garbage-collector settings for the long-running commands (replay, worker).

The engine keeps millions of long-lived objects (calls, conversations, dedupe keys) and
allocates a few short-lived ones per event. With CPython's default thresholds
(700, 10, 10) the collector runs a young collection every 700 allocations and, as the
heap grows, full collections that walk the whole state: on the 1,000,000-event
benchmark log that was 7,143 young, 649 middle and 44 full collections, and the
engine ran 1.2-1.4x slower than with the thresholds below (``make bench``; README,
"Performance"). Reference cycles are still collected, only less often.
"""

from __future__ import annotations

import gc

THRESHOLDS = (100_000, 50, 100)
"""Young-generation allocations between collections, then the middle and old ratios."""


def tune_gc() -> None:
    """Apply :data:`THRESHOLDS` to this process (idempotent)."""
    gc.set_threshold(*THRESHOLDS)
