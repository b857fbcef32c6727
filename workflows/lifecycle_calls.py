"""The activities AgentLifecycle calls, with their timeouts and retry policies.

Workflow code (deterministic): these only schedule activities. Each function says what it
returns and which :class:`~temporalio.exceptions.ActivityError` it lets through; the workflow
decides what a failure means for the agent's state.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from activities.platform.activities import PlatformActivities
    from activities.probes import ProbeActivities
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
    )

RequestT = TypeVar("RequestT")
ResultT = TypeVar("ResultT")

PLATFORM_RETRY = RetryPolicy(maximum_interval=timedelta(seconds=30), maximum_attempts=6)
"""Platform calls: up to 6 attempts, 1, 2, 4, 8 and 16 s apart (Temporal's default backoff,
coefficient 2 from 1 s, capped at 30 s)."""
PLATFORM_TIMEOUT = timedelta(minutes=5)
"""Start-to-close timeout of a platform call that starts or stops processes."""
PLATFORM_HEARTBEAT = timedelta(seconds=60)
"""Heartbeat timeout of those calls (they heartbeat every second)."""


async def _platform_call(
    method: Callable[[PlatformActivities, RequestT], Awaitable[ResultT]], request: RequestT
) -> ResultT:
    """Run one process-changing platform activity with the timeouts and retries above."""
    return await workflow.execute_activity_method(
        method,
        request,
        start_to_close_timeout=PLATFORM_TIMEOUT,
        heartbeat_timeout=PLATFORM_HEARTBEAT,
        retry_policy=PLATFORM_RETRY,
    )


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
        return await workflow.execute_activity_method(
            ProbeActivities.probe_replicas,
            ProbeRequest(
                endpoints=[r.endpoint for r in replicas],
                path=health.path,
                timeout_seconds=health.timeout_seconds,
            ),
            start_to_close_timeout=timedelta(seconds=health.timeout_seconds + 10),
            retry_policy=RetryPolicy(maximum_attempts=2),
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
    return await _platform_call(
        PlatformActivities.provision_replicas,
        ProvisionRequest(spec=spec, replicas=replicas, color=color),
    )


async def restart(spec: AgentSpec, indices: list[int], color: Color) -> list[Replica]:
    """Restart replicas ``indices`` of colour ``color``.

    Returns:
        The colour's replicas, by index.

    Raises:
        ActivityError: the platform failed for good.
    """
    return await _platform_call(
        PlatformActivities.restart_replicas, RestartRequest(spec=spec, indices=indices, color=color)
    )


async def describe_service(agent_id: str) -> ServiceInfo | None:
    """The agent's service (gateway URLs, colours), or None if it has none or the call failed
    (logged)."""
    try:
        return await workflow.execute_activity_method(
            PlatformActivities.describe_service,
            agent_id,
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=PLATFORM_RETRY,
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
        await _platform_call(
            PlatformActivities.scale_down_color, ScaleDownRequest(agent_id=agent_id, color=color)
        )
    else:
        await _platform_call(
            PlatformActivities.deprovision_agent, DeprovisionRequest(agent_id=agent_id)
        )
