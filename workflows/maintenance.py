"""Maintenance: one durable, audited maintenance procedure over a set of agents.

Workflow id ``maintenance/<name>/<run>`` (``<run>``: a UTC timestamp from ``fleetops maintenance
run``, or ``scheduled-<time>`` when a Temporal Schedule starts it), input a
:class:`~fleetops.maintenance.MaintenancePlan`. The run waits for its window (a durable timer),
then: pre-checks (targets open and healthy, no incident open, no deployment running) -> notify ->
approval (by risk; emergency plans skip the window's start and always ask) -> per target, in
batches of ``batch_size`` with at most ``max_unavailable`` changing at once: pause (if
``pause_targets``) -> apply -> resume -> post-checks (health; metrics when configured) ->
confirm. A target that fails is undone (compensation) and the plan halts or continues by
``on_failure``. When the window closes, no new target starts (the safe point); targets already
changing finish. Cancelling the workflow undoes every target in the middle of its change,
shielded from the cancellation, then ends CANCELED; targets already done stay done.

Every step is in the audit trail and the ``status`` query; ``FleetOpsState`` is the phase.
History is bounded: at most 200 targets, each a bounded number of activities.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.common import RawValue
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError

with workflow.unsafe.imports_passed_through():
    from fleetops.approvals import ApprovalRequest
    from fleetops.constants import STATE_KEY
    from fleetops.errors import MAINTENANCE_REFUSED
    from fleetops.maintenance import (
        MAX_AUDIT_ENTRIES,
        MAX_TARGETS,
        MAX_WAIT_FOR_WINDOW_SECONDS,
        MaintenanceAudit,
        MaintenancePlan,
        MaintenanceStatus,
        MaintenanceWindow,
        Outcome,
        Phase,
        Risk,
        StepConfirmation,
        TargetRecord,
    )
    from workflows.approval import ApprovalGate, ApprovalHandlers
    from workflows.lifecycle_calls import cause
    from workflows.maintenance_calls import transition
    from workflows.maintenance_checks import notify, post_check, pre_checks
    from workflows.maintenance_kinds import Change, StepFailed, make_change
    from workflows.payload_guard import requires_input
    from workflows.payloads import decode_payload

DEFAULT_WINDOW = MaintenanceWindow(duration_seconds=86400.0)
"""A plan without a window may run for one day from its start."""


@workflow.defn(name="Maintenance")
class Maintenance(ApprovalHandlers):
    """Runs one maintenance plan over its targets."""

    @workflow.init
    @requires_input
    def __init__(self, plan: MaintenancePlan) -> None:
        """Set up state; nothing runs until ``run``."""
        self._plan = plan
        self._id = workflow.info().workflow_id
        self._approval_gate = ApprovalGate()
        self._phase: Phase = "STARTING"
        self._outcome: Outcome | None = None
        self._message = ""
        self._risk: Risk | None = None
        self._opens: datetime | None = None
        self._closes: datetime | None = None
        self._targets: dict[str, TargetRecord] = {}
        self._audit: list[MaintenanceAudit] = []
        self._confirmations: dict[tuple[str, int], StepConfirmation] = {}
        self._awaiting: set[tuple[str, int]] = set()  # (agent, step) waiting for confirm_step
        self._tasks: dict[str, asyncio.Task[bool]] = {}  # targets changing now

    @workflow.run
    async def run(self, plan: MaintenancePlan) -> MaintenanceStatus:
        """Run the plan.

        Returns:
            The final status: outcome, every target's record, the audit trail.

        Raises:
            ApplicationError: ``MaintenanceRefused`` (non-retryable, nothing changed) when the
                workflow id is not ``maintenance/<plan.name>/<run>`` or the window opens more
                than 90 days after the start.
            asyncio.CancelledError: the workflow was cancelled; targets in the middle of their
                change were undone first (``status`` says what was done).
        """
        prefix = f"maintenance/{plan.name}/"
        if (
            not self._id.startswith(prefix)
            or "/" in self._id.removeprefix(prefix)
            or (self._id == prefix)
        ):
            raise ApplicationError(
                f"workflow id {self._id!r} must be {prefix}<run> for plan {plan.name!r}",
                type=MAINTENANCE_REFUSED,
                non_retryable=True,
            )
        try:
            await self._run()
        except asyncio.CancelledError:
            self._outcome = "cancelled"
            self._message = "cancelled: targets in the middle of a change were undone"
            await _shielded(self._cancel_all())
            self._enter("DONE")
            raise
        self._enter("DONE")
        return self.status()

    # --- messages ----------------------------------------------------------------------------

    @workflow.query
    def status(self) -> MaintenanceStatus:
        """The run now: phase, outcome, window, every target, audit, approvals."""
        return MaintenanceStatus(
            maintenance_id=self._id,
            name=self._plan.name,
            kind=self._plan.kind,
            phase=self._phase,
            outcome=self._outcome,
            emergency=self._plan.emergency,
            risk=self._risk,
            window_opens=self._opens,
            window_closes=self._closes,
            targets=list(self._targets.values()),
            audit=list(self._audit),
            pending_approval=self._approval_gate.pending,
            approvals=self._approval_gate.decisions,
            approval_audit=self._approval_gate.audit,
            message=self._message,
        )

    @workflow.signal
    def confirm_step(self, raw: RawValue = None) -> None:  # type: ignore[assignment]
        """A person confirms a step of a custom plan: ``{"agent_id", "step", "done", "by",
        "note"}``. A malformed or unexpected confirmation is audited and ignored."""
        try:
            c = decode_payload(
                raw, StepConfirmation, example='{"agent_id": "a", "step": 0, "by": "<you>"}'
            )
        except ApplicationError as err:
            self._record("confirm_step", None, f"ignored: {err.message}", ok=False)
            return
        if (c.agent_id, c.step) not in self._awaiting:
            waiting = ", ".join(f"{a} step {s}" for a, s in sorted(self._awaiting)) or "nothing"
            self._record(
                "confirm_step",
                c.agent_id,
                f"ignored: step {c.step} of {c.agent_id} is not awaited (awaiting: {waiting})",
                ok=False,
            )
            return
        self._awaiting.discard((c.agent_id, c.step))
        self._confirmations[(c.agent_id, c.step)] = c
        self._record(
            "confirm_step",
            c.agent_id,
            f"step {c.step} {'done' if c.done else 'failed'}"
            f" by {c.by}" + (f": {c.note}" if c.note else ""),
        )

    async def _await_confirmation(
        self, agent_id: str, step: int, timeout_seconds: float
    ) -> StepConfirmation | None:
        key = (agent_id, step)
        self._awaiting.add(key)
        self._record("awaiting_confirmation", agent_id, f"step {step}: signal confirm_step")
        try:
            await workflow.wait_condition(
                lambda: key in self._confirmations, timeout=timedelta(seconds=timeout_seconds)
            )
        except TimeoutError:
            return None
        finally:
            self._awaiting.discard(key)
        return self._confirmations.pop(key)

    # --- the procedure -------------------------------------------------------------------------

    async def _run(self) -> None:
        plan, now = self._plan, workflow.now()
        opens, closes = (plan.window or DEFAULT_WINDOW).bounds(now)
        if plan.emergency:
            opens, closes = now, now + timedelta(days=1)
            self._record("window", None, "emergency: the window is skipped (approval required)")
        self._opens, self._closes = opens, closes
        if (opens - now).total_seconds() > MAX_WAIT_FOR_WINDOW_SECONDS:
            raise ApplicationError(
                f"window.start {opens.isoformat()} is more than 90 days ahead",
                type=MAINTENANCE_REFUSED,
                non_retryable=True,
            )
        if now >= closes:
            return self._finish("window_missed", f"the window closed at {closes.isoformat()}")
        if now < opens:
            self._enter("WAITING_FOR_WINDOW")
            self._record("window", None, f"waiting until {opens.isoformat()}")
            await workflow.sleep(opens - now)

        self._enter("PRE_CHECKS")
        targets, problems = await pre_checks(plan)
        self._risk = plan.risk(len(targets))
        for t in targets:
            self._targets[t] = TargetRecord(agent_id=t)
        if problems:
            for p in problems:
                self._record("pre_check", None, p, ok=False)
            return self._finish("refused", "pre-checks failed: " + "; ".join(problems)[:1000])
        self._record("pre_check", None, f"{len(targets)} target(s) healthy: {', '.join(targets)}")

        self._enter("NOTIFYING")
        await self._notify(
            f"*Maintenance {plan.name}* ({plan.kind}) starting on "
            f"{len(targets)} agent(s): {', '.join(targets)[:500]}"
        )

        if plan.needs_approval(len(targets)) and not await self._approve(targets):
            return
        self._enter("RUNNING")
        await self._batches(targets)
        self._enter("FINISHING")
        await self._notify(f"*Maintenance {plan.name}* {self._outcome}: {self._message}")

    async def _approve(self, targets: list[str]) -> bool:
        plan, a = self._plan, self._plan.approval
        assert self._closes is not None
        left = (self._closes - workflow.now()).total_seconds()
        self._enter("AWAITING_APPROVAL")
        decision = await self._approval_gate.request(
            ApprovalRequest(
                question=f"Run {'EMERGENCY ' if plan.emergency else ''}maintenance {plan.name} "
                f"({plan.kind}) on {len(targets)} agent(s)?",
                context={
                    "kind": plan.kind,
                    "risk": self._risk,
                    "targets": ", ".join(targets)[:500],
                    "batch_size": plan.batch_size,
                    "max_unavailable": plan.max_unavailable,
                    "on_failure": plan.on_failure,
                    "emergency": plan.emergency,
                },
                approvers=a.approvers,
                roles=a.roles,
                timeout_seconds=max(min(a.timeout_seconds, left), 0.001),
                timeout_outcome=a.timeout_outcome if a.timeout_seconds <= left else "reject",
                reminder_interval_seconds=None,
            )
        )
        self._record(
            "approval",
            decision.approver,
            f"{decision.outcome}: {decision.comment}",
            ok=decision.approved,
        )
        if not decision.approved:
            self._finish("rejected", f"approval {decision.outcome}: {decision.comment}")
            await self._notify(f"*Maintenance {plan.name}* not run: approval {decision.outcome}")
        return decision.approved

    async def _batches(self, targets: list[str]) -> None:
        plan = self._plan
        failed: list[str] = []
        batches = [
            targets[i : i + plan.batch_size] for i in range(0, len(targets), plan.batch_size)
        ]
        for n, batch in enumerate(batches, start=1):
            if self._window_closed():
                break
            self._record("batch", None, f"batch {n}/{len(batches)}: {', '.join(batch)}")
            queue = list(batch)
            running = self._tasks
            while queue or running:
                while queue and len(running) < plan.max_unavailable and not self._stop(failed):
                    agent_id = queue.pop(0)
                    running[agent_id] = asyncio.ensure_future(self._target(agent_id, n))
                if not running:
                    break
                await workflow.wait(list(running.values()), return_when=asyncio.FIRST_COMPLETED)
                for agent_id, task in list(running.items()):
                    if task.done():
                        del running[agent_id]
                        if not task.result():
                            failed.append(agent_id)
            if self._stop(failed):
                break
        not_done = [t for t, r in self._targets.items() if r.state == "pending"]
        for t in not_done:
            self._set(t, state="not_done", detail="not started")
        done = [t for t, r in self._targets.items() if r.state == "done"]
        summary = (
            f"{len(done)} of {len(targets)} done"
            + (f"; failed: {', '.join(failed)}" if failed else "")
            + (f"; not done: {', '.join(not_done)}" if not_done else "")
        )
        if failed and plan.on_failure == "halt":
            self._finish("halted", f"halted after {failed[0]} failed: {summary}")
        elif not_done and self._window_closed():
            self._finish("window_closed", f"the window closed at {self._closes}: {summary}")
        elif failed:
            self._finish("completed_with_failures", summary)
        else:
            self._finish("completed", summary)

    def _stop(self, failed: list[str]) -> bool:
        return (bool(failed) and self._plan.on_failure == "halt") or self._window_closed()

    def _window_closed(self) -> bool:
        return self._closes is not None and workflow.now() >= self._closes

    async def _target(self, agent_id: str, batch: int) -> bool:
        """Change one target; True when done and verified, False when it failed (undone)."""
        plan = self._plan
        change = make_change(plan, agent_id, self._id, self._await_confirmation)
        self._set(agent_id, state="running", batch=batch, started_at=workflow.now())
        paused = False
        try:
            before = await post_check(plan, agent_id, wait=False)
            if before is not None:
                raise StepFailed(f"not healthy before the change: {before}")
            if plan.pause_targets:
                paused = True
                await _step(self, "pause", agent_id, _transition(agent_id, "pause", self._id))
            await _step(self, "apply", agent_id, change.apply())
            if paused:
                await _step(self, "resume", agent_id, _transition(agent_id, "resume", self._id))
                paused = False
            problem = await post_check(plan, agent_id, wait=True)
            if problem is not None:
                raise StepFailed(f"post-check failed: {problem}")
            self._record("post_check", agent_id, "healthy")
            await _step(self, "confirm", agent_id, change.confirm())
            self._set(
                agent_id,
                state="done",
                ended_at=workflow.now(),
                facts=change.facts,
                detail="changed and verified",
            )
            return True
        except (StepFailed, ActivityError, ApplicationError) as err:
            if isinstance(err, ActivityError) and isinstance(err.cause, CancelledError):
                # The plan was cancelled while an activity of this target ran.
                self._record("cancelled", agent_id, "undoing the change in progress", ok=False)
                await _shielded(self._undo(agent_id, change, paused, "cancelled"))
                raise asyncio.CancelledError() from None
            why = (
                f"{err.activity_type}: {cause(err)}" if isinstance(err, ActivityError) else str(err)
            )
            self._record("failed", agent_id, why, ok=False)
            await _shielded(self._undo(agent_id, change, paused, why))
            return False
        except asyncio.CancelledError:  # the plan was cancelled: leave this target consistent
            self._record("cancelled", agent_id, "undoing the change in progress", ok=False)
            await _shielded(self._undo(agent_id, change, paused, "cancelled"))
            raise

    async def _undo(self, agent_id: str, change: Change, paused: bool, why: str) -> None:
        try:
            done = await change.undo()
            if paused:
                await _transition(agent_id, "resume", self._id, compensation=True)
            self._record("rollback", agent_id, done)
            self._set(
                agent_id,
                state="rolled_back",
                ended_at=workflow.now(),
                facts=change.facts,
                detail=f"{why}; rolled back: {done}",
            )
        except (ActivityError, ApplicationError, StepFailed) as err:
            what = cause(err) if isinstance(err, ActivityError) else str(err)
            self._record("rollback", agent_id, f"rollback failed: {what}", ok=False)
            self._set(
                agent_id,
                state="rollback_failed",
                ended_at=workflow.now(),
                facts=change.facts,
                detail=f"{why}; rollback failed: {what}",
            )

    async def _cancel_all(self) -> None:
        """Cancel every target in the middle of its change; each undoes itself (shielded)."""
        tasks = [t for t in self._tasks.values() if not t.done()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        for t, r in self._targets.items():
            if r.state == "pending":
                self._set(t, state="not_done", detail="cancelled before it started")

    # --- records -------------------------------------------------------------------------------

    async def _notify(self, text: str) -> None:
        for err in await notify(self._plan, self._id, text, len(self._audit)):
            self._record("notify", None, err, ok=False)
        self._record("notify", None, text[:200])

    def _finish(self, outcome: Outcome, message: str) -> None:
        self._outcome, self._message = outcome, message
        self._record("outcome", None, f"{outcome}: {message}", ok=outcome == "completed")

    def _set(self, agent_id: str, **changes: object) -> None:
        self._targets[agent_id] = self._targets[agent_id].model_copy(update=changes)

    def _record(self, step: str, target: str | None, detail: str, *, ok: bool = True) -> None:
        self._audit.append(
            MaintenanceAudit(
                at=workflow.now(), step=step, target=target, ok=ok, detail=detail[:500]
            )
        )
        del self._audit[:-MAX_AUDIT_ENTRIES]

    def _enter(self, phase: Phase) -> None:
        self._phase = phase
        workflow.upsert_search_attributes([STATE_KEY.value_set(phase)])
        done = sum(1 for r in self._targets.values() if r.state == "done")
        workflow.set_current_details(
            f"**{phase}** {self._plan.kind} {self._plan.name}: {done} of {len(self._targets)} "
            f"targets done" + (f"; {self._outcome}" if self._outcome else "")
        )
        assert len(self._targets) <= MAX_TARGETS


async def _step(wf: Maintenance, step: str, agent_id: str, work: Awaitable[object]) -> None:
    await work
    wf._record(step, agent_id, "ok")


async def _transition(agent_id: str, action: str, by: str, *, compensation: bool = False) -> None:
    await transition(agent_id, action, by, compensation=compensation)


async def _shielded(step: Awaitable[None]) -> None:
    """Run ``step`` to the end even if the workflow is cancelled meanwhile (compensations)."""
    task = asyncio.ensure_future(step)
    while not task.done():
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(task)
    task.result()
