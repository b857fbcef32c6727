"""ProbeActivities against a real sample agent, a closed port and a server that never answers."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from temporalio.testing import ActivityEnvironment

from activities.probes import ProbeActivities
from fleetops.models import ProbeRequest, ProbeResult

SAMPLE_AGENT = Path(sys.executable).parent / "fleetops-sample-agent"


def free_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def probe(req: ProbeRequest, client: httpx.AsyncClient | None = None) -> list[ProbeResult]:
    async with client or httpx.AsyncClient() as http:
        result: list[ProbeResult] = await ActivityEnvironment().run(
            ProbeActivities(http).probe_replicas, req
        )
        return result


@pytest.fixture
async def agent(tmp_path: Path) -> AsyncIterator[str]:
    """Base URL of a sample-agent process, healthy when yielded; stopped afterwards."""
    port = free_port()
    env = {**os.environ, "HOST": "127.0.0.1", "PORT": str(port), "AGENT_ID": "probe-test"}
    with (tmp_path / "agent.log").open("wb") as log:
        process = subprocess.Popen([SAMPLE_AGENT], env=env, stdout=log, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        async with httpx.AsyncClient() as client:
            while True:
                assert process.poll() is None, (tmp_path / "agent.log").read_text()
                try:
                    if (await client.get(f"{endpoint}/health")).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, "sample agent did not start within 30s"
                await asyncio.sleep(0.05)
        yield endpoint
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def silent_endpoint() -> Iterator[str]:
    """A listener whose accept queue holds connections that are never answered."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


async def test_healthy_replica(agent: str) -> None:
    [result] = await probe(ProbeRequest(endpoints=[agent], timeout_seconds=2))

    assert result.healthy
    assert result.status_code == 200
    assert result.in_flight == 0
    assert result.error is None
    assert result.latency_seconds is not None and 0 < result.latency_seconds < 2


async def test_unhealthy_replica_after_fault(agent: str) -> None:
    async with httpx.AsyncClient() as client:
        response = await client.post(f"{agent}/faults", json={"unhealthy": True})
        response.raise_for_status()

    [result] = await probe(ProbeRequest(endpoints=[agent], timeout_seconds=2))

    assert not result.healthy
    assert result.status_code == 503
    assert result.error is not None and result.error.startswith("HTTP 503")


async def test_closed_port_is_unhealthy_with_error() -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"

    [result] = await probe(ProbeRequest(endpoints=[endpoint], timeout_seconds=2))

    assert not result.healthy
    assert result.status_code is None
    assert result.error and "ConnectError" in result.error
    assert len(result.error) <= 200


async def test_silent_replica_times_out(silent_endpoint: str) -> None:
    started = time.monotonic()
    [result] = await probe(ProbeRequest(endpoints=[silent_endpoint], timeout_seconds=0.2))

    assert not result.healthy
    assert result.error == "timed out after 0.2s"
    assert time.monotonic() - started < 2


async def test_probes_run_concurrently_and_keep_order(agent: str, silent_endpoint: str) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    endpoints = [silent_endpoint, agent, closed, silent_endpoint, silent_endpoint]

    started = time.monotonic()
    results = await probe(ProbeRequest(endpoints=endpoints, timeout_seconds=0.5))

    assert time.monotonic() - started < 1.4  # three 0.5 s timeouts in a row would take 1.5 s
    assert [r.endpoint for r in results] == endpoints
    assert [r.healthy for r in results] == [False, True, False, False, False]


@pytest.mark.parametrize(
    ("body", "in_flight"),
    [
        (json.dumps({"status": "ok", "in_flight": 3}), 3),
        (json.dumps({"status": "ok"}), 0),
        (json.dumps({"in_flight": -1}), 0),
        (json.dumps({"in_flight": True}), 0),
        (json.dumps([1, 2]), 0),
        ("ok", 0),
    ],
)
async def test_in_flight_parsing(body: str, in_flight: int) -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(200, text=body))
    client = httpx.AsyncClient(transport=transport)

    [result] = await probe(ProbeRequest(endpoints=["http://agent"], timeout_seconds=2), client)

    assert result.healthy
    assert result.in_flight == in_flight


@pytest.mark.parametrize("status", [301, 404, 429, 500, 503])
async def test_non_2xx_is_unhealthy_with_truncated_body(status: int) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        assert str(request.url) == "http://agent/ready"
        return httpx.Response(status, text="x" * 1000)

    transport = httpx.MockTransport(answer)

    [result] = await probe(
        ProbeRequest(endpoints=["http://agent/"], path="/ready", timeout_seconds=2),
        httpx.AsyncClient(transport=transport),
    )

    assert not result.healthy
    assert result.status_code == status
    assert result.error is not None and result.error.startswith(f"HTTP {status}: xxx")
    assert len(result.error) == 200
