"""The activities the approval gate calls (options of ``send_notification`` in
:mod:`workflows.activity_options`; the local activities that read settings here).

Workflow code (deterministic): these only schedule activities and turn their failures into an
audit sentence; :class:`workflows.approval.ApprovalGate` records it and goes on.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.notify import NotifyActivities
    from fleetops.approvals import ApprovalPolicy, Notification
    from workflows.activity_options import call

POLICY_TIMEOUT = timedelta(seconds=10)
"""Start-to-close timeout of the local activity that reads roles and keys from settings."""
POLICY_RETRY = RetryPolicy(maximum_attempts=3)
"""Reading settings is tried 3 times (1, 2 s apart)."""
POLICY_PATCH = "fleetops-approval-policy"
"""``workflow.patched`` id: requests read roles and keys (``approval_policy``); histories from
before read only roles (``approver_roles``)."""
UNAVAILABLE_POLICY = ApprovalPolicy(public_keys={"": ""})
"""The policy when settings cannot be read: signatures required and no approver holds a key, so
every decision is refused (fail closed) until the request's timeout applies."""


async def read_policy() -> tuple[ApprovalPolicy, str | None]:
    """Roles and approver keys for a new request (local activity ``approval_policy``).

    Returns:
        ``(policy, None)``; or, when the activity failed, ``(UNAVAILABLE_POLICY, why)``. Histories
        recorded before the policy existed read only the roles (``approver_roles``, no keys) and,
        if that failed, ``(ApprovalPolicy(), why)``: only listed approvers decide.
    """
    if not workflow.patched(POLICY_PATCH):
        try:
            roles = await workflow.execute_local_activity_method(
                NotifyActivities.approver_roles,
                start_to_close_timeout=POLICY_TIMEOUT,
                retry_policy=POLICY_RETRY,
            )
        except ActivityError as err:
            why = f"approver roles unavailable ({err.cause or err}); only listed names decide"
            return ApprovalPolicy(), why
        return ApprovalPolicy(roles=roles), None
    try:
        policy = await workflow.execute_local_activity_method(
            NotifyActivities.approval_policy,
            start_to_close_timeout=POLICY_TIMEOUT,
            retry_policy=POLICY_RETRY,
        )
    except (ActivityError, ApplicationError) as err:
        # A local activity's failure may arrive as the ApplicationError itself.
        cause = err.cause if isinstance(err, ActivityError) and err.cause else err
        why = (
            f"approval policy unavailable ({cause}); every decision is refused and the "
            "request ends at its timeout"
        )
        return UNAVAILABLE_POLICY, why
    return policy, None


async def send_notification(n: Notification) -> str | None:
    """Post one notification (activity ``send_notification``).

    Returns:
        None when posted (or when no webhook is configured); otherwise why it failed after its
        retries, for the audit.
    """
    try:
        sent = await call(
            NotifyActivities.send_notification, n, summary=f"send the approval {n.kind}"
        )
    except ActivityError as err:
        return f"{n.kind} notification failed: {err.cause or err}"
    if not sent:
        workflow.logger.info("%s notification not sent: no approval webhook", n.kind)
    return None
