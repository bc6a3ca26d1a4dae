"""Checkpoint delivery retries (metering.stream.app.deliver_all)."""

from __future__ import annotations

import asyncio

import pytest

from metering.stream.app import deliver_all


def test_a_failed_send_is_sent_again_and_delivered_ones_are_not() -> None:
    sends: list[str] = []
    fail_once = {"b"}

    async def main() -> None:
        loop = asyncio.get_running_loop()

        def send(item: str) -> asyncio.Future[str]:
            sends.append(item)
            fut: asyncio.Future[str] = loop.create_future()
            if item in fail_once:
                fail_once.discard(item)
                fut.set_exception(ConnectionError(f"{item}: broker went away"))
            else:
                fut.set_result(item)
            return fut

        attempt = deliver_all(["a", "b", "c"], send)
        with pytest.raises(ConnectionError, match="b: broker went away"):
            await attempt()
        await attempt()  # only "b" again, and this time it is delivered
        await attempt()  # nothing left to send

    asyncio.run(main())
    assert sends == ["a", "b", "c", "b"]
