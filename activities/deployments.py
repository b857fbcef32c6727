"""Activities a deployment uses to talk to the agent's ``AgentLifecycle`` through Temporal.

A workflow cannot send an update to another workflow, so claiming the agent (the per-agent
deployment lock, answered synchronously by the update's validator) is an activity with a client.
"""

from __future__ import annotations

from temporalio import activity
from temporalio.client import Client, WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from fleetops.constants import agent_workflow_id
from fleetops.models import AgentDeploymentView, DeploymentClaim

CLAIM_UPDATE = "begin_deployment"
"""Update of ``AgentLifecycle`` that holds the agent for one deployment."""


class DeploymentActivities:
    """Deployment-side calls to ``AgentLifecycle``.

    Args:
        client: a connected Temporal client (the worker's own).
    """

    def __init__(self, client: Client) -> None:
        self._client = client

    @activity.defn(name="claim_agent")
    async def claim_agent(self, agent_id: str, claim: DeploymentClaim) -> AgentDeploymentView:
        """Hold agent ``agent_id`` for ``claim.deployment_id`` and read its running spec.

        Idempotent: the same deployment may claim again.

        Returns:
            The agent as it runs now (spec, state, active colour, replicas, service).

        Raises:
            ApplicationError: ``DeploymentRefused`` (non-retryable) when another deployment holds
                the agent or it is not serving; ``AgentNotFound`` (non-retryable) when no
                ``AgentLifecycle`` runs for ``agent_id``.
        """
        handle = self._client.get_workflow_handle(agent_workflow_id(agent_id))
        try:
            return await handle.execute_update(CLAIM_UPDATE, claim, result_type=AgentDeploymentView)
        except WorkflowUpdateFailedError as err:
            cause = err.cause
            message = getattr(cause, "message", None) or str(cause or err)
            raise ApplicationError(message, type="DeploymentRefused", non_retryable=True) from err
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND or "completed" in err.message.lower():
                raise ApplicationError(
                    f"agent {agent_id} is not running (no open AgentLifecycle "
                    f"{agent_workflow_id(agent_id)}); start it first",
                    type="AgentNotFound",
                    non_retryable=True,
                ) from err
            raise
