"""``fleetops.prober.verdict``: the prober reports exactly the changes the workflow acts on; and
``fleetops agent status`` shows how old the prober's last reported results are."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import pytest

from fleetops.models import ProbeResult
from fleetops.prober import WatchedReplica, WatchRequest, lease_workflow_id, verdict


def req(**kw: Any) -> WatchRequest:
    base: dict[str, Any] = {
        "agent_id": "a",
        "replicas": [WatchedReplica(index=i, endpoint=f"http://r{i}") for i in range(2)],
        "interval_seconds": 10,
        "timeout_seconds": 2,
        "failure_threshold": 3,
        "serving": True,
    }
    return WatchRequest(**(base | kw))


def results(*healthy: bool, in_flight: int = 0) -> list[ProbeResult]:
    return [
        ProbeResult(endpoint=f"http://r{i}", healthy=h, in_flight=in_flight if h else 0)
        for i, h in enumerate(healthy)
    ]


@pytest.mark.parametrize(
    ("request_kw", "round_", "failures", "expected"),
    [
        ({}, results(True, True), {0: 0, 1: 0}, None),  # healthy, as believed: silence
        ({}, results(True, False), {1: 2}, None),  # below the threshold: silence
        ({}, results(True, False), {1: 3}, "failing"),  # at the threshold
        ({"failing": [1], "serving": False}, results(True, False), {1: 4}, None),
        ({"failing": [1], "serving": False}, results(True, False), {1: 0}, "recovered"),
        ({"serving": False}, results(True, True), {}, "healthy"),  # DEGRADED/ERROR -> READY
        ({}, results(True, True, in_flight=2), {}, "busy"),  # READY -> PROCESSING
        ({}, results(True, True, in_flight=1), {}, "busy"),  # one request is busy
        ({"busy": True}, results(True, True), {}, "idle"),  # PROCESSING -> READY
        ({"startup": True, "serving": False}, results(True, False), {}, None),
        ({"startup": True, "serving": False}, results(True, True), {}, "healthy"),
        ({}, [], {}, "empty"),
        ({"unprobed": [1]}, results(True, True), {}, "probed"),  # scaled up: first results
        ({"unprobed": [1]}, results(True, False), {1: 1}, "probed"),  # unhealthy ones too
        ({"unprobed": [1]}, results(True, False), {1: 3}, "failing"),  # a decision first
        ({"unprobed": [1], "serving": False}, results(True, True), {}, "healthy"),
        ({"unprobed": [0], "startup": True, "serving": False}, results(True, False), {}, None),
    ],
)
def test_verdict(request_kw, round_, failures, expected) -> None:
    assert verdict(req(**request_kw), round_, failures) == expected


START_GRACE_END = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("round_", "starting", "expected"),
    [
        (results(True, False), {1: START_GRACE_END}, None),  # still starting: wait for it
        (results(True, True), {}, "probed"),  # healthy (its grace is over)
        (results(True, False), {}, "probed"),  # past its grace and unhealthy: that is news
        (results(True, True), {0: START_GRACE_END}, "probed"),  # another replica starting
    ],
)
def test_a_new_replica_is_reported_once_it_is_no_longer_starting(
    round_, starting, expected
) -> None:
    """A scaled-up replica is still starting at its first rounds: reporting those would show it
    unhealthy in ``status`` until the next report (up to an hour)."""
    assert verdict(req(unprobed=[1]), round_, {1: 0}, starting) == expected


def test_status_view_shows_the_age_of_prober_results() -> None:
    from datetime import timedelta

    from rich.console import Console

    from fleetops.models import AgentCounters, AgentState, AgentStatus, ReplicaHealth
    from starters.cli_views import agent_view

    at = datetime.now(UTC) - timedelta(seconds=42)
    st = AgentStatus(
        agent_id="a", version="v1", state=AgentState.READY, desired_replicas=1,
        min_replicas=1, max_replicas=2, transitions=[], counters=AgentCounters(),
        replicas=[ReplicaHealth(index=0, endpoint="http://r0", pid=None, healthy=True,
                                consecutive_failures=0, probed_at=at)],
    )  # fmt: skip
    console = Console(record=True, width=200)
    console.print(agent_view(st))
    text = console.export_text()
    found = re.search(r"last reported by the prober: (\S+) \((\d+) s ago\)", text)
    assert found is not None, text
    assert found[1] == f"{at:%H:%M:%S}" and 42 <= int(found[2]) <= 44


def test_a_hosts_lease_is_named_after_it() -> None:
    """``prober-host/<host_id>``: the id ``hold_host`` checks its caller against."""
    assert lease_workflow_id("worker-1-a3f") == "prober-host/worker-1-a3f"
