"""What approvers read: the notification texts of ``fleetops.approvals`` (pure functions)."""

from __future__ import annotations

from datetime import UTC, datetime

from fleetops.approvals import (
    ApprovalDecision,
    ApprovalRequest,
    PendingApproval,
    decision_text,
    request_text,
)

AT = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)
DECIDE = (
    "Decide: temporal workflow update execute --workflow-id 'deploy/a/v2' --name decide "
    '--input \'{"approver": "<you>", "approved": true, "comment": "..."}\''
)


def pending(**kw: object) -> PendingApproval:
    base: dict[str, object] = {
        "request_id": "approval-1",
        "question": "Promote a v2?",
        "context": {"version": "v2", "error_rate": 0.01},
        "approvers": ["alice", "bob"],
        "roles": ["sre"],
        "requested_at": AT,
        "deadline": datetime(2026, 3, 7, 8, 9, 10, tzinfo=UTC),
        "timeout_outcome": "escalate",
    }
    base.update(kw)
    return PendingApproval.model_validate(base)


def test_request_text_shows_question_context_approvers_deadline_and_how() -> None:
    text = request_text("*Approval needed*", pending(), "deploy/a/v2")
    assert text.split("\n") == [
        "*Approval needed* for `deploy/a/v2` (approval-1): Promote a v2?",
        "Context: version=v2, error_rate=0.01",
        "Who may decide: alice, bob, role sre. Deadline: 2026-03-07 08:09:10 UTC (then: escalate).",
        DECIDE,
    ]


def test_open_request_without_context() -> None:
    text = request_text("*Reminder 1*", pending(approvers=[], roles=[], context={}), "deploy/a/v2")
    assert text.split("\n") == [
        "*Reminder 1* for `deploy/a/v2` (approval-1): Promote a v2?",
        "Who may decide: anyone named. Deadline: 2026-03-07 08:09:10 UTC (then: escalate).",
        DECIDE,
    ]


def test_signed_request_tells_approvers_to_sign() -> None:
    text = request_text("*Approval needed*", pending(signatures_required=True), "deploy/a/v2")
    assert text.split("\n")[-1] == (
        "Decide (signed): fleetops approve|reject 'deploy/a/v2' --as <you> --key <key>"
    )
    assert "temporal workflow update" not in text


def test_request_text_without_pending_request() -> None:
    assert request_text("*Escalated*", None, "wf") == "*Escalated* for `wf`"


def decision(**kw: object) -> ApprovalDecision:
    base: dict[str, object] = {
        "request_id": "approval-2",
        "approved": True,
        "outcome": "approved",
        "approver": "alice",
        "at": AT,
        "comment": "looks good",
    }
    base.update(kw)
    return ApprovalDecision.model_validate(base)


def test_decision_text() -> None:
    assert decision_text(decision(), "deploy/a/v2") == (
        "Approval approval-2 of `deploy/a/v2` approved by alice (approved): looks good"
    )
    timed_out = decision(approved=False, outcome="timed_out", approver=None, comment="")
    assert decision_text(timed_out, "wf") == "Approval approval-2 of `wf` timed_out (not approved)"
    proceed = decision(approved=True, outcome="timed_out", approver=None, comment="")
    assert decision_text(proceed, "wf") == "Approval approval-2 of `wf` timed_out (approved)"


def test_escalation_wait_defaults_to_the_timeout() -> None:
    req = ApprovalRequest(question="q", timeout_seconds=60)
    assert req.escalation_wait_seconds == 60
    req = ApprovalRequest(question="q", timeout_seconds=60, escalation_timeout_seconds=5)
    assert req.escalation_wait_seconds == 5
