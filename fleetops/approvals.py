"""Models of the human-approval gate (``workflows/approval.py``) and its notifications.

An approval carries what Spinnaker's manual judgment stage and StackStorm inquiries carry: the
question and context shown to the approver, who may decide (names and roles), a timeout with an
explicit outcome, reminders and escalation, and a record of who decided what, when, and why.

Sources:
    Spinnaker manual judgment: https://spinnaker.io/docs/guides/user/pipeline/managing-pipelines/
    StackStorm inquiries: https://docs.stackstorm.com/inquiries.html
    Slack incoming webhooks: https://api.slack.com/messaging/webhooks
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from fleetops.models import FrozenModel, StrictModel

TimeoutOutcome = Literal["reject", "proceed", "escalate"]
"""What happens when nobody decides in time: ``reject`` (the gate answers "no"), ``proceed``
(the gate answers "yes"), or ``escalate`` (notify the escalation channel, wait
``escalation_timeout_seconds`` more, then reject)."""

ApprovalOutcome = Literal["approved", "rejected", "timed_out", "cancelled"]
"""How an approval ended: by a human (``approved``/``rejected``), by its timeout, or because the
workflow using the gate gave up waiting (``cancelled``)."""

AuditKind = Literal[
    "requested", "reminded", "escalated", "decided", "refused", "timed_out", "cancelled"
]
"""Kinds of entries in the approval audit trail."""

NotificationKind = Literal["request", "reminder", "escalation", "decision"]
"""Kinds of approval notifications posted to the webhook."""

ContextValue = str | int | float | bool | None
"""A value shown to approvers next to the question (JSON scalars only)."""

Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
"""A user or role name; surrounding whitespace is stripped and an empty name is invalid."""

DEFAULT_TIMEOUT_SECONDS = 3 * 24 * 3600.0
"""Default time an approval waits for a human: 3 days, in seconds."""

DEFAULT_REMINDER_INTERVAL_SECONDS = 4 * 3600.0
"""Default time between reminders: 4 hours, in seconds."""


class ApprovalRequest(StrictModel):
    """What a workflow asks a human (input of ``ApprovalGate.request``).

    An empty ``approvers`` and ``roles`` makes an open request: any named approver may decide.
    Otherwise the approver must be listed in ``approvers`` or hold one of ``roles`` according to
    the ``approval.roles`` setting (user -> roles).
    """

    question: str = Field(min_length=1, max_length=500, description="What to decide.")
    context: dict[str, ContextValue] = Field(
        default_factory=dict, description="Facts shown with the question, e.g. version, error rate."
    )
    approvers: list[Name] = Field(default_factory=list, description="Users who may decide.")
    roles: list[Name] = Field(
        default_factory=list, description="Roles whose members may decide (see approval.roles)."
    )
    timeout_seconds: float = Field(
        DEFAULT_TIMEOUT_SECONDS, gt=0, description="Seconds to wait for a decision (3 days)."
    )
    timeout_outcome: TimeoutOutcome = Field(
        "reject", description="What happens at the timeout: reject, proceed, or escalate."
    )
    reminder_interval_seconds: float | None = Field(
        DEFAULT_REMINDER_INTERVAL_SECONDS,
        gt=0,
        description="Seconds between reminders while pending (4 hours); null: no reminders.",
    )
    escalation_timeout_seconds: float | None = Field(
        None,
        gt=0,
        description="After an escalation, seconds to wait more before rejecting; "
        "null: timeout_seconds.",
    )

    @property
    def escalation_wait_seconds(self) -> float:
        """Seconds an escalated request waits before it is rejected."""
        if self.escalation_timeout_seconds is None:
            return self.timeout_seconds
        return self.escalation_timeout_seconds


class ApprovalSignal(StrictModel):
    """Payload of the ``approve`` and ``reject`` signals: ``{"approver": ..., "comment": ...}``."""

    approver: Name = Field(description="Who decides (user name, as in approval.roles).")
    comment: str = Field("", max_length=2000, description="Why; kept in the decision record.")


class DecisionRequest(ApprovalSignal):
    """Payload of the ``decide`` update: an :class:`ApprovalSignal` plus ``approved``."""

    approved: bool = Field(description="true approves, false rejects.")


class ApprovalDecision(FrozenModel):
    """The record of how one approval ended (returned by the gate and by ``decide``)."""

    request_id: str
    approved: bool = Field(
        description="The effect for the workflow: true lets it go on (also a timeout with "
        "outcome proceed), false stops it."
    )
    outcome: ApprovalOutcome
    approver: str | None = Field(None, description="Who decided; null for timeouts/cancels.")
    approver_roles: list[str] = Field(
        default_factory=list, description="The approver's roles when deciding."
    )
    at: datetime = Field(description="When (workflow time, UTC).")
    comment: str = ""
    escalated: bool = Field(False, description="Whether the request had been escalated.")


class PendingApproval(FrozenModel):
    """Answer of the ``pending_approval`` query: the open request, as shown to approvers."""

    request_id: str
    question: str
    context: dict[str, ContextValue]
    approvers: list[str]
    roles: list[str]
    requested_at: datetime
    deadline: datetime = Field(
        description="When the timeout (or, once escalated, the escalation timeout) applies."
    )
    timeout_outcome: TimeoutOutcome = "reject"
    escalated: bool = False
    reminders_sent: int = Field(0, ge=0)


class AuditEntry(FrozenModel):
    """One line of the approval audit trail (shown by ``status``)."""

    at: datetime = Field(description="Workflow time, UTC.")
    kind: AuditKind
    actor: str | None = Field(None, description="The approver, if a person acted.")
    detail: str = ""


class Notification(FrozenModel):
    """One message for approvers (input of the ``send_notification`` activity)."""

    kind: NotificationKind
    workflow_id: str
    text: str = Field(min_length=1, description="Message text (Slack mrkdwn).")
    dedupe_key: str = Field(
        min_length=1, description="Same key, same message: sent at most once (Idempotency-Key)."
    )
    escalation: bool = Field(
        False, description="Post to approval.escalation_webhook_url (else webhook_url)."
    )


# --- notification texts (pure functions: the workflow renders them deterministically) -------


def request_text(title: str, pending: PendingApproval | None, workflow_id: str) -> str:
    """Slack mrkdwn text of a request, reminder or escalation.

    Args:
        title: first words, e.g. ``*Approval needed*``.
        pending: the open request (None: only the title and workflow are shown).
        workflow_id: the workflow waiting for the decision.

    Returns:
        The question, context, who may decide, the deadline (UTC), and how to answer.
    """
    p = pending
    if p is None:
        return f"{title} for `{workflow_id}`"
    who = ", ".join([*p.approvers, *(f"role {r}" for r in p.roles)]) or "anyone named"
    lines = [f"{title} for `{workflow_id}` ({p.request_id}): {p.question}"]
    if p.context:
        lines.append("Context: " + ", ".join(f"{k}={v}" for k, v in p.context.items()))
    lines.append(
        f"Who may decide: {who}. Deadline: {p.deadline:%Y-%m-%d %H:%M:%S} UTC "
        f"(then: {p.timeout_outcome})."
    )
    lines.append(
        f"Decide: temporal workflow update execute --workflow-id '{workflow_id}' --name decide "
        '--input \'{"approver": "<you>", "approved": true, "comment": "..."}\''
    )
    return "\n".join(lines)


def decision_text(decision: ApprovalDecision, workflow_id: str) -> str:
    """Slack mrkdwn text announcing how a request ended.

    Args:
        decision: the recorded decision.
        workflow_id: the workflow that waited.

    Returns:
        One line: request, outcome, approver, effect, comment.
    """
    d = decision
    by = f" by {d.approver}" if d.approver else ""
    effect = "approved" if d.approved else "not approved"
    why = f": {d.comment}" if d.comment else ""
    return f"Approval {d.request_id} of `{workflow_id}` {d.outcome}{by} ({effect}){why}"
