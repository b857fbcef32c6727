"""Typed async helpers for approvals, for other Python apps and the CLI.

    client = await connect(get_settings())
    key = load_private_key(Path("alice.key").read_bytes())
    await approve(client, "deploy/demo/v2", approver="alice", comment="lgtm", key=key)

Approvals work on any FleetOps workflow that waits for a human (they all share the gate), so
``approve``/``reject`` take a workflow id, and ``approvals_inbox`` lists every pending request.
With a key, the decision is signed for the pending request (:mod:`fleetops.signing`), which the
gate requires when ``approval.public_keys`` is set.
"""

from __future__ import annotations

from datetime import UTC, datetime

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from temporalio.client import Client, WorkflowUpdateFailedError
from temporalio.service import RPCError, RPCStatusCode

from fleetops.approvals import ApprovalDecision, DecisionRequest, PendingApproval
from fleetops.constants import AGENT_ID_KEY, AWAITING_APPROVAL_KEY
from fleetops.models import FrozenModel
from fleetops.signing import sign_decision
from starters.agents import FleetOpsClientError


class ApprovalRefusedError(FleetOpsClientError):
    """The gate refused the decision (not allowed, nothing pending, bad or missing signature);
    nothing was recorded."""


class NoOpenWorkflowError(FleetOpsClientError):
    """No open workflow with that id."""


class InboxItem(FrozenModel):
    """One workflow waiting for a human."""

    workflow_id: str
    workflow_type: str
    agent_id: str | None
    pending: PendingApproval


async def pending_approval(client: Client, workflow_id: str) -> PendingApproval | None:
    """The request ``workflow_id`` waits for (query ``pending_approval``), or None.

    Raises:
        NoOpenWorkflowError: no workflow ``workflow_id``.
        RPCError: any other server error.
    """
    try:
        raw = await client.get_workflow_handle(workflow_id).query("pending_approval")
    except RPCError as err:
        raise _not_found(workflow_id, err) from None
    return None if raw is None else PendingApproval.model_validate(raw)


async def signed_decision(
    client: Client,
    workflow_id: str,
    decision: DecisionRequest,
    key: Ed25519PrivateKey,
) -> DecisionRequest:
    """``decision`` signed with ``key`` for the request ``workflow_id`` waits for now.

    Args:
        client: a connected client (queries ``pending_approval`` for the run and request ids).
        workflow_id: the waiting workflow.
        decision: approver, comment and ``approved``.
        key: the approver's Ed25519 private key.

    Returns:
        The decision with ``request_id``, ``signed_at`` (now, UTC) and ``signature``.

    Raises:
        ApprovalRefusedError: nothing is pending.
        NoOpenWorkflowError: no workflow ``workflow_id``.
    """
    pending = await pending_approval(client, workflow_id)
    if pending is None:
        raise ApprovalRefusedError(f"{workflow_id} is not waiting for an approval")
    signed = sign_decision(
        key,
        decision,
        workflow_id=workflow_id,
        run_id=pending.run_id,
        request_id=pending.request_id,
        approved=decision.approved,
        signed_at=datetime.now(UTC).replace(microsecond=0),
    )
    assert isinstance(signed, DecisionRequest)
    return signed


async def decide(
    client: Client,
    workflow_id: str,
    *,
    approver: str,
    approved: bool,
    comment: str = "",
    key: Ed25519PrivateKey | None = None,
) -> ApprovalDecision:
    """Approve or reject what ``workflow_id`` waits for, as ``approver`` (update ``decide``).

    Args:
        client: a connected client.
        workflow_id: the waiting workflow, e.g. ``deploy/demo/v2``.
        approver: who decides; checked against the request's approvers, the roles of
            ``FLEETOPS_APPROVAL__ROLES`` and, with keys configured, the signature.
        approved: True approves, False rejects.
        comment: kept in the decision record.
        key: the approver's private key; the decision is signed when given.

    Returns:
        The decision record (who, roles, when, comment, outcome, whether it was signed).

    Raises:
        ApprovalRefusedError: the validator refused (nothing was written to history).
        NoOpenWorkflowError: no open workflow ``workflow_id``.
        pydantic.ValidationError: ``approver`` is empty or too long.
        RPCError: any other server error.
    """
    d = DecisionRequest(approver=approver, comment=comment, approved=approved)
    if key is not None:
        d = await signed_decision(client, workflow_id, d, key)
    try:
        return await client.get_workflow_handle(workflow_id).execute_update(
            "decide", d, result_type=ApprovalDecision
        )
    except WorkflowUpdateFailedError as err:
        cause = err.cause
        raise ApprovalRefusedError(getattr(cause, "message", None) or str(cause)) from None
    except RPCError as err:
        raise _not_found(workflow_id, err) from None


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
            items.append(
                InboxItem(
                    workflow_id=wf.id,
                    workflow_type=wf.workflow_type,
                    agent_id=wf.typed_search_attributes.get(AGENT_ID_KEY),
                    pending=PendingApproval.model_validate(raw),
                )
            )
    return items


def _not_found(workflow_id: str, err: RPCError) -> Exception:
    if err.status == RPCStatusCode.NOT_FOUND or "completed" in err.message.lower():
        return NoOpenWorkflowError(f"no open workflow {workflow_id} ({err.message})")
    return err
