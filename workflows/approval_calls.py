"""The activities the approval gate calls, with their timeouts and retry policies.

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

NOTIFY_TIMEOUT = timedelta(seconds=30)
"""Start-to-close timeout of one webhook notification."""
NOTIFY_RETRY = RetryPolicy(maximum_attempts=5, maximum_interval=timedelta(seconds=30))
"""A notification is tried 5 times (1, 2, 4, 8 s apart); one that still fails is audited, and
the approval goes on waiting."""
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
        sent = await workflow.execute_activity_method(
            NotifyActivities.send_notification,
            n,
            start_to_close_timeout=NOTIFY_TIMEOUT,
            retry_policy=NOTIFY_RETRY,
        )
    except ActivityError as err:
        return f"{n.kind} notification failed: {err.cause or err}"
    if not sent:
        workflow.logger.info("%s notification not sent: no approval webhook", n.kind)
    return None
