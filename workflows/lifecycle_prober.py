"""Health checking through the data-plane prober (``watch_replicas``): AgentLifecycle's loop
when ``health.probing`` is ``data-plane`` (behind the patch ``data-plane-prober``).

Deterministic workflow code, a mixin like :mod:`workflows.lifecycle_operations`. One prober
activity runs per agent run, on ``<task queue>-probers``. The loop keeps it in step with the
agent: after every step it builds the request the agent needs now (replicas, health rule,
baseline); if the running prober was started with another one (scale, colour switch, pause,
restart, configure, a decision), it is cancelled and a new one started at once. A report is
evidence only; :meth:`ProbedLifecycle._on_report` makes the decisions the old health round made.

History per idle healthy agent: one prober per lease (``LEASE_SECONDS``): scheduled, started,
completed and one workflow task (6 events an hour).
"""

from __future__ import annotations

import contextlib
from datetime import datetime, timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from activities.prober import ProberActivities
    from fleetops.models import AgentCounters, AgentSpec, AgentState, ProbeResult, Replica
    from fleetops.prober import PROBER_QUEUE_SUFFIX, WatchedReplica, WatchReport, WatchRequest

S = AgentState
PROBER_PATCH = "data-plane-prober"
"""Patch id: health is checked by the data-plane prober (only for ``health.probing:
data-plane``; runs begun before keep the workflow's own health rounds)."""
LEASE_SECONDS = 3600.0
"""A prober reports at least once an hour even if nothing changed (status freshness)."""
PROBER_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=1.0,
    non_retryable_error_types=["InvalidInput"],
)
"""A prober that died (heartbeat timeout, worker gone) is started again 1 s later, on any
worker polling the prober queue, for as long as the agent runs."""
MIN_HEARTBEAT_SECONDS = 3.0
"""Lower bound of the prober's heartbeat timeout (it beats every quarter of it)."""


def heartbeat_timeout(interval_seconds: float, configured: float | None = None) -> timedelta:
    """``health.prober_heartbeat_seconds`` if set, else one interval (at least 3 s, at most
    5 min): a dead prober is re-established within it."""
    if configured is not None:
        return timedelta(seconds=configured)
    return timedelta(seconds=min(max(interval_seconds, MIN_HEARTBEAT_SECONDS), 300.0))


class ProbedLifecycle:
    """Mixin of ``AgentLifecycle``: keeps one prober running and turns its reports into state."""

    _spec: AgentSpec
    _counters: AgentCounters
    _replicas: list[Replica]
    _failures: dict[int, int]
    _starting: dict[int, datetime]
    _probes: dict[int, ProbeResult]
    _state: AgentState
    _degraded_since: datetime | None
    _watch: workflow.ActivityHandle[WatchReport] | None
    _watch_req: WatchRequest | None
    _probed_at: datetime | None

    def _watch_request(self, startup: bool) -> WatchRequest:
        spec = self._spec
        h = spec.health
        threshold = h.failure_threshold
        return WatchRequest(
            agent_id=spec.agent_id,
            replicas=[WatchedReplica(index=r.index, endpoint=r.endpoint) for r in self._replicas],
            path=h.path,
            interval_seconds=h.interval_seconds,
            timeout_seconds=h.timeout_seconds,
            failure_threshold=threshold,
            failures={} if startup else dict(self._failures),
            starting={} if startup else dict(self._starting),
            failing=sorted(i for i, n in self._failures.items() if n >= threshold),
            serving=self._state in (S.READY, S.PROCESSING),
            busy=self._state == S.PROCESSING,
            startup=startup,
            startup_timeout_seconds=h.startup_timeout_seconds,
            lease_seconds=LEASE_SECONDS,
        )

    def _sync_watch(self, startup: bool) -> None:
        """Keep exactly one prober running with the request the agent needs now."""
        if not self._replicas:
            self._stop_watch()
            return
        req = self._watch_request(startup)
        if self._watch is not None and self._watch_req == req and not self._watch.done():
            return
        if self._watch is not None and self._watch_req == req:
            return  # done: its report is taken by the loop first
        self._stop_watch()
        h = req
        self._watch_req = req
        self._watch = workflow.start_activity_method(
            ProberActivities.watch_replicas,
            req,
            task_queue=workflow.info().task_queue + PROBER_QUEUE_SUFFIX,
            start_to_close_timeout=timedelta(
                seconds=LEASE_SECONDS
                + (h.interval_seconds + h.timeout_seconds) * 2
                + 60
                + (h.startup_timeout_seconds if startup else 0)
            ),
            heartbeat_timeout=heartbeat_timeout(
                h.interval_seconds, self._spec.health.prober_heartbeat_seconds
            ),
            retry_policy=PROBER_RETRY,
            summary=f"probe {len(req.replicas)} replicas of {req.agent_id} "
            f"every {h.interval_seconds:g}s" + (" (startup)" if startup else ""),
        )

    def _stop_watch(self) -> None:
        """Cancel the running prober (its late result, if any, is dropped)."""
        if self._watch is not None:
            if not self._watch.done():
                self._watch.cancel()
            self._watch.add_done_callback(_retrieve)
        self._watch = None
        self._watch_req = None

    def _take_report(self) -> WatchReport | None:
        """The finished prober's report, or None if it failed (logged)."""
        assert self._watch is not None and self._watch.done()
        handle, self._watch, self._watch_req = self._watch, None, None
        try:
            return handle.result()
        except ActivityError as err:  # a failed prober is no evidence
            workflow.logger.warning("prober failed, starting another: %s", err)
            return None

    def _degraded_deadline(self) -> datetime | None:
        if self._state != S.DEGRADED or self._degraded_since is None:
            return None
        limit = self._spec.health.recovery_timeout_seconds
        return self._degraded_since + timedelta(seconds=limit)

    def _record(self, report: WatchReport) -> bool:
        """Take a report's evidence into state; False if it does not fit the replicas."""
        counters = self._counters
        counters.health_rounds += report.rounds
        counters.failed_probes += report.failed_probes
        if len(report.results) != len(self._replicas):
            return False
        self._probes = {r.index: p for r, p in zip(self._replicas, report.results, strict=True)}
        self._probed_at = report.probed_at
        return True


def _retrieve(task: Any) -> None:
    """Consume a dropped prober's outcome so it is not reported as never retrieved."""
    with contextlib.suppress(BaseException):
        task.exception()
