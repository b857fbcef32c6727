"""How an agent's ``AgentLifecycle`` owns its deployments (deterministic workflow code).

The lifecycle starts every ``BlueGreenDeployment`` as its child, so it learns how the child
closed (completed, failed, cancelled, terminated, timed out) from Temporal itself and needs no
lock with a lease: a deployment that closes without running code cannot leave the agent locked.
When it closes, the agent reconciles from the platform: the colour the Service really serves
wins, the spec of that side comes from the agent's own :class:`DeploymentRecord` (never from a
message), and after an abnormal end the other colour is scaled down after the abort delay.

Children are started with ``ParentClosePolicy.ABANDON`` because Temporal applies the policy per
run: a lifecycle that continues as new would otherwise cancel its own deployment. The run that
started the child awaits it; a later run checks on it (activity ``describe_deployment``) once
per health interval, and so does the first run, as a backstop in case the close event is late.
"""

from __future__ import annotations

import contextlib
from datetime import datetime, timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    CancelledError,
    ChildWorkflowError,
    TerminatedError,
    TimeoutError,
    WorkflowAlreadyStartedError,
)

with workflow.unsafe.imports_passed_through():
    from fleetops.constants import deployment_workflow_id
    from fleetops.deploy import (
        AgentDeploymentView,
        DeploymentEnd,
        DeploymentRef,
        DeploymentReport,
        DeploymentRequest,
        DeploymentRun,
        DeploymentStarted,
        new_spec,
    )
    from fleetops.models import (
        AgentCounters,
        AgentSpec,
        AgentState,
        Color,
        DeploymentEnded,
        DeploymentRecord,
        ProbeResult,
        Replica,
        ServiceInfo,
        other_color,
    )
    from workflows import lifecycle_calls as calls
    from workflows.lifecycle_rules import PROBED_STATES, deployment_error

DEPLOYMENT_TYPE = "BlueGreenDeployment"
"""Workflow type of the deployments the agent starts as its children."""


class DeploymentOwner:
    """Mixin of ``AgentLifecycle``: start, follow and reconcile the agent's deployments.

    The lifecycle's main loop calls :meth:`_start_deployment` for a queued ``deploy`` command and
    :meth:`_deployment_step` on every wake-up; :meth:`_deployment_wake` says when to wake up.
    """

    # State owned by AgentLifecycle (set in its __init__), read and changed here.
    _spec: AgentSpec
    _state: AgentState
    _active_color: Color
    _replicas: list[Replica]
    _service: ServiceInfo | None
    _desired: int
    _failures: dict[int, int]
    _probes: dict[int, ProbeResult]
    _starting: dict[int, datetime]
    _counters: AgentCounters
    _deployment: DeploymentRecord | None
    _last_deployment: DeploymentEnded | None
    _cleanup_color: Color | None
    _cleanup_at: datetime | None
    _child: workflow.ChildWorkflowHandle[Any, DeploymentReport] | None
    _check_at: datetime | None
    _follow_requested: bool

    def _note(self, reason: str) -> None:
        raise NotImplementedError

    async def _provision(self) -> bool:
        raise NotImplementedError

    @property
    def _interval(self) -> timedelta:
        raise NotImplementedError

    @property
    def _running_spec(self) -> AgentSpec:
        raise NotImplementedError

    @property
    def _deploying(self) -> str | None:
        """Workflow id of the deployment in progress, or None."""
        return self._deployment.deployment_id if self._deployment else None

    def _deployment_wake(self) -> tuple[bool, datetime | None]:
        """(work to do now, next time-based step) for the main loop's wait."""
        now_work = self._follow_requested or (self._child is not None and self._child.done())
        times = [t for t in (self._cleanup_at, self._check_at) if t is not None]
        return now_work, min(times) if times else None

    async def _deployment_step(self) -> bool:
        """Advance deployment bookkeeping; True if a deployment ended (state may have changed)."""
        now = workflow.now()
        if self._deployment is not None:
            end: DeploymentEnd | None = None
            if self._child is not None and self._child.done():
                end = _child_end(self._child)  # a reset goes on in the chain, not here
            elif self._check_at is None or now >= self._check_at:
                # A child of an earlier run has no handle here; and a closed child is checked
                # on too, once per health interval, in case its close event is late.
                if self._check_at is not None or self._child is None:
                    end = await calls.describe_deployment(self._deployment_ref())
                self._check_at = workflow.now() + self._interval
            if end is not None:
                await self._finish_deployment(end)
                return True
            if self._follow_requested:
                self._follow_requested = False
                await self._follow_deployment()
        if self._cleanup_at is not None and now >= self._cleanup_at:
            await self._clean_up_losing_color()
        return False

    def _deployment_ref(self) -> DeploymentRef:
        assert self._deployment is not None
        return DeploymentRef(
            workflow_id=self._deployment.deployment_id, run_id=self._deployment.run_id
        )

    async def _start_deployment(self, req: DeploymentRequest) -> DeploymentStarted | str:
        """Start the child; returns what started, or why it could not (a refusal message)."""
        error = deployment_error(self._state, self._spec, self._deploying, req.version)
        if error is not None:
            return error
        running = self._running_spec  # replicas as scaled, not as first asked for
        spec = new_spec(running, req)
        wid = deployment_workflow_id(req.agent_id, req.version)
        new_color = other_color(self._active_color)
        stable = AgentDeploymentView(
            spec=running,
            state=self._state,
            active_color=self._active_color,
            replicas=self._replicas,
            service=self._service,
        )
        try:
            self._child = await workflow.start_child_workflow(
                DEPLOYMENT_TYPE,
                DeploymentRun(request=req, stable=stable),
                id=wid,
                task_queue=workflow.info().task_queue,
                result_type=DeploymentReport,
                parent_close_policy=workflow.ParentClosePolicy.ABANDON,
                id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
                static_summary=(
                    f"{req.agent_id}: {self._spec.version} ({self._active_color}) -> "
                    f"{req.version} ({new_color})"
                ),
                static_details=_details(req, running.replicas),
            )
        except WorkflowAlreadyStartedError:
            return f"{wid} is already running; follow it with fleetops deploy-status {wid}"
        self._deployment = rec = DeploymentRecord(
            deployment_id=wid,
            run_id=self._child.first_execution_run_id or "",
            version=req.version,
            spec=spec,
            stable_spec=running,
            stable_version=self._spec.version,
            stable_color=self._active_color,
            new_color=new_color,
            abort_scale_down_delay_seconds=req.abort_scale_down_delay_seconds,
            started_at=workflow.now(),
            requested_by=req.requested_by,
        )
        self._cleanup_at = self._cleanup_color = None  # the deployment owns both colours now
        who = f" by {req.requested_by}" if req.requested_by else ""
        self._note(f"deployment {wid} started{who}: {rec.stable_version} -> {req.version}")
        return DeploymentStarted(
            deployment_id=wid,
            run_id=rec.run_id,
            agent_id=req.agent_id,
            version=req.version,
            stable_version=rec.stable_version,
            stable_color=rec.stable_color,
            new_color=new_color,
        )

    async def _follow_deployment(self) -> None:
        """Mid-deployment: probe (and self-heal) the colour the Service really serves."""
        svc = await calls.describe_service(self._spec.agent_id)
        if svc is None or svc.active_color == self._active_color:
            return
        replicas = await calls.list_replicas(self._spec.agent_id)
        if replicas is None:
            self._follow_requested = True  # try again on the next wake-up
            return
        self._adopt(svc.active_color)
        self._service = svc
        self._replicas = [r for r in replicas if r.color == self._active_color and r.running]

    def _adopt(self, color: Color) -> None:
        """Take the spec and colour of the side that serves ``color`` (from our own record)."""
        rec = self._deployment
        assert rec is not None
        spec = rec.spec if color == rec.new_color else rec.stable_spec
        if color == self._active_color and spec == self._spec:
            return
        self._spec, self._active_color, self._desired = spec, color, spec.replicas
        self._failures, self._probes, self._starting = {}, {}, {}

    async def _finish_deployment(self, end: DeploymentEnd) -> None:
        """The child closed: reconcile from the platform's Service, record how it ended."""
        rec = self._deployment
        assert rec is not None
        svc = await calls.describe_service(self._spec.agent_id)
        serving = svc.active_color if svc is not None else self._active_color
        if serving not in (rec.new_color, rec.stable_color):
            serving = rec.stable_color
        self._adopt(serving)
        if svc is not None:
            self._service = svc
            if svc.preview_color is not None:  # left behind by a deployment that never ended
                with contextlib.suppress(ActivityError):
                    self._service = await calls.switch_traffic(
                        self._spec.agent_id, serving, None, compensation=True
                    )
            if end.closed_as != "completed":  # it may have left the losing colour running
                delay = timedelta(seconds=rec.abort_scale_down_delay_seconds)
                self._cleanup_color = other_color(serving)
                self._cleanup_at = workflow.now() + delay
        self._deployment = self._child = self._check_at = None
        self._counters.deployments += 1
        self._last_deployment = DeploymentEnded(
            deployment_id=rec.deployment_id,
            closed_as=end.closed_as,
            outcome=end.outcome,
            active_color=serving,
            version=self._spec.version,
            at=workflow.now(),
            message=end.message[:500],
            # Memory and carry only (no command): replay-safe without a patch.
            previous_spec=rec.stable_spec if serving == rec.new_color else None,
        )
        how = end.closed_as + (f" ({end.outcome})" if end.outcome else "")
        later = f"; {self._cleanup_color} scaled down at {self._cleanup_at}"
        self._note(
            f"deployment {rec.deployment_id} {how}; serving {self._spec.version} on {serving}"
            + (later if self._cleanup_at else "")
        )
        if self._state in PROBED_STATES:
            await self._provision()  # converge the serving colour (a no-op when it runs)

    async def _clean_up_losing_color(self) -> None:
        color = self._cleanup_color
        self._cleanup_at = self._cleanup_color = None
        if color is None or color == self._active_color:
            return
        try:
            await calls.scale_down(self._spec.agent_id, color, compensation=True)
        except ActivityError as err:
            workflow.logger.warning("could not scale down %s: %s", color, calls.cause(err))

    async def _cancel_deployment(self, reason: str) -> None:
        """Shutdown during a deployment: cancel it, wait until it has closed, reconcile."""
        rec = self._deployment
        assert rec is not None
        self._note(f"cancelling deployment {rec.deployment_id}: {reason}")
        with contextlib.suppress(ApplicationError):  # it may have closed already
            await workflow.get_external_workflow_handle(
                rec.deployment_id, run_id=rec.run_id
            ).cancel()
        end: DeploymentEnd | None = None
        while end is None:
            if self._child is not None:
                await workflow.wait_condition(lambda: self._child is None or self._child.done())
                end = _child_end(self._child) if self._child is not None else None
            else:
                end = await calls.describe_deployment(self._deployment_ref())
                if end is None:
                    await workflow.sleep(self._interval)
        await self._finish_deployment(end)


def _child_end(child: workflow.ChildWorkflowHandle[Any, DeploymentReport]) -> DeploymentEnd:
    """How a finished child closed, from its result or its failure."""
    try:
        report = child.result()
    except ChildWorkflowError as err:
        cause = err.cause
        closed_as: Any = (
            "canceled"
            if isinstance(cause, CancelledError)
            else "terminated"
            if isinstance(cause, TerminatedError)
            else "timed_out"
            if isinstance(cause, TimeoutError)
            else "failed"
        )
        return DeploymentEnd(closed_as=closed_as, message=str(cause or err)[:500])
    return DeploymentEnd(closed_as="completed", outcome=report.outcome, message=report.message)


def _details(req: DeploymentRequest, replicas: int) -> str:
    """The deployment's static details for the Web UI (Markdown): who asked, what it checks."""
    checks = [
        name
        for name, on in (
            ("smoke tests", bool(req.smoke_tests)),
            ("pre-promotion analysis", req.pre_promotion_analysis is not None),
            ("post-promotion analysis", req.post_promotion_analysis is not None),
        )
        if on
    ]
    p = req.promotion
    who = ", ".join(p.approvers + [f"role {r}" for r in p.roles]) or "any named approver"
    promotion = "automatic" if p.mode == "auto" else f"manual, by {who}"
    return "\n\n".join(
        [
            f"**replicas**: {req.replicas or replicas} (preview {req.preview_replicas or 'all'})",
            f"**checks**: {', '.join(checks) or 'readiness only'}",
            f"**promotion**: {promotion}",
            f"**requested by**: {req.requested_by or 'unknown'}",
        ]
    )
