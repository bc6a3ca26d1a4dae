"""The offset trace of the worker: what happened to each input record's offset.

Off unless ``METERING_TRACE=1``. Then the logger ``metering.trace`` writes, at INFO, one
line per event below, with offsets compressed into ranges (``3-7,9``):

* ``batch``: per input partition of a batch from the agent, the offsets admitted, those
  dropped as stale (``not-assigned``, ``generation``) and those refused as a second copy;
* ``seek``: the committed offsets Faust seeks to after recovery, and the partitions sent
  back to their beginning;
* ``restore``: an account's checkpoint adopted (recovery or lazily), with its floors;
* ``skip``: offsets skipped because the account's checkpoint has them;
* ``release``: per partition, the offsets a step hands to the engine;
* ``checkpoint``: an account's checkpoint written, with its floors;
* ``ack``: the offsets acked after a commit, and those whose ack waits;
* ``committed``: Faust's committed offsets after an offset commit;
* ``heal`` / ``holes``: a partition sought back to a missing offset, and the offsets the
  broker said its log does not have;
* ``tail``: a partition whose consumer position stayed past its frontier (a lost tail);
* ``lazy load``: an account's checkpoint looked up on its first record;
* ``forget``: records dropped from the aligner on revocation.

It is for finding where a record went when a statement and a replay differ (the
SIGKILL tests keep worker logs); it costs a string per batch when on, and when off only
the calls (the per-record ones are behind ``if ENABLED``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable

__all__ = ["ENABLED", "log", "ranges", "trace"]

ENABLED = os.environ.get("METERING_TRACE") == "1"
log = logging.getLogger("metering.trace")
if ENABLED:
    log.setLevel(logging.INFO)


def ranges(offsets: Iterable[int]) -> str:
    """``[1, 2, 3, 7, 9, 10]`` -> ``"1-3,7,9-10"`` (sorted, duplicates collapsed)."""
    out: list[str] = []
    items = sorted(set(offsets))
    i = 0
    while i < len(items):
        j = i
        while j + 1 < len(items) and items[j + 1] == items[j] + 1:
            j += 1
        out.append(f"{items[i]}" if i == j else f"{items[i]}-{items[j]}")
        i = j + 1
    return ",".join(out)


def trace(msg: str, *args: object) -> None:
    if ENABLED:
        log.info(msg, *args)
