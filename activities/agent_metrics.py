"""An agent's error rate, latency and traffic, from Prometheus or a direct scrape of its replicas.

Shared by the incident activities (evidence, recovery checks). The PromQL is that of the
analysis built-ins (:data:`activities.metrics.BUILTIN_QUERIES`) over the target label
``fleetops_agent`` only, so both colours of the agent count. Direct scrapes read the sample
agent's families (``agent_requests_total``, ``agent_errors_total``,
``agent_request_duration_seconds``, see ``infra/sample_agent/metrics.py``).

Every failure to read is :class:`MetricsUnavailable` with a short reason: the callers turn it
into a note or an unhealthy answer, never into an activity failure.
"""

from __future__ import annotations

import asyncio
import math
from datetime import datetime

import httpx

from activities._text import shorten
from activities.metrics import BUILTIN_QUERIES, bucket_quantile
from activities.metrics import _Counters as Counters
from fleetops.analysis import prometheus_duration
from fleetops.settings import MetricsSettings

__all__ = ["Counters", "MetricsUnavailable", "PrometheusReader", "agent_queries", "scrape_all"]

MAX_POINTS = 1000
"""Points one range query asks for at most (the step grows to fit; Prometheus allows 11,000)."""


class MetricsUnavailable(Exception):
    """The metrics could not be read (unreachable, an error answer, no data)."""


def agent_queries(agent_id: str, window_seconds: float) -> dict[str, str]:
    """PromQL of ``error_rate``, ``p95_latency_seconds``, ``request_rate`` and ``requests``
    (count in the window) for every replica of ``agent_id``, over ``window_seconds``."""
    sel = f'fleetops_agent="{agent_id}"'
    w = prometheus_duration(window_seconds)
    out: dict[str, str] = {name: q.format(sel=sel, w=w) for name, q in BUILTIN_QUERIES.items()}
    out["requests"] = f'sum(increase(agent_requests_total{{{sel},endpoint="/execute"}}[{w}]))'
    return out


class PrometheusReader:
    """Instant and range queries of the Prometheus HTTP API (``/api/v1/query``,
    ``/api/v1/query_range``).

    Args:
        http: a client without retries (Temporal owns retries).
        settings: ``prometheus_url`` (must be set) and ``query_timeout_seconds``.
    """

    def __init__(self, http: httpx.AsyncClient, settings: MetricsSettings) -> None:
        assert settings.prometheus_url
        self._http = http
        self._base = settings.prometheus_url.rstrip("/")
        self._timeout = settings.query_timeout_seconds

    async def _get(self, path: str, params: dict[str, str]) -> dict[str, object]:
        try:
            async with asyncio.timeout(self._timeout):
                r = await self._http.get(self._base + path, params=params, timeout=self._timeout)
        except TimeoutError:
            raise MetricsUnavailable(f"prometheus timed out after {self._timeout:g}s") from None
        except (httpx.HTTPError, httpx.InvalidURL) as e:
            raise MetricsUnavailable(f"prometheus unreachable: {type(e).__name__}: {e}") from None
        if not r.is_success:
            raise MetricsUnavailable(shorten(f"prometheus answered {r.status_code}: {r.text}", 300))
        try:
            data = r.json()["data"]
            assert isinstance(data, dict)
            return data
        except (ValueError, KeyError, TypeError, AssertionError):
            raise MetricsUnavailable("unexpected prometheus response") from None

    async def instant(self, promql: str) -> float | None:
        """The first sample of an instant query; None without data (or NaN).

        Raises:
            MetricsUnavailable: Prometheus unreachable or answered an error.
        """
        data = await self._get("/api/v1/query", {"query": promql})
        result = data.get("result")
        if not isinstance(result, list) or not result:
            return None
        value = float(result[0]["value"][1])
        return None if math.isnan(value) else value

    async def series(
        self, promql: str, start: datetime, end: datetime, step_seconds: float
    ) -> tuple[list[tuple[float, float]], float]:
        """The first series of a range query from ``start`` to ``end``.

        Returns:
            ((unix time, value) points without NaNs, the step used in seconds: at least
            ``step_seconds``, larger when the window would need more than :data:`MAX_POINTS`).

        Raises:
            MetricsUnavailable: Prometheus unreachable or answered an error.
        """
        span = max((end - start).total_seconds(), 0.0)
        step = max(step_seconds, span / MAX_POINTS)
        params = {
            "query": promql,
            "start": f"{start.timestamp():.3f}",
            "end": f"{end.timestamp():.3f}",
            "step": f"{step:g}",
        }
        data = await self._get("/api/v1/query_range", params)
        result = data.get("result")
        if not isinstance(result, list) or not result:
            return [], step
        points = [(float(t), float(v)) for t, v in result[0]["values"]]
        return [(t, v) for t, v in points if not math.isnan(v)], step


async def scrape_all(
    http: httpx.AsyncClient, endpoints: list[str], timeout: float
) -> list[Counters | str]:
    """Scrape ``<endpoint>/metrics`` of each replica at once.

    Returns:
        Per endpoint, in order: its counters, or why it could not be read.
    """

    async def one(endpoint: str) -> Counters | str:
        url = endpoint.rstrip("/") + "/metrics"
        try:
            async with asyncio.timeout(timeout):
                r = await http.get(url, timeout=timeout)
            if not r.is_success:
                return f"{url} answered {r.status_code}"
            return Counters.parse(r.text)
        except TimeoutError:
            return f"{url} timed out after {timeout:g}s"
        except (httpx.HTTPError, httpx.InvalidURL, ValueError) as e:
            return f"{url}: {type(e).__name__}: {e}"

    return list(await asyncio.gather(*(one(e) for e in endpoints)))


def summarize(c: Counters) -> dict[str, float]:
    """``requests``, ``errors``, ``error_rate`` (0..1, when requests > 0) and
    ``p95_latency_seconds`` (when observed) of counters (cumulative or a delta)."""
    out = {"requests": c.requests, "errors": c.errors}
    if c.requests > 0:
        out["error_rate"] = c.errors / c.requests
    p95 = bucket_quantile(0.95, list(c.buckets.items()))
    if not math.isnan(p95):
        out["p95_latency_seconds"] = p95
    return out
