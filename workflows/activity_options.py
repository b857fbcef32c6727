"""One table of activity options (timeouts, retries, heartbeats): every workflow calls through it.

Workflow code (deterministic): :func:`call` and :func:`start` only schedule activities. Each
activity has one row, so the lifecycle and a deployment calling the same platform activity use
the same timeouts; what differs by purpose is explicit at the call site (``compensation=True``
for a rollback step that must not give up, a per-call timeout derived from the request).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from activities.containment import ContainmentActivities
    from activities.deployments import DeploymentActivities
    from activities.incident_evidence import EvidenceActivities
    from activities.incident_intake import IncidentIntakeActivities
    from activities.incident_review import IncidentActivities
    from activities.llm import LlmActivities
    from activities.metrics import MetricsActivities
    from activities.notify import NotifyActivities
    from activities.platform.activities import PlatformActivities
    from activities.probes import ProbeActivities
    from activities.recovery import RecoveryActivities

A = TypeVar("A")
R = TypeVar("R")

PLATFORM_RETRY = RetryPolicy(maximum_interval=timedelta(seconds=30), maximum_attempts=6)
"""Up to 6 attempts, 1, 2, 4, 8 and 16 s apart (Temporal's default backoff: coefficient 2 from
1 s, capped at 30 s). A step that still fails is the workflow's to handle (ERROR, rollback)."""
COMPENSATION_RETRY = RetryPolicy(maximum_interval=timedelta(seconds=60))
"""Compensations retry until they succeed (1 s doubling, capped at 60 s): a rollback must not
stop half-way. Non-retryable errors still end them."""
PROBE_RETRY = RetryPolicy(maximum_attempts=2)
"""A health probe round: one attempt and one retry; a round that fails is skipped."""
NOTIFY_RETRY = RetryPolicy(maximum_attempts=5, maximum_interval=timedelta(seconds=30))
"""A notification is tried 5 times (1, 2, 4, 8 s apart); one that still fails is audited, and
the approval goes on waiting."""
MEASURE_RETRY = RetryPolicy(maximum_attempts=2)
"""One analysis measurement: one attempt and one retry; a measurement that still fails counts as
an Error measurement (Argo's ``consecutiveErrorLimit``)."""
OPEN_INCIDENT_RETRY = RetryPolicy(maximum_attempts=3, maximum_interval=timedelta(seconds=5))
"""Opening an incident from the lifecycle: 3 attempts (1, 2 s apart); one that still fails is a
note in the agent's transitions, and the agent goes on (it must never wait on its incident)."""
LLM_RETRY = RetryPolicy(maximum_attempts=3, maximum_interval=timedelta(seconds=60))
"""An LLM triage is tried 3 times (429/5xx/unreachable; a 429's Retry-After sets the delay);
one that still fails leaves the incident to the rules. Invalid or truncated answers are not
retried here: the activity makes its own one repair call and returns a failure."""


@dataclass(frozen=True)
class Options:
    """The options of one activity.

    Attributes:
        start_to_close: bound on one attempt.
        heartbeat: heartbeat timeout, for activities that heartbeat (they beat every 1-5 s).
        retry: the retry policy of a forward step.
    """

    start_to_close: timedelta
    heartbeat: timedelta | None = None
    retry: RetryPolicy | None = None  # None: PLATFORM_RETRY


_MINUTE = timedelta(minutes=1)
TABLE: dict[Callable[..., Any], Options] = {
    PlatformActivities.provision_replicas: Options(10 * _MINUTE, _MINUTE),
    PlatformActivities.restart_replicas: Options(5 * _MINUTE, _MINUTE),
    PlatformActivities.deprovision_agent: Options(5 * _MINUTE, _MINUTE),
    PlatformActivities.scale_down_color: Options(5 * _MINUTE, _MINUTE),
    # A switch is one push to the gateway (milliseconds); a short bound retries it soon after a
    # worker dies mid-call.
    PlatformActivities.switch_traffic: Options(timedelta(seconds=15)),
    PlatformActivities.describe_service: Options(timedelta(seconds=30)),
    PlatformActivities.list_replicas: Options(timedelta(seconds=30)),
    ProbeActivities.probe_replicas: Options(timedelta(seconds=30), retry=PROBE_RETRY),
    ProbeActivities.wait_healthy: Options(10 * _MINUTE, timedelta(seconds=30)),
    ProbeActivities.run_smoke_tests: Options(5 * _MINUTE),
    DeploymentActivities.describe_deployment: Options(timedelta(seconds=30)),
    NotifyActivities.send_notification: Options(timedelta(seconds=30), retry=NOTIFY_RETRY),
    # start_to_close is set per call: the measurement window plus 30 s.
    MetricsActivities.measure_metric: Options(
        timedelta(seconds=30), timedelta(seconds=10), MEASURE_RETRY
    ),
    IncidentIntakeActivities.open_incident: Options(
        timedelta(seconds=10), retry=OPEN_INCIDENT_RETRY
    ),
    # Read-only: a status query, a few Prometheus queries or scrapes, log tails.
    EvidenceActivities.gather_evidence: Options(2 * _MINUTE, timedelta(seconds=30)),
    # A pause or scale waits for the agent to stop or start replicas (minutes at most).
    ContainmentActivities.run_containment: Options(10 * _MINUTE, _MINUTE),
    # Without Prometheus it waits window_seconds (<= 1 h) between two scrapes, heartbeating.
    RecoveryActivities.check_recovery: Options(65 * _MINUTE, timedelta(seconds=30)),
    # Two HTTP calls (answer + one repair) of llm.timeout_seconds (60 s by default) and a margin;
    # pass start_to_close=LlmPolicy.activity_timeout_seconds when the timeout setting differs.
    # The activity heartbeats every 2 s while it waits for the model.
    LlmActivities.llm_triage: Options(timedelta(seconds=150), timedelta(seconds=30), LLM_RETRY),
    LlmActivities.llm_policy: Options(timedelta(seconds=10)),
    IncidentActivities.incident_policy: Options(timedelta(seconds=10)),
    IncidentActivities.write_review: Options(timedelta(seconds=30)),
}
"""Activity -> options."""


def _kwargs(
    method: Callable[..., Any],
    summary: str,
    compensation: bool,
    start_to_close: timedelta | None,
) -> dict[str, Any]:
    o = TABLE[method]
    return {
        "start_to_close_timeout": start_to_close or o.start_to_close,
        "heartbeat_timeout": o.heartbeat,
        "retry_policy": COMPENSATION_RETRY if compensation else (o.retry or PLATFORM_RETRY),
        "summary": summary[:200],
    }


async def call(
    method: Callable[[Any, A], Awaitable[R]],
    arg: A,
    *,
    summary: str,
    compensation: bool = False,
    start_to_close: timedelta | None = None,
) -> R:
    """Run one activity with its row of :data:`TABLE` and wait for its result.

    Args:
        method: the activity method, e.g. ``PlatformActivities.provision_replicas``.
        arg: its one argument.
        summary: what the call does, in words (shown by the Temporal Web UI; cut at 200
            characters).
        compensation: retry until it succeeds (:data:`COMPENSATION_RETRY`).
        start_to_close: a per-call bound derived from the request (e.g. a probe timeout).

    Returns:
        The activity's result.

    Raises:
        ActivityError: the activity failed for good (retries exhausted or non-retryable).
        KeyError: ``method`` has no row in :data:`TABLE` (a programming error).
    """
    return await workflow.execute_activity_method(
        method, arg, **_kwargs(method, summary, compensation, start_to_close)
    )


async def call_args(
    method: Callable[..., Awaitable[R]],
    args: list[Any],
    *,
    summary: str,
) -> R:
    """Like :func:`call`, for an activity that takes several arguments.

    Args:
        method: the activity method, e.g. ``IncidentIntakeActivities.open_incident``.
        args: its arguments, in order.
        summary: what the call does, in words (cut at 200 characters).

    Returns:
        The activity's result.

    Raises:
        ActivityError: the activity failed for good (retries exhausted or non-retryable).
        KeyError: ``method`` has no row in :data:`TABLE`.
    """
    return await workflow.execute_activity_method(
        method, args=args, **_kwargs(method, summary, False, None)
    )
