"""BlueGreenDeployment: a new agent version goes live without downtime, or goes back by itself.

Workflow id ``deploy/<agent_id>/<version>``. The strategy is Argo Rollouts' BlueGreen (active
and preview services, pre/post-promotion analysis, manual or timed promotion, scale-down delay,
abort) run as a saga: each step that changes the world registers its compensation, and any
failure, failed analysis, rejection or ``abort`` runs the compensations in reverse. Traffic stays
on (or returns to) the stable colour, the new colour is scaled down after
``abort_scale_down_delay_seconds``, and the agent's recorded version stays the stable one. There
is no half-promoted end state.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import TypeVar

from temporalio import workflow
from temporalio.common import RawValue, RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.deployments import DeploymentActivities
    from activities.platform.activities import PlatformActivities
    from activities.probes import ProbeActivities
    from fleetops.analysis import Analysis, AnalysisResult
    from fleetops.checks import SmokeRequest, WaitHealthyRequest
    from fleetops.constants import AGENT_ID_KEY, STATE_KEY, agent_workflow_id
    from fleetops.deploy import (
        AbortRequest,
        DeploymentReport,
        DeploymentRequest,
        DeploymentStatus,
        Outcome,
        Phase,
        PhaseRecord,
    )
    from fleetops.models import (
        AgentDeploymentView,
        AgentSpec,
        Color,
        DeploymentClaim,
        DeploymentOutcome,
        ProvisionRequest,
        Replica,
        ScaleDownRequest,
        ServiceInfo,
        SwitchTrafficRequest,
        other_color,
    )
    from workflows import lifecycle_calls as calls
    from workflows.analysis_run import run_analysis
    from workflows.approval import ApprovalGate, ApprovalHandlers
    from workflows.blue_green_gate import promotion_request
    from workflows.payload_guard import requires_input

T = TypeVar("T")
STEP_RETRY = RetryPolicy(maximum_interval=timedelta(seconds=30), maximum_attempts=5)
"""Forward steps: 5 attempts, 1, 2, 4 and 8 s apart; a step that still fails rolls back."""
COMPENSATION_RETRY = RetryPolicy(maximum_interval=timedelta(seconds=60))
"""Compensations retry until they succeed: a rollback must not stop half-way."""


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
    def __init__(self, req: DeploymentRequest) -> None:
        """Set up state; nothing runs until ``run``."""
        self._req = req
        self._id = workflow.info().workflow_id
        self._approval_gate = ApprovalGate()
        self._phase: Phase = "CLAIMING"
        self._phases: list[PhaseRecord] = []
        self._analyses: dict[str, AnalysisResult] = {}
        self._abort: AbortRequest | None = None
        self._abortable = True
        self._view: AgentDeploymentView | None = None
        self._new_color: Color | None = None
        self._service: ServiceInfo | None = None
        self._replicas: list[Replica] = []
        self._compensations: list[tuple[str, Callable[[], Awaitable[None]]]] = []
        self._outcome: Outcome | None = None
        self._message = ""
        self._times: dict[str, datetime] = {}

    @workflow.run
    async def run(self, req: DeploymentRequest) -> DeploymentReport:
        """Deploy, analyse, promote; on any failure roll back.

        Returns:
            The report: outcome ``promoted`` | ``rolled_back`` | ``aborted`` | ``rejected``.

        Raises:
            ApplicationError: ``DeploymentRefused``/``AgentNotFound`` when the agent cannot be
                claimed (another deployment runs, or no such agent); nothing was changed.
        """
        self._enter("CLAIMING")
        try:
            self._view = await workflow.execute_activity_method(
                DeploymentActivities.claim_agent,
                args=[req.agent_id, DeploymentClaim(deployment_id=self._id, version=req.version)],
                start_to_close_timeout=timedelta(seconds=30),
                retry_policy=STEP_RETRY,
            )
        except ActivityError as err:
            cause = err.cause
            if isinstance(cause, ApplicationError):  # refused: say why, at the top level
                raise ApplicationError(cause.message, type=cause.type, non_retryable=True) from None
            raise
        self._new_color = other_color(self._view.active_color)
        self._service = self._view.service
        promoted = False
        try:
            new_spec = self._new_spec(self._view.spec)
            await self._forward(new_spec)
            promoted, self._outcome = True, "promoted"
            self._message = f"{req.version} is live on {self._new_color}"
        except Rollback as stop:
            self._outcome, self._message = stop.outcome, str(stop)
            await self._roll_back()
        except ApplicationError as err:
            self._outcome, self._message = "rolled_back", f"{err.type}: {err.message}"
            await self._roll_back()
        except ActivityError as err:  # a step that failed for good, after its retries
            self._outcome, self._message = (
                "rolled_back",
                f"{err.activity_type} failed: {calls.cause(err)}",
            )
            await self._roll_back()
        finally:
            await self._release(promoted)
        return self._report()

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
        assert self._view is not None and self._new_color is not None
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

        if await self._analysis("post_promotion", req.post_promotion_analysis):
            decision = await self._guard(
                self._approval_gate.request(
                    promotion_request(req, self._analyses, inconclusive_phase="post_promotion")
                )
            )
            if not decision.approved:
                raise Rollback("rejected", "post-promotion analysis inconclusive; rejected")

        self._abortable = False  # promoted: going back is a new deployment of the old version
        self._enter("SCALING_DOWN_OLD")
        await workflow.sleep(timedelta(seconds=req.scale_down_delay_seconds))
        await self._scale_down(stable)
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
            workflow.execute_activity_method(
                ProbeActivities.wait_healthy,
                WaitHealthyRequest(
                    endpoints=[r.endpoint for r in self._replicas],
                    path=spec.health.path,
                    timeout_seconds=self._req.ready_timeout_seconds,
                    probe_timeout_seconds=spec.health.timeout_seconds,
                ),
                start_to_close_timeout=timedelta(seconds=self._req.ready_timeout_seconds + 30),
                heartbeat_timeout=timedelta(seconds=30),
                retry_policy=STEP_RETRY,
            )
        )

    async def _smoke_tests(self) -> None:
        results = await self._guard(
            workflow.execute_activity_method(
                ProbeActivities.run_smoke_tests,
                SmokeRequest(
                    endpoints=[r.endpoint for r in self._replicas], tests=self._req.smoke_tests
                ),
                start_to_close_timeout=timedelta(minutes=5),
                retry_policy=STEP_RETRY,
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
        assert self._new_color is not None
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
        assert self._view is not None
        self._service = await self._switch(self._view.active_color, preview=None, compensation=True)
        self._times["switched_back_at"] = workflow.now()

    async def _scale_down_new(self) -> None:
        assert self._new_color is not None
        await workflow.sleep(timedelta(seconds=self._req.abort_scale_down_delay_seconds))
        await self._scale_down(self._new_color, compensation=True)
        if self._view is not None and self._service is not None:
            self._service = await self._switch(self._view.active_color, None, compensation=True)

    async def _release(self, promoted: bool) -> None:
        assert self._view is not None and self._new_color is not None
        outcome = DeploymentOutcome(
            deployment_id=self._id,
            promoted=promoted,
            spec=self._new_spec(self._view.spec) if promoted else None,
            active_color=self._new_color if promoted else self._view.active_color,
            replicas=self._replicas if promoted else [],
            service=self._service,
        )
        await workflow.get_external_workflow_handle(agent_workflow_id(self._req.agent_id)).signal(
            "end_deployment", outcome
        )

    # --- platform calls ---------------------------------------------------------------------

    async def _provision(self, spec: AgentSpec, replicas: int) -> None:
        assert self._new_color is not None
        self._replicas = await workflow.execute_activity_method(
            PlatformActivities.provision_replicas,
            ProvisionRequest(spec=spec, replicas=replicas, color=self._new_color),
            start_to_close_timeout=timedelta(minutes=10),
            heartbeat_timeout=timedelta(seconds=60),
            retry_policy=STEP_RETRY,
        )

    async def _switch(
        self, active: Color, preview: Color | None, *, compensation: bool = False
    ) -> ServiceInfo:
        return await workflow.execute_activity_method(
            PlatformActivities.switch_traffic,
            SwitchTrafficRequest(
                agent_id=self._req.agent_id, active_color=active, preview_color=preview
            ),
            start_to_close_timeout=timedelta(seconds=60),
            retry_policy=COMPENSATION_RETRY if compensation else STEP_RETRY,
        )

    async def _scale_down(self, color: Color, *, compensation: bool = False) -> None:
        await workflow.execute_activity_method(
            PlatformActivities.scale_down_color,
            ScaleDownRequest(agent_id=self._req.agent_id, color=color),
            start_to_close_timeout=timedelta(minutes=5),
            heartbeat_timeout=timedelta(seconds=60),
            retry_policy=COMPENSATION_RETRY if compensation else STEP_RETRY,
        )

    # --- helpers ------------------------------------------------------------------------------

    async def _guard(self, step: Awaitable[T]) -> T:
        """Await ``step``, unless an ``abort`` comes first: then cancel it and roll back."""
        if self._abort is not None:
            raise Rollback("aborted", self._abort_message())
        task = asyncio.ensure_future(step)
        aborted = asyncio.ensure_future(workflow.wait_condition(lambda: self._abort is not None))
        await workflow.wait([task, aborted], return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            aborted.cancel()
            return task.result()
        task.cancel()
        with contextlib.suppress(BaseException):  # how the cancelled step ends no longer matters
            await task
        raise Rollback("aborted", self._abort_message())

    def _abort_message(self) -> str:
        assert self._abort is not None
        who = f" by {self._abort.requested_by}" if self._abort.requested_by else ""
        return f"aborted{who} in {self._phase}: {self._abort.reason or 'no reason given'}"

    def _new_spec(self, running: AgentSpec) -> AgentSpec:
        req = self._req
        changes: dict[str, object] = {"version": req.version}
        if req.command is not None or req.image is not None:
            changes["command"], changes["image"] = req.command, req.image
        if req.env is not None:
            changes["env"] = req.env
        if req.replicas is not None:
            changes["replicas"] = req.replicas
        try:
            return AgentSpec.model_validate({**running.model_dump(), **changes})
        except ValueError as err:
            raise ApplicationError(
                f"deployment request does not fit agent {req.agent_id}: {err}",
                type="InvalidInput",
                non_retryable=True,
            ) from None

    def _enter(self, phase: Phase, detail: str = "") -> None:
        now = workflow.now()
        if self._phases and self._phases[-1].ended_at is None:
            self._phases[-1] = self._phases[-1].model_copy(update={"ended_at": now})
        self._phases.append(PhaseRecord(phase=phase, started_at=now, detail=detail))
        self._phase = phase
        workflow.upsert_search_attributes(
            [AGENT_ID_KEY.value_set(self._req.agent_id), STATE_KEY.value_set(phase)]
        )

    def _report(self) -> DeploymentReport:
        assert self._outcome is not None and self._view is not None
        promoted = self._outcome == "promoted"
        t = self._times
        return DeploymentReport(
            deployment_id=self._id,
            agent_id=self._req.agent_id,
            version=self._req.version,
            outcome=self._outcome,
            active_version=self._req.version if promoted else self._view.spec.version,
            active_color=(self._new_color or self._view.active_color)
            if promoted
            else self._view.active_color,
            message=self._message,
            phases=self._phases,
            analyses=self._analyses,
            approvals=self._approval_gate.decisions,
            promoted_at=t.get("promoted_at"),
            switched_at=t.get("switched_at"),
            rollback_started_at=t.get("rollback_started_at"),
            switched_back_at=t.get("switched_back_at"),
        )
