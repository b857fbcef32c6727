"""Measurements for analysis: the Prometheus HTTP API, or direct scrapes of the replicas.

With ``metrics.prometheus_url`` set, a measurement is one instant query (``GET /api/v1/query``).
Built-in measures are PromQL over the target labels ``fleetops_agent`` and ``fleetops_color``,
which the Prometheus scrape configuration must attach to every replica (static labels, or
relabelling from the pod labels ``fleetops.io/agent`` / ``fleetops.io/color``). ``$window`` is a
Prometheus duration; make it at least four scrape intervals, or ``rate()`` sees too few samples
and the measurement errors with "no data".

Without it, the replicas' ``/metrics`` are scraped twice, ``window_seconds`` apart, and the
built-ins come from counter deltas summed over the replicas (a counter that went down is a
restarted replica, counted from zero as ``rate()`` does). A PromQL ``query`` needs Prometheus.

Errors follow Argo: an unreachable Prometheus or replica, a timeout, a 5xx or "no data" is an
``Error`` measurement (it counts toward ``consecutive_error_limit``), never an exception; only a
configuration error raises (non-retryable ``AnalysisConfigError``). The returned measurement is
already classified with :func:`~fleetops.analysis.classify`, so histories read well; workflows
classify the value again themselves, so the decision is made by the workflow's own code.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field

import httpx
from prometheus_client.parser import text_string_to_metric_families
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities._text import shorten
from fleetops.analysis import Builtin, Measurement, MeasureRequest, classify, prometheus_duration
from fleetops.errors import ANALYSIS_CONFIG_ERROR
from fleetops.settings import MetricsSettings

CONFIG_ERROR = ANALYSIS_CONFIG_ERROR
"""``ApplicationError.type`` of a measurement that cannot work as configured (non-retryable)."""
EXECUTE = "/execute"
_SELECTOR = 'fleetops_agent="{agent}",fleetops_color="{color}"'
BUILTIN_QUERIES: dict[Builtin, str] = {
    "error_rate": "sum(rate(agent_errors_total{{{sel}}}[{w}]))"
    ' / sum(rate(agent_requests_total{{{sel},endpoint="/execute"}}[{w}]))',
    "p95_latency_seconds": "histogram_quantile(0.95, "
    "sum by (le) (rate(agent_request_duration_seconds_bucket{{{sel}}}[{w}])))",
    "request_rate": 'sum(rate(agent_requests_total{{{sel},endpoint="/execute"}}[{w}]))',
}
"""PromQL of the built-ins; ``{sel}`` is the agent/colour selector, ``{w}`` the window."""
_MAX_ERROR_CHARS = 300


def _short(text: str) -> str:
    return shorten(text, _MAX_ERROR_CHARS)


def _describe(err: Exception) -> str:
    return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__


class _NoData(Exception):
    """A measurement without a value (an Error measurement, not a failure of the activity)."""


def bucket_quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """Prometheus' ``histogram_quantile`` over cumulative ``(upper_bound, count)`` buckets.

    Linear interpolation inside the bucket holding the rank; the lowest bucket starts at 0; a
    rank in the +Inf bucket answers the second-highest bound (``promql/quantile.go``).

    Returns:
        The quantile, or NaN without observations or without a +Inf bucket.
    """
    buckets = sorted(buckets)
    if len(buckets) < 2 or not math.isinf(buckets[-1][0]) or buckets[-1][1] <= 0:
        return math.nan
    counts = [buckets[0][1]]
    for _, count in buckets[1:]:
        counts.append(max(count, counts[-1]))  # ensure monotonic, as Prometheus does
    rank = q * counts[-1]
    b = next(i for i, c in enumerate(counts) if c >= rank)
    if b == len(buckets) - 1:
        return buckets[-2][0]
    if b == 0 and buckets[0][0] <= 0:
        return buckets[0][0]
    start, end, count = (0.0 if b == 0 else buckets[b - 1][0]), buckets[b][0], counts[b]
    if b > 0:
        count -= counts[b - 1]
        rank -= counts[b - 1]
    return start + (end - start) * (rank / count)


@dataclass
class _Counters:
    """The sample agent's counters in one scrape of one replica (or a sum of deltas)."""

    requests: float = 0.0
    errors: float = 0.0
    buckets: dict[float, float] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> _Counters:
        c = cls()
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == "agent_requests_total" and s.labels.get("endpoint") == EXECUTE:
                    c.requests += s.value
                elif s.name == "agent_errors_total":
                    c.errors += s.value
                elif s.name == "agent_request_duration_seconds_bucket":
                    le = float(s.labels["le"])
                    c.buckets[le] = c.buckets.get(le, 0.0) + s.value
        return c

    def __sub__(self, before: _Counters) -> _Counters:
        def delta(now: float, then: float) -> float:
            return now if now < then else now - then  # a reset restarts from zero

        return _Counters(
            delta(self.requests, before.requests),
            delta(self.errors, before.errors),
            {le: delta(v, before.buckets.get(le, 0.0)) for le, v in self.buckets.items()},
        )

    def __add__(self, other: _Counters) -> _Counters:
        les = self.buckets.keys() | other.buckets.keys()
        return _Counters(
            self.requests + other.requests,
            self.errors + other.errors,
            {le: self.buckets.get(le, 0.0) + other.buckets.get(le, 0.0) for le in les},
        )


def builtin_from_deltas(builtin: Builtin, delta: _Counters, seconds: float) -> float:
    """A built-in measure from counter deltas over ``seconds`` (summed over replicas).

    Raises:
        _NoData: no /execute requests in the window (error rate and latency are undefined).
    """
    if builtin == "request_rate":
        return delta.requests / seconds
    if delta.requests <= 0:
        raise _NoData("no requests in window")
    if builtin == "error_rate":
        return delta.errors / delta.requests
    value = bucket_quantile(0.95, list(delta.buckets.items()))
    if math.isnan(value):
        raise _NoData("no latency observations in window")
    return value


class MetricsActivities:
    """Measures analysis metrics.

    Args:
        http: the client for Prometheus and replica scrapes; build it without retries
            (Temporal owns retries).
        settings: where Prometheus is (unset: scrape the replicas) and the query timeout.
    """

    def __init__(self, http: httpx.AsyncClient, settings: MetricsSettings) -> None:
        self._http = http
        self._settings = settings

    @activity.defn(name="measure_metric")
    async def measure_metric(self, req: MeasureRequest) -> Measurement:
        """Take one measurement of ``req.metric``.

        Returns:
            The value (or the error) classified by the metric's conditions.

        Raises:
            ApplicationError: ``AnalysisConfigError`` (non-retryable) when the metric cannot be
                measured as configured: a PromQL query without Prometheus, a query Prometheus
                rejects (HTTP 400), a Prometheus URL answering 401/403/404, a non-instant result.
        """
        try:
            if self._settings.prometheus_url:
                value = await self._query(self._settings.prometheus_url, self._promql(req))
            elif req.metric.builtin is None:
                raise ApplicationError(
                    f"metric {req.metric.name!r} is a PromQL query but no Prometheus is "
                    "configured: set FLEETOPS_METRICS__PROMETHEUS_URL or use a builtin",
                    type=CONFIG_ERROR,
                    non_retryable=True,
                )
            else:
                value = await self._scrape(req, req.metric.builtin)
        except _NoData as e:
            return classify(req.metric, None, _short(str(e)))
        return classify(req.metric, value, None)

    # --- Prometheus -------------------------------------------------------------------------

    def _promql(self, req: MeasureRequest) -> str:
        m = req.metric
        if m.builtin is not None:
            sel = _SELECTOR.format(agent=req.agent_id, color=req.color)
            return BUILTIN_QUERIES[m.builtin].format(
                sel=sel, w=prometheus_duration(req.window_seconds)
            )
        return m.render_query(
            agent_id=req.agent_id, color=req.color, version=req.version, window=req.window_seconds
        )

    async def _query(self, base_url: str, promql: str) -> float:
        timeout = self._settings.query_timeout_seconds
        url = base_url.rstrip("/") + "/api/v1/query"
        try:
            async with asyncio.timeout(timeout):
                response = await self._http.get(url, params={"query": promql}, timeout=timeout)
        except TimeoutError:
            raise _NoData(f"prometheus query timed out after {timeout:g}s") from None
        except (httpx.HTTPError, httpx.InvalidURL) as e:
            raise _NoData(f"prometheus unreachable: {_describe(e)}") from None
        if response.status_code in (400, 401, 403, 404):
            raise ApplicationError(
                _short(f"prometheus answered {response.status_code} to {promql!r}: {response.text}")
                + " (fix the query or metrics.prometheus_url)",
                type=CONFIG_ERROR,
                non_retryable=True,
            )
        if not response.is_success:  # 422 (execution), 429, 5xx: this measurement errored
            raise _NoData(_short(f"prometheus answered {response.status_code}: {response.text}"))
        try:
            data = response.json()["data"]
            kind, result = data["resultType"], data["result"]
        except (ValueError, KeyError, TypeError) as e:
            raise _NoData(f"unexpected prometheus response: {_describe(e)}") from None
        if kind == "vector":
            if not result:
                raise _NoData("no data")
            result = result[0]["value"]
        elif kind != "scalar":
            raise ApplicationError(
                f"query {promql!r} returns a {kind}; analysis needs a scalar or instant vector",
                type=CONFIG_ERROR,
                non_retryable=True,
            )
        value = float(result[1])
        if math.isnan(value):
            raise _NoData("no data")
        return value

    # --- direct scrapes ---------------------------------------------------------------------

    async def _scrape(self, req: MeasureRequest, builtin: Builtin) -> float:
        if not req.endpoints:
            raise _NoData("no replica endpoints to scrape")
        before = await self._scrape_all(req.endpoints)
        started = time.monotonic()
        deadline = started + req.window_seconds
        while (left := deadline - time.monotonic()) > 0:
            if activity.in_activity():
                activity.heartbeat(f"{left:.0f}s of the window left")
            await asyncio.sleep(min(1.0, left))
        after = await self._scrape_all(req.endpoints)
        elapsed = time.monotonic() - started
        delta = sum((a - b for a, b in zip(after, before, strict=True)), _Counters())
        return builtin_from_deltas(builtin, delta, elapsed)

    async def _scrape_all(self, endpoints: list[str]) -> list[_Counters]:
        results = await asyncio.gather(
            *(self._scrape_one(e) for e in endpoints), return_exceptions=True
        )
        for r in results:
            if isinstance(r, BaseException):
                raise r  # the first failed replica, in endpoint order
        return [r for r in results if isinstance(r, _Counters)]

    async def _scrape_one(self, endpoint: str) -> _Counters:
        timeout = self._settings.query_timeout_seconds
        url = endpoint.rstrip("/") + "/metrics"
        try:
            async with asyncio.timeout(timeout):
                response = await self._http.get(url, timeout=timeout)
        except TimeoutError:
            raise _NoData(f"scrape of {url} timed out after {timeout:g}s") from None
        except (httpx.HTTPError, httpx.InvalidURL) as e:
            raise _NoData(f"scrape of {url} failed: {_describe(e)}") from None
        if not response.is_success:
            raise _NoData(f"scrape of {url} answered {response.status_code}")
        try:
            return _Counters.parse(response.text)
        except ValueError as e:
            raise _NoData(f"scrape of {url}: unparsable metrics: {_describe(e)}") from None
