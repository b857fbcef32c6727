"""Probe and smoke-test results for each kind of answer, without processes.

Replicas are ``httpx.MockTransport`` handlers (as in ``tests/test_probes.py``) or a listener
that never answers; ``tests/test_probes.py`` probes a real sample agent.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.probes import ProbeActivities, answered
from fleetops.checks import SmokeRequest, SmokeResult, SmokeTest, WaitHealthyRequest
from fleetops.models import ProbeRequest, ProbeResult

Handler = Callable[[httpx.Request], Any]


async def run(handler: Handler | None, fn: str, req: Any) -> Any:
    transport = httpx.MockTransport(handler) if handler else None
    async with httpx.AsyncClient(transport=transport) as http:
        return await ActivityEnvironment().run(getattr(ProbeActivities(http), fn), req)


@pytest.fixture
def silent() -> Iterator[str]:
    """A listener whose accept queue holds connections that are never answered."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


async def test_healthy_probe_result() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert str(request.url) == "http://r0/health"
        return httpx.Response(204, json={"in_flight": 0})

    [r] = await run(handler, "probe_replicas", ProbeRequest(endpoints=["http://r0/"]))
    assert (r.endpoint, r.healthy, r.status_code, r.in_flight, r.error) == (
        "http://r0/",
        True,
        204,
        0,
        None,
    )
    assert r.latency_seconds is not None and 0 <= r.latency_seconds < 1


async def test_slow_answer_latency_is_measured() -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.05)
        return httpx.Response(500, text="down")

    [r] = await run(handler, "probe_replicas", ProbeRequest(endpoints=["http://r0"]))
    assert not r.healthy and r.error == "HTTP 500: down" and r.in_flight == 0
    assert r.latency_seconds is not None and 0.05 <= r.latency_seconds < 1


@pytest.mark.parametrize(
    ("exc", "error"),
    [
        (httpx.ConnectError("refused"), "ConnectError: refused"),
        (httpx.RemoteProtocolError(""), "RemoteProtocolError"),
    ],
    ids=["with-message", "without-message"],
)
async def test_transport_errors(exc: Exception, error: str) -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.02)
        raise exc

    [r] = await run(handler, "probe_replicas", ProbeRequest(endpoints=["http://r0"]))
    assert (r.healthy, r.status_code, r.in_flight, r.error) == (False, None, 0, error)
    assert r.latency_seconds is not None and 0.02 <= r.latency_seconds < 1


async def test_a_deeply_nested_body_is_a_result_not_an_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503 if "r0" in str(request.url) else 200, content=b"[" * 5000)

    results = await run(
        handler, "probe_replicas", ProbeRequest(endpoints=["http://r0", "http://r1"])
    )
    assert [(r.healthy, r.in_flight) for r in results] == [(False, 0), (True, 0)]


@pytest.mark.parametrize(
    ("status", "healthy"), [(199, False), (200, True), (299, True), (300, False)]
)
def test_healthy_iff_2xx(status: int, healthy: bool) -> None:
    assert answered("http://r0", status, b"", "", 0.01).healthy is healthy


async def test_busy_replica_reports_in_flight() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, json={"in_flight": 0} if "r0" in str(request.url) else {"in_flight": 1}
        )

    results = await run(
        handler, "probe_replicas", ProbeRequest(endpoints=["http://r0", "http://r1"])
    )
    assert [r.in_flight for r in results] == [0, 1]


async def test_silent_replica_timeout_is_the_whole_request(silent: str) -> None:
    [r] = await run(None, "probe_replicas", ProbeRequest(endpoints=[silent], timeout_seconds=0.2))
    assert r.error == "timed out after 0.2s" and r.in_flight == 0
    assert r.latency_seconds is not None and 0.2 <= r.latency_seconds < 1.5


# --- smoke tests --------------------------------------------------------------------------------


async def test_smoke_tests_per_test_and_endpoint() -> None:
    seen: list[tuple[str, str, bytes]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.method, str(request.url), request.read()))
        if request.url.path == "/execute":
            return httpx.Response(201 if request.url.host == "r0" else 500, text="x" * 500)
        return httpx.Response(200)

    tests = [
        SmokeTest(name="health"),
        SmokeTest(name="exec", method="POST", path="/execute", body={"p": 1}, expect_status=201),
    ]
    results = await run(
        handler, "run_smoke_tests", SmokeRequest(endpoints=["http://r0/", "http://r1"], tests=tests)
    )
    assert results[:3] == [
        SmokeResult(test="health", endpoint="http://r0/", passed=True, status_code=200),
        SmokeResult(test="health", endpoint="http://r1", passed=True, status_code=200),
        SmokeResult(test="exec", endpoint="http://r0/", passed=True, status_code=201),
    ]
    failed = results[3]
    assert (failed.test, failed.endpoint, failed.passed, failed.status_code) == (
        "exec",
        "http://r1",
        False,
        500,
    )
    assert failed.error is not None and failed.error.startswith("expected 201, got 500: xxx")
    assert len(failed.error) == 200
    assert ("POST", "http://r0/execute", b'{"p":1}') in seen
    assert ("GET", "http://r1/health", b"") in seen


async def test_smoke_transport_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused " + "y" * 500)

    [r] = await run(
        handler,
        "run_smoke_tests",
        SmokeRequest(endpoints=["http://r0"], tests=[SmokeTest(name="h")]),
    )
    assert (r.test, r.endpoint, r.passed, r.status_code) == ("h", "http://r0", False, None)
    assert r.error is not None and r.error.startswith("ConnectError: refused yyy")
    assert len(r.error) == 200


async def test_smoke_timeout(silent: str) -> None:
    [r] = await run(
        None,
        "run_smoke_tests",
        SmokeRequest(endpoints=[silent], tests=[SmokeTest(name="h", timeout_seconds=0.2)]),
    )
    assert r == SmokeResult(test="h", endpoint=silent, passed=False, error="timed out after 0.2s")


# --- waiting for health -----------------------------------------------------------------------


async def test_wait_healthy_probes_until_all_pass() -> None:
    calls = {"r0": 0, "r1": 0}

    def handler(request: httpx.Request) -> httpx.Response:
        calls[request.url.host] += 1
        ok = request.url.host == "r0" or calls["r1"] >= 3
        return httpx.Response(200 if ok else 503, text="starting")

    req = WaitHealthyRequest(
        endpoints=["http://r0", "http://r1"], timeout_seconds=5, interval_seconds=0.01
    )
    results: list[ProbeResult] = await run(handler, "wait_healthy", req)
    assert [r.healthy for r in results] == [True, True]
    assert calls == {"r0": 3, "r1": 3}


async def test_wait_healthy_gives_up_naming_the_unhealthy() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200 if request.url.host == "r0" else 503, text="starting")

    req = WaitHealthyRequest(
        endpoints=["http://r0", "http://r1"], timeout_seconds=0.05, interval_seconds=0.01
    )
    with pytest.raises(
        ApplicationError,
        match=r"replicas not healthy within 0\.05s: http://r1: HTTP 503: starting$",
    ) as info:
        await run(handler, "wait_healthy", req)
    assert (info.value.type, info.value.non_retryable) == ("ReplicasNotReady", True)


# --- the request itself -------------------------------------------------------------------------


async def test_probe_and_smoke_urls_keep_the_host() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(200)

    await run(handler, "probe_replicas", ProbeRequest(endpoints=["http://nodeX/"], path="/h"))
    smoke = SmokeRequest(endpoints=["http://nodeX/"], tests=[SmokeTest(name="s", path="/s")])
    await run(handler, "run_smoke_tests", smoke)
    assert seen == ["http://nodex/h", "http://nodex/s"]


async def test_the_probe_timeout_overrides_the_client_default(silent: str) -> None:
    # The client's own (short) timeout must not cut a probe short: each request sets its own.
    async with httpx.AsyncClient(timeout=0.01) as http:
        acts = ProbeActivities(http)
        run_ = ActivityEnvironment().run
        [p] = await run_(acts.probe_replicas, ProbeRequest(endpoints=[silent], timeout_seconds=0.3))
        smoke = SmokeRequest(endpoints=[silent], tests=[SmokeTest(name="h", timeout_seconds=0.3)])
        [s] = await run_(acts.run_smoke_tests, smoke)
    assert p.error == "timed out after 0.3s"
    assert s.error == "timed out after 0.3s"
