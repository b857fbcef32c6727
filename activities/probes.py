"""HTTP health probes of agent replicas: ``GET <endpoint><path>`` on every endpoint at once."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
from temporalio import activity

from fleetops.models import ProbeRequest, ProbeResult

_MAX_ERROR_CHARS = 200


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MAX_ERROR_CHARS else text[: _MAX_ERROR_CHARS - 3] + "..."


def _in_flight(response: httpx.Response) -> int:
    """``in_flight`` from a JSON body like ``{"status": "ok", "in_flight": 2}``; 0 if absent."""
    try:
        body: Any = response.json()
    except ValueError:
        return 0
    value = body.get("in_flight") if isinstance(body, dict) else None
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return 0


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
        probes = (self._probe(e, req.path, req.timeout_seconds) for e in req.endpoints)
        return list(await asyncio.gather(*probes))

    async def _probe(self, endpoint: str, path: str, timeout: float) -> ProbeResult:
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
            healthy = response.is_success
            return ProbeResult(
                endpoint=endpoint,
                healthy=healthy,
                status_code=response.status_code,
                latency_seconds=latency,
                in_flight=_in_flight(response),
                error=None if healthy else _short(f"HTTP {response.status_code}: {response.text}"),
            )
        return ProbeResult(
            endpoint=endpoint,
            healthy=False,
            latency_seconds=time.perf_counter() - started,
            in_flight=0,
            error=_short(error),
        )
