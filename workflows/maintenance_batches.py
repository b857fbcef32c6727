"""The ``Maintenance`` workflow's batches: targets changed with a max-unavailable bound, each
undone on failure or cancellation (deterministic workflow code).

A batch of ``batch_size`` targets starts when the previous one is done; inside it at most
``max_unavailable`` targets change at once. The window's end is checked before each target
starts (the safe point): targets already changing finish. A target's steps: health check, pause
(``pause_targets``), apply, resume, post-checks, confirm; a failure undoes it (compensations,
shielded from cancellation) and, with ``on_failure: halt``, no further target starts.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from datetime import datetime

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError

with workflow.unsafe.imports_passed_through():
    from fleetops.maintenance import MaintenancePlan, Outcome
    from workflows.lifecycle_calls import cause
    from workflows.maintenance_calls import transition
    from workflows.maintenance_checks import post_check
    from workflows.maintenance_kinds import Change, Confirmations, StepFailed, make_change
    from workflows.maintenance_trail import Trail


class Batches:
    """Runs one plan's targets; its state (targets, audit) lives in ``trail``."""

    def __init__(
        self,
        plan: MaintenancePlan,
        workflow_id: str,
        trail: Trail,
        closes: datetime | None,
        confirmations: Confirmations,
    ) -> None:
        """Remember the plan, the run's id (who asks), the trail and the window's end."""
        self.plan, self.wid, self.trail, self.closes = plan, workflow_id, trail, closes
        self.confirmations = confirmations
        self._tasks: dict[str, asyncio.Task[bool]] = {}  # targets changing now

    async def run(self, targets: list[str]) -> tuple[Outcome, str]:
        """Change ``targets`` batch by batch; returns the outcome and a summary."""
        plan = self.plan
        failed: list[str] = []
        batches = [
            targets[i : i + plan.batch_size] for i in range(0, len(targets), plan.batch_size)
        ]
        for n, batch in enumerate(batches, start=1):
            if self.window_closed():
                break
            self.trail.record("batch", None, f"batch {n}/{len(batches)}: {', '.join(batch)}")
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
        not_done = [t for t, r in self.trail.targets.items() if r.state == "pending"]
        for t in not_done:
            self.trail.set(t, state="not_done", detail="not started")
        done = [t for t, r in self.trail.targets.items() if r.state == "done"]
        summary = (
            f"{len(done)} of {len(targets)} done"
            + (f"; failed: {', '.join(failed)}" if failed else "")
            + (f"; not done: {', '.join(not_done)}" if not_done else "")
        )
        if failed and plan.on_failure == "halt":
            return "halted", f"halted after {failed[0]} failed: {summary}"
        elif not_done and self.window_closed():
            return "window_closed", f"the window closed at {self.closes}: {summary}"
        elif failed:
            return "completed_with_failures", summary
        return "completed", summary

    def _stop(self, failed: list[str]) -> bool:
        return (bool(failed) and self.plan.on_failure == "halt") or self.window_closed()

    def window_closed(self) -> bool:
        """Whether the window has closed (workflow time)."""
        return self.closes is not None and workflow.now() >= self.closes

    async def _target(self, agent_id: str, batch: int) -> bool:
        """Change one target; True when done and verified, False when it failed (undone)."""
        plan = self.plan
        change = make_change(plan, agent_id, self.wid, self.confirmations)
        self.trail.set(agent_id, state="running", batch=batch, started_at=workflow.now())
        paused = False
        try:
            before = await post_check(plan, agent_id, wait=False)
            if before is not None:
                raise StepFailed(f"not healthy before the change: {before}")
            if plan.pause_targets:
                paused = True
                await self._step("pause", agent_id, _transition(agent_id, "pause", self.wid))
            change.paused = paused
            await self._step("apply", agent_id, change.apply())
            if paused:
                await self._step("resume", agent_id, _transition(agent_id, "resume", self.wid))
                paused = False
            problem = await post_check(plan, agent_id, wait=True)
            if problem is not None:
                raise StepFailed(f"post-check failed: {problem}")
            self.trail.record("post_check", agent_id, "healthy")
            await self._step("confirm", agent_id, change.confirm())
            self.trail.set(
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
                self.trail.record("cancelled", agent_id, "undoing the change in progress", ok=False)
                await shielded(self._undo(agent_id, change, paused, "cancelled"))
                raise asyncio.CancelledError() from None
            why = (
                f"{err.activity_type}: {cause(err)}" if isinstance(err, ActivityError) else str(err)
            )
            self.trail.record("failed", agent_id, why, ok=False)
            await shielded(self._undo(agent_id, change, paused, why))
            return False
        except asyncio.CancelledError:  # the plan was cancelled: leave this target consistent
            self.trail.record("cancelled", agent_id, "undoing the change in progress", ok=False)
            await shielded(self._undo(agent_id, change, paused, "cancelled"))
            raise

    async def _undo(self, agent_id: str, change: Change, paused: bool, why: str) -> None:
        try:
            change.paused = paused
            done = await change.undo()
            if paused:
                await _transition(agent_id, "resume", self.wid, compensation=True)
            self.trail.record("rollback", agent_id, done)
            self.trail.set(
                agent_id,
                state="rolled_back",
                ended_at=workflow.now(),
                facts=change.facts,
                detail=f"{why}; rolled back: {done}",
            )
        except (ActivityError, ApplicationError, StepFailed) as err:
            what = cause(err) if isinstance(err, ActivityError) else str(err)
            self.trail.record("rollback", agent_id, f"rollback failed: {what}", ok=False)
            self.trail.set(
                agent_id,
                state="rollback_failed",
                ended_at=workflow.now(),
                facts=change.facts,
                detail=f"{why}; rollback failed: {what}",
            )

    async def cancel_all(self) -> None:
        """Cancel every target in the middle of its change; each undoes itself (shielded)."""
        tasks = [t for t in self._tasks.values() if not t.done()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await task

    async def _step(self, step: str, agent_id: str, work: Awaitable[object]) -> None:
        await work
        self.trail.record(step, agent_id, "ok")


async def _transition(agent_id: str, action: str, by: str, *, compensation: bool = False) -> None:
    await transition(agent_id, action, by, compensation=compensation)


async def shielded(step: Awaitable[None]) -> None:
    """Run ``step`` to the end even if the workflow is cancelled meanwhile (compensations)."""
    task = asyncio.ensure_future(step)
    while not task.done():
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(task)
    task.result()
