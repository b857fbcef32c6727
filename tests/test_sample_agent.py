"""Tests of the sample agent (infra/sample_agent): endpoints in-process, one real process."""

from __future__ import annotations

import asyncio
import os
import random
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError
from starlette.applications import Starlette

from infra.sample_agent.__main__ import main
from infra.sample_agent.app import AgentConfig, create_app, simulate_completion

ENV_VARS = [
    "HOST",
    "PORT",
    "AGENT_ID",
    "AGENT_VERSION",
    "REPLICA_INDEX",
    "SIMULATED_WORK_SECONDS",
    "FAULT_ERROR_RATE",
    "FAULT_LATENCY_SECONDS",
    "FAULT_UNHEALTHY",
    "FAULT_CRASH_AFTER_SECONDS",
]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # AgentConfig reads the environment; a stray PORT or FAULT_* must not change these tests.
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)


def make_config(**overrides: object) -> AgentConfig:
    values: dict[str, object] = {
        "agent_id": "billing",
        "agent_version": "v7",
        "replica_index": 2,
        "simulated_work_seconds": 0.0,
    }
    values.update(overrides)
    return AgentConfig(**values)  # type: ignore[arg-type]


def client_for(app: Starlette) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://agent")


async def wait_until(predicate: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, "condition not met before the deadline"
        await asyncio.sleep(0.01)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Metric samples keyed by (sample name, sorted labels)."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(create_app(make_config())) as c:
        yield c


# --- configuration ----------------------------------------------------------------------------


def test_config_defaults_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = AgentConfig()
    assert (defaults.host, defaults.port, defaults.agent_id) == ("127.0.0.1", 8080, "sample")
    assert (defaults.agent_version, defaults.replica_index) == ("v1", 0)
    assert defaults.fault_error_rate == 0 and defaults.fault_latency_seconds == 0
    assert defaults.fault_unhealthy is False and defaults.fault_crash_after_seconds is None

    monkeypatch.setenv("PORT", "9001")
    monkeypatch.setenv("AGENT_ID", "support")
    monkeypatch.setenv("REPLICA_INDEX", "3")
    monkeypatch.setenv("FAULT_ERROR_RATE", "0.25")
    monkeypatch.setenv("FAULT_UNHEALTHY", "true")
    monkeypatch.setenv("FAULT_CRASH_AFTER_SECONDS", "30")
    config = AgentConfig()
    assert (config.port, config.agent_id, config.replica_index) == (9001, "support", 3)
    assert config.fault_error_rate == 0.25 and config.fault_unhealthy is True
    assert config.fault_crash_after_seconds == 30


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("FAULT_ERROR_RATE", "1.5"),
        ("FAULT_ERROR_RATE", "-0.1"),
        ("FAULT_LATENCY_SECONDS", "-1"),
        ("FAULT_UNHEALTHY", "maybe"),
        ("FAULT_CRASH_AFTER_SECONDS", "0"),
        ("PORT", "70000"),
        ("REPLICA_INDEX", "-1"),
    ],
)
def test_config_rejects_bad_values(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError, match=name.lower()) as info:
        AgentConfig()
    assert [e["loc"] for e in info.value.errors()] == [(name.lower(),)]
    with pytest.raises(SystemExit, match=f"{name}:"):
        main()


def test_simulated_completion_is_deterministic() -> None:
    prompt = "summarise the quarterly report please"
    output, input_tokens, output_tokens = simulate_completion(prompt, 256)
    assert input_tokens == 5
    assert output_tokens == 10  # ceil(37 chars / 4)
    assert output.split() == (prompt.split() * 2)[:10]
    assert simulate_completion(prompt, 3)[2] == 3
    assert simulate_completion(prompt, 256) == (output, input_tokens, output_tokens)


# --- endpoints --------------------------------------------------------------------------------


async def test_health_and_ready(client: httpx.AsyncClient) -> None:
    health = await client.get("/health")
    assert health.status_code == 200
    assert health.json() == {
        "status": "ok",
        "agent_id": "billing",
        "version": "v7",
        "replica": 2,
        "in_flight": 0,
    }
    assert (await client.get("/ready")).status_code == 200


async def test_execute_returns_usage(client: httpx.AsyncClient) -> None:
    response = await client.post("/execute", json={"prompt": "hello agent world", "max_tokens": 3})
    assert response.status_code == 200
    body = response.json()
    assert body["usage"] == {"input_tokens": 3, "output_tokens": 3}
    assert body["output"] == "hello agent world"
    assert (body["version"], body["replica"]) == ("v7", 2)


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({}, "prompt"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": "x" * 100_001}, "prompt"),
        ({"prompt": 42}, "prompt"),
        ({"prompt": "hi", "max_tokens": 0}, "max_tokens"),
        ({"prompt": "hi", "max_tokens": 8193}, "max_tokens"),
        ({"prompt": "hi", "max_tokens": "many"}, "max_tokens"),
    ],
)
async def test_execute_validation_names_the_field(
    client: httpx.AsyncClient, payload: dict[str, object], field: str
) -> None:
    response = await client.post("/execute", json=payload)
    assert response.status_code == 422
    assert [e["loc"] for e in response.json()["detail"]] == [[field]]


async def test_execute_rejects_malformed_json(client: httpx.AsyncClient) -> None:
    response = await client.post("/execute", content=b"{not json")
    assert response.status_code == 422
    assert response.json()["detail"][0]["type"] == "json_invalid"


async def test_in_flight_counts_running_executes() -> None:
    gate = asyncio.Event()

    async def gated_sleep(seconds: float) -> None:
        await gate.wait()

    app = create_app(make_config(), sleep=gated_sleep)
    async with client_for(app) as client:

        async def in_flight() -> int:
            return int((await client.get("/health")).json()["in_flight"])

        async def both_running() -> bool:
            return await in_flight() == 2

        calls = [
            asyncio.create_task(client.post("/execute", json={"prompt": f"job {i}"}))
            for i in range(2)
        ]
        await wait_until(both_running)
        metrics = samples((await client.get("/metrics")).text)
        assert metrics[("agent_in_flight_requests", ())] == 2
        gate.set()
        assert [r.status_code for r in await asyncio.gather(*calls)] == [200, 200]
        assert await in_flight() == 0
        metrics = samples((await client.get("/metrics")).text)
        assert metrics[("agent_in_flight_requests", ())] == 0


async def test_metrics_content(client: httpx.AsyncClient) -> None:
    await client.get("/health")
    await client.post("/execute", json={"prompt": "one two three four", "max_tokens": 2})
    await client.post("/execute", json={"prompt": ""})
    await client.get("/nowhere")
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    metrics = samples(response.text)

    def requests(endpoint: str, status: str) -> float:
        return metrics[("agent_requests_total", (("endpoint", endpoint), ("status", status)))]

    assert requests("/health", "200") == 1
    assert requests("/execute", "200") == 1
    assert requests("/execute", "422") == 1
    assert requests("other", "404") == 1
    assert metrics[("agent_tokens_total", (("direction", "input"),))] == 4
    assert metrics[("agent_tokens_total", (("direction", "output"),))] == 2
    assert metrics[("agent_request_duration_seconds_count", ())] == 2
    assert metrics[("agent_errors_total", ())] == 0
    assert metrics[("agent_in_flight_requests", ())] == 0
    info_labels = (("agent_id", "billing"), ("replica", "2"), ("version", "v7"))
    assert metrics[("agent_info", info_labels)] == 1


async def test_apps_have_separate_registries() -> None:
    async with client_for(create_app(make_config())) as first:
        await first.post("/execute", json={"prompt": "a b c"})
    async with client_for(create_app(make_config())) as second:
        metrics = samples((await second.get("/metrics")).text)
    assert metrics[("agent_tokens_total", (("direction", "input"),))] == 0


async def test_unhealthy_fault_toggles_health(client: httpx.AsyncClient) -> None:
    response = await client.post("/faults", json={"unhealthy": True})
    assert response.json() == {"error_rate": 0.0, "latency_seconds": 0.0, "unhealthy": True}
    health = await client.get("/health")
    assert health.status_code == 503
    assert health.json()["status"] == "unhealthy" and health.json()["agent_id"] == "billing"
    assert (await client.get("/ready")).status_code == 503
    await client.post("/faults", json={"unhealthy": False})
    assert (await client.get("/health")).status_code == 200
    assert (await client.get("/ready")).status_code == 200


async def test_unhealthy_from_environment() -> None:
    async with client_for(create_app(make_config(fault_unhealthy=True))) as client:
        assert (await client.get("/health")).status_code == 503


async def test_error_rate_fault_fails_executes(client: httpx.AsyncClient) -> None:
    await client.post("/faults", json={"error_rate": 1})
    responses = [await client.post("/execute", json={"prompt": "hi"}) for _ in range(3)]
    assert [r.status_code for r in responses] == [500, 500, 500]
    metrics = samples((await client.get("/metrics")).text)
    assert metrics[("agent_errors_total", ())] == 3
    assert metrics[("agent_tokens_total", (("direction", "input"),))] == 0
    await client.post("/faults", json={"error_rate": 0})
    assert (await client.post("/execute", json={"prompt": "hi"})).status_code == 200


async def test_partial_error_rate_uses_the_rng() -> None:
    app = create_app(make_config(fault_error_rate=0.5), rng=random.Random(7))
    replay = random.Random(7)
    expected = [500 if replay.random() < 0.5 else 200 for _ in range(20)]
    async with client_for(app) as client:
        codes = [
            (await client.post("/execute", json={"prompt": "hi"})).status_code for _ in expected
        ]
    assert codes == expected
    assert 200 in codes and 500 in codes


async def test_latency_fault_delays_execute(client: httpx.AsyncClient) -> None:
    await client.post("/faults", json={"latency_seconds": 0.2})
    started = time.monotonic()
    assert (await client.post("/execute", json={"prompt": "hi"})).status_code == 200
    assert time.monotonic() - started >= 0.2


async def test_faults_partial_update_and_validation(client: httpx.AsyncClient) -> None:
    await client.post("/faults", json={"error_rate": 0.3, "latency_seconds": 1.5})
    await client.post("/faults", json={"unhealthy": True})
    expected = {"error_rate": 0.3, "latency_seconds": 1.5, "unhealthy": True}
    assert (await client.get("/faults")).json() == expected
    for payload, field in [
        ({"error_rate": 2}, "error_rate"),
        ({"latency_seconds": -1}, "latency_seconds"),
        ({"unhealthy": "yes"}, "unhealthy"),
        ({"explode": True}, "explode"),
    ]:
        response = await client.post("/faults", json=payload)
        assert response.status_code == 422, payload
        assert [e["loc"] for e in response.json()["detail"]] == [[field]]
    assert (await client.get("/faults")).json() == expected


async def test_crash_fault_exits_after_responding() -> None:
    exits: list[int] = []
    app = create_app(make_config(), exit_process=exits.append)
    async with client_for(app) as client:
        response = await client.post("/faults", json={"crash": True})
        assert response.status_code == 200
    assert exits == [1]


async def test_crash_after_seconds_starts_with_lifespan() -> None:
    exits: list[int] = []
    app = create_app(make_config(fault_crash_after_seconds=0.05), exit_process=exits.append)

    async def crashed() -> bool:
        return exits == [1]

    async with app.router.lifespan_context(app):
        assert exits == []
        await wait_until(crashed)


async def test_crash_after_timer_is_cancelled_on_shutdown() -> None:
    exits: list[int] = []
    timer_started, timer_cancelled = asyncio.Event(), asyncio.Event()

    async def timer_sleep(seconds: float) -> None:
        assert seconds == 0.2
        timer_started.set()
        try:
            await asyncio.Event().wait()  # the crash time never comes: only a cancel ends it
        except asyncio.CancelledError:
            timer_cancelled.set()
            raise

    app = create_app(
        make_config(fault_crash_after_seconds=0.2), sleep=timer_sleep, exit_process=exits.append
    )
    async with app.router.lifespan_context(app):
        await asyncio.wait_for(timer_started.wait(), 5)
    # Shutdown cancelled the timer (and waited for it): nothing is left to fire later.
    assert timer_cancelled.is_set()
    assert exits == []


# --- the real process -------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_process_serves_and_crashes_on_request(tmp_path: Path) -> None:
    executable = Path(sys.executable).parent / "fleetops-sample-agent"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    env.update(PORT=str(port), AGENT_ID="proc", REPLICA_INDEX="1")
    log_path = tmp_path / "agent.log"
    base = f"http://127.0.0.1:{port}"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([str(executable)], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, f"agent exited early:\n{log_path.read_text()}"
            assert time.monotonic() < deadline, f"agent never healthy:\n{log_path.read_text()}"
            try:
                health = httpx.get(f"{base}/health", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.05)  # poll interval, not synchronisation
        assert health.status_code == 200
        assert (health.json()["agent_id"], health.json()["replica"]) == ("proc", 1)

        response = httpx.post(f"{base}/faults", json={"crash": True}, timeout=5)
        assert response.status_code == 200
        returncode = proc.wait(timeout=10)
        assert returncode != 0, log_path.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
