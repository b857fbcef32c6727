"""BlueGreenDeployment: a new agent version goes live without downtime, or goes back by itself.

Workflow id ``deploy/<agent_id>/<version>``, always a child of the agent's ``AgentLifecycle``
(its ``deploy`` update starts it; a deployment started any other way refuses to run). The
strategy is Argo Rollouts' BlueGreen (active and preview services, pre/post-promotion analysis,
manual or timed promotion, scale-down delay, abort) run as a saga: each step that changes the
world registers its compensation, and any failure, failed analysis, rejection, ``abort`` or
cancellation of the workflow runs the compensations in reverse, shielded from the cancellation.
Traffic stays on (or returns to) the stable colour, the new colour is scaled down after
``abort_scale_down_delay_seconds``, and the agent keeps its stable version. A cancellation after
the switch was verified (post-promotion analysis passed) finishes the promotion instead. There
is no half-promoted end state; if the workflow is terminated (no code runs), the agent
reconciles from the platform's Service when it sees the child close.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import TypeVar

from temporalio import workflow
from temporalio.common import RawValue
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.probes import ProbeActivities
    from fleetops.analysis import Analysis, AnalysisResult
    from fleetops.checks import SmokeRequest, WaitHealthyRequest
    from fleetops.constants import AGENT_ID_KEY, STATE_KEY, agent_workflow_id
    from fleetops.deploy import (
        AbortRequest,
        AgentDeploymentView,
        DeploymentReport,
        DeploymentRun,
        DeploymentStatus,
        Outcome,
        Phase,
        PhaseRecord,
        new_spec,
    )
    from fleetops.errors import DEPLOYMENT_REFUSED
    from fleetops.models import (
        AgentSpec,
        Color,
        Replica,
        ServiceInfo,
        other_color,
    )
    from workflows import lifecycle_calls as calls
    from workflows.activity_options import call
    from workflows.analysis_run import run_analysis
    from workflows.approval import ApprovalGate, ApprovalHandlers
    from workflows.blue_green_gate import promotion_request
    from workflows.payload_guard import requires_input

T = TypeVar("T")


class Rollback(Exception):
    """Ends the forward path; carries the outcome and why."""

    def __init__(self, outcome: Outcome, message: str) -> None:
        super().__init__(message)
        self.outcome: Outcome = outcome


@workflow.defn(name="BlueGreenDeployment")
class BlueGreenDeployment(ApprovalHandlers):
    """Deploys ``version`` of an agent to its idle colour and promotes it, or rolls back."""

    @workflow.init
    @requires_input
    def __init__(self, run: DeploymentRun) -> None:
        """Set up state; nothing runs until ``run``."""
        self._req = req = run.request
        self._id = workflow.info().workflow_id
        self._approval_gate = ApprovalGate()
        self._phase: Phase = "STARTING"
        self._phases: list[PhaseRecord] = []
        self._analyses: dict[str, AnalysisResult] = {}
        self._abort: AbortRequest | None = None
        self._abortable = True
        self._verified = False  # post-promotion analysis passed: going back is a new deployment
        self._view: AgentDeploymentView = run.stable
        self._new_color: Color = other_color(run.stable.active_color)
        self._service: ServiceInfo | None = run.stable.service
        self._owner = agent_workflow_id(req.agent_id)
        self._replicas: list[Replica] = []
        self._compensations: list[tuple[str, Callable[[], Awaitable[None]]]] = []
        self._outcome: Outcome | None = None
        self._message = ""
        self._times: dict[str, datetime] = {}

    @workflow.run
    async def run(self, run: DeploymentRun) -> DeploymentReport:
        """Deploy, analyse, promote; on any failure, abort or cancellation roll back.

        Args:
            run: the request and the agent's stable side, from the agent's ``deploy`` update.

        Returns:
            The report: outcome ``promoted`` | ``rolled_back`` | ``aborted`` | ``rejected``.

        Raises:
            ApplicationError: ``DeploymentRefused`` (non-retryable, nothing changed) when the
                workflow was not started by ``agent/<agent_id>`` as its child.
            asyncio.CancelledError: the workflow was cancelled; it ends CANCELED after its
                compensations ran, and ``status`` says what they did (outcome ``cancelled``,
                or ``promoted`` when the switch had been verified).
        """
        parent = workflow.info().parent
        if parent is None or parent.workflow_id != self._owner:
            raise ApplicationError(
                f"deployments of {self._req.agent_id} are started by its agent: fleetops deploy "
                f"{self._req.agent_id} --version {self._req.version}, or temporal workflow update "
                f"execute --workflow-id {self._owner} --name deploy --input '{{...}}'",
                type=DEPLOYMENT_REFUSED,
                non_retryable=True,
            )
        workflow.set_current_details(self._details())
        try:
            await self._forward(new_spec(self._view.spec, self._req))
            self._outcome = "promoted"
            self._message = f"{self._req.version} is live on {self._new_color}"
        except asyncio.CancelledError:
            await self._on_cancel()
            raise
        except Rollback as stop:
            self._outcome, self._message = stop.outcome, str(stop)
        except ApplicationError as err:
            self._outcome, self._message = "rolled_back", f"{err.type}: {err.message}"
        except ActivityError as err:  # a step that failed for good, after its retries
            self._outcome = "rolled_back"
            self._message = f"{err.activity_type} failed: {calls.cause(err)}"
        except ValueError as err:  # the request no longer fits the agent
            self._outcome, self._message = "rolled_back", f"InvalidInput: {err}"
        if self._outcome != "promoted":
            await self._shielded(self._roll_back())  # a cancellation now waits for it
        return self._report()

    async def _on_cancel(self) -> None:
        """The workflow was cancelled: finish what is safe, shielded from the cancellation."""
        if self._verified:
            self._outcome = "promoted"
            self._message = (
                f"cancelled in {self._phase} after the switch was verified: {self._req.version} "
                f"stays live on {self._new_color}; the old colour was scaled down"
            )
            await self._shielded(self._finish_promotion())
        else:
            self._outcome = "cancelled"
            self._message = (
                f"cancelled in {self._phase}: traffic on {self._view.active_color} "
                f"({self._view.spec.version}), {self._new_color} scaled down"
            )
            await self._shielded(self._roll_back())
        self._enter("CANCELLED", detail=self._message)

    @staticmethod
    async def _shielded(step: Awaitable[None]) -> None:
        """Run ``step`` to the end even if the workflow is cancelled again meanwhile."""
        task = asyncio.ensure_future(step)
        while not task.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(task)
        task.result()

    # --- operator messages ----------------------------------------------------------------

    @workflow.signal
    def abort(self, raw: RawValue = None) -> None:  # type: ignore[assignment]
        """Stop the deployment and roll back: ``{"reason": ..., "requested_by": ...}``."""
        try:
            req = (
                AbortRequest()
                if raw is None
                else workflow.payload_converter().from_payload(raw.payload, AbortRequest)
            )
        except ApplicationError as err:  # nothing runs from a payload that did not validate
            self._approval_gate.refuse(None, f"abort signal ignored: {err.message}")
            return
        if not self._abortable:
            workflow.logger.warning("abort ignored in %s: %s", self._phase, req.reason)
            return
        if self._abort is None:
            self._abort = req
            self._approval_gate.cancel(f"deployment aborted: {req.reason or 'no reason given'}")

    @workflow.query
    def status(self) -> DeploymentStatus:
        """The deployment now: phase, colours, service, analyses, approvals and audit."""
        view = self._view
        return DeploymentStatus(
            deployment_id=self._id,
            agent_id=self._req.agent_id,
            version=self._req.version,
            stable_version=view.spec.version if view else None,
            phase=self._phase,
            outcome=self._outcome,
            stable_color=view.active_color if view else None,
            new_color=self._new_color,
            active_color=self._service.active_color if self._service else None,
            service=self._service,
            phases=self._phases,
            analyses=self._analyses,
            pending_approval=self._approval_gate.pending,
            approvals=self._approval_gate.decisions,
            audit=self._approval_gate.audit,
            message=self._message,
        )

    # --- the forward path -----------------------------------------------------------------

    async def _forward(self, spec: AgentSpec) -> None:
        req, new, stable = self._req, self._new_color, self._view.active_color
        preview_n = req.preview_replicas or spec.replicas

        self._enter("DEPLOYING_PREVIEW")
        self._compensate("scale down the new colour", self._scale_down_new)
        await self._guard(self._provision(spec, preview_n))
        self._service = await self._guard(self._switch(stable, preview=new))

        await self._wait_ready(spec)
        if req.smoke_tests:
            self._enter("SMOKE_TESTS")
            await self._smoke_tests()
        inconclusive = await self._analysis("pre_promotion", req.pre_promotion_analysis)

        self._enter("AWAITING_PROMOTION")
        await self._guard(self._promotion_gate(inconclusive))
        self._times["promoted_at"] = workflow.now()

        if preview_n < spec.replicas:
            self._enter("SCALING_UP")
            await self._guard(self._provision(spec, spec.replicas))
            await self._wait_ready(spec)

        self._enter("SWITCHING_TRAFFIC")
        self._compensate("switch traffic back to the stable colour", self._switch_back)
        self._service = await self._guard(self._switch(new, preview=None))
        self._times["switched_at"] = workflow.now()
        await self._tell_agent()

        if await self._analysis("post_promotion", req.post_promotion_analysis):
            decision = await self._guard(
                self._approval_gate.request(
                    promotion_request(req, self._analyses, inconclusive_phase="post_promotion")
                )
            )
            if not decision.approved:
                raise Rollback("rejected", "post-promotion analysis inconclusive; rejected")

        self._abortable = False  # promoted: going back is a new deployment of the old version
        self._verified = True
        await self._finish_promotion()

    async def _finish_promotion(self) -> None:
        """SCALING_DOWN_OLD: keep the old colour ``scale_down_delay_seconds``, then stop it."""
        self._enter("SCALING_DOWN_OLD")
        await workflow.sleep(timedelta(seconds=self._req.scale_down_delay_seconds))
        await self._scale_down(self._view.active_color, compensation=True)
        self._enter("SUCCEEDED")

    async def _promotion_gate(self, inconclusive: bool) -> None:
        promotion = self._req.promotion
        if promotion.mode == "auto" and not inconclusive:
            await workflow.sleep(timedelta(seconds=promotion.auto_promote_after_seconds or 0))
            return
        request = promotion_request(
            self._req, self._analyses, inconclusive_phase="pre_promotion" if inconclusive else None
        )
        decision = await self._approval_gate.request(request)
        if not decision.approved:
            who = f" by {decision.approver}" if decision.approver else ""
            raise Rollback("rejected", f"promotion {decision.outcome}{who}: {decision.comment}")

    async def _wait_ready(self, spec: AgentSpec) -> None:
        self._enter("WAITING_READY")
        await self._guard(
            call(
                ProbeActivities.wait_healthy,
                WaitHealthyRequest(
                    endpoints=[r.endpoint for r in self._replicas],
                    path=spec.health.path,
                    timeout_seconds=self._req.ready_timeout_seconds,
                    probe_timeout_seconds=spec.health.timeout_seconds,
                ),
                summary=f"wait until {len(self._replicas)} {self._new_color} replicas are healthy",
                start_to_close=timedelta(seconds=self._req.ready_timeout_seconds + 30),
            )
        )

    async def _smoke_tests(self) -> None:
        results = await self._guard(
            call(
                ProbeActivities.run_smoke_tests,
                SmokeRequest(
                    endpoints=[r.endpoint for r in self._replicas], tests=self._req.smoke_tests
                ),
                summary=f"smoke tests on the {self._new_color} replicas",
            )
        )
        failed = [r for r in results if not r.passed]
        if failed:
            f = failed[0]
            raise Rollback(
                "rolled_back",
                f"smoke test {f.test!r} failed on {f.endpoint}: {f.error} "
                f"({len(failed)}/{len(results)} checks failed)",
            )

    async def _analysis(self, name: str, analysis: Analysis | None) -> bool:
        """Run one analysis; returns True when Inconclusive, raises Rollback when Failed."""
        if analysis is None:
            return False
        self._enter(
            "PRE_PROMOTION_ANALYSIS" if name == "pre_promotion" else "POST_PROMOTION_ANALYSIS"
        )

        def update(metrics: list) -> None:  # type: ignore[type-arg]
            self._analyses[name] = AnalysisResult(
                phase="Inconclusive", metrics=metrics, message="running"
            )

        result = await self._guard(
            run_analysis(
                analysis,
                agent_id=self._req.agent_id,
                color=self._new_color,
                version=self._req.version,
                endpoints=[r.endpoint for r in self._replicas],
                on_update=update,
            )
        )
        self._analyses[name] = result
        if result.phase == "Failed":
            raise Rollback("rolled_back", f"{name} analysis failed: {result.message}")
        return result.phase == "Inconclusive"

    # --- saga -----------------------------------------------------------------------------

    def _compensate(self, what: str, step: Callable[[], Awaitable[None]]) -> None:
        self._compensations.append((what, step))

    async def _roll_back(self) -> None:
        self._abortable = False
        self._times["rollback_started_at"] = workflow.now()
        self._enter("ROLLING_BACK", detail=self._message)
        for what, step in reversed(self._compensations):
            workflow.logger.info("rollback of %s: %s", self._id, what)
            await step()
        self._enter("ROLLED_BACK", detail=self._message)

    async def _switch_back(self) -> None:
        self._service = await self._switch(self._view.active_color, preview=None, compensation=True)
        self._times["switched_back_at"] = workflow.now()
        await self._tell_agent()

    async def _scale_down_new(self) -> None:
        await workflow.sleep(timedelta(seconds=self._req.abort_scale_down_delay_seconds))
        await self._scale_down(self._new_color, compensation=True)
        if self._service is not None:  # clear the preview service
            self._service = await self._switch(self._view.active_color, None, compensation=True)

    async def _tell_agent(self) -> None:
        """Hint the agent that traffic moved; it re-reads the Service and trusts nothing else."""
        try:
            await workflow.get_external_workflow_handle(self._owner).signal("deployment_changed")
        except ApplicationError as err:  # the agent is gone: nobody to tell
            workflow.logger.warning("could not tell %s: %s", self._owner, err)

    # --- platform calls ---------------------------------------------------------------------

    async def _provision(self, spec: AgentSpec, replicas: int) -> None:
        self._replicas = await calls.provision(spec, replicas, self._new_color)

    async def _switch(
        self, active: Color, preview: Color | None, *, compensation: bool = False
    ) -> ServiceInfo:
        return await calls.switch_traffic(
            self._req.agent_id, active, preview, compensation=compensation
        )

    async def _scale_down(self, color: Color, *, compensation: bool = False) -> None:
        await calls.scale_down(self._req.agent_id, color, compensation=compensation)

    # --- helpers ------------------------------------------------------------------------------

    async def _guard(self, step: Awaitable[T]) -> T:
        """Await ``step``, unless an ``abort`` comes first: then cancel it and roll back."""
        if self._abort is not None:
            raise Rollback("aborted", self._abort_message())
        task = asyncio.ensure_future(step)
        aborted = asyncio.ensure_future(workflow.wait_condition(lambda: self._abort is not None))
        try:
            await workflow.wait([task, aborted], return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:  # the workflow is cancelled: stop the step too
            task.cancel()
            aborted.cancel()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.shield(task)
            raise
        if task.done():
            aborted.cancel()
            return task.result()
        task.cancel()
        # How the cancelled step ends no longer matters.
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await task
        raise Rollback("aborted", self._abort_message())

    def _abort_message(self) -> str:
        assert self._abort is not None
        who = f" by {self._abort.requested_by}" if self._abort.requested_by else ""
        return f"aborted{who} in {self._phase}: {self._abort.reason or 'no reason given'}"

    def _enter(self, phase: Phase, detail: str = "") -> None:
        now = workflow.now()
        if self._phases and self._phases[-1].ended_at is None:
            self._phases[-1] = self._phases[-1].model_copy(update={"ended_at": now})
        self._phases.append(PhaseRecord(phase=phase, started_at=now, detail=detail))
        self._phase = phase
        workflow.upsert_search_attributes(
            [AGENT_ID_KEY.value_set(self._req.agent_id), STATE_KEY.value_set(phase)]
        )
        workflow.set_current_details(self._details())

    def _details(self) -> str:
        """What the Web UI shows as the workflow's current details (Markdown)."""
        r, v = self._req, self._view
        lines = [
            f"**{self._phase}**: {r.agent_id} {v.spec.version} ({v.active_color}) -> "
            f"{r.version} ({self._new_color})",
        ]
        if self._phases and self._phases[-1].detail:
            lines.append(self._phases[-1].detail)
        if self._service is not None:
            s = self._service
            lines.append(
                f"traffic: {s.active_color}"
                + (f", preview {s.preview_color}" if s.preview_color else "")
            )
        if self._approval_gate.pending is not None:
            lines.append("waiting for approval: " + self._approval_gate.pending.question)
        return "\n\n".join(lines)

    def _report(self) -> DeploymentReport:
        assert self._outcome is not None
        promoted = self._outcome == "promoted"
        t = self._times
        return DeploymentReport(
            deployment_id=self._id,
            agent_id=self._req.agent_id,
            version=self._req.version,
            outcome=self._outcome,
            active_version=self._req.version if promoted else self._view.spec.version,
            active_color=self._new_color if promoted else self._view.active_color,
            message=self._message,
            phases=self._phases,
            analyses=self._analyses,
            approvals=self._approval_gate.decisions,
            promoted_at=t.get("promoted_at"),
            switched_at=t.get("switched_at"),
            rollback_started_at=t.get("rollback_started_at"),
            switched_back_at=t.get("switched_back_at"),
        )
