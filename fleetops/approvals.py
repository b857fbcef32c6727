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

from pydantic import AwareDatetime, Field, StrictBool, StringConstraints

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

NotificationKind = Literal["request", "reminder", "escalation", "decision", "maintenance"]
"""Kinds of notifications posted to the webhook (``maintenance``: a plan's start and end)."""

ContextValue = str | int | float | bool | None
"""A value shown to approvers next to the question (JSON scalars only)."""

MAX_NAME_CHARS = 200
"""Longest user or role name, in characters."""

Name = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_NAME_CHARS)
]
"""A user or role name; surrounding whitespace is stripped and an empty name is invalid."""

MAX_NAMES = 100
"""Most approvers (or roles) one request may list."""
MAX_TIMEOUT_SECONDS = 30 * 24 * 3600.0
"""Upper bound of every approval timeout: 30 days, in seconds (larger ones overflow datetimes)."""
MAX_REMINDER_INTERVAL_SECONDS = 24 * 3600.0
"""Upper bound of the reminder interval: 1 day, in seconds."""
MIN_REMINDER_INTERVAL_SECONDS = 60.0
"""Lower bound of the reminder interval: 1 minute, so reminders keep history bounded."""

TimeoutSeconds = Annotated[float, Field(gt=0, le=MAX_TIMEOUT_SECONDS, allow_inf_nan=False)]
"""Seconds, in ``(0, 30 days]``: every approval timeout (also ``Promotion``'s)."""
ReminderIntervalSeconds = Annotated[
    float,
    Field(ge=MIN_REMINDER_INTERVAL_SECONDS, le=MAX_REMINDER_INTERVAL_SECONDS, allow_inf_nan=False),
]
"""Seconds between reminders, in ``[1 minute, 1 day]``."""
Names = Annotated[list[Name], Field(max_length=MAX_NAMES)]
"""A list of at most ``MAX_NAMES`` non-empty names (approvers or roles)."""

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
    approvers: Names = Field(default_factory=list, description="Users who may decide.")
    roles: Names = Field(
        default_factory=list, description="Roles whose members may decide (see approval.roles)."
    )
    timeout_seconds: TimeoutSeconds = Field(
        DEFAULT_TIMEOUT_SECONDS, description="Seconds to wait for a decision (3 days, <= 30 days)."
    )
    timeout_outcome: TimeoutOutcome = Field(
        "reject", description="What happens at the timeout: reject, proceed, or escalate."
    )
    reminder_interval_seconds: ReminderIntervalSeconds | None = Field(
        DEFAULT_REMINDER_INTERVAL_SECONDS,
        description="Seconds between reminders while pending (4 hours; 1 minute to 1 day); "
        "null: no reminders.",
    )
    escalation_timeout_seconds: TimeoutSeconds | None = Field(
        None,
        description="After an escalation, seconds to wait more before rejecting (<= 30 days); "
        "null: timeout_seconds.",
    )

    @property
    def escalation_wait_seconds(self) -> float:
        """Seconds an escalated request waits before it is rejected."""
        if self.escalation_timeout_seconds is None:
            return self.timeout_seconds
        return self.escalation_timeout_seconds


class ApprovalSignal(StrictModel):
    """Payload of the ``approve`` and ``reject`` signals: ``{"approver": ..., "comment": ...}``.

    The signature fields are required when ``approval.public_keys`` is set (see
    :mod:`fleetops.signing`); ``request_id``, when given, must name the pending request.
    """

    approver: Name = Field(description="Who decides (user name, as in approval.roles).")
    comment: str = Field("", max_length=2000, description="Why; kept in the decision record.")
    request_id: str | None = Field(
        None, min_length=1, max_length=100, description="The request decided, e.g. approval-1."
    )
    signed_at: AwareDatetime | None = Field(
        None, description="When the approver signed (RFC 3339 with offset)."
    )
    signature: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        description="Base64 Ed25519 signature of fleetops.signing.decision_message.",
    )


class DecisionRequest(ApprovalSignal):
    """Payload of the ``decide`` update: an :class:`ApprovalSignal` plus ``approved``."""

    approved: StrictBool = Field(description="true approves, false rejects (a JSON boolean).")


class ApprovalPolicy(FrozenModel):
    """Who may decide and how decisions are verified, read from settings when a request starts.

    Result of the ``approval_policy`` activity; recorded in history, so a request keeps the
    roles and keys it started with.
    """

    roles: dict[str, list[str]] = Field(default_factory=dict, description="User -> roles.")
    public_keys: dict[str, str] = Field(
        default_factory=dict,
        description="Approver -> base64 Ed25519 public key; not empty: signatures required.",
    )
    signature_max_age_seconds: float = Field(
        600.0, gt=0, description="Oldest signature accepted, seconds before workflow time."
    )


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
    signed: bool = Field(False, description="Whether the approver's signature was verified.")


class PendingApproval(FrozenModel):
    """Answer of the ``pending_approval`` query: the open request, as shown to approvers."""

    request_id: str
    run_id: str = Field("", description="The workflow run asking (signed decisions name it).")
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
    signatures_required: bool = Field(
        False, description="Decisions must be signed (fleetops approve --key)."
    )


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
    if p.signatures_required:
        lines.append(
            f"Decide (signed): fleetops approve|reject '{workflow_id}' --as <you> --key <key>"
        )
    else:
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
