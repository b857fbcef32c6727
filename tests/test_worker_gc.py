"""The worker process sets the garbage collector's threshold from ``gc_threshold``."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator

import pytest
from pydantic import ValidationError
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


async def test_with_a_child_prober_host_the_worker_keeps_its_threshold(
    dev_env: WorkflowEnvironment, saved_threshold: tuple[int, int, int]
) -> None:
    """The child process sets it (``tests/test_prober.py`` checks its ready line); the worker
    process of many cached runs keeps Python's default (a higher one grew it by half)."""
    stop = asyncio.Event()
    stop.set()
    settings = Settings(gc_threshold=4321, prober_process=True)
    await asyncio.wait_for(run_worker(settings, client=dev_env.client, stop=stop), 60)
    assert gc.get_threshold() == saved_threshold


@pytest.mark.parametrize("value", ["0", "5", "699", "1000001", "1e400", "fifty"])
def test_a_threshold_outside_700_to_a_million_is_refused(
    value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """0 would turn the collector off (cyclic garbage never freed); under 700 it runs more
    often than Python's default: both are refused when the settings are read."""
    monkeypatch.setenv("FLEETOPS_GC_THRESHOLD", value)
    with pytest.raises(ValidationError, match="gc_threshold"):
        Settings()
