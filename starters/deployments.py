"""Typed async helpers for deployments, for other Python apps and the CLI.

    client = await connect(get_settings())
    handle = await deploy(client, DeploymentRequest(agent_id="support-bot", version="v2"))
    await approvals.approve(client, handle.id, approver="alice", comment="canary looks good")
    report = await handle.result()

A deployment is started by the agent it changes (update ``deploy`` of ``agent/<agent_id>``),
which owns it as its child workflow and reconciles from the platform however it ends.

Approvals (signed or not) are in :mod:`starters.approvals`: they work on any FleetOps workflow
that waits for a human.
"""

from __future__ import annotations

import asyncio
import time

from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowHandle,
    WorkflowUpdateFailedError,
)
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from fleetops.constants import agent_workflow_id
from fleetops.deploy import (
    AbortRequest,
    DeploymentReport,
    DeploymentRequest,
    DeploymentStatus,
)
from starters.agents import AgentNotFoundError, FleetOpsClientError
from workflows.agent_lifecycle import AgentLifecycle
from workflows.blue_green import BlueGreenDeployment

SETTLE_SECONDS = 10.0
"""How long :func:`deploy` retries while the agent reconciles a deployment that just closed."""


class DeploymentRefusedError(FleetOpsClientError):
    """The agent refused the deployment (one in progress, not serving, same version, a change
    that does not fit its spec); nothing was started."""


class WorkflowNotFoundError(FleetOpsClientError):
    """No open workflow with that id."""


async def deploy(client: Client, req: DeploymentRequest) -> WorkflowHandle:
    """Ask agent ``req.agent_id`` to start a ``BlueGreenDeployment`` (update ``deploy``).

    Args:
        client: a connected client (:func:`fleetops.client.connect`).
        req: the deployment (JSON field names as in the README); validated by pydantic.

    Returns:
        The deployment's workflow handle, pinned to the run the agent started
        (``handle.result()`` gives the :class:`DeploymentReport`).

    Raises:
        AgentNotFoundError: no open ``AgentLifecycle`` for ``req.agent_id``.
        DeploymentRefusedError: the agent's validator refused it (nothing was written to
            history), or a workflow with the deployment's id is already running. A refusal
            because the previous deployment, already closed, is still being reconciled by the
            agent is retried for up to :data:`SETTLE_SECONDS` first.
        RPCError: the server refused the call for another reason.
    """
    wid = agent_workflow_id(req.agent_id)
    deadline = time.monotonic() + SETTLE_SECONDS
    while True:
        try:
            started = await client.get_workflow_handle(wid).execute_update(
                AgentLifecycle.deploy, req
            )
            break
        except WorkflowUpdateFailedError as err:
            cause = err.cause
            message = cause.message if isinstance(cause, ApplicationError) else str(cause or err)
            settling = "is in progress" in message and time.monotonic() < deadline
            if settling and await _previous_just_closed(client, wid):
                await asyncio.sleep(0.2)  # the agent is reconciling the one that just ended
                continue
            raise DeploymentRefusedError(message) from None
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND or "completed" in err.message.lower():
                raise AgentNotFoundError(req.agent_id) from None
            raise
    return client.get_workflow_handle(
        started.deployment_id, run_id=started.run_id, result_type=DeploymentReport
    )


async def _previous_just_closed(client: Client, agent_wid: str) -> bool:
    """Whether the agent still holds a deployment whose workflow has already closed."""
    try:
        st = await client.get_workflow_handle(agent_wid).query(AgentLifecycle.status)
        if st.deployment is None:
            return True  # released meanwhile: try again
        desc = await client.get_workflow_handle(st.deployment.deployment_id).describe()
    except RPCError:
        return False
    return desc.status not in (None, WorkflowExecutionStatus.RUNNING)


async def abort(
    client: Client, workflow_id: str, *, reason: str = "", requested_by: str = ""
) -> None:
    """Ask a deployment to stop and roll back (signal ``abort``; fire-and-forget).

    Args:
        client: a connected client.
        workflow_id: the deployment, e.g. ``deploy/demo/v2``.
        reason: recorded in the deployment's report.
        requested_by: who asked, recorded with the reason.

    Raises:
        WorkflowNotFoundError: no open workflow ``workflow_id``.
        RPCError: any other server error.
    """
    try:
        await client.get_workflow_handle(workflow_id).signal(
            "abort", AbortRequest(reason=reason, requested_by=requested_by)
        )
    except RPCError as err:
        found = _not_found(workflow_id, err)
        if isinstance(found, WorkflowNotFoundError):
            raise WorkflowNotFoundError(await closed_deployment_text(client, workflow_id)) from None
        raise found from None


async def closed_deployment_text(client: Client, workflow_id: str) -> str:
    """Say how a closed deployment ended and what its agent reconciled to.

    Args:
        client: a connected client.
        workflow_id: ``deploy/<agent>/<version>``.

    Returns:
        One or two sentences: the workflow's close status and time (or that none exists), and
        the agent's ``last_deployment`` record when it is about this deployment.
    """
    try:
        desc = await client.get_workflow_handle(workflow_id).describe()
    except RPCError:
        return f"no deployment {workflow_id} (no workflow with that id)"
    status = desc.status.name if desc.status else "UNKNOWN"
    when = desc.close_time.isoformat(timespec="seconds") if desc.close_time else "?"
    text = f"{workflow_id} is not open: it closed as {status} at {when}"
    parts = workflow_id.split("/")
    if len(parts) != 3:
        return text
    try:
        st = await client.get_workflow_handle(agent_workflow_id(parts[1])).query(
            AgentLifecycle.status
        )
    except (RPCError, ValueError):
        return text + f"; agent {parts[1]} is not running"
    last = st.last_deployment
    if last is None or last.deployment_id != workflow_id:
        return text
    outcome = f", outcome {last.outcome}" if last.outcome else ""
    return (
        text + f"{outcome}. Agent {parts[1]} reconciled at {last.at.isoformat(timespec='seconds')}"
        f": the Service serves {last.active_color}, the agent runs {last.version}"
    )


async def deployment_status(client: Client, workflow_id: str) -> DeploymentStatus:
    """The deployment's ``status`` query (also works after it finished).

    Args:
        client: a connected client.
        workflow_id: the deployment, e.g. ``deploy/demo/v2``.

    Returns:
        Phase, phase history, outcome, colours and analysis results so far.

    Raises:
        WorkflowNotFoundError: no workflow ``workflow_id``.
        RPCError: any other server error.
    """
    try:
        return await client.get_workflow_handle(workflow_id).query(BlueGreenDeployment.status)
    except RPCError as err:
        raise _not_found(workflow_id, err) from None


def _not_found(workflow_id: str, err: RPCError) -> Exception:
    if err.status == RPCStatusCode.NOT_FOUND or "completed" in err.message.lower():
        return WorkflowNotFoundError(f"no open workflow {workflow_id} ({err.message})")
    return err
