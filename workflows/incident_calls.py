"""The activities ``IncidentResponse`` calls, each turned into a value or a reason (workflow code).

An incident must go on whatever its tools do: a policy that cannot be read gives the safe
defaults (no automatic containment, no LLM), a failed LLM call or evidence gathering is a note
and the rules decide, a failed action is recorded as failed. Options come from
:mod:`workflows.activity_options`.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from activities.containment import ContainmentActivities
    from activities.incident_evidence import EvidenceActivities
    from activities.incident_review import IncidentActivities
    from activities.llm import LlmActivities
    from activities.recovery import RecoveryActivities
    from fleetops.incident_report import IncidentPolicy, WriteReviewRequest
    from fleetops.incidents import (
        ContainmentRequest,
        ContainmentResult,
        EvidenceItem,
        EvidenceRequest,
        LlmOutcome,
        RecoveryCheck,
        RecoveryStatus,
        TriageRequest,
    )
    from workflows.activity_options import TABLE, call

POLICY_RETRY = RetryPolicy(maximum_attempts=3)
"""Reading the policy is tried 3 times (1, 2 s apart); then the safe defaults apply."""


def why(err: ActivityError) -> str:
    """The root cause's message of an activity failure, one line, at most 300 characters."""
    cause: BaseException = err
    while cause.__cause__ is not None:
        cause = cause.__cause__
    return " ".join(str(cause).split())[:300] or type(cause).__name__


async def read_policy() -> tuple[IncidentPolicy, str | None]:
    """The incident policy (activity ``incident_policy``), or the safe defaults and why."""
    o = TABLE[IncidentActivities.incident_policy]
    try:
        policy = await workflow.execute_activity_method(
            IncidentActivities.incident_policy,
            start_to_close_timeout=o.start_to_close,
            retry_policy=POLICY_RETRY,
            summary="read the incident policy",
        )
        return policy, None
    except ActivityError as err:
        return IncidentPolicy(), f"policy unavailable ({why(err)}): defaults, rules only"


async def triage(req: TriageRequest, timeout_seconds: float) -> LlmOutcome:
    """Ask the LLM (activity ``llm_triage``); a failed activity is an outcome without answer."""
    try:
        return await call(
            LlmActivities.llm_triage,
            req,
            summary=f"LLM triage of {req.incident_id}",
            start_to_close=timedelta(seconds=timeout_seconds),
        )
    except ActivityError as err:
        return LlmOutcome(failure=f"llm_triage failed: {why(err)}")


async def gather(req: EvidenceRequest) -> tuple[list[EvidenceItem], str | None]:
    """Evidence around the alert (activity ``gather_evidence``), or none and why."""
    try:
        items = await call(
            EvidenceActivities.gather_evidence, req, summary=f"gather evidence on {req.agent_id}"
        )
        return list(items), None
    except ActivityError as err:
        return [], f"gather_evidence failed: {why(err)}"


async def contain(req: ContainmentRequest) -> ContainmentResult:
    """Run one catalogue action (activity ``run_containment``); a failure is ``ok=False``."""
    try:
        return await call(
            ContainmentActivities.run_containment,
            req,
            summary=f"{req.action.value} on {req.agent_id} (by {req.requested_by})",
        )
    except ActivityError as err:
        return ContainmentResult(action=req.action, ok=False, detail=why(err))


async def recovered(check: RecoveryCheck) -> RecoveryStatus:
    """Whether the agent's metrics are within thresholds (activity ``check_recovery``)."""
    try:
        return await call(
            RecoveryActivities.check_recovery, check, summary=f"check {check.agent_id} recovery"
        )
    except ActivityError as err:
        return RecoveryStatus(healthy=False, detail=f"check_recovery failed: {why(err)}")


async def write_review(req: WriteReviewRequest) -> tuple[str | None, str | None]:
    """Write the review file (activity ``write_review``): its path, or None and why."""
    try:
        path = await call(IncidentActivities.write_review, req, summary="write the review")
        return path, None
    except ActivityError as err:
        return None, f"write_review failed: {why(err)}"
