"""The stall watch of the streaming worker (metering.stream.diagnostics)."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from metering.stream.diagnostics import StallWatch


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def report(committed: int | None, highwater: int | None, partition: int = 0) -> dict[str, Any]:
    return {
        "generation": 1,
        "partitions": [
            {"topic": "cpaas.voice", "partition": partition, "committed": committed,
             "highwater": highwater, "held": 0}
        ],
    }  # fmt: skip


def test_a_partition_behind_without_commits_is_reported_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    watch = StallWatch(after_s=60, monotonic=clock)
    assert watch.check(report(None, 100)) == []
    clock.now = 59
    assert watch.check(report(None, 100)) == []
    clock.now = 60
    with caplog.at_level(logging.WARNING):
        (stalled,) = watch.check(report(None, 100))
    assert stalled["partition"] == 0
    assert "no commit for 60 s on 1 input partition" in caplog.text
    assert "'generation': 1" in caplog.text
    clock.now = 200
    assert watch.check(report(None, 100)) == []  # once per stall
    # the commit moves: a new stall is reported again, 60 s after
    assert watch.check(report(50, 100)) == []
    clock.now = 259
    assert watch.check(report(50, 100)) == []
    clock.now = 260
    assert len(watch.check(report(50, 100))) == 1


def test_a_caught_up_or_unknown_partition_is_not_stalled() -> None:
    clock = Clock()
    watch = StallWatch(after_s=60, monotonic=clock)
    for t in (0, 100, 1000):
        clock.now = t
        assert watch.check(report(100, 100)) == []  # nothing to read
        assert watch.check(report(7, None, partition=1)) == []  # high watermark unknown


def test_a_partition_that_left_and_came_back_starts_a_new_wait() -> None:
    clock = Clock()
    watch = StallWatch(after_s=60, monotonic=clock)
    watch.check(report(None, 100))
    clock.now = 50
    watch.check({"generation": 2, "partitions": []})  # revoked
    clock.now = 70
    assert watch.check(report(None, 100)) == []  # assigned again: counts from 70
    clock.now = 130
    assert len(watch.check(report(None, 100))) == 1


def test_next_commit_follows_fausts_rule() -> None:
    from metering.stream.diagnostics import _next_commit

    # the first run of consecutive acked offsets, committed when past the committed offset
    assert _next_commit([12, 10, 11, 14], None)["would_commit"] == 13
    got = _next_commit([10, 11, 12, 14], 10)
    assert got == {"acked_head": [10, 11, 12, 14], "runs": 2, "would_commit": 13}
    # a gap right after the committed offset: nothing
    assert _next_commit([13, 14], 10)["would_commit"] is None
    # a duplicate ends the first run (Faust's consecutive_numbers): 244 is not past 244
    assert _next_commit([243, 243, 244, 245], 244)["would_commit"] is None
    assert _next_commit([], 5) == {"acked_head": [], "runs": 0, "would_commit": None}
