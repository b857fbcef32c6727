"""An agent's secret values, read where they are needed and nowhere else.

The LLM activity masks them in every prompt about the agent
(:class:`activities.llm.LlmActivities`), and the evidence activity in the replica logs it
records (:class:`activities.incident_evidence.EvidenceActivities`). The references come from
the agent's ``status`` query (path, key, env name: no values live in workflow history); the
values come from the secret store at call time: the recent versions of each (a rotated secret's
new value, and the old one its replicas may still run with).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from activities.secret_stores import SecretResolver
from fleetops.constants import agent_workflow_id
from fleetops.models import AgentStatus

SecretValues = Callable[[str], Awaitable[list[str]]]
"""``agent_id -> the values to mask in text about that agent`` (its secrets' recent and pinned
versions): :class:`AgentSecretValues` in the worker."""


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
        """The values of its references' recent and pinned versions
        (:meth:`SecretResolver.mask_values`; [] for an unknown agent; a path that is gone
        gives none).

        Raises:
            RPCError: the ``status`` query failed other than NOT_FOUND (retryable).
            ApplicationError: the store's (``SecretForbidden``, ``SecretStoreUnavailable``, ...).
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
        return await self._resolver.mask_values(list(status.secrets))
