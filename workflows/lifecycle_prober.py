"""Health checking through the data-plane prober (``watch_replicas``): AgentLifecycle's loop
when ``health.probing`` is ``data-plane`` (behind the patch ``data-plane-prober``).

Deterministic workflow code, a mixin like :mod:`workflows.lifecycle_operations`. The agent asks
the shared queue ``<task queue>-probers`` for a prober host (``assign_prober``), records it in
the search attribute ``FleetOpsProberHost`` and runs one watch at a time on the host's own
queue. The loop keeps the watch in step with the agent: after every step it builds the request
the agent needs now (replicas, health rule, baseline); if the running watch was started with
another one (scale, colour switch, pause, restart, configure, a decision), it is cancelled and
a new one started at once (the host ends the older one). A report is evidence only;
:meth:`ProbedLifecycle._on_report` makes the decisions the old health round made.

A watch that fails (its host stopped or dropped it) or a ``prober_lost`` hint confirmed by
``host_lost`` (the host's lease expired) sends the agent back for another host.

History per idle healthy agent: one watch per lease (``LEASE_SECONDS``): scheduled, started,
completed and one workflow task (6 events an hour).
"""

from __future__ import annotations

import contextlib
from datetime import datetime, timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RawValue, RetryPolicy
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from activities.prober import ProberActivities
    from fleetops.constants import PROBER_HOST_KEY
    from fleetops.models import AgentCounters, AgentSpec, AgentState, ProbeResult, Replica
    from fleetops.prober import (
        PROBER_QUEUE_SUFFIX,
        HostLease,
        WatchedReplica,
        WatchReport,
        WatchRequest,
    )

S = AgentState
PROBER_PATCH = "data-plane-prober"
"""Patch id: health is checked by the data-plane prober (only for ``health.probing:
data-plane``; runs begun before keep the workflow's own health rounds)."""
LEASE_SECONDS = 3600.0
"""A watch reports at least once an hour even if nothing changed (status freshness)."""
WATCH_START_SECONDS = 120.0
"""A watch its host has not started within this is given up (the host is gone): reassign."""
ASSIGN_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=10)
)
"""``assign_prober`` waits in the shared queue for a live host, retried as long as needed."""
ONE_ATTEMPT = RetryPolicy(maximum_attempts=1)
"""A watch is not retried in place: its host may be gone, so the agent asks for a host again."""


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
    _host: HostLease | None
    _assign: workflow.ActivityHandle[HostLease] | None
    _host_check: workflow.ActivityHandle[bool] | None
    _host_suspect: bool
    _bringup: str

    def _init_prober(self, host_id: str | None, host_queue: str | None) -> None:
        """Prober state; the host carried over continue-as-new is kept (its watch is
        superseded by the new run's, so the agent is never probed twice)."""
        self._watch = None
        self._watch_req = None
        self._probed_at = None
        self._bringup = ""  # which bring-up startup watches serve (set at provisioning)
        self._host = (  # the prober host, once assigned
            HostLease(host_id=host_id, task_queue=host_queue) if host_id and host_queue else None
        )
        self._assign = None  # assign_prober in flight
        self._host_check = None  # host_lost in flight
        self._checked_host: str | None = None  # the host it asks about
        self._host_suspect = False  # a prober_lost hint to check

    @workflow.signal
    def prober_lost(self, _: RawValue = None) -> None:  # type: ignore[assignment]
        """A hint that this agent's prober host lost its lease (sent by ``release_host``).

        Nothing is taken from the payload: the agent asks ``host_lost`` about its own host and
        moves only if the lease really is lost, so a hint from anyone else costs one check.
        """
        if self._host is not None:
            self._host_suspect = True

    def _prober_woken(self) -> bool:
        """Whether a prober step waits: an assignment or check finished, a hint to check."""
        return (
            (self._assign is not None and self._assign.done())
            or (self._host_check is not None and self._host_check.done())
            or (self._host_suspect and self._host_check is None)
        )

    def _prober_step(self) -> None:
        """Take a finished assignment or host check; start a check on a hint."""
        if self._assign is not None and self._assign.done():
            handle, self._assign = self._assign, None
            try:
                self._host = handle.result()
            except ActivityError as err:  # cannot happen while retried; asked again next step
                workflow.logger.warning("assign_prober failed: %s", err)
                return
            workflow.upsert_search_attributes([PROBER_HOST_KEY.value_set(self._host.host_id)])
        if self._host_check is not None and self._host_check.done():
            handle_lost, self._host_check = self._host_check, None
            try:
                lost = handle_lost.result()
            except ActivityError as err:
                workflow.logger.warning("host_lost failed: %s", err)
                lost = False
            if lost and self._host is not None and self._host.host_id == self._checked_host:
                self._leave_host("its prober host lost its lease")
        if self._host_suspect and self._host_check is None and self._host is not None:
            self._host_suspect = False
            self._checked_host = self._host.host_id
            self._host_check = workflow.start_activity(
                "host_lost",
                self._host.host_id,
                result_type=bool,
                task_queue=workflow.info().task_queue + PROBER_QUEUE_SUFFIX,
                start_to_close_timeout=timedelta(seconds=30),
                summary=f"is prober host {self._host.host_id} lost?",
            )
        self._host_suspect = self._host_suspect and self._host is not None

    def _leave_host(self, why: str) -> None:
        """Stop the watch and forget the host: the next step asks for another."""
        if self._host is not None:
            workflow.logger.info("%s leaves prober host %s: %s", self._spec.agent_id,
                                 self._host.host_id, why)  # fmt: skip
        self._stop_watch()
        self._host = None

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
            unprobed=[]
            if startup
            else [r.index for r in self._replicas if r.index not in self._probes],
            serving=self._state in (S.READY, S.PROCESSING),
            busy=self._state == S.PROCESSING,
            startup=startup,
            startup_timeout_seconds=h.startup_timeout_seconds,
            bringup=self._bringup if startup else "",
            lease_seconds=LEASE_SECONDS,
            next_round_at=None if startup else self._next_round_at(),
        )

    def _next_round_at(self) -> datetime | None:
        """One interval after the last recorded round (the agent's probe phase), or None."""
        if self._probed_at is None:
            return None
        try:
            return self._probed_at + timedelta(seconds=self._spec.health.interval_seconds)
        except OverflowError:  # a report's time near datetime.max: no phase to keep
            return None

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
        if self._host is None:
            if self._assign is None:
                self._assign = workflow.start_activity(
                    "assign_prober",
                    result_type=HostLease,
                    task_queue=workflow.info().task_queue + PROBER_QUEUE_SUFFIX,
                    start_to_close_timeout=timedelta(seconds=30),
                    retry_policy=ASSIGN_RETRY,
                    summary=f"a prober host for {req.agent_id}",
                )
            return
        h = req
        self._watch_req = req
        self._watch = workflow.start_activity_method(
            ProberActivities.watch_replicas,
            req,
            task_queue=self._host.task_queue,
            schedule_to_start_timeout=timedelta(seconds=WATCH_START_SECONDS),
            start_to_close_timeout=timedelta(
                seconds=LEASE_SECONDS
                + (h.interval_seconds + h.timeout_seconds) * 2
                + 60
                + (h.startup_timeout_seconds if startup else 0)
            ),
            retry_policy=ONE_ATTEMPT,
            summary=f"probe {len(req.replicas)} replicas of {req.agent_id} "
            f"every {h.interval_seconds:g}s on {self._host.host_id}"
            + (" (startup)" if startup else ""),
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
        except ActivityError as err:  # a failed watch is no evidence; its host may be gone
            self._leave_host(f"its watch failed: {err.cause or err}")
            return None

    def _degraded_deadline(self) -> datetime | None:
        if self._state != S.DEGRADED or self._degraded_since is None:
            return None
        limit = self._spec.health.recovery_timeout_seconds
        try:
            return self._degraded_since + timedelta(seconds=limit)
        except OverflowError:  # a carried time near datetime.max: no deadline to keep
            return None

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
