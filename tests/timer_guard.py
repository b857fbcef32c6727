"""A client interceptor that keeps signals, updates and cancels off a timer about to fire.

The time-skipping test server strands a run whose workflow task cancels a timer that fired while
the task was with the worker: it refuses the completion ("invalid history builder state for
action", temporalio/sdk-java#3088) and never sends the task again, so the run hangs and, with it,
time skipping for every later test on that server. A signal that wakes an agent from its wait
between health rounds cancels that wait's timer, so a signal sent within a few milliseconds of the
timer's due time hits the bug (between skips the server's clock runs at real pace). The dev server
and Temporal Cloud accept such a completion; this guard exists only for the test server.

Before a message goes out, :class:`TimerGuard` reads the workflow's history; when one of its
timers is due within ``guard_seconds``, it skips the server's clock past that timer first (the
timer fires and the workflow handles it as it would have a moment later) and looks again.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from temporalio.api.enums.v1 import EventType
from temporalio.client import (
    CancelWorkflowInput,
    Interceptor,
    OutboundInterceptor,
    SignalWorkflowInput,
    StartWorkflowUpdateInput,
    WorkflowUpdateHandle,
)
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

GUARD_SECONDS = 1.5
"""How close to its due time (server seconds) a pending timer counts as about to fire: more than
a loaded CI machine takes for one workflow task."""

MAX_SKIPS = 5
"""Timers skipped past for one message at most (each skip fires at least one timer)."""


CLOSED = frozenset(
    {
        EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED,
        EventType.EVENT_TYPE_WORKFLOW_EXECUTION_FAILED,
        EventType.EVENT_TYPE_WORKFLOW_EXECUTION_TIMED_OUT,
        EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CANCELED,
        EventType.EVENT_TYPE_WORKFLOW_EXECUTION_TERMINATED,
        EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW,
    }
)
"""Events that close a run."""


class TimerGuard(Interceptor):
    """Client interceptor for a time-skipping environment: see the module docstring.

    Set :attr:`env` once the environment has started (the interceptor is created before it);
    until then, and for a workflow that cannot be read, messages go out unchanged.
    """

    def __init__(self, guard_seconds: float = GUARD_SECONDS) -> None:
        self.env: WorkflowEnvironment | None = None
        self.guard_seconds = guard_seconds
        self.skips = 0
        """Skips made so far (for tests of the guard)."""

    def intercept_client(self, next: OutboundInterceptor) -> OutboundInterceptor:
        """Wrap ``next`` so signals, updates and cancels wait for a quiet moment."""
        return _Outbound(next, self)

    async def settle(self, workflow_id: str, run_id: str | None) -> None:
        """Skip the server's clock past any timer of the workflow due within the guard.

        Args:
            workflow_id: the workflow the message is for.
            run_id: its run, or ``None`` for the latest.
        """
        env = self.env
        if env is None:
            return
        for _ in range(MAX_SKIPS):
            due = await self._next_due(env, workflow_id, run_id)
            if due is None:
                return
            wait = (due - await env.get_current_time()).total_seconds()
            if wait > self.guard_seconds:
                return
            self.skips += 1
            await env.sleep(max(wait, 0.0) + 0.1)

    @staticmethod
    async def _next_due(
        env: WorkflowEnvironment, workflow_id: str, run_id: str | None
    ) -> datetime | None:
        """The earliest due time (UTC) of the run's pending timers, or ``None`` when none."""
        handle = env.client.get_workflow_handle(workflow_id, run_id=run_id)
        pending: dict[str, datetime] = {}
        try:
            async for event in handle.fetch_history_events():
                if event.event_type == EventType.EVENT_TYPE_TIMER_STARTED:
                    attrs = event.timer_started_event_attributes
                    started = event.event_time.ToDatetime(tzinfo=UTC)
                    pending[attrs.timer_id] = started + attrs.start_to_fire_timeout.ToTimedelta()
                elif event.event_type == EventType.EVENT_TYPE_TIMER_FIRED:
                    pending.pop(event.timer_fired_event_attributes.timer_id, None)
                elif event.event_type == EventType.EVENT_TYPE_TIMER_CANCELED:
                    pending.pop(event.timer_canceled_event_attributes.timer_id, None)
                elif event.event_type in CLOSED:
                    return None  # a closed run's timers never fire
        except RPCError:
            return None  # no such workflow: the message itself reports that
        return min(pending.values(), default=None)


class _Outbound(OutboundInterceptor):
    def __init__(self, next: OutboundInterceptor, guard: TimerGuard) -> None:
        super().__init__(next)
        self._guard = guard

    async def signal_workflow(self, input: SignalWorkflowInput) -> None:
        await self._guard.settle(input.id, input.run_id)
        await super().signal_workflow(input)

    async def start_workflow_update(
        self, input: StartWorkflowUpdateInput
    ) -> WorkflowUpdateHandle[Any]:
        await self._guard.settle(input.id, input.run_id)
        return await super().start_workflow_update(input)

    async def cancel_workflow(self, input: CancelWorkflowInput) -> None:
        await self._guard.settle(input.id, input.run_id)
        await super().cancel_workflow(input)
