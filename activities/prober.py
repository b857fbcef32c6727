"""The data-plane prober: one long activity per agent run (``watch_replicas``) on its host.

Like a kubelet, it probes locally at the agent's interval and tells the control plane (the
agent's workflow) only about changes: it completes with a :class:`~fleetops.prober.WatchReport`
when :func:`~fleetops.prober.verdict` differs from the workflow's baseline, or when its lease
ends. It decides nothing: the workflow records the report, decides (DEGRADED, self-heal, ERROR,
READY) and starts the next prober with the new baseline.

Watches do not heartbeat (10,000 heartbeating activities would cost the server more than the
probes): the liveness of their host is one heartbeat, the host's lease
(:mod:`activities.prober_host`). A watch for an agent supersedes the one this host already runs
for it, so a spec change never leaves two probers on one agent; the watch of an agent run that
closed (terminate, timeout) is stopped by its host's sweep
(:meth:`activities.prober_host.ProberHost.sweep_closed`), since a closed run's cancel never
reaches a watch.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from temporalio import activity
from temporalio.exceptions import ApplicationError

from fleetops.models import ProbeResult
from fleetops.prober import WatchedReplica, WatchReport, WatchRequest, verdict

DEFAULT_MAX_CONCURRENT_PROBES = 100
"""Probes in flight at once per worker process: start throttling. 10,000 agents starting
together queue here instead of overloading the event loop (their startup clocks start at their
first probe attempt, so waiting in this queue costs them no startup time)."""
SUPERSEDED = "ProberSuperseded"
"""Error type of a watch ended because a newer watch of the same agent began on this host."""


class Probe(Protocol):
    """What probes one replica: :class:`activities.http_probe.HttpProbe` in production
    (:class:`activities.probes.ProbeActivities` has the same method)."""

    async def probe_one(self, endpoint: str, path: str, timeout: float) -> ProbeResult:
        """``GET <endpoint><path>`` within ``timeout`` seconds; failures are results."""
        ...


class ProberActivities:
    """Long-running watches of many agents over one probe client.

    Args:
        probes: the probe client (its keep-alive session).
        max_concurrent_probes: probes in flight at once in this process (start throttling).
    """

    def __init__(
        self, probes: Probe, *, max_concurrent_probes: int = DEFAULT_MAX_CONCURRENT_PROBES
    ) -> None:
        self._probes = probes
        self._gate = asyncio.Semaphore(max_concurrent_probes)
        self._running: dict[str, _Watch] = {}  # agent id -> its watch on this host
        self._by_run: dict[tuple[str, str], _Watch] = {}  # (workflow id, run id) -> its watch

    @property
    def watched(self) -> int:
        """Agents this host probes now."""
        return len(self._running)

    @property
    def agents(self) -> frozenset[str]:
        """Ids of the agents this host probes now."""
        return frozenset(self._running)

    def drop_all(self) -> None:
        """Cancel every watch (the host lost its lease): their agents find another host."""
        for watch in list(self._running.values()):
            watch.task.cancel()

    def drop_closed(self, workflow_id: str, run_id: str) -> bool:
        """Cancel the watch started by that agent run, which has closed (terminated, timed out,
        completed): a closed run's cancel never reaches a watch, which does not heartbeat.

        Returns:
            Whether such a watch ran here.
        """
        watch = self._by_run.get((workflow_id, run_id))
        if watch is None:
            return False
        watch.task.cancel()
        return True

    @activity.defn(name="watch_replicas")
    async def watch_replicas(self, req: WatchRequest) -> WatchReport:
        """Probe every replica each ``interval_seconds`` until the verdict changes.

        A steady-state watch waits for its agent's next round (:func:`first_delay`) before
        its first. A startup watch that supersedes one of the same bring-up
        (``req.bringup``: a scale during bring-up) keeps its startup clock:
        ``startup_timeout_seconds`` counts from the first probe attempt of the bring-up on
        this host; another bring-up of the agent (a pause and resume) starts its own.

        Args:
            req: replicas, health rule, baseline and lease (seconds).

        Returns:
            The report: reason (``failing``, ``recovered``, ``healthy``, ``busy``, ``idle``,
            ``startup_timeout``, ``lease``, ``empty``) and the last round's results.

        Raises:
            ApplicationError: ``ProberSuperseded`` (non-retryable) when a newer watch of the
                same agent began on this host; its workflow has already moved on.
            asyncio.CancelledError: the host lost its lease or is shutting down.
        """
        task = asyncio.current_task()
        assert task is not None
        older = self._running.get(req.agent_id)
        state = _State(req)
        if older is not None:
            older.task.cancel(SUPERSEDED)
            if req.startup and req.bringup and older.state.bringup == req.bringup:
                # The same bring-up goes on (a scale during it): its clock keeps running.
                state.first_probe_at = older.state.first_probe_at
        run = ("", "")
        if activity.in_activity():
            info = activity.info()
            run = (info.workflow_id or "", info.workflow_run_id or "")
        mine = self._running[req.agent_id] = self._by_run[run] = _Watch(task, state, run)
        try:
            return await self._watch(req, state)
        except asyncio.CancelledError as err:
            if SUPERSEDED in err.args:
                raise ApplicationError(
                    f"a newer prober of {req.agent_id} runs on this host",
                    type=SUPERSEDED,
                    non_retryable=True,
                ) from None
            raise
        finally:
            if self._running.get(req.agent_id) is mine:
                del self._running[req.agent_id]
            if self._by_run.get(run) is mine:
                del self._by_run[run]

    async def _watch(self, req: WatchRequest, state: _State) -> WatchReport:
        leased = time.monotonic() + req.lease_seconds
        if not req.startup:
            await asyncio.sleep(first_delay(req, datetime.now(UTC)))
        while True:
            started = time.monotonic()
            if state.first_probe_at is None:
                state.first_probe_at = datetime.now(UTC)
            results = await self._round(req)
            state.count(req, results)
            reason = verdict(req, results, state.failures, state.starting)
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


def first_delay(req: WatchRequest, now: datetime) -> float:
    """Seconds a steady-state watch waits before its first round, in ``[0, interval]``.

    Until ``req.next_round_at`` (the agent's probe phase, carried from its last round); a time
    already past is moved on by whole intervals, so the agents of a dead host, whose last
    rounds are up to an hour old, keep their spread phases instead of all probing at once.
    A random offset within one interval when there is no phase (spreads many agents' rounds).
    """
    interval = req.interval_seconds
    if req.next_round_at is None:
        return random.uniform(0, interval)
    wait = (req.next_round_at - now).total_seconds()
    return min(wait % interval if wait < 0 else wait, interval)


@dataclass(frozen=True)
class _Watch:
    """One running watch: its task, its counts and the agent run that started it."""

    task: asyncio.Task[Any]
    state: _State
    run: tuple[str, str]  # (workflow id, run id); ("", "") outside an activity


class _State:
    """Counts of one watch: consecutive failures, startup grace, rounds."""

    def __init__(self, req: WatchRequest) -> None:
        self.startup = req.startup
        self.bringup = req.bringup if req.startup else ""
        self.failures = dict(req.failures)
        self.starting = dict(req.starting)
        self.rounds = 0
        self.failed_probes = 0
        self.first_probe_at: datetime | None = None

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
