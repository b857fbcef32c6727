"""A stop request always ends the worker: ``worker.stop_within`` gives up on a stuck shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import pytest

from worker import stop_within


async def test_a_stuck_shutdown_is_given_up_after_the_bound(
    caplog: pytest.LogCaptureFixture,
) -> None:
    cancelled = asyncio.Event()

    async def never_stops() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    running = contextlib.AsyncExitStack()
    running.push_async_callback(never_stops)
    with caplog.at_level(logging.ERROR, logger="fleetops.worker"):
        assert await asyncio.wait_for(stop_within(running, 0.2), 5) is False
    assert cancelled.is_set()  # the stuck shutdown does not linger
    assert "did not stop within 0.2 s" in caplog.text


async def test_a_prompt_shutdown_completes() -> None:
    stopped: list[str] = []

    async def stops() -> None:
        await asyncio.sleep(0)
        stopped.append("worker")

    running = contextlib.AsyncExitStack()
    running.push_async_callback(stops)
    assert await stop_within(running, 5) is True
    assert stopped == ["worker"]
