"""``fleetops.prober.verdict``: the prober reports exactly the changes the workflow acts on."""

from __future__ import annotations

from typing import Any

import pytest

from fleetops.models import ProbeResult
from fleetops.prober import WatchedReplica, WatchRequest, verdict


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
        ({"busy": True}, results(True, True), {}, "idle"),  # PROCESSING -> READY
        ({"startup": True, "serving": False}, results(True, False), {}, None),
        ({"startup": True, "serving": False}, results(True, True), {}, "healthy"),
        ({}, [], {}, "empty"),
    ],
)
def test_verdict(request_kw, round_, failures, expected) -> None:
    assert verdict(req(**request_kw), round_, failures) == expected
