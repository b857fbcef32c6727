"""The data-plane prober: one long, heartbeating activity per agent run (``watch_replicas``).

Like a kubelet, it probes locally at the agent's interval and tells the control plane (the
agent's workflow) only about changes: it completes with a :class:`~fleetops.prober.WatchReport`
when :func:`~fleetops.prober.verdict` differs from the workflow's baseline, or when its lease
ends. It decides nothing: the workflow records the report, decides (DEGRADED, self-heal, ERROR,
READY) and starts the next prober with the new baseline.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from datetime import UTC, datetime
from typing import Any

from temporalio import activity

from activities.probes import ProbeActivities
from fleetops.models import ProbeResult
from fleetops.prober import WatchedReplica, WatchReport, WatchRequest, verdict

DEFAULT_MAX_CONCURRENT_PROBES = 500
"""Probes in flight at once per worker process: start throttling. 10,000 agents starting
together queue here instead of overloading the event loop (their startup clocks start at their
first probe attempt, so waiting in this queue costs them no startup time)."""
BEAT_FRACTION = 0.25
"""The prober calls ``heartbeat`` every quarter of its heartbeat timeout (the SDK sends at
most one per 0.8 x timeout to the server); fewer calls cost the worker less CPU."""


class ProberActivities:
    """Long-running probers over the probe code of :class:`ProbeActivities`.

    Args:
        probes: the probe activities (their keep-alive ``httpx.AsyncClient``).
        max_concurrent_probes: probes in flight at once in this process (start throttling).
    """

    def __init__(
        self, probes: ProbeActivities, *, max_concurrent_probes: int = DEFAULT_MAX_CONCURRENT_PROBES
    ) -> None:
        self._probes = probes
        self._gate = asyncio.Semaphore(max_concurrent_probes)

    @activity.defn(name="watch_replicas")
    async def watch_replicas(self, req: WatchRequest) -> WatchReport:
        """Probe every replica each ``interval_seconds`` until the verdict changes.

        A retried attempt (the worker died, the heartbeat timed out) resumes from the last
        heartbeat's counts, so consecutive failures are not forgotten.

        Args:
            req: replicas, health rule, baseline and lease (seconds).

        Returns:
            The report: reason (``failing``, ``recovered``, ``healthy``, ``busy``, ``idle``,
            ``startup_timeout``, ``lease``, ``empty``) and the last round's results.
        """
        state = _State.resume(req, activity.info().heartbeat_details)
        beat = asyncio.create_task(self._beat(state))
        try:
            return await self._watch(req, state)
        finally:
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beat

    async def _watch(self, req: WatchRequest, state: _State) -> WatchReport:
        leased = time.monotonic() + req.lease_seconds
        if not req.startup and state.rounds == 0:
            # Spread steady-state rounds of many agents over the interval.
            await asyncio.sleep(random.uniform(0, req.interval_seconds))
        while True:
            started = time.monotonic()
            if state.first_probe_at is None:
                state.first_probe_at = datetime.now(UTC)
            results = await self._round(req)
            state.count(req, results)
            reason = verdict(req, results, state.failures)
            if reason is None and req.startup:
                elapsed = (datetime.now(UTC) - state.first_probe_at).total_seconds()
                if elapsed >= req.startup_timeout_seconds:
                    reason = "startup_timeout"
            if reason is None and time.monotonic() >= leased:
                reason = "lease"
            if reason is not None:
                return state.report(reason, results)
            await asyncio.sleep(max(0.0, req.interval_seconds - (time.monotonic() - started)))

    async def _round(self, req: WatchRequest) -> list[ProbeResult]:
        return list(await asyncio.gather(*(self._one(req, r) for r in req.replicas)))

    async def _one(self, req: WatchRequest, r: WatchedReplica) -> ProbeResult:
        async with self._gate:
            return await self._probes.probe_one(r.endpoint, req.path, req.timeout_seconds)

    @staticmethod
    async def _beat(state: _State) -> None:
        timeout = activity.info().heartbeat_timeout
        every = timeout.total_seconds() * BEAT_FRACTION if timeout else 1.0
        while True:
            activity.heartbeat(state.details())
            await asyncio.sleep(every)


class _State:
    """Counts of one prober, kept in its heartbeat details so a retry resumes them."""

    def __init__(self, req: WatchRequest) -> None:
        self.failures = dict(req.failures)
        self.starting = dict(req.starting)
        self.rounds = 0
        self.failed_probes = 0
        self.first_probe_at: datetime | None = None

    @classmethod
    def resume(cls, req: WatchRequest, details: Any) -> _State:
        state = cls(req)
        if details:
            with contextlib.suppress(Exception):  # details of another version: start afresh
                d = details[0]
                state.failures = {int(k): int(v) for k, v in d["failures"].items()}
                state.rounds = int(d["rounds"])
                state.failed_probes = int(d["failed_probes"])
                if d.get("first_probe_at"):
                    state.first_probe_at = datetime.fromisoformat(d["first_probe_at"])
        return state

    def count(self, req: WatchRequest, results: list[ProbeResult]) -> None:
        """Apply one round: the startup grace and consecutive failures (as the workflow did)."""
        now = datetime.now(UTC)
        self.rounds += 1
        for r, p in zip(req.replicas, results, strict=True):
            self.failed_probes += 0 if p.healthy else 1
            if p.healthy or self.starting.get(r.index, now) <= now:
                self.starting.pop(r.index, None)
            else:
                continue  # still starting: not a failure yet
            self.failures[r.index] = 0 if p.healthy else self.failures.get(r.index, 0) + 1

    def details(self) -> dict[str, Any]:
        return {
            "failures": self.failures,
            "rounds": self.rounds,
            "failed_probes": self.failed_probes,
            "first_probe_at": self.first_probe_at.isoformat() if self.first_probe_at else None,
        }

    def report(self, reason: Any, results: list[ProbeResult]) -> WatchReport:
        return WatchReport(
            reason=reason,
            results=results,
            failures=self.failures,
            starting=self.starting,
            rounds=self.rounds,
            failed_probes=self.failed_probes,
            probed_at=datetime.now(UTC),
            first_probe_at=self.first_probe_at,
        )
