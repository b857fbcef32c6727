"""What a deployment asks its approvers (``workflows.blue_green_gate``), as pure Python."""

from __future__ import annotations

import pytest

from fleetops.analysis import AnalysisResult
from fleetops.deploy import DeploymentRequest
from workflows.blue_green_gate import promotion_request

REQ = DeploymentRequest.model_validate(
    {
        "agent_id": "shop",
        "version": "v2",
        "promotion": {
            "approvers": ["alice"],
            "roles": ["sre"],
            "approval_timeout_seconds": 600,
            "timeout_outcome": "proceed",
            "reminder_interval_seconds": 60,
        },
    }
)
PRE = AnalysisResult(phase="Inconclusive", metrics=[], message="metric 'e' assessed Inconclusive")


@pytest.mark.parametrize(
    ("phase", "question"),
    [
        (None, "Promote shop v2 to active?"),
        ("pre_promotion", "Pre-promotion analysis of shop v2 is inconclusive. Promote?"),
        ("post_promotion", "Post-promotion analysis of shop v2 is inconclusive. Keep it?"),
    ],
)
def test_question_per_reason(phase: str | None, question: str) -> None:
    assert promotion_request(REQ, {}, inconclusive_phase=phase).question == question


def test_request_carries_the_promotion_settings_and_the_analyses() -> None:
    req = promotion_request(REQ, {"pre_promotion": PRE}, inconclusive_phase="pre_promotion")
    assert req.context == {
        "agent_id": "shop",
        "version": "v2",
        "pre_promotion_analysis": "Inconclusive: metric 'e' assessed Inconclusive",
    }
    assert (req.approvers, req.roles) == (["alice"], ["sre"])
    assert req.timeout_seconds == 600
    assert req.timeout_outcome == "proceed"
    assert req.reminder_interval_seconds == 60
    assert req.escalation_timeout_seconds is None
