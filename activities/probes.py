"""HTTP health probes of agent replicas: ``GET <endpoint><path>`` on every endpoint at once."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities._text import shorten
from fleetops.checks import SmokeRequest, SmokeResult, SmokeTest, WaitHealthyRequest
from fleetops.errors import REPLICAS_NOT_READY
from fleetops.models import ProbeRequest, ProbeResult

_MAX_ERROR_CHARS = 200


def _short(text: str) -> str:
    return shorten(text, _MAX_ERROR_CHARS)


def _in_flight(body: bytes) -> int:
    """``in_flight`` from a JSON body like ``{"status": "ok", "in_flight": 2}``; 0 if absent or
    not JSON (also a body nested too deep to decode: ``json`` raises RecursionError)."""
    try:
        doc: Any = json.loads(body)
    except (ValueError, RecursionError):
        return 0
    value = doc.get("in_flight") if isinstance(doc, dict) else None
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return 0


def answered(
    endpoint: str, status_code: int, body: bytes, text: str, latency: float
) -> ProbeResult:
    """The result of a probe that got an HTTP answer: healthy iff 2xx.

    Args:
        endpoint: the replica's base URL.
        status_code: the HTTP status.
        body: the response body (``in_flight`` is read from its JSON).
        text: the body decoded (the start of it is the error of a non-2xx answer).
        latency: seconds from the request to the answer.
    """
    healthy = 200 <= status_code < 300
    return ProbeResult(
        endpoint=endpoint,
        healthy=healthy,
        status_code=status_code,
        latency_seconds=latency,
        in_flight=_in_flight(body),
        error=None if healthy else _short(f"HTTP {status_code}: {text}"),
    )


def unanswered(endpoint: str, error: str, latency: float) -> ProbeResult:
    """The result of a probe that got no HTTP answer (timeout, refused, bad URL): unhealthy,
    ``error`` cut to 200 characters."""
    return ProbeResult(
        endpoint=endpoint, healthy=False, latency_seconds=latency, in_flight=0, error=_short(error)
    )


class ProbeActivities:
    """Health probes over a shared HTTP client.

    Args:
        client: the client every probe uses; build it without retries (Temporal owns retries)
            and with connection limits that fit the fleet size.
    """

    def __init__(self, client: httpx.AsyncClient) -> None:
        self._client = client

    @activity.defn(name="probe_replicas")
    async def probe_replicas(self, req: ProbeRequest) -> list[ProbeResult]:
        """Probe every endpoint concurrently.

        A replica is healthy iff it answers 2xx within ``req.timeout_seconds`` seconds. Failures
        are reported in the results (``healthy=False`` with a short ``error``), never raised.

        Args:
            req: the endpoints (base URLs), the path, and the per-probe timeout in seconds.

        Returns:
            One result per endpoint, in the order of ``req.endpoints``; ``latency_seconds`` is the
            wall time of the request in seconds.
        """
        probes = (self.probe_one(e, req.path, req.timeout_seconds) for e in req.endpoints)
        return list(await asyncio.gather(*probes))

    async def probe_one(self, endpoint: str, path: str, timeout: float) -> ProbeResult:
        """Probe ``GET <endpoint><path>`` once; failures are results (see :meth:`probe_replicas`).

        Args:
            endpoint: the replica's base URL.
            path: the health path.
            timeout: seconds for the whole request.
        """
        url = endpoint.rstrip("/") + path
        started = time.perf_counter()
        try:
            # httpx timeouts apply per phase; asyncio.timeout bounds the whole request.
            async with asyncio.timeout(timeout):
                response = await self._client.get(url, timeout=timeout)
        except TimeoutError:
            error = f"timed out after {timeout:g}s"
        except (httpx.HTTPError, httpx.InvalidURL) as e:
            error = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        else:
            latency = time.perf_counter() - started
            return answered(
                endpoint, response.status_code, response.content, response.text, latency
            )
        return unanswered(endpoint, error, time.perf_counter() - started)

    @activity.defn(name="wait_healthy")
    async def wait_healthy(self, req: WaitHealthyRequest) -> list[ProbeResult]:
        """Probe until every endpoint is healthy, heartbeating each round.

        Args:
            req: endpoints, path, overall timeout and interval (seconds).

        Returns:
            The last (all healthy) probe results.

        Raises:
            ApplicationError: ``ReplicasNotReady`` (non-retryable) when ``req.timeout_seconds``
                pass first; the message lists the unhealthy endpoints and their last errors.
        """
        deadline = time.monotonic() + req.timeout_seconds
        probe = ProbeRequest(
            endpoints=req.endpoints, path=req.path, timeout_seconds=req.probe_timeout_seconds
        )
        while True:
            results = await self.probe_replicas(probe)
            if all(r.healthy for r in results):
                return results
            bad = "; ".join(f"{r.endpoint}: {r.error}" for r in results if not r.healthy)
            if activity.in_activity():
                activity.heartbeat(bad)
            if time.monotonic() >= deadline:
                raise ApplicationError(
                    f"replicas not healthy within {req.timeout_seconds:g}s: {_short(bad)}",
                    type=REPLICAS_NOT_READY,
                    non_retryable=True,
                )
            await asyncio.sleep(req.interval_seconds)

    @activity.defn(name="run_smoke_tests")
    async def run_smoke_tests(self, req: SmokeRequest) -> list[SmokeResult]:
        """Run every smoke test against every endpoint concurrently.

        A test passes iff the response status equals ``expect_status`` within its timeout.
        Failures are results, never exceptions.

        Returns:
            One result per (test, endpoint), tests in order, endpoints in order within a test.
        """
        checks = [self._smoke(t, e) for t in req.tests for e in req.endpoints]
        return list(await asyncio.gather(*checks))

    async def _smoke(self, test: SmokeTest, endpoint: str) -> SmokeResult:
        url = endpoint.rstrip("/") + test.path
        try:
            async with asyncio.timeout(test.timeout_seconds):
                response = await self._client.request(
                    test.method, url, json=test.body, timeout=test.timeout_seconds
                )
        except TimeoutError:
            return SmokeResult(
                test=test.name, endpoint=endpoint, passed=False,
                error=f"timed out after {test.timeout_seconds:g}s",
            )  # fmt: skip
        except (httpx.HTTPError, httpx.InvalidURL) as e:
            return SmokeResult(
                test=test.name,
                endpoint=endpoint,
                passed=False,
                error=_short(f"{type(e).__name__}: {e}"),
            )
        passed = response.status_code == test.expect_status
        return SmokeResult(
            test=test.name,
            endpoint=endpoint,
            passed=passed,
            status_code=response.status_code,
            error=None
            if passed
            else _short(
                f"expected {test.expect_status}, got {response.status_code}: {response.text}"
            ),
        )
