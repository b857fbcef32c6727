"""What a deployment asks its approvers: the promotion request and its context."""

from __future__ import annotations

from fleetops.analysis import AnalysisResult
from fleetops.approvals import ApprovalRequest
from fleetops.deploy import DeploymentRequest


def promotion_request(
    req: DeploymentRequest,
    analyses: dict[str, AnalysisResult],
    *,
    inconclusive_phase: str | None,
) -> ApprovalRequest:
    """The approval a deployment asks for before promotion (or after an inconclusive analysis).

    An Inconclusive analysis goes to a human (Argo Rollouts pauses the rollout in that case). With
    ``promotion.mode == "auto"`` there are no configured approvers, so any named approver may
    decide, and an unanswered request is rejected after ``approval_timeout_seconds``.

    Args:
        req: the deployment request (promotion settings, agent, version).
        analyses: results so far, shown to the approver.
        inconclusive_phase: ``pre_promotion``/``post_promotion`` when asked because an analysis
            was inconclusive; None for a manual promotion.

    Returns:
        The request for :class:`workflows.approval.ApprovalGate`.
    """
    p = req.promotion
    if inconclusive_phase is None:
        question = f"Promote {req.agent_id} {req.version} to active?"
    elif inconclusive_phase == "pre_promotion":
        question = (
            f"Pre-promotion analysis of {req.agent_id} {req.version} is inconclusive. Promote?"
        )
    else:
        question = (
            f"Post-promotion analysis of {req.agent_id} {req.version} is inconclusive. Keep it?"
        )
    context: dict[str, str | int | float | bool | None] = {
        "agent_id": req.agent_id,
        "version": req.version,
    }
    for name, result in analyses.items():
        context[f"{name}_analysis"] = f"{result.phase}: {result.message}"
    return ApprovalRequest(
        question=question,
        context=context,
        approvers=p.approvers,
        roles=p.roles,
        timeout_seconds=p.approval_timeout_seconds,
        timeout_outcome=p.timeout_outcome,
        reminder_interval_seconds=p.reminder_interval_seconds,
    )
