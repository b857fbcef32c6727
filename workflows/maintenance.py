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
from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.common import RawValue
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from fleetops.approvals import ApprovalRequest
    from fleetops.constants import STATE_KEY
    from fleetops.errors import MAINTENANCE_REFUSED
    from fleetops.maintenance import (
        MAX_WAIT_FOR_WINDOW_SECONDS,
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
    from workflows.maintenance_batches import Batches, shielded
    from workflows.maintenance_checks import notify, pre_checks
    from workflows.maintenance_trail import Trail
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
        self._trail = Trail()
        self._targets = self._trail.targets  # the same dict
        self._confirmations: dict[tuple[str, int], StepConfirmation] = {}
        self._awaiting: set[tuple[str, int]] = set()  # (agent, step) waiting for confirm_step
        self._batches: Batches | None = None

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
            if self._batches is not None:
                await shielded(self._batches.cancel_all())
            for t, r in self._targets.items():
                if r.state == "pending":
                    self._trail.set(t, state="not_done", detail="cancelled before it started")
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
            audit=list(self._trail.audit),
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
        self._batches = Batches(plan, self._id, self._trail, self._closes, self._await_confirmation)
        self._finish(*await self._batches.run(targets))
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

    # --- records -------------------------------------------------------------------------------

    async def _notify(self, text: str) -> None:
        for err in await notify(self._plan, self._id, text, len(self._trail.audit)):
            self._record("notify", None, err, ok=False)
        self._record("notify", None, text[:200])

    def _finish(self, outcome: Outcome, message: str) -> None:
        self._outcome, self._message = outcome, message
        self._record("outcome", None, f"{outcome}: {message}", ok=outcome == "completed")

    def _record(self, step: str, target: str | None, detail: str, *, ok: bool = True) -> None:
        self._trail.record(step, target, detail, ok=ok)

    def _enter(self, phase: Phase) -> None:
        self._phase = phase
        workflow.upsert_search_attributes([STATE_KEY.value_set(phase)])
        done = sum(1 for r in self._targets.values() if r.state == "done")
        workflow.set_current_details(
            f"**{phase}** {self._plan.kind} {self._plan.name}: {done} of {len(self._targets)} "
            f"targets done" + (f"; {self._outcome}" if self._outcome else "")
        )
