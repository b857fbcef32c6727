"""The activities AgentLifecycle calls (options from :mod:`workflows.activity_options`).

Workflow code (deterministic): these only schedule activities. Each function says what it
returns and which :class:`~temporalio.exceptions.ActivityError` it lets through; the workflow
decides what a failure means for the agent's state.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from activities.deployments import DeploymentActivities
    from activities.incident_intake import IncidentIntakeActivities
    from activities.platform.activities import PlatformActivities
    from activities.probes import ProbeActivities
    from fleetops.deploy import DeploymentEnd, DeploymentRef
    from fleetops.incidents import (
        LIFECYCLE_KEY,
        MAX_LABEL_CHARS,
        AlertBatch,
        AlertEvidence,
        IncidentStart,
        Severity,
    )
    from fleetops.models import (
        AgentSpec,
        Color,
        DeprovisionRequest,
        ProbeRequest,
        ProbeResult,
        ProvisionRequest,
        Replica,
        RestartRequest,
        ScaleDownRequest,
        ServiceInfo,
        SwitchTrafficRequest,
    )
    from workflows.activity_options import call, call_args


def cause(err: ActivityError) -> str:
    """The message of the failure behind ``err`` (the activity's own error, if any)."""
    return str(err.cause) if err.cause is not None else str(err)


async def probe(spec: AgentSpec, replicas: list[Replica]) -> list[ProbeResult] | None:
    """Probe ``GET <endpoint><spec.health.path>`` on each replica (one attempt and one retry).

    Returns:
        One result per replica, in order; None if the probe activity itself failed (no
        evidence about the agent; the failure is logged).
    """
    health = spec.health
    try:
        return await call(
            ProbeActivities.probe_replicas,
            ProbeRequest(
                endpoints=[r.endpoint for r in replicas],
                path=health.path,
                timeout_seconds=health.timeout_seconds,
            ),
            summary=f"probe {len(replicas)} replicas of {spec.agent_id} at {health.path}",
            start_to_close=timedelta(seconds=health.timeout_seconds + 10),
        )
    except ActivityError as err:
        workflow.logger.warning("health probe activity failed, round skipped: %s", err.cause)
        return None


async def provision(spec: AgentSpec, replicas: int, color: Color) -> list[Replica]:
    """Converge colour ``color`` of the agent to ``replicas`` replicas running ``spec``.

    Returns:
        The colour's replicas, by index.

    Raises:
        ActivityError: the platform failed for good (retries exhausted or non-retryable).
    """
    return await call(
        PlatformActivities.provision_replicas,
        ProvisionRequest(spec=spec, replicas=replicas, color=color),
        summary=f"run {replicas} {color} replicas of {spec.agent_id} {spec.version}",
    )


async def restart(spec: AgentSpec, indices: list[int], color: Color) -> list[Replica]:
    """Restart replicas ``indices`` of colour ``color``.

    Returns:
        The colour's replicas, by index.

    Raises:
        ActivityError: the platform failed for good.
    """
    return await call(
        PlatformActivities.restart_replicas,
        RestartRequest(spec=spec, indices=indices, color=color),
        summary=f"self-heal: restart {color} replicas {indices} of {spec.agent_id}",
    )


async def describe_service(agent_id: str) -> ServiceInfo | None:
    """The agent's service (gateway URLs, colours), or None if it has none or the call failed
    (logged)."""
    try:
        return await call(
            PlatformActivities.describe_service,
            agent_id,
            summary=f"read the service (gateway URL, active colour) of {agent_id}",
        )
    except ActivityError as err:
        workflow.logger.warning("could not read the agent's service: %s", cause(err))
        return None


async def deprovision(agent_id: str, color: Color, *, keep_service: bool) -> None:
    """Stop the agent's replicas: only colour ``color`` if ``keep_service`` (its service and
    gateway URL stay), else every replica and the service.

    Raises:
        ActivityError: the platform failed for good.
    """
    if keep_service:
        await scale_down(agent_id, color)
    else:
        await call(
            PlatformActivities.deprovision_agent,
            DeprovisionRequest(agent_id=agent_id),
            summary=f"stop every replica and the service of {agent_id}",
        )


async def scale_down(agent_id: str, color: Color, *, compensation: bool = False) -> None:
    """Stop every replica of colour ``color``; the other colour and the service stay.

    Args:
        agent_id: the agent.
        color: the colour to stop.
        compensation: retry until it succeeds (a rollback or reconciliation step).

    Raises:
        ActivityError: the platform failed for good.
    """
    await call(
        PlatformActivities.scale_down_color,
        ScaleDownRequest(agent_id=agent_id, color=color),
        summary=f"scale down the {color} replicas of {agent_id}",
        compensation=compensation,
    )


async def switch_traffic(
    agent_id: str, active: Color, preview: Color | None, *, compensation: bool = False
) -> ServiceInfo:
    """Point the agent's active service at ``active`` and its preview service at ``preview``.

    Returns:
        The service after the switch (its generation bumped).

    Raises:
        ActivityError: the platform failed for good.
    """
    what = f"switch {agent_id} traffic to {active}" + (f", preview {preview}" if preview else "")
    return await call(
        PlatformActivities.switch_traffic,
        SwitchTrafficRequest(agent_id=agent_id, active_color=active, preview_color=preview),
        summary=what,
        compensation=compensation,
    )


async def list_replicas(agent_id: str) -> list[Replica] | None:
    """Every replica of the agent, both colours, with their colour and version labels; None if
    the call failed (logged)."""
    try:
        return await call(
            PlatformActivities.list_replicas,
            agent_id,
            summary=f"list the replicas of {agent_id}",
        )
    except ActivityError as err:
        workflow.logger.warning("could not list the agent's replicas: %s", cause(err))
        return None


async def describe_deployment(ref: DeploymentRef) -> DeploymentEnd | None:
    """Whether deployment ``ref`` (a child of an earlier run) has closed, and how.

    Returns:
        None while it runs, or when the check itself failed (logged; the next check retries).
    """
    try:
        return await call(
            DeploymentActivities.describe_deployment,
            ref,
            summary=f"check whether deployment {ref.workflow_id} has closed",
        )
    except ActivityError as err:
        workflow.logger.warning("could not check %s: %s", ref.workflow_id, cause(err))
        return None


ERROR_ALERT = "AgentLifecycleError"
"""``alertname`` of the alert the lifecycle raises when its agent enters ERROR."""


async def open_incident(agent_id: str, version: str, reason: str) -> str | None:
    """Join or open the agent's lifecycle incident (``incident/<agent_id>/lifecycle``).

    The incident starts at SEV2 (the agent serves nothing it can vouch for); its one alert,
    ``AgentLifecycleError``, carries the transition's reason as its summary.

    Returns:
        The incident's workflow id, or None if it could not be opened within
        ``OPEN_INCIDENT_RETRY`` (logged; the caller records a note and goes on).
    """
    now = workflow.now()
    start = IncidentStart(
        agent_id=agent_id,
        key=LIFECYCLE_KEY,
        title=f"{agent_id} {version} entered ERROR"[:200],
        source="lifecycle",
        opened_by="AgentLifecycle",
        severity=Severity.SEV2,
    )
    alert = AlertEvidence(
        name=ERROR_ALERT,
        status="firing",
        labels={"alertname": ERROR_ALERT, "agent": agent_id, "severity": "critical"},
        annotations={"summary": reason[:MAX_LABEL_CHARS], "version": version[:MAX_LABEL_CHARS]},
        starts_at=now,
    )
    batch = AlertBatch(source="lifecycle", group_key=LIFECYCLE_KEY, alerts=[alert], received_at=now)
    try:
        return await call_args(
            IncidentIntakeActivities.open_incident,
            [start, batch],
            summary=f"open the lifecycle incident of {agent_id}: {reason}",
        )
    except ActivityError as err:
        workflow.logger.warning("could not open an incident for %s: %s", agent_id, cause(err))
        return None
