"""A worker's prober host: the probers of many agents, one lease (heartbeat) for all of them.

Design (the worker-specific task queue pattern of Temporal's samples): each worker process is
one prober host with a random ``host_id``. It polls the shared queue ``<task_queue>-probers``
for :meth:`ProberHost.assign_prober` (an agent asks for a host and gets this one) and its own
queue ``<task_queue>-probers-<host_id>`` for the agents' watches
(:class:`~activities.prober.ProberActivities`) and for :meth:`ProberHost.hold_host`, the one
activity of the host that heartbeats. The host's ``ProberLease`` workflow runs ``hold_host``;
when its heartbeat times out (the worker died) or it ends, the lease runs
:meth:`ProberHost.release_host` on a live worker, which signals every agent whose
``FleetOpsProberHost`` is this host; each agent checks the claim (:meth:`ProberHost.host_lost`)
before asking for another host, so a forged signal moves nothing.

Cost at 10,000 agents: one heartbeat per host every ``0.8 x heartbeat timeout``, no Temporal
traffic per probe, and one completed watch per agent per lease (an hour) when nothing changes.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from datetime import UTC, datetime, timedelta

from temporalio import activity
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from activities.prober import ProberActivities
from fleetops.constants import PROBER_HOST_KEY
from fleetops.prober import (
    PROBER_QUEUE_SUFFIX,
    HostLease,
    LeaseInput,
    LeaseStatus,
    host_queue,
    lease_workflow_id,
)

log = logging.getLogger("fleetops.prober")

LEASE_WORKFLOW = "ProberLease"
"""Workflow type of a host's lease (:mod:`workflows.prober_lease`)."""
DEFAULT_HEARTBEAT_SECONDS = 10.0
"""Heartbeat timeout of a host's lease: a dead worker's agents move within it (one interval
of the default agent health check)."""
RELEASE_CONCURRENCY = 32
"""Signals :meth:`ProberHost.release_host` has in flight at once."""
SWEEP_SECONDS = 30.0
"""How often a host lists the agents it probes that closed (terminate, timeout) to stop their
watches: one visibility query per host per sweep."""
SWEEP_OVERLAP_SECONDS = 60.0
"""Each sweep looks this far behind the previous one (visibility is eventually consistent)."""
LOST_CACHE_SECONDS = 60.0
"""How long a confirmed loss is remembered (10,000 agents asking about one host ask once)."""


class ProberHost:
    """The prober host of one worker process.

    Args:
        client: a connected client (starts the lease, lists and signals agents).
        probers: the watches of this host.
        task_queue: the workflows' task queue (the lease workflow runs there).
        heartbeat_seconds: heartbeat timeout of the lease, seconds.
        host_id: this host's id (default: 12 random hex digits).
    """

    def __init__(
        self,
        client: Client,
        probers: ProberActivities,
        task_queue: str,
        *,
        heartbeat_seconds: float = DEFAULT_HEARTBEAT_SECONDS,
        host_id: str | None = None,
    ) -> None:
        self._client = client
        self.probers = probers
        self.host_id = host_id or uuid.uuid4().hex[:12]
        self.shared_queue = task_queue + PROBER_QUEUE_SUFFIX
        self.task_queue = host_queue(task_queue, self.host_id)
        self._lease = LeaseInput(
            host_id=self.host_id,
            task_queue=self.task_queue,
            release_queue=self.shared_queue,
            heartbeat_seconds=heartbeat_seconds,
        )
        self._workflow_queue = task_queue
        self._leased = False
        self.holds = 0
        """``hold_host`` attempts started here; the latest is the lease."""
        self.holding = 0
        """``hold_host`` attempts running here now."""
        self.sweep_seconds = SWEEP_SECONDS
        """Seconds between two sweeps for closed agents (:meth:`sweep_closed`)."""
        self._leasing = asyncio.Lock()
        self._lost: dict[str, float] = {}  # host id -> monotonic time its loss was confirmed

    def shared_activities(self) -> list[object]:
        """The activities of the shared queue ``<task_queue>-probers``."""
        return [self.assign_prober, self.release_host, self.host_lost]

    def host_activities(self) -> list[object]:
        """The activities of this host's queue ``<task_queue>-probers-<host_id>``."""
        return [self.probers.watch_replicas, self.hold_host]

    @activity.defn(name="assign_prober")
    async def assign_prober(self) -> HostLease:
        """Give the calling agent this host (its lease started first if not running).

        Returns:
            The host id and the task queue of its watches.

        Raises:
            RPCError: the lease could not be started (retryable: the server is unreachable).
        """
        async with self._leasing:
            if not self._leased:
                try:
                    await self._client.start_workflow(
                        LEASE_WORKFLOW,
                        self._lease,
                        id=lease_workflow_id(self.host_id),
                        task_queue=self._workflow_queue,
                    )
                except WorkflowAlreadyStartedError:
                    pass  # the lease runs (e.g. a reset run, or one still releasing): held
                except RPCError as err:
                    if err.status != RPCStatusCode.ALREADY_EXISTS:
                        raise
                self._leased = True
        return HostLease(host_id=self.host_id, task_queue=self.task_queue)

    @activity.defn(name="hold_host")
    async def hold_host(self, lease: LeaseInput) -> None:
        """Heartbeat for this host every quarter of the heartbeat timeout, ``hold_seconds`` long.

        Only this host's own lease holds it: a ``hold_host`` scheduled on this queue by any
        other workflow (a client can start a ``ProberLease`` naming any queue) fails at once and
        changes nothing.

        Raises:
            ApplicationError: non-retryable, ``lease`` or the calling workflow is not this
                host's lease (``prober-host/<host_id>``).
            asyncio.CancelledError: the worker is shutting down, or the server no longer
                knows this attempt (its heartbeat timed out: the lease was lost and its agents
                released); then, unless a newer hold of this host runs (a reset lease run),
                every watch of this host is dropped, so no agent is probed by two hosts, and
                the next assignment starts a new lease.
        """
        info = activity.info()
        if lease.host_id != self.host_id or info.workflow_id != lease_workflow_id(self.host_id):
            raise ApplicationError(
                f"hold_host from {info.workflow_id!r} for host {lease.host_id!r}: only"
                f" {lease_workflow_id(self.host_id)!r} holds this host",
                type="NotThisHost",
                non_retryable=True,
            )
        self.holds += 1
        self.holding += 1
        mine = self.holds
        timeout = info.heartbeat_timeout or timedelta(seconds=lease.heartbeat_seconds)
        every = timeout.total_seconds() / 4
        end = time.monotonic() + lease.hold_seconds
        sweeping = asyncio.create_task(self._sweep_loop(mine))
        try:
            while time.monotonic() < end:
                activity.heartbeat(self.probers.watched)
                await asyncio.sleep(min(every, max(0.0, end - time.monotonic())))
        except asyncio.CancelledError:
            if mine == self.holds:  # the latest hold: the lease is gone
                self._leased = False
                self.probers.drop_all()
            raise
        finally:
            self.holding -= 1
            sweeping.cancel()

    async def _sweep_loop(self, hold: int) -> None:
        """Sweep every ``sweep_seconds`` while ``hold`` is the latest hold of this host (an
        overlapping older hold, of a reset lease run, leaves the sweeping to the newer)."""
        since = datetime.now(UTC) - timedelta(seconds=SWEEP_OVERLAP_SECONDS)
        while True:
            await asyncio.sleep(self.sweep_seconds)
            if hold != self.holds:
                continue
            now = datetime.now(UTC)
            try:
                await self.sweep_closed(since)
            except Exception:  # the next sweep looks back over this one's window too
                log.exception("prober host %s: sweep for closed agents failed", self.host_id)
                continue
            since = now - timedelta(seconds=SWEEP_OVERLAP_SECONDS)

    async def sweep_closed(self, since: datetime) -> int:
        """Stop the watches of this host's agents whose run closed after ``since`` (UTC).

        A closed run (terminated, timed out, failed) never ends its watch itself: watches do
        not heartbeat, so the cancel of a closed run never reaches them, and without the sweep
        a terminated agent would be probed until its lease (an hour).

        Returns:
            How many watches were stopped.

        Raises:
            RPCError: the visibility query failed.
        """
        query = (
            f'WorkflowType = "AgentLifecycle" AND ExecutionStatus != "Running" '
            f'AND {PROBER_HOST_KEY.name} = "{_quoted(self.host_id)}" '
            f'AND CloseTime > "{since.strftime("%Y-%m-%dT%H:%M:%S.%fZ")}"'
        )
        stopped = 0
        async for wf in self._client.list_workflows(query):
            stopped += self.probers.drop_closed(wf.id, wf.run_id)
        return stopped

    @activity.defn(name="release_host")
    async def release_host(self, host_id: str) -> int:
        """Tell every running agent probed by ``host_id`` to check it and find another host.

        Idempotent (a retry signals again; an agent whose host changed ignores it). Heartbeats
        the number signalled.

        Args:
            host_id: the lost host.

        Returns:
            How many agents were signalled.
        """
        query = (
            f'WorkflowType = "AgentLifecycle" AND ExecutionStatus = "Running" '
            f'AND {PROBER_HOST_KEY.name} = "{_quoted(host_id)}"'
        )
        gate = asyncio.Semaphore(RELEASE_CONCURRENCY)
        sent = 0

        async def tell(workflow_id: str) -> None:
            nonlocal sent
            async with gate:
                try:
                    handle = self._client.get_workflow_handle(workflow_id)
                    await handle.signal("prober_lost", {"host_id": host_id})
                    sent += 1
                except RPCError as err:
                    if err.status != RPCStatusCode.NOT_FOUND:
                        raise
                activity.heartbeat(sent)

        ids = [wf.id async for wf in self._client.list_workflows(query)]
        await asyncio.gather(*(tell(i) for i in ids))
        return sent

    @activity.defn(name="host_lost")
    async def host_lost(self, host_id: str) -> bool:
        """Whether the lease of ``host_id`` is lost: an agent checks a ``prober_lost`` claim.

        Returns:
            True when ``prober-host/<host_id>`` does not exist, is closed, or says ``lost``.
        """
        now = time.monotonic()
        if now - self._lost.get(host_id, -LOST_CACHE_SECONDS) < LOST_CACHE_SECONDS:
            return True
        handle = self._client.get_workflow_handle(lease_workflow_id(host_id))
        try:
            desc = await handle.describe()
            lost = (
                desc.status != WorkflowExecutionStatus.RUNNING
                or (await handle.query("status", result_type=LeaseStatus)).lost
            )
        except RPCError as err:
            if err.status != RPCStatusCode.NOT_FOUND:
                raise
            lost = True
        if lost:
            self._lost[host_id] = now
        return lost


def _quoted(text: str) -> str:
    """``text`` safe inside a double-quoted visibility query literal."""
    return text.replace("\\", "\\\\").replace('"', '\\"')
