"""Typed async helpers to start and steer agents (``AgentLifecycle`` workflows) from Python apps.

Every helper takes a connected client first (made with :func:`fleetops.client.connect`, so it has
the FleetOps data converter) and maps Temporal's errors to the small hierarchy below, so callers
handle "not running", "already running" and "not allowed now" without knowing Temporal's types::

    client = await connect(get_settings())
    await start_agent(client, AgentSpec(agent_id="support-bot", replicas=2))
    await scale(client, "support-bot", 3, reason="traffic", requested_by="alice")
"""

from __future__ import annotations

import shlex
from datetime import datetime

from temporalio.client import (
    Client,
    WorkflowFailureError,
    WorkflowHandle,
    WorkflowQueryRejectedError,
    WorkflowUpdateFailedError,
)
from temporalio.common import (
    QueryRejectCondition,
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import FailureError, WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from fleetops.constants import AGENT_ID_KEY, STATE_KEY, TASK_QUEUE, agent_workflow_id
from fleetops.models import (
    AgentLifecycleInput,
    AgentReport,
    AgentSpec,
    AgentState,
    AgentStatus,
    FrozenModel,
    TransitionRequest,
    TransitionResult,
)
from workflows.agent_lifecycle import AgentLifecycle

WORKFLOW_TYPE = "AgentLifecycle"


class FleetOpsClientError(Exception):
    """Base of the errors the FleetOps client helpers raise; the message says what to do next."""


class AgentAlreadyRunningError(FleetOpsClientError):
    """An ``AgentLifecycle`` with the agent's workflow id is already running.

    Attributes:
        agent_id: the agent.
        run_id: run id of the running workflow, when the server reported it.
    """

    def __init__(self, agent_id: str, *, run_id: str | None = None) -> None:
        run = f", run {run_id}" if run_id else ""
        super().__init__(
            f"agent {agent_id} is already running (AgentLifecycle {agent_workflow_id(agent_id)}"
            f"{run}); steer it with pause/resume/scale, or stop it before starting it again"
        )
        self.agent_id = agent_id
        self.run_id = run_id


class AgentNotFoundError(FleetOpsClientError):
    """No open ``AgentLifecycle`` for the agent: never started, or already completed.

    Attributes:
        agent_id: the agent.
    """

    def __init__(self, agent_id: str) -> None:
        super().__init__(
            f"agent {agent_id} is not running (no open AgentLifecycle "
            f"{agent_workflow_id(agent_id)}); start it with `fleetops agent start {agent_id}`"
        )
        self.agent_id = agent_id


class InvalidTransitionError(FleetOpsClientError):
    """The workflow rejected (or could not carry out) an operator action.

    Attributes:
        agent_id: the agent.
        action: ``pause`` | ``resume`` | ``scale`` | ``shutdown``.
        reason: the workflow's own message (e.g. the allowed replica range).
    """

    def __init__(self, agent_id: str, action: str, reason: str) -> None:
        super().__init__(f"{action} rejected by agent {agent_id}: {reason}")
        self.agent_id = agent_id
        self.action = action
        self.reason = reason


class AgentSummary(FrozenModel):
    """One agent workflow as the visibility store lists it (may lag the workflow by a moment)."""

    agent_id: str
    state: AgentState | None
    """From the ``FleetOpsState`` search attribute; None before the workflow first sets it."""
    workflow_id: str
    run_id: str
    status: str
    """Execution status name: ``RUNNING``, ``COMPLETED``, ``CONTINUED_AS_NEW``, ..."""
    start_time: datetime


async def start_agent(
    client: Client, spec: AgentSpec, *, task_queue: str = TASK_QUEUE
) -> WorkflowHandle[AgentLifecycle, AgentReport]:
    """Start an agent's ``AgentLifecycle`` workflow (id ``agent/<agent_id>``).

    The id of a completed agent may be reused; a running one is never replaced.

    Args:
        client: a client from :func:`fleetops.client.connect`.
        spec: what to run.
        task_queue: task queue of the worker that runs ``AgentLifecycle``.

    Returns:
        The handle of the new run (``handle.result_run_id`` is its run id).

    Raises:
        AgentAlreadyRunningError: an ``AgentLifecycle`` with this id is running.
    """
    try:
        return await client.start_workflow(
            AgentLifecycle.run,
            AgentLifecycleInput(**spec.model_dump()),
            id=agent_workflow_id(spec.agent_id),
            task_queue=task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
            static_summary=start_summary(spec),
            static_details=start_details(spec),
            # Set at start so `list_agents` shows the agent before a worker picks it up.
            search_attributes=TypedSearchAttributes(
                [
                    SearchAttributePair(AGENT_ID_KEY, spec.agent_id),
                    SearchAttributePair(STATE_KEY, str(AgentState.INITIALIZING)),
                ]
            ),
        )
    except WorkflowAlreadyStartedError as err:
        raise AgentAlreadyRunningError(spec.agent_id, run_id=err.run_id) from err


def start_summary(spec: AgentSpec) -> str:
    """One line the Web UI shows as the agent workflow's summary: agent, version, replicas."""
    return f"agent {spec.agent_id} {spec.version}, {spec.replicas} replicas"


def start_details(spec: AgentSpec) -> str:
    """The agent workflow's static details (Markdown): what runs and within which bounds.

    Environment variables are listed by name only: their values stay out of the Web UI.
    """
    argv = shlex.join(spec.command or [])
    what = f"image `{spec.image}`" if spec.image else f"command `{argv}`"
    h = spec.health
    lines = [
        f"Runs {what}, version {spec.version}.",
        f"Replicas: {spec.replicas} (scale within {spec.min_replicas}..{spec.max_replicas}).",
        f"Health: `{h.path}` every {h.interval_seconds:g} s, restart after "
        f"{h.failure_threshold} failed probes.",
    ]
    if spec.env:
        lines.append("Environment: " + ", ".join(f"`{k}`" for k in sorted(spec.env)))
    return "\n\n".join(lines)


async def pause(
    client: Client, agent_id: str, *, reason: str = "", requested_by: str = ""
) -> TransitionResult:
    """Stop the agent's replicas, keeping its spec and state (-> PAUSED).

    Args:
        client: a client from :func:`fleetops.client.connect`.
        agent_id: the agent.
        reason: why; kept in the transition record.
        requested_by: who asked.

    Returns:
        The state and desired replicas once the replicas are stopped.

    Raises:
        AgentNotFoundError: the agent is not running.
        InvalidTransitionError: the agent cannot be paused now (e.g. already PAUSED).
    """
    req = TransitionRequest(action="pause", reason=reason, requested_by=requested_by)
    return await _transition(client, agent_id, req)


async def resume(
    client: Client, agent_id: str, *, reason: str = "", requested_by: str = ""
) -> TransitionResult:
    """Provision a PAUSED or ERROR agent again (-> INITIALIZING, then READY once healthy).

    Args:
        client: a client from :func:`fleetops.client.connect`.
        agent_id: the agent.
        reason: why; kept in the transition record.
        requested_by: who asked.

    Returns:
        The state right after the action (INITIALIZING); poll :func:`status` for READY.

    Raises:
        AgentNotFoundError: the agent is not running.
        InvalidTransitionError: the agent is neither PAUSED nor in ERROR.
    """
    req = TransitionRequest(action="resume", reason=reason, requested_by=requested_by)
    return await _transition(client, agent_id, req)


async def scale(
    client: Client, agent_id: str, replicas: int, *, reason: str = "", requested_by: str = ""
) -> TransitionResult:
    """Set the agent's desired replica count (replicas start or stop before this returns).

    Args:
        client: a client from :func:`fleetops.client.connect`.
        agent_id: the agent.
        replicas: new desired count, within the spec's [min_replicas, max_replicas].
        reason: why; kept in the transition record.
        requested_by: who asked.

    Returns:
        The state and the new desired replica count.

    Raises:
        AgentNotFoundError: the agent is not running.
        InvalidTransitionError: ``replicas`` is out of bounds, or the agent is shutting down.
        pydantic.ValidationError: ``replicas`` < 1.
    """
    req = TransitionRequest(
        action="scale", replicas=replicas, reason=reason, requested_by=requested_by
    )
    return await _transition(client, agent_id, req)


async def shutdown(
    client: Client,
    agent_id: str,
    *,
    reason: str = "",
    requested_by: str = "",
    wait: bool = True,
) -> AgentReport | TransitionResult:
    """Stop every replica and complete the agent's workflow.

    Args:
        client: a client from :func:`fleetops.client.connect`.
        agent_id: the agent.
        reason: why; kept in the transition record.
        requested_by: who asked.
        wait: wait for the workflow to complete and return its final report.

    Returns:
        With ``wait``, the workflow's final :class:`AgentReport`; without it, or when the
        replicas could not be stopped (the agent is then in ERROR and keeps running), the
        :class:`TransitionResult` of the action.

    Raises:
        AgentNotFoundError: the agent is not running.
        InvalidTransitionError: the agent is already shutting down.
        FleetOpsClientError: the workflow failed instead of completing.
    """
    req = TransitionRequest(action="shutdown", reason=reason, requested_by=requested_by)
    result = await _transition(client, agent_id, req)
    if not wait or result.state != AgentState.TERMINATED:
        return result
    handle: WorkflowHandle[AgentLifecycle, AgentReport] = client.get_workflow_handle(
        agent_workflow_id(agent_id), result_type=AgentReport
    )
    try:
        return await handle.result()
    except WorkflowFailureError as err:
        raise FleetOpsClientError(
            f"agent {agent_id}'s workflow failed after shutdown: {_message(err.cause)}"
        ) from err


async def status(client: Client, agent_id: str) -> AgentStatus:
    """The agent now: state, replicas with health, recent transitions, counters.

    Args:
        client: a client from :func:`fleetops.client.connect`.
        agent_id: the agent.

    Returns:
        The answer of the workflow's ``status`` query.

    Raises:
        AgentNotFoundError: the agent is not running (completed agents are not queried).
    """
    handle: WorkflowHandle[AgentLifecycle, AgentReport] = client.get_workflow_handle(
        agent_workflow_id(agent_id), result_type=AgentReport
    )
    try:
        return await handle.query(
            AgentLifecycle.status, reject_condition=QueryRejectCondition.NOT_OPEN
        )
    except WorkflowQueryRejectedError as err:
        raise AgentNotFoundError(agent_id) from err
    except RPCError as err:
        if _is_not_found(err):
            raise AgentNotFoundError(agent_id) from err
        raise


async def list_agents(
    client: Client, *, state: AgentState | None = None, include_closed: bool = False
) -> list[AgentSummary]:
    """List agent workflows from the visibility store (eventually consistent).

    Args:
        client: a client from :func:`fleetops.client.connect`.
        state: only agents in this state (the ``FleetOpsState`` search attribute).
        include_closed: include completed runs too (one row per run), not only running ones.

    Returns:
        The agents, sorted by agent id, then start time.
    """
    query = f"WorkflowType='{WORKFLOW_TYPE}'"
    if not include_closed:
        query += " AND ExecutionStatus='Running'"
    if state is not None:
        query += f" AND {STATE_KEY.name}='{AgentState(state).value}'"
    agents = []
    async for wf in client.list_workflows(query):
        agents.append(
            AgentSummary(
                agent_id=wf.typed_search_attributes.get(AGENT_ID_KEY)
                or wf.id.removeprefix("agent/"),
                state=_state(wf.typed_search_attributes.get(STATE_KEY)),
                workflow_id=wf.id,
                run_id=wf.run_id,
                status=wf.status.name if wf.status is not None else "UNKNOWN",
                start_time=wf.start_time,
            )
        )
    return sorted(agents, key=lambda a: (a.agent_id, a.start_time))


async def _transition(client: Client, agent_id: str, req: TransitionRequest) -> TransitionResult:
    handle: WorkflowHandle[AgentLifecycle, AgentReport] = client.get_workflow_handle(
        agent_workflow_id(agent_id), result_type=AgentReport
    )
    try:
        return await handle.execute_update(AgentLifecycle.transition, req)
    except WorkflowUpdateFailedError as err:
        raise InvalidTransitionError(agent_id, req.action, _message(err.cause)) from err
    except RPCError as err:
        if _is_not_found(err):
            raise AgentNotFoundError(agent_id) from err
        raise


def _is_not_found(err: RPCError) -> bool:
    # A completed workflow answers updates with NOT_FOUND "workflow execution already completed";
    # some servers use FAILED_PRECONDITION for the same thing.
    return err.status == RPCStatusCode.NOT_FOUND or "already completed" in err.message.lower()


def _state(raw: str | None) -> AgentState | None:
    try:
        return AgentState(raw) if raw else None
    except ValueError:  # written by a newer FleetOps with more states
        return None


def _message(cause: BaseException) -> str:
    return cause.message if isinstance(cause, FailureError) else str(cause)
