"""Agent control: activities that steer agents' ``AgentLifecycle`` workflows through the client.

Temporal's Python workflow code cannot send updates to other workflows, so the ``Maintenance``
workflow calls these. Each update carries an update id derived from the activity (workflow id,
activity id), so a retried attempt attaches to the update the first attempt sent instead of
asking twice (Temporal deduplicates updates by id within a run). Every activity that waits
heartbeats every :data:`HEARTBEAT_SECONDS`; a cancelled ``agent_deploy`` aborts the deployment
it started.

Errors: an agent that is not open is ``AgentNotFound`` (non-retryable); an update the agent
refuses keeps the agent's error type (``InvalidTransition``, ``DeploymentRefused``, ...) and is
non-retryable; server unavailability is left to Temporal's retries.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import Any, TypeVar

from temporalio import activity
from temporalio.client import Client, WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from fleetops.agent_control import (
    MAX_QUERY_AGENTS,
    AbortDeployment,
    AgentAction,
    AgentConfigure,
    AgentDeploy,
    AgentHealth,
    AgentRestart,
    DeployOutcome,
    FoundAgents,
    IncidentQuery,
    TargetQuery,
    WaitAgentHealthy,
)
from fleetops.constants import AGENT_ID_KEY, LABELS_KEY, agent_workflow_id
from fleetops.deploy import AbortRequest, DeploymentStarted
from fleetops.errors import AGENT_NOT_FOUND
from fleetops.labels import label_terms
from fleetops.models import (
    AgentState,
    AgentStatus,
    ConfigureAgentRequest,
    ConfigureAgentResult,
    RestartAgentRequest,
    RestartAgentResult,
    TransitionRequest,
    TransitionResult,
)

T = TypeVar("T")
HEARTBEAT_SECONDS = 1.0
"""Seconds between heartbeats while an activity waits."""


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _update_id(what: str) -> str:
    info = activity.info()
    return f"{info.workflow_id}/{info.activity_id}/{what}"


class AgentControlActivities:
    """Activities on agents, with a connected client.

    Args:
        client: the worker's client (same namespace as the agents).
    """

    def __init__(self, client: Client) -> None:
        self._client = client

    # --- reading ----------------------------------------------------------------------------

    async def _status(self, agent_id: str) -> AgentStatus | None:
        try:
            return await self._client.get_workflow_handle(agent_workflow_id(agent_id)).query(
                "status", result_type=AgentStatus
            )
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND or "completed" in err.message.lower():
                return None
            raise

    async def _require(self, agent_id: str) -> AgentStatus:
        st = await self._status(agent_id)
        if st is None:
            raise ApplicationError(
                f"agent {agent_id} is not running (no open agent/{agent_id})",
                type=AGENT_NOT_FOUND,
                non_retryable=True,
            )
        return st

    @activity.defn(name="agent_health")
    async def agent_health(self, agent_id: str) -> AgentHealth:
        """The agent's state, healthy replicas of its active colour and running deployment.

        Args:
            agent_id: the agent.

        Returns:
            :class:`AgentHealth`; ``found=False`` when ``agent/<id>`` is not open.
        """
        return _health(agent_id, await self._status(agent_id))

    @activity.defn(name="agent_wait_healthy")
    async def agent_wait_healthy(self, req: WaitAgentHealthy) -> AgentHealth:
        """Poll the agent every ``poll_seconds`` until it is healthy or ``timeout_seconds`` pass.

        Returns:
            The last :class:`AgentHealth` seen (``healthy`` False after the timeout).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + req.timeout_seconds
        while True:
            health = _health(req.agent_id, await self._status(req.agent_id))
            if health.healthy or loop.time() >= deadline:
                return health
            activity.heartbeat(health.problem())
            await asyncio.sleep(req.poll_seconds)

    @activity.defn(name="find_agents")
    async def find_agents(self, q: TargetQuery) -> FoundAgents:
        """Resolve a plan's targets: the ids given that are open, then every running agent
        whose ``FleetOpsLabels`` contain each ``k=v`` of the selector (visibility query).

        Returns:
            Open agents (ids in the order given, then matches sorted) and the missing ids.
        """
        agents: list[str] = []
        missing: list[str] = []
        for agent_id in q.agents:
            (agents if await self._status(agent_id) is not None else missing).append(agent_id)
        if q.selector:
            terms = " AND ".join(
                f"{LABELS_KEY.name} = {_quote(t)}" for t in label_terms(q.selector)
            )
            query = f"WorkflowType = 'AgentLifecycle' AND ExecutionStatus = 'Running' AND {terms}"
            found: set[str] = set()
            async for wf in self._client.list_workflows(query, limit=MAX_QUERY_AGENTS):
                if wf.id.startswith("agent/"):
                    found.add(wf.id.removeprefix("agent/"))
            agents += sorted(found - set(agents))
        return FoundAgents(agents=agents, missing=missing)

    @activity.defn(name="open_incidents")
    async def open_incidents(self, q: IncidentQuery) -> list[str]:
        """Workflow ids of running ``IncidentResponse`` workflows about any of ``q.agents``.

        Returns:
            Sorted workflow ids (at most :data:`MAX_QUERY_AGENTS`); [] when there is none.
        """
        if not q.agents:
            return []
        who = " OR ".join(f"{AGENT_ID_KEY.name} = {_quote(a)}" for a in q.agents)
        query = f"WorkflowType = 'IncidentResponse' AND ExecutionStatus = 'Running' AND ({who})"
        return sorted(
            [wf.id async for wf in self._client.list_workflows(query, limit=MAX_QUERY_AGENTS)]
        )

    # --- changing ---------------------------------------------------------------------------

    async def _update(self, agent_id: str, name: str, arg: Any, result_type: type[T]) -> T:
        handle = self._client.get_workflow_handle(agent_workflow_id(agent_id))
        try:
            return await _beating(
                handle.execute_update(name, arg, id=_update_id(name), result_type=result_type)
            )
        except WorkflowUpdateFailedError as err:
            cause = err.cause
            if isinstance(cause, ApplicationError):
                raise ApplicationError(
                    f"agent {agent_id} refused {name}: {cause.message}",
                    type=cause.type,
                    non_retryable=True,
                ) from None
            raise ApplicationError(
                f"agent {agent_id} refused {name}: {cause or err}",
                type="UpdateFailed",
                non_retryable=True,
            ) from None
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND or "completed" in err.message.lower():
                raise ApplicationError(
                    f"agent {agent_id} is not running", type=AGENT_NOT_FOUND, non_retryable=True
                ) from None
            raise

    @activity.defn(name="agent_transition")
    async def agent_transition(self, req: AgentAction) -> str:
        """Pause or resume the agent (update ``transition``); already there is success.

        Returns:
            The agent's state afterwards.

        Raises:
            ApplicationError: ``AgentNotFound``; ``InvalidTransition`` when the state allows
                neither the action nor counts as done (e.g. resume while SHUTTING_DOWN).
        """
        st = await self._require(req.agent_id)
        if req.action == "pause" and st.state == AgentState.PAUSED:
            return str(st.state)
        if req.action == "resume" and st.state in (AgentState.READY, AgentState.PROCESSING):
            return str(st.state)
        r = await self._update(
            req.agent_id,
            "transition",
            TransitionRequest(action=req.action, reason=req.reason, requested_by=req.requested_by),
            TransitionResult,
        )
        return str(r.state)

    @activity.defn(name="agent_restart")
    async def agent_restart(self, req: AgentRestart) -> RestartAgentResult:
        """Rolling restart of the agent's replicas (update ``restart``; re-resolves secrets)."""
        payload = RestartAgentRequest(requested_by=req.requested_by, reason=req.reason)
        return await self._update(req.agent_id, "restart", payload, RestartAgentResult)

    @activity.defn(name="agent_configure")
    async def agent_configure(self, req: AgentConfigure) -> ConfigureAgentResult:
        """Apply a config (or restore an earlier version) through update ``configure``.

        Raises:
            ApplicationError: ``InvalidInput`` (non-retryable) when neither or both of config and
                restore_version are given; the agent's refusal (schema, unknown version).
        """
        try:
            payload = ConfigureAgentRequest(
                config=req.config,
                restore_version=req.restore_version,
                requested_by=req.requested_by,
                reason=req.reason,
            )
        except ValueError as err:
            raise ApplicationError(str(err), type="InvalidInput", non_retryable=True) from None
        return await self._update(req.agent_id, "configure", payload, ConfigureAgentResult)

    @activity.defn(name="agent_deploy")
    async def agent_deploy(self, req: AgentDeploy) -> DeployOutcome:
        """Ask the agent for a blue-green deployment (update ``deploy``) and follow it to its end.

        Idempotent: if the agent already runs ``req.request.version`` the result says so
        (``closed_as="unchanged"``); if that deployment is already running it is followed.
        Cancelled (the plan was cancelled): the deployment is aborted before re-raising.

        Returns:
            How it closed (``status.last_deployment``) and the version the agent runs now.
        """
        r = req.request
        st = await self._require(r.agent_id)
        if st.deployment is not None and st.deployment.version == r.version:
            dep_id = st.deployment.deployment_id
        elif st.deployment is None and st.version == r.version:
            return DeployOutcome(
                deployment_id="",
                closed_as="unchanged",
                outcome="promoted",
                version=st.version,
                message=f"{r.agent_id} already runs {r.version}",
            )
        else:
            started = await self._update(r.agent_id, "deploy", r, DeploymentStarted)
            dep_id = started.deployment_id
        try:
            st = await self._require(r.agent_id)
            before = st.deployment.stable_spec if st.deployment is not None else None
            out = await self._follow(r.agent_id, dep_id, req.poll_seconds)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await self._client.get_workflow_handle(dep_id).signal(
                    "abort",
                    AbortRequest(reason="maintenance cancelled", requested_by="maintenance"),
                )
            raise
        if before is None:
            return out
        return out.model_copy(
            update={
                "previous_version": before.version,
                "previous_command": before.command,
                "previous_image": before.image,
            }
        )

    async def _follow(self, agent_id: str, dep_id: str, poll: float) -> DeployOutcome:
        while True:
            st = await self._require(agent_id)
            last = st.last_deployment
            if st.deployment_id != dep_id and last is not None and last.deployment_id == dep_id:
                return DeployOutcome(
                    deployment_id=dep_id,
                    closed_as=last.closed_as,
                    outcome=last.outcome,
                    version=st.version,
                    message=last.message,
                )
            activity.heartbeat(f"following {dep_id}")
            await asyncio.sleep(poll)

    @activity.defn(name="agent_abort_deployment")
    async def agent_abort_deployment(self, req: AbortDeployment) -> str | None:
        """Abort the agent's running deployment (signal ``abort``) and wait until the agent has
        reconciled it; nothing running is success.

        Returns:
            The deployment id aborted, or None when none was running.
        """
        st = await self._require(req.agent_id)
        if st.deployment_id is None:
            return None
        dep_id = st.deployment_id
        with contextlib.suppress(RPCError):  # it may close on its own meanwhile
            await self._client.get_workflow_handle(dep_id).signal(
                "abort", AbortRequest(reason=req.reason, requested_by=req.requested_by)
            )
        while (st := await self._require(req.agent_id)).deployment_id == dep_id:
            activity.heartbeat(f"waiting for {dep_id} to roll back")
            await asyncio.sleep(0.5)
        return dep_id


def _health(agent_id: str, st: AgentStatus | None) -> AgentHealth:
    if st is None:
        return AgentHealth(agent_id=agent_id, found=False)
    active = [r for r in st.replicas if r.color == st.active_color]
    return AgentHealth(
        agent_id=agent_id,
        found=True,
        state=str(st.state),
        version=st.version,
        desired_replicas=st.desired_replicas,
        healthy_replicas=sum(1 for r in active if r.healthy),
        deployment_id=st.deployment_id,
        active_color=st.active_color,
        endpoints=[r.endpoint for r in active],
    )


async def _beating(call: Awaitable[T]) -> T:
    """Await ``call``, heartbeating every :data:`HEARTBEAT_SECONDS` (cancellation cancels it)."""
    task = asyncio.ensure_future(call)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=HEARTBEAT_SECONDS)
            if done:
                return task.result()
            activity.heartbeat()
    finally:
        task.cancel()
