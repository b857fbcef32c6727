"""Typed async helpers for deployments and approvals, for other Python apps and the CLI.

    client = await connect(get_settings())
    handle = await deploy(client, DeploymentRequest(agent_id="support-bot", version="v2"))
    await approve(client, handle.id, approver="alice", comment="canary looks good")
    report = await handle.result()

A deployment is started by the agent it changes (update ``deploy`` of ``agent/<agent_id>``),
which owns it as its child workflow and reconciles from the platform however it ends.

Approvals work on any FleetOps workflow that waits for a human (they all share the gate), so
``approve``/``reject`` take a workflow id, and ``approvals_inbox`` lists every pending request.
"""

from __future__ import annotations

from temporalio.client import Client, WorkflowHandle, WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from fleetops.approvals import ApprovalDecision, DecisionRequest, PendingApproval
from fleetops.constants import AGENT_ID_KEY, AWAITING_APPROVAL_KEY, agent_workflow_id
from fleetops.deploy import (
    AbortRequest,
    DeploymentReport,
    DeploymentRequest,
    DeploymentStatus,
)
from fleetops.models import FrozenModel
from starters.agents import AgentNotFoundError, FleetOpsClientError
from workflows.agent_lifecycle import AgentLifecycle
from workflows.blue_green import BlueGreenDeployment


class DeploymentRefusedError(FleetOpsClientError):
    """The agent refused the deployment (one in progress, not serving, same version, a change
    that does not fit its spec); nothing was started."""


class WorkflowNotFoundError(FleetOpsClientError):
    """No open workflow with that id."""


class ApprovalRefusedError(FleetOpsClientError):
    """The gate refused the decision (not allowed, or nothing pending); nothing was recorded."""


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
            history), or a workflow with the deployment's id is already running.
        RPCError: the server refused the call for another reason.
    """
    wid = agent_workflow_id(req.agent_id)
    try:
        started = await client.get_workflow_handle(wid).execute_update(AgentLifecycle.deploy, req)
    except WorkflowUpdateFailedError as err:
        cause = err.cause
        message = cause.message if isinstance(cause, ApplicationError) else str(cause or err)
        raise DeploymentRefusedError(message) from None
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND or "completed" in err.message.lower():
            raise AgentNotFoundError(
                f"agent {req.agent_id} is not running (no open workflow {wid}); start it with "
                f"fleetops agent start {req.agent_id}"
            ) from None
        raise
    return client.get_workflow_handle(
        started.deployment_id, run_id=started.run_id, result_type=DeploymentReport
    )


async def approve(
    client: Client, workflow_id: str, *, approver: str, comment: str = ""
) -> ApprovalDecision:
    """Approve what ``workflow_id`` waits for, as ``approver`` (update ``decide``).

    Args:
        client: a connected client.
        workflow_id: the waiting workflow, e.g. ``deploy/demo/v2``.
        approver: who decides; checked against the request's approvers and the roles of
            ``FLEETOPS_APPROVAL__ROLES``.
        comment: kept in the decision record.

    Returns:
        The decision record (who, role, when, comment, outcome).

    Raises:
        ApprovalRefusedError: ``approver`` may not decide, or nothing is pending (the update
            validator refused: nothing was written to history).
        WorkflowNotFoundError: no open workflow ``workflow_id``.
        RPCError: any other server error.
    """
    return await _decide(client, workflow_id, approver, comment, approved=True)


async def reject(
    client: Client, workflow_id: str, *, approver: str, comment: str = ""
) -> ApprovalDecision:
    """Reject what ``workflow_id`` waits for, as ``approver``; see :func:`approve`."""
    return await _decide(client, workflow_id, approver, comment, approved=False)


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


class InboxItem(FrozenModel):
    """One workflow waiting for a human."""

    workflow_id: str
    workflow_type: str
    agent_id: str | None
    pending: PendingApproval


async def approvals_inbox(client: Client) -> list[InboxItem]:
    """Every running workflow with ``FleetOpsAwaitingApproval=true`` and what it asks.

    Visibility is eventually consistent: a request made a second ago may not be listed yet.

    Args:
        client: a connected client.

    Returns:
        One item per waiting workflow, in the server's listing order; workflows that finished
        between the listing and the query are left out.
    """
    items = []
    query = f"{AWAITING_APPROVAL_KEY.name}=true AND ExecutionStatus='Running'"
    async for wf in client.list_workflows(query):
        try:
            raw = await client.get_workflow_handle(wf.id, run_id=wf.run_id).query(
                "pending_approval"
            )
        except RPCError:
            continue  # finished between list and query
        if raw is not None:
            pending = PendingApproval.model_validate(raw)
            items.append(
                InboxItem(
                    workflow_id=wf.id,
                    workflow_type=wf.workflow_type,
                    agent_id=wf.typed_search_attributes.get(AGENT_ID_KEY),
                    pending=pending,
                )
            )
    return items


async def _decide(
    client: Client, workflow_id: str, approver: str, comment: str, *, approved: bool
) -> ApprovalDecision:
    req = DecisionRequest(approver=approver, comment=comment, approved=approved)
    try:
        return await client.get_workflow_handle(workflow_id).execute_update(
            "decide", req, result_type=ApprovalDecision
        )
    except WorkflowUpdateFailedError as err:
        cause = err.cause
        raise ApprovalRefusedError(getattr(cause, "message", None) or str(cause)) from None
    except RPCError as err:
        raise _not_found(workflow_id, err) from None


def _not_found(workflow_id: str, err: RPCError) -> Exception:
    if err.status == RPCStatusCode.NOT_FOUND or "completed" in err.message.lower():
        return WorkflowNotFoundError(f"no open workflow {workflow_id} ({err.message})")
    return err
