"""One host's watches (``activities.prober.ProberActivities``) over real HTTP: a new watch keeps
the agent's probe phase, and a bring-up keeps its startup clock when a newer watch supersedes
the one that began it (a scale or pause during bring-up)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from temporalio.exceptions import ApplicationError

from activities.http_probe import http_probe
from activities.prober import SUPERSEDED, ProberActivities, first_delay
from fleetops.prober import WatchedReplica, WatchRequest
from tests.conftest import assert_eventually
from tests.prober_support import HealthFarm

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


def request(endpoint: str = "http://127.0.0.1:9/a", **kw: Any) -> WatchRequest:
    base: dict[str, Any] = {
        "agent_id": "a",
        "replicas": [WatchedReplica(index=0, endpoint=endpoint)],
        "interval_seconds": 10,
        "timeout_seconds": 1,
        "failure_threshold": 3,
        "serving": True,
    }
    return WatchRequest(**(base | kw))


@pytest.mark.parametrize(
    ("due_in", "expected"),
    [(4.0, 4.0), (0.0, 0.0), (-3.0, 7.0), (-30.0, 0.0), (-3597.5, 2.5), (10.0, 10.0),
     (3600.0, 10.0)],
)  # fmt: skip
def test_a_new_watch_waits_for_the_agents_next_round(due_in: float, expected: float) -> None:
    """A round already past (a dead host's agents, their last rounds up to an hour old) moves
    on by whole intervals: the agents keep their spread phases instead of probing at once."""
    req = request(next_round_at=NOW + timedelta(seconds=due_in))
    assert first_delay(req, NOW) == pytest.approx(expected)


def test_without_a_phase_the_first_round_is_spread_over_one_interval() -> None:
    delays = {first_delay(request(), NOW) for _ in range(200)}
    assert all(0 <= d <= 10 for d in delays)
    assert max(delays) - min(delays) > 5  # spread, not one fixed offset


@pytest.mark.parametrize(
    ("second", "kept"),
    [("run-1/2", True), ("run-1/4", False), ("run-2/2", False), ("", False)],
)
async def test_a_superseding_startup_watch_keeps_the_clock_of_its_bring_up(
    farm: HealthFarm, second: str, kept: bool
) -> None:
    """A scale during bring-up (the same ``bringup``) keeps the startup clock; a new bring-up
    (a pause and resume: a later transition; a new run of the agent) starts its own."""
    endpoint = farm.base + "/never-healthy"
    farm.broken.add(endpoint)
    startup = {"startup": True, "serving": False, "interval_seconds": 0.1}
    async with http_probe(10) as probe:
        watches = ProberActivities(probe)
        first = asyncio.create_task(
            watches.watch_replicas(
                request(endpoint, startup_timeout_seconds=60, bringup="run-1/2", **startup)
            )
        )

        async def begun() -> None:  # the bring-up has begun probing
            assert farm.hits.get(endpoint, 0) >= 2

        await assert_eventually(begun, timeout=10)
        began = watches._running["a"].state.first_probe_at
        assert began is not None
        # The new watch (1.5 s budget) supersedes the first.
        report = await asyncio.wait_for(
            watches.watch_replicas(
                request(endpoint, startup_timeout_seconds=1.5, bringup=second, **startup)
            ),
            10,
        )
        with pytest.raises(ApplicationError) as err:
            await first
        assert err.value.type == SUPERSEDED
    assert report.reason == "startup_timeout"
    assert report.first_probe_at is not None
    assert (report.first_probe_at == began) is kept
    assert watches.watched == 0
