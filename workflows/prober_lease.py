"""ProberLease: the liveness of one prober host (id ``prober-host/<host_id>``).

Started by the host on its first assignment (``assign_prober``, :mod:`activities.prober_host`).
It runs the host's ``hold_host`` activity, which heartbeats, back to back. When one fails (its
heartbeat timed out because the worker died, or the worker stopped), the host is lost: the
workflow says so in ``status``, runs ``release_host`` on any live worker (every agent probed
by the host is signalled ``prober_lost`` and finds another host) and ends. History: four events
an hour while the host lives; continue-as-new every :data:`HOLDS_PER_RUN` holds.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from fleetops.prober import LeaseInput, LeaseStatus
    from workflows.payload_guard import requires_input

HOLDS_PER_RUN = 24
"""Holds (an hour each by default) per run before continue-as-new."""


@workflow.defn(name="ProberLease")
class ProberLease:
    """Holds one prober host's lease; releases the host's agents when the lease is lost."""

    @workflow.init
    @requires_input
    def __init__(self, lease: LeaseInput) -> None:
        """Set up state; nothing runs until ``run``."""
        self._lease = lease
        self._lost = False
        self._released = 0

    @workflow.run
    async def run(self, lease: LeaseInput) -> LeaseStatus:
        """Hold the lease until it is lost; then release the host's agents.

        Args:
            lease: host id, its queue, the shared prober queue, heartbeat timeout (seconds).

        Returns:
            The final status: ``lost`` true and how many agents were released.
        """
        beat = timedelta(seconds=lease.heartbeat_seconds)
        for _ in range(HOLDS_PER_RUN):
            try:
                await workflow.execute_activity(
                    "hold_host",
                    lease,
                    task_queue=lease.task_queue,
                    start_to_close_timeout=timedelta(seconds=lease.hold_seconds) + beat * 2,
                    schedule_to_start_timeout=beat * 3,
                    heartbeat_timeout=beat,
                    retry_policy=RetryPolicy(maximum_attempts=1),
                    summary=f"prober host {lease.host_id} is alive",
                )
            except ActivityError as err:
                workflow.logger.warning("prober host %s lost: %s", lease.host_id, err)
                self._lost = True
                self._released = await workflow.execute_activity(
                    "release_host",
                    lease.host_id,
                    result_type=int,
                    task_queue=lease.release_queue,
                    start_to_close_timeout=timedelta(minutes=10),
                    heartbeat_timeout=timedelta(minutes=1),
                    summary=f"move the agents of prober host {lease.host_id}",
                )
                return self.status()
        workflow.continue_as_new(lease)

    @workflow.query
    def status(self) -> LeaseStatus:
        """Host id, whether the lease is lost, and how many agents were released."""
        return LeaseStatus(host_id=self._lease.host_id, lost=self._lost, released=self._released)
