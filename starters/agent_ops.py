"""Typed async helpers for the ``restart`` and ``configure`` updates of ``AgentLifecycle``.

Like :mod:`starters.agents`: a connected client first, Temporal's errors mapped to
:class:`~starters.agents.FleetOpsClientError` subclasses::

    await restart_agent(client, "support-bot", reason="pick up the rotated key")
    await configure_agent(client, "support-bot", config={"temperature": 0.2})
    await configure_agent(client, "support-bot", restore_version=1)
"""

from __future__ import annotations

from typing import Any

from temporalio.client import WorkflowHandle, WorkflowUpdateFailedError
from temporalio.service import RPCError

from fleetops.constants import agent_workflow_id
from fleetops.models import (
    AgentReport,
    ConfigureAgentRequest,
    ConfigureAgentResult,
    RestartAgentRequest,
    RestartAgentResult,
)
from starters.agents import AgentNotFoundError, InvalidTransitionError, _is_not_found, _message
from workflows.agent_lifecycle import AgentLifecycle


async def restart_agent(
    client: Any, agent_id: str, *, reason: str = "", requested_by: str = ""
) -> RestartAgentResult:
    """Rolling restart of the agent's active replicas; returns once every one is replaced.

    Args:
        client: a client from :func:`fleetops.client.connect`.
        agent_id: the agent.
        reason: why; kept in the agent's transition record.
        requested_by: who asked.

    Returns:
        How many replicas were replaced, and their colour.

    Raises:
        AgentNotFoundError: the agent is not running.
        InvalidTransitionError: refused (``OperationRefused``: not serving, paused, a deployment
            running, ...) or failed (``OperationFailed``); the message says which and why.
    """
    req = RestartAgentRequest(reason=reason, requested_by=requested_by)
    result: RestartAgentResult = await _update(client, agent_id, "restart", req)
    return result


async def configure_agent(
    client: Any,
    agent_id: str,
    *,
    config: dict[str, Any] | None = None,
    restore_version: int | None = None,
    reason: str = "",
    requested_by: str = "",
) -> ConfigureAgentResult:
    """Apply a new configuration version (or restore a kept one) by a rolling restart.

    Args:
        client: a client from :func:`fleetops.client.connect`.
        agent_id: the agent.
        config: the new configuration (JSON scalars); exclusive with ``restore_version``.
        restore_version: a kept version to put back.
        reason: why.
        requested_by: who asked.

    Returns:
        The version applied and the one it replaced.

    Raises:
        pydantic.ValidationError: neither or both of ``config`` and ``restore_version``, or a
            config over its bounds (nothing sent).
        AgentNotFoundError: the agent is not running.
        InvalidTransitionError: refused (``InvalidInput``: the config fails the agent's
            schema, or the version is not kept; ``OperationRefused``) or failed
            (``OperationFailed``: the previous config was rolled back).
    """
    req = ConfigureAgentRequest(
        config=config, restore_version=restore_version, reason=reason, requested_by=requested_by
    )
    result: ConfigureAgentResult = await _update(client, agent_id, "configure", req)
    return result


async def _update(client: Any, agent_id: str, name: str, req: Any) -> Any:
    handle: WorkflowHandle[AgentLifecycle, AgentReport] = client.get_workflow_handle(
        agent_workflow_id(agent_id), result_type=AgentReport
    )
    method = AgentLifecycle.restart if name == "restart" else AgentLifecycle.configure
    try:
        return await handle.execute_update(method, req)
    except WorkflowUpdateFailedError as err:
        raise InvalidTransitionError(agent_id, name, _message(err.cause)) from err
    except RPCError as err:
        if _is_not_found(err):
            raise AgentNotFoundError(agent_id) from err
        raise
