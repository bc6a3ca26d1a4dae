"""Which acks of input records reach Faust's consumer.

Faust's stream acks a record it *skips*: one fetched before the latest rebalance
(``message.generation_id`` older than the consumer's) or while flow control is
suspended. The record was never handed to the worker; the consumer reads it again from
the committed offset after the rebalance. But the early ack already marks its offset as
done, so a commit before the re-read record is applied covers it, and a crash in that
window loses it (the next owner starts after it, and no checkpoint holds it).

:class:`AckGate` closes the window: on the input topics, only the acks the worker makes
itself, once the commit covering a record is done (:meth:`AckGate.release`), reach the
consumer. Every other ack of an input record is refused and counted; the record stays
unacked, so the committed offset cannot pass it until it was applied.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["AckGate"]


class AckGate:
    """Lets only :meth:`release` ack records of ``topics`` on a Faust consumer."""

    def __init__(self, topics: Iterable[str], on_refused: Callable[[], None] | None = None) -> None:
        self.topics = frozenset(topics)
        self.refused = 0
        self._on_refused = on_refused
        self._open = False
        self._installed: set[int] = set()

    def install(self, consumer: Any) -> None:
        """Wrap ``consumer.ack`` (idempotent per consumer)."""
        if id(consumer) in self._installed:
            return
        original: Callable[[Any], bool] = consumer.ack

        def ack(message: Any) -> bool:
            if not self._open and message.topic in self.topics:
                self.refused += 1
                if self._on_refused is not None:
                    self._on_refused()
                return False
            return original(message)

        consumer.ack = ack
        self._installed.add(id(consumer))

    def release(self, message: Any, consumer: Any) -> bool:
        """Drop one reference of ``message``; when it was the last, ack it on
        ``consumer`` (True: the offset is now safe to commit)."""
        self._open = True
        try:
            return bool(message.ack(consumer))
        finally:
            self._open = False
