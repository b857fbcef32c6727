"""Whether an incident's agent is back within its thresholds (activity ``check_recovery``).

Healthy means all of: the agent serves (state READY or PROCESSING), its error rate is at most
``error_rate_max`` and its p95 latency at most ``p95_latency_max_seconds`` over the last
``window_seconds``, with at least ``min_requests`` requests in that window. Without requests the
error rate and latency are undefined: healthy only if ``min_requests`` is 0 (nothing failed).

Values come from Prometheus (instant queries of :func:`~activities.agent_metrics.agent_queries`)
when ``metrics.prometheus_url`` is set, else from two scrapes of every replica's ``/metrics``
``window_seconds`` apart (counter deltas, as ``rate()`` computes them; the activity heartbeats
meanwhile). Unreadable metrics are an unhealthy answer saying why, never a failure: the
incident checks again later.
"""

from __future__ import annotations

import asyncio
import time

import httpx
from temporalio import activity
from temporalio.client import Client

from activities.agent_metrics import (
    Counters,
    MetricsUnavailable,
    PrometheusReader,
    agent_queries,
    scrape_all,
    summarize,
)
from fleetops.constants import agent_workflow_id
from fleetops.incidents import RecoveryCheck, RecoveryStatus
from fleetops.models import AgentState, AgentStatus
from fleetops.settings import MetricsSettings

SERVING = frozenset({AgentState.READY, AgentState.PROCESSING})


def judge(check: RecoveryCheck, state: str, values: dict[str, float]) -> RecoveryStatus:
    """Compare ``values`` (``requests``, ``error_rate``, ``p95_latency_seconds``) and the agent's
    ``state`` with the thresholds of ``check`` (rules in the module docstring)."""
    problems = []
    if state not in SERVING:
        problems.append(f"agent is {state}")
    requests = values.get("requests", 0.0)
    if requests < check.min_requests:
        problems.append(f"{requests:g} requests in the window, fewer than {check.min_requests}")
    rate = values.get("error_rate")
    if rate is not None and rate > check.error_rate_max:
        problems.append(f"error rate {rate:.3g} > {check.error_rate_max:g}")
    p95 = values.get("p95_latency_seconds")
    if p95 is not None and p95 > check.p95_latency_max_seconds:
        problems.append(f"p95 latency {p95:.3g}s > {check.p95_latency_max_seconds:g}s")
    if problems:
        return RecoveryStatus(healthy=False, detail="; ".join(problems), values=values)
    shown = ", ".join(f"{k} {v:.3g}" for k, v in sorted(values.items()))
    return RecoveryStatus(healthy=True, detail=f"within thresholds: {shown}", values=values)


class RecoveryActivities:
    """Checks recovery (activity ``check_recovery``).

    Args:
        client: a connected client (the agent's ``status`` query: state and replica endpoints).
        http: a client without retries for Prometheus and scrapes.
        settings: ``metrics`` settings (Prometheus URL, query timeout in seconds).
    """

    def __init__(self, client: Client, http: httpx.AsyncClient, settings: MetricsSettings) -> None:
        self._client = client
        self._http = http
        self._settings = settings

    @activity.defn(name="check_recovery")
    async def check_recovery(self, check: RecoveryCheck) -> RecoveryStatus:
        """Measure the agent now and judge it against ``check``.

        Returns:
            ``healthy`` with the values measured; unhealthy with the reasons, also when the
            agent or its metrics cannot be read.

        Raises:
            ApplicationError: only for bad input (the model refuses it: ``InvalidInput``).
        """
        wid = agent_workflow_id(check.agent_id)
        try:
            handle = self._client.get_workflow_handle(wid)
            st = await handle.query("status", result_type=AgentStatus)
        except Exception as e:  # not running, query failed: not recovered, say why
            return RecoveryStatus(healthy=False, detail=f"{wid} status not read: {e}"[:2000])
        try:
            if self._settings.prometheus_url:
                values = await self._prometheus(check)
            else:
                values = await self._scrape(check, [r.endpoint for r in st.replicas])
        except MetricsUnavailable as e:
            return RecoveryStatus(healthy=False, detail=f"metrics not read: {e}"[:2000])
        return judge(check, str(st.state), values)

    async def _prometheus(self, check: RecoveryCheck) -> dict[str, float]:
        reader = PrometheusReader(self._http, self._settings)
        values: dict[str, float] = {}
        for name, promql in agent_queries(check.agent_id, check.window_seconds).items():
            if name == "request_rate":
                continue
            value = await reader.instant(promql)
            if value is not None:
                values[name] = value
        return values

    async def _scrape(self, check: RecoveryCheck, endpoints: list[str]) -> dict[str, float]:
        if not endpoints:
            raise MetricsUnavailable("the agent has no replicas to scrape")
        timeout = self._settings.query_timeout_seconds
        before = await scrape_all(self._http, endpoints, timeout)
        deadline = time.monotonic() + check.window_seconds
        while (left := deadline - time.monotonic()) > 0:
            activity.heartbeat(f"{left:.0f}s of the window left")
            await asyncio.sleep(min(1.0, left))
        after = await scrape_all(self._http, endpoints, timeout)
        total = Counters()
        for endpoint, b, a in zip(endpoints, before, after, strict=True):
            if isinstance(b, str) or isinstance(a, str):
                why = b if isinstance(b, str) else a
                raise MetricsUnavailable(f"scrape of {endpoint} failed: {why}")
            total = total + (a - b)
        return summarize(total)
