"""Typed async helpers for deployments and approvals, for other Python apps and the CLI.

    client = await connect(get_settings())
    handle = await deploy(client, DeploymentRequest(agent_id="support-bot", version="v2"))
    await approve(client, handle.id, approver="alice", comment="canary looks good")
    report = await handle.result()

Approvals work on any FleetOps workflow that waits for a human (they all share the gate), so
``approve``/``reject`` take a workflow id, and ``approvals_inbox`` lists every pending request.
"""

from __future__ import annotations

from temporalio.client import Client, WorkflowHandle, WorkflowUpdateFailedError
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from fleetops.approvals import ApprovalDecision, DecisionRequest, PendingApproval
from fleetops.constants import AGENT_ID_KEY, AWAITING_APPROVAL_KEY, TASK_QUEUE
from fleetops.deploy import AbortRequest, DeploymentRequest, DeploymentStatus
from fleetops.models import FrozenModel
from starters.agents import FleetOpsClientError
from workflows.blue_green import BlueGreenDeployment


class DeploymentAlreadyRunningError(FleetOpsClientError):
    """A deployment with this workflow id (same agent and version) is already running."""


class WorkflowNotFoundError(FleetOpsClientError):
    """No open workflow with that id."""


class ApprovalRefusedError(FleetOpsClientError):
    """The gate refused the decision (not allowed, or nothing pending); nothing was recorded."""


def deployment_workflow_id(agent_id: str, version: str) -> str:
    """``deploy/<agent_id>/<version>``."""
    return f"deploy/{agent_id}/{version}"


async def deploy(
    client: Client, req: DeploymentRequest, *, task_queue: str = TASK_QUEUE
) -> WorkflowHandle:
    """Start a ``BlueGreenDeployment``.

    Args:
        client: a connected client (:func:`fleetops.client.connect`).
        req: the deployment (JSON field names as in the README); validated by pydantic.
        task_queue: the worker's task queue.

    Returns:
        The workflow handle (``handle.result()`` gives the :class:`DeploymentReport`).

    Raises:
        DeploymentAlreadyRunningError: the same agent and version is being deployed. A
            deployment of another version of a busy agent starts, then fails at once with
            ``DeploymentRefused`` (the agent allows one deployment at a time).
        RPCError: the server refused the start for another reason.
    """
    wid = deployment_workflow_id(req.agent_id, req.version)
    try:
        return await client.start_workflow(
            BlueGreenDeployment.run,
            req,
            id=wid,
            task_queue=task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
        )
    except WorkflowAlreadyStartedError:
        raise DeploymentAlreadyRunningError(
            f"{wid} is already running; follow it with `fleetops deploy-status {wid}` "
            f"or stop it with `fleetops abort {wid}`"
        ) from None


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
        raise _not_found(workflow_id, err) from None


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
