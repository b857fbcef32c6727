"""The worker process sets the garbage collector's threshold from ``gc_threshold``."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator

import pytest
from temporalio.testing import WorkflowEnvironment

from fleetops.settings import Settings
from worker import run_worker


@pytest.fixture
def saved_threshold() -> Iterator[tuple[int, int, int]]:
    saved = gc.get_threshold()
    yield saved
    gc.set_threshold(*saved)


async def test_run_worker_sets_the_youngest_threshold(
    dev_env: WorkflowEnvironment, saved_threshold: tuple[int, int, int]
) -> None:
    stop = asyncio.Event()
    stop.set()  # the worker starts, then stops at once
    await asyncio.wait_for(
        run_worker(Settings(gc_threshold=4321), client=dev_env.client, stop=stop), 60
    )
    assert gc.get_threshold() == (4321, *saved_threshold[1:])


async def test_zero_turns_automatic_collection_off(
    dev_env: WorkflowEnvironment, saved_threshold: tuple[int, int, int]
) -> None:
    stop = asyncio.Event()
    stop.set()
    await asyncio.wait_for(
        run_worker(Settings(gc_threshold=0), client=dev_env.client, stop=stop), 60
    )
    assert gc.get_threshold()[0] == 0
