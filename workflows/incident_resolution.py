"""The RESOLUTION phase of ``IncidentResponse``: wait until the incident is over (workflow code).

Resolved when an operator resolves (``resolve``), when Alertmanager has resolved every alert of
the incident, or when ``check_recovery`` finds the metrics within thresholds continuously for
``resolve_window_seconds``; closed unresolved after ``resolution_timeout_seconds``. Checks are
spaced so that at most :data:`MAX_RECOVERY_CHECKS` run; a flood of signals is absorbed by
continuing as new once the history reaches ``continue_after_events`` events.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from datetime import datetime, timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from fleetops.incident_report import IncidentPolicy
    from fleetops.incidents import (
        ContainmentAction,
        ContainmentRequest,
        OperatorRequest,
        RecoveryCheck,
    )
    from workflows import incident_calls as calls
    from workflows.incident_book import IncidentBook
    from workflows.incident_steps import AUTOMATION

MAX_RECOVERY_CHECKS = 2000
"""Most ``check_recovery`` calls of one incident: the poll interval grows to fit the timeout."""


def _resolved(b: IncidentBook, by: str) -> None:
    b.resolved_by, b.resolved_at = by, workflow.now()
    mttr = b.seconds_since_open(b.resolved_at) or 0.0
    b.record("resolved", f"resolved by {by} after {mttr:.0f} s")


def history_too_long(p: IncidentPolicy) -> bool:
    """Whether this run should continue as new (``continue_after_events``, or the server says)."""
    info = workflow.info()
    return (
        info.get_current_history_length() >= p.continue_after_events
        or info.is_continue_as_new_suggested()
    )


async def wait_resolved(
    b: IncidentBook,
    p: IncidentPolicy,
    operator: Callable[[], OperatorRequest | None],
    *,
    deadline: datetime,
    healthy_since: datetime | None = None,
) -> tuple[bool, datetime | None]:
    """Wait until resolved (``b.resolved_by`` set), the deadline, or a history too long.

    Args:
        b: the incident; ``resolved_by``/``resolved_at`` are set and audited here.
        p: thresholds, window, poll interval and timeout (seconds).
        operator: the operator's ``resolve`` request, if one arrived.
        deadline: when the incident closes unresolved.
        healthy_since: start of the current healthy streak (carried over a continue-as-new).

    Returns:
        ``(continue_as_new, healthy_since)``: True when the history is too long and the next
        run must take over (nothing resolved yet), with the healthy streak to carry.
    """
    poll = max(p.recovery_poll_seconds, p.resolution_timeout_seconds / MAX_RECOVERY_CHECKS)
    check = RecoveryCheck(
        agent_id=b.start.agent_id,
        error_rate_max=p.error_rate_max,
        p95_latency_max_seconds=p.p95_latency_max_seconds,
    )
    while True:
        req = operator()
        if req is not None:
            _resolved(b, f"operator {req.requested_by.strip()}")
            return False, healthy_since
        if b.all_resolved():
            _resolved(b, "alertmanager")
            return False, healthy_since
        if workflow.now() >= deadline:
            b.record("resolution", f"not resolved in {p.resolution_timeout_seconds:.0f} s")
            return False, healthy_since
        if history_too_long(p):
            return True, healthy_since
        rs = await calls.recovered(check)
        now = workflow.now()
        if rs.healthy:
            if healthy_since is None:
                healthy_since = now
                b.record("recovery", f"metrics within thresholds: {rs.values}")
            if (now - healthy_since).total_seconds() >= p.resolve_window_seconds:
                _resolved(b, "metrics")
                return False, healthy_since
        elif healthy_since is not None:
            healthy_since = None
            b.record("recovery", f"metrics out of thresholds again: {rs.detail}")
        wait = min(poll, max((deadline - now).total_seconds(), 0.001))
        with contextlib.suppress(TimeoutError):
            await workflow.wait_condition(
                lambda: operator() is not None or b.all_resolved() or history_too_long(p),
                timeout=timedelta(seconds=wait),
            )


async def lift_rate_limit(b: IncidentBook) -> None:
    """Remove the gateway rate limit a containment set, once the incident is resolved."""
    if not any(a.action == ContainmentAction.RATE_LIMIT and a.outcome == "ran" for a in b.actions):
        return
    result = await calls.contain(
        ContainmentRequest(
            incident_id=b.incident_id,
            agent_id=b.start.agent_id,
            action=ContainmentAction.RATE_LIMIT,
            requested_by=AUTOMATION,
            reason="incident resolved",
            lift=True,
            action_id=f"{workflow.info().run_id[:8]}.lift",
        )
    )
    b.record("action", f"rate limit lifted: {result.ok} {result.detail}"[:500])
