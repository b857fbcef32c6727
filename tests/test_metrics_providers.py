"""``measure_metric`` against real processes: sample-agent replicas, and a real Prometheus.

Two replicas serve ``/execute`` traffic driven over httpx (with ``POST /faults`` injecting
errors). The scrape provider reads their ``/metrics`` directly; then ``/usr/bin/prometheus``
(``scrape_interval: 1s``, target labels ``fleetops_agent``/``fleetops_color``) scrapes them and
the Prometheus provider's built-ins and a raw PromQL query must agree with the traffic.
"""

from __future__ import annotations

import asyncio
import math
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.metrics import MetricsActivities, bucket_quantile
from fleetops.analysis import Builtin, Measurement, MeasureRequest, Metric
from fleetops.settings import MetricsSettings
from tests.helpers import require_binary

BIN = Path(sys.executable).parent
AGENT = "prov-test"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


async def wait_until(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 30) -> None:
    """Poll ``check`` until it returns True; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"{what} not within {timeout:g}s"
        await asyncio.sleep(0.05)


@pytest.fixture(scope="module")
async def replicas(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[list[str]]:
    """Base URLs of two healthy sample-agent replicas (killed afterwards)."""
    log_dir = tmp_path_factory.mktemp("agents")
    processes, endpoints = [], []
    try:
        for index in range(2):
            port = free_port()
            env = {**os.environ, "HOST": "127.0.0.1", "PORT": str(port), "AGENT_ID": AGENT,
                   "AGENT_VERSION": "v2", "REPLICA_INDEX": str(index)}  # fmt: skip
            with (log_dir / f"{index}.log").open("wb") as log:
                processes.append(
                    subprocess.Popen(
                        [BIN / "fleetops-sample-agent"], env=env, stdout=log, stderr=log
                    )
                )
            endpoints.append(f"http://127.0.0.1:{port}")
        async with httpx.AsyncClient() as http:
            for process, endpoint in zip(processes, endpoints, strict=True):

                async def healthy(p: Any = process, e: str = endpoint) -> bool:
                    assert p.poll() is None, "sample agent exited; see its log"
                    try:
                        return (await http.get(f"{e}/health")).status_code == 200
                    except httpx.HTTPError:
                        return False

                await wait_until(healthy, f"sample agent {endpoint} healthy")
        yield endpoints
    finally:
        for process in processes:
            stop(process)


async def set_faults(endpoints: list[str], error_rate: float) -> None:
    async with httpx.AsyncClient() as http:
        for e in endpoints:
            (await http.post(f"{e}/faults", json={"error_rate": error_rate})).raise_for_status()


async def drive(
    endpoints: list[str], n: int, *, concurrency: int = 16, seconds: float = math.inf
) -> tuple[int, int]:
    """POST up to ``n`` /execute requests round-robin over ``endpoints``, starting none after
    ``seconds``; returns how many were sent and how many got 500."""
    statuses: list[int] = []
    queue = list(range(n))
    deadline = time.monotonic() + seconds

    async def worker(http: httpx.AsyncClient) -> None:
        while queue and time.monotonic() < deadline:
            i = queue.pop()
            r = await http.post(f"{endpoints[i % len(endpoints)]}/execute", json={"prompt": "hi"})
            statuses.append(r.status_code)

    async with httpx.AsyncClient(timeout=10) as http:
        await asyncio.gather(*(worker(http) for _ in range(concurrency)))
    assert set(statuses) <= {200, 500}
    return len(statuses), statuses.count(500)


def request(metric: Metric, endpoints: list[str], window: float) -> MeasureRequest:
    return MeasureRequest(
        metric=metric, agent_id=AGENT, color="green", version="v2",
        endpoints=endpoints, window_seconds=window,
    )  # fmt: skip


async def measure(activities: MetricsActivities, req: MeasureRequest) -> Measurement:
    result: Measurement = await ActivityEnvironment().run(activities.measure_metric, req)
    return result


BUILTINS: list[Builtin] = ["error_rate", "request_rate", "p95_latency_seconds"]


# --- pure parts -------------------------------------------------------------------------------


def test_bucket_quantile_matches_prometheus() -> None:
    # 100 observations: 50 <= 0.1, 40 in (0.1, 0.5], 10 in (0.5, +Inf)
    buckets = [(0.1, 50.0), (0.5, 90.0), (math.inf, 100.0)]
    assert bucket_quantile(0.5, buckets) == pytest.approx(0.1)
    assert bucket_quantile(0.7, buckets) == pytest.approx(0.1 + 0.4 * 20 / 40)
    assert bucket_quantile(0.25, buckets) == pytest.approx(0.05)  # lowest bucket starts at 0
    assert bucket_quantile(0.95, buckets) == 0.5  # rank in +Inf: second-highest bound
    assert math.isnan(bucket_quantile(0.95, [(0.1, 0.0), (math.inf, 0.0)]))
    assert math.isnan(bucket_quantile(0.95, [(0.1, 3.0), (1.0, 3.0)]))  # no +Inf bucket


# --- scrape provider --------------------------------------------------------------------------


async def scrape_builtins(
    endpoints: list[str], window: float, traffic: int, errors: float
) -> tuple[dict[str, Measurement], int, int]:
    """Measure every built-in at once, driving up to ``traffic`` requests inside the window
    (none started after 60% of it, so a slow machine sends fewer instead of spilling over).

    Returns:
        The measurements by built-in, the requests sent, and how many of them failed.
    """
    scrapes = 0
    first_round = asyncio.Event()

    async def count(response: httpx.Response) -> None:
        nonlocal scrapes
        if response.request.url.path == "/metrics":
            scrapes += 1
            if scrapes == len(BUILTINS) * len(endpoints):
                first_round.set()

    await set_faults(endpoints, errors)
    async with httpx.AsyncClient(event_hooks={"response": [count]}) as http:
        activities = MetricsActivities(http, MetricsSettings())
        metrics = [Metric(name=b, builtin=b) for b in BUILTINS]
        tasks = [
            asyncio.ensure_future(measure(activities, request(m, endpoints, window)))
            for m in metrics
        ]
        await asyncio.wait_for(first_round.wait(), timeout=10)
        sent, failed = await drive(endpoints, traffic, seconds=0.6 * window)
        assert scrapes == len(BUILTINS) * len(endpoints), "traffic outlasted the window"
        results = await asyncio.gather(*tasks)
    return dict(zip(BUILTINS, results, strict=True)), sent, failed


async def test_scrape_provider_without_faults(replicas: list[str]) -> None:
    window = 4.0
    m, sent, _ = await scrape_builtins(replicas, window, traffic=60, errors=0.0)
    assert sent >= 20
    assert m["error_rate"] == Measurement(value=0.0, phase="Successful")
    rate = m["request_rate"].value  # the requests over the window and the second scrape
    assert rate is not None and sent / (window + 1.5) <= rate <= sent / window
    p95 = m["p95_latency_seconds"].value
    assert p95 is not None and 0.005 <= p95 <= 0.25  # simulated work is 10 ms


async def test_scrape_provider_with_injected_errors(replicas: list[str]) -> None:
    m, sent, failed = await scrape_builtins(replicas, 4.0, traffic=100, errors=0.5)
    await set_faults(replicas, 0.0)
    assert sent >= 30
    error_rate = m["error_rate"].value
    assert error_rate is not None and error_rate == pytest.approx(failed / sent)  # exact sums
    assert abs(error_rate - 0.5) <= max(0.2, 2 / math.sqrt(sent))  # 4 standard deviations


async def test_scrape_provider_without_requests(replicas: list[str]) -> None:
    m, _, _ = await scrape_builtins(replicas, 0.3, traffic=0, errors=0.0)
    assert m["error_rate"] == Measurement(error="no requests in window", phase="Error")
    assert m["p95_latency_seconds"].error == "no requests in window"
    assert m["request_rate"].value == 0.0


async def test_scrape_provider_errors_and_config_errors(replicas: list[str]) -> None:
    async with httpx.AsyncClient() as http:
        activities = MetricsActivities(http, MetricsSettings(query_timeout_seconds=2))
        down = f"http://127.0.0.1:{free_port()}"
        m = await measure(
            activities, request(Metric(name="e", builtin="error_rate"), [*replicas, down], 0.1)
        )
        assert m.phase == "Error" and m.error is not None and "ConnectError" in m.error
        with pytest.raises(ApplicationError, match="FLEETOPS_METRICS__PROMETHEUS_URL") as exc:
            await measure(activities, request(Metric(name="q", query="up"), replicas, 0.1))
    assert exc.value.type == "AnalysisConfigError" and exc.value.non_retryable
    assert "FLEETOPS_METRICS__PROMETHEUS_URL" in exc.value.message


# --- Prometheus provider ----------------------------------------------------------------------


@pytest.fixture(scope="module")
async def prometheus(
    replicas: list[str], tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[str]:
    """A real Prometheus scraping the replicas every second; its base URL."""
    binary = require_binary("prometheus", hint="apt-get install prometheus")
    tmp = tmp_path_factory.mktemp("prometheus")
    targets = ", ".join(f'"{e.removeprefix("http://")}"' for e in replicas)
    (tmp / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        "  - job_name: agents\n"
        f"    static_configs: [{{targets: [{targets}], "
        f"labels: {{fleetops_agent: {AGENT}, fleetops_color: green}}}}]\n"
    )
    address = f"127.0.0.1:{free_port()}"
    url = f"http://{address}"
    args = [
        binary,
        f"--config.file={tmp / 'prometheus.yml'}",
        f"--storage.tsdb.path={tmp / 'data'}",
        f"--web.listen-address={address}",
        "--log.level=warn",
    ]
    with (tmp / "prometheus.log").open("wb") as log:
        process = subprocess.Popen(args, stdout=log, stderr=log)
    try:
        async with httpx.AsyncClient() as http:

            async def ready() -> bool:
                assert process.poll() is None, (tmp / "prometheus.log").read_text()
                try:
                    return (await http.get(f"{url}/-/ready")).status_code == 200
                except httpx.HTTPError:
                    return False

            async def targets_up() -> bool:
                active = (await http.get(f"{url}/api/v1/targets")).json()["data"]["activeTargets"]
                return len(active) == len(replicas) and all(t["health"] == "up" for t in active)

            await wait_until(ready, "prometheus ready")
            await wait_until(targets_up, "prometheus targets up")
        yield url
    finally:
        stop(process)


async def scraped_total(http: httpx.AsyncClient, prometheus: str, replicas: list[str]) -> None:
    """Wait until Prometheus has scraped the replicas' current /execute totals."""

    async def total(text: str) -> float:
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith('agent_requests_total{endpoint="/execute"'))  # fmt: skip

    expected = sum([await total((await http.get(f"{e}/metrics")).text) for e in replicas])
    query = f'sum(agent_requests_total{{fleetops_agent="{AGENT}",endpoint="/execute"}})'

    async def caught_up() -> bool:
        data = (await http.get(f"{prometheus}/api/v1/query", params={"query": query})).json()
        result = data["data"]["result"]
        return bool(result) and float(result[0]["value"][1]) >= expected

    await wait_until(caught_up, "prometheus scrape of the traffic", timeout=15)


async def test_prometheus_provider(replicas: list[str], prometheus: str) -> None:
    await set_faults(replicas, 0.5)
    started = time.monotonic()
    failed, sent = 0, 0
    while time.monotonic() - started < 4:  # steady traffic over several scrapes
        batch, batch_failed = await drive(replicas, 40, concurrency=4)
        sent, failed = sent + batch, failed + batch_failed
    await set_faults(replicas, 0.0)
    window = 10.0
    async with httpx.AsyncClient() as http:
        await scraped_total(http, prometheus, replicas)
        activities = MetricsActivities(http, MetricsSettings(prometheus_url=prometheus))
        increase = Metric(
            name="increase",
            query='sum(increase(agent_requests_total{fleetops_agent="$agent_id",'
            'fleetops_color="$color",endpoint="/execute"}[$window]))',
            success_condition="result > 0",
        )
        metrics = [Metric(name=b, builtin=b) for b in BUILTINS] + [increase]
        results = await asyncio.gather(
            *(measure(activities, request(m, [], window)) for m in metrics)
        )
        m = dict(zip([*BUILTINS, "increase"], results, strict=True))
        assert all(r.phase == "Successful" for r in results), results
        assert 0.3 <= (m["error_rate"].value or 0) <= 0.7, (m, failed / sent)
        assert 0.5 * sent / window <= (m["request_rate"].value or 0) <= 1.5 * sent / window
        assert 0.005 <= (m["p95_latency_seconds"].value or 0) <= 0.25
        assert 0.5 * sent <= (m["increase"].value or 0) <= 1.5 * sent

        other = request(Metric(name="x", builtin="request_rate"), [], window).model_copy(
            update={"agent_id": "nobody"}
        )
        assert await measure(activities, other) == Measurement(error="no data", phase="Error")
        with pytest.raises(ApplicationError, match=r"prometheus answered 400 to 'sum\(up'") as exc:
            await measure(activities, request(Metric(name="bad", query="sum(up"), [], window))
        assert exc.value.type == "AnalysisConfigError" and "400" in exc.value.message

        down = MetricsActivities(
            http, MetricsSettings(prometheus_url=f"http://127.0.0.1:{free_port()}")
        )
        m_down = await measure(down, request(Metric(name="r", builtin="request_rate"), [], window))
        assert m_down.phase == "Error" and "prometheus unreachable" in (m_down.error or "")
