"""Activity calls of the ``Maintenance`` workflow (deterministic workflow code): agent control,
secrets and node drains, each with its row of :data:`workflows.activity_options.TABLE`."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.agent_control import AgentControlActivities as Agents
    from activities.platform.k8s_drain import NodeDrain
    from activities.secrets import SecretActivities
    from fleetops.agent_control import (
        AbortDeployment,
        AgentAction,
        AgentConfigure,
        AgentDeploy,
        AgentHealth,
        AgentRestart,
        DeployOutcome,
        WaitAgentHealthy,
    )
    from fleetops.drain import DrainRequest, DrainResult
    from fleetops.models import ConfigureAgentResult, RestartAgentResult
    from fleetops.secrets import SecretRestore, SecretRotation, SecretVersionRef
    from workflows.activity_options import PLATFORM_RETRY, TABLE, call


async def health(agent_id: str) -> AgentHealth:
    """The agent's health now (``agent_health``)."""
    return await call(Agents.agent_health, agent_id, summary=f"health of {agent_id}")


async def wait_healthy(agent_id: str, timeout_seconds: float) -> AgentHealth:
    """Wait up to ``timeout_seconds`` for the agent to be healthy; the last health seen."""
    return await call(
        Agents.agent_wait_healthy,
        WaitAgentHealthy(agent_id=agent_id, timeout_seconds=timeout_seconds),
        summary=f"wait until {agent_id} is healthy ({timeout_seconds:g} s)",
        start_to_close=timedelta(seconds=timeout_seconds + 30),
    )


async def transition(agent_id: str, action: str, by: str, *, compensation: bool = False) -> str:
    """Pause or resume the agent (idempotent)."""
    return await call(
        Agents.agent_transition,
        AgentAction(agent_id=agent_id, action=action, reason="maintenance", requested_by=by),  # type: ignore[arg-type]
        summary=f"{action} {agent_id}",
        compensation=compensation,
    )


async def restart(
    agent_id: str, by: str, reason: str, *, compensation: bool = False
) -> RestartAgentResult:
    """Rolling restart of the agent."""
    return await call(
        Agents.agent_restart,
        AgentRestart(agent_id=agent_id, reason=reason, requested_by=by),
        summary=f"rolling restart of {agent_id}: {reason}",
        compensation=compensation,
    )


async def configure(req: AgentConfigure, *, compensation: bool = False) -> ConfigureAgentResult:
    """Apply or restore an agent's config."""
    what = f"restore config v{req.restore_version}" if req.restore_version else "apply config"
    return await call(
        Agents.agent_configure, req, summary=f"{what} on {req.agent_id}", compensation=compensation
    )


async def deploy(req: AgentDeploy, *, compensation: bool = False) -> DeployOutcome:
    """Blue-green deployment of the agent, followed to its end."""
    r = req.request
    return await call(
        Agents.agent_deploy,
        req,
        summary=f"deploy {r.version} to {r.agent_id}",
        compensation=compensation,
    )


async def abort_deployment(agent_id: str, by: str) -> str | None:
    """Abort the agent's running deployment (if any) and wait until it rolled back."""
    return await call(
        Agents.agent_abort_deployment,
        AbortDeployment(agent_id=agent_id, reason="maintenance cancelled", requested_by=by),
        summary=f"abort the deployment of {agent_id}, if any",
        compensation=True,
    )


async def rotate_secret(req: SecretRotation) -> SecretVersionRef:
    """Write a new random version of a secret (cas); only path and versions come back."""
    return await call(SecretActivities.rotate_secret, req, summary=f"rotate {req.path}:{req.key}")


async def restore_secret(req: SecretRestore) -> SecretVersionRef:
    """Make an earlier version current again (compensation: retried until it succeeds)."""
    return await call(
        SecretActivities.restore_secret,
        req,
        summary=f"restore {req.path} v{req.version}",
        compensation=True,
    )


async def confirm_secret(path: str, version: int) -> None:
    """End the protection of the version before ``version`` (the rotation was verified)."""
    o = TABLE[SecretActivities.confirm_secret]
    await workflow.execute_activity_method(
        SecretActivities.confirm_secret,
        args=[path, version],
        start_to_close_timeout=o.start_to_close,
        retry_policy=o.retry or PLATFORM_RETRY,
        summary=f"confirm {path} v{version}"[:200],
    )


async def agent_nodes(agent_id: str) -> list[str]:
    """Nodes hosting the agent's pods ([] on the local platform)."""
    return await call(NodeDrain.agent_nodes, agent_id, summary=f"nodes of {agent_id}")


async def cordon(node: str) -> None:
    """Mark the node unschedulable."""
    await call(NodeDrain.cordon_node, node, summary=f"cordon {node}")


async def uncordon(node: str) -> None:
    """Mark the node schedulable again (retried until it succeeds, as in its table row)."""
    await call(NodeDrain.uncordon_node, node, summary=f"uncordon {node}")


async def drain_node(req: DrainRequest) -> DrainResult:
    """Evict the node's pods through the Eviction API (the node is cordoned first)."""
    return await call(
        NodeDrain.drain_node,
        req,
        summary=f"drain {req.node} (Eviction API)",
        start_to_close=timedelta(seconds=req.timeout_seconds + 60),
    )
