"""Activity through which an agent's ``AgentLifecycle`` checks on a deployment it owns.

The deployment is the lifecycle's child. The run that started it awaits the child itself. A
lifecycle that continues as new leaves its running child behind (Temporal applies the
parent-close policy per run, so children are started with ``ABANDON``); the next run checks on
that one execution (pinned by run id) with this activity, once per health interval.
"""

from __future__ import annotations

from temporalio import activity
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from fleetops.deploy import DeploymentEnd, DeploymentRef, DeploymentStatus
from fleetops.models import DeploymentClosure

_CLOSED_AS: dict[WorkflowExecutionStatus, DeploymentClosure] = {
    WorkflowExecutionStatus.COMPLETED: "completed",
    WorkflowExecutionStatus.FAILED: "failed",
    WorkflowExecutionStatus.CANCELED: "canceled",
    WorkflowExecutionStatus.TERMINATED: "terminated",
    WorkflowExecutionStatus.TIMED_OUT: "timed_out",
    WorkflowExecutionStatus.CONTINUED_AS_NEW: "unknown",
}


class DeploymentActivities:
    """Lifecycle-side calls about deployments.

    Args:
        client: a connected Temporal client (the worker's own).
    """

    def __init__(self, client: Client) -> None:
        self._client = client

    @activity.defn(name="describe_deployment")
    async def describe_deployment(self, ref: DeploymentRef) -> DeploymentEnd | None:
        """Whether deployment ``ref`` has closed, and how.

        Read-only, so safe to run twice. It looks at the latest run of ``ref.workflow_id``: after
        a reset the deployment goes on in a new run, and it is not over until that one closes.

        Args:
            ref: the workflow id and run id of the deployment the agent started.

        Returns:
            None while it (or a run that replaced it by a reset) runs; else ``closed_as``
            (completed, failed, canceled, terminated, timed_out; ``unknown`` when the server no
            longer has the execution) with the deployment's own ``outcome`` and message when
            its ``status`` query still answers.

        Raises:
            RPCError: the server is unreachable (retryable; Temporal retries the activity).
        """
        # The latest run of the id, not ref.run_id: a reset ends the run the agent started and
        # goes on in a new one. Only the agent starts runs of this id, one at a time.
        handle = self._client.get_workflow_handle(ref.workflow_id)
        try:
            desc = await handle.describe()
        except RPCError as err:
            if err.status != RPCStatusCode.NOT_FOUND:
                raise
            return DeploymentEnd(closed_as="unknown", message=err.message[:500])
        if desc.status in (None, WorkflowExecutionStatus.RUNNING):
            return None
        closed_as = _CLOSED_AS.get(desc.status, "unknown")
        try:
            st = await handle.query("status", result_type=DeploymentStatus)
        except Exception as err:  # a status we cannot read only loses detail
            activity.logger.warning("status of %s unreadable: %s", ref.workflow_id, err)
            return DeploymentEnd(closed_as=closed_as)
        return DeploymentEnd(closed_as=closed_as, outcome=st.outcome, message=st.message[:500])
