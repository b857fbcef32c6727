"""An agent's current secret values, read where they are needed and nowhere else.

The LLM activity masks them in every prompt about the agent
(:class:`activities.llm.LlmActivities`). The references come from the agent's ``status`` query
(path, key, env name: no values live in workflow history); the values come from the secret
store at call time, so a rotated secret is masked in its new version.
"""

from __future__ import annotations

from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from activities.secret_stores import SecretResolver
from fleetops.constants import agent_workflow_id
from fleetops.models import AgentStatus


class AgentSecretValues:
    """``await values(agent_id)``: the current values of the agent's secret references.

    Args:
        client: a connected client (queries the agent's ``AgentLifecycle``).
        resolver: the secret store's resolver (the one replicas are started with).
    """

    def __init__(self, client: Client, resolver: SecretResolver) -> None:
        self._client = client
        self._resolver = resolver

    async def __call__(self, agent_id: str) -> list[str]:
        """The values, in the order of the spec's ``secrets`` ([] for an unknown agent).

        Raises:
            RPCError: the ``status`` query failed other than NOT_FOUND (retryable).
            ApplicationError: the store's (``SecretNotFound``, ``SecretStoreUnavailable``, ...).
        """
        try:
            workflow_id = agent_workflow_id(agent_id)
        except ValueError:
            return []  # not an agent id FleetOps would give: no agent of ours
        handle = self._client.get_workflow_handle(workflow_id)
        try:
            status = await handle.query("status", result_type=AgentStatus)
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                return []  # not a FleetOps agent: nothing of its own to mask
            raise
        values = await self._resolver.resolve(list(status.secrets))
        return [values[ref.env] for ref in status.secrets if ref.env in values]
