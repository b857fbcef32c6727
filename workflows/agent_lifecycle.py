"""AgentLifecycle: one long-running workflow per agent (id ``agent/<agent_id>``).

It provisions the agent's replicas, probes them every ``health.interval_seconds``, self-heals
(restarts replicas that failed ``failure_threshold`` consecutive probes, the Kubernetes liveness
rule), and carries out operator actions. The main loop is the only code that changes state or
calls activities; signal and update handlers only queue commands, so actions never interleave.
"""

from __future__ import annotations

import contextlib
from collections import deque
from dataclasses import dataclass
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RawValue
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from pydantic import ValidationError

    from fleetops.constants import AGENT_ID_KEY, STATE_KEY
    from fleetops.models import (
        Action,
        AgentCounters,
        AgentDeploymentView,
        AgentLifecycleInput,
        AgentReport,
        AgentState,
        AgentStatus,
        DeploymentClaim,
        DeploymentOutcome,
        LifecycleCarry,
        OperatorRequest,
        ProbeResult,
        ReplicaHealth,
        ScaleRequest,
        Transition,
        TransitionRequest,
        TransitionResult,
    )
    from workflows import lifecycle_calls as calls
    from workflows.lifecycle_rules import (
        PROBED_STATES,
        action_error,
        check_transition,
        deployment_error,
    )
    from workflows.payload_guard import requires_input

S = AgentState
MAX_TRANSITIONS = 50
"""Transitions kept in state (older ones are counted, not kept) so history stays bounded."""
STARTUP_PROBE_SECONDS = 2.0
"""Probe interval while waiting for new replicas, capped by ``health.interval_seconds``."""
STARTUP_GRACE_PATCH = "startup-grace-for-new-replicas"
"""Patch id: failures of a new or restarted replica count only once it has been healthy, or
once ``startup_timeout_seconds`` passed (the rule of a Kubernetes startupProbe)."""
PAUSE_SCALES_DOWN_PATCH = "pause-scales-down-active-color"
"""Patch id: pause stops the active colour only, keeping the agent's service (gateway URL)."""
FETCH_SERVICE_PATCH = "fetch-service-after-bring-up"
"""Patch id: since blue-green deployments, bring-up also reads the agent's service (gateway URL)."""


@dataclass
class _Command:
    action: Action
    replicas: int | None
    reason: str
    requested_by: str
    result: TransitionResult | None = None
    error: str | None = None


@workflow.defn(name="AgentLifecycle")
class AgentLifecycle:
    """Keeps one agent's replicas running and healthy until it is shut down."""

    @workflow.init
    @requires_input
    def __init__(self, input: AgentLifecycleInput) -> None:
        """Set up state from the spec, or from the previous run on continue-as-new."""
        self._spec = spec = input.spec()
        carry = input.carry
        self._commands: deque[_Command] = deque()
        self._probes: dict[int, ProbeResult] = {}
        if carry is None:
            now = workflow.now()
            carry = LifecycleCarry(
                state=S.INITIALIZING,
                desired_replicas=spec.replicas,
                started_at=now,
                replicas=[],
                phase_deadline=now + timedelta(seconds=spec.health.startup_timeout_seconds),
                transitions=[],
                counters=AgentCounters(),
            )
        self._state = carry.state
        self._desired = carry.desired_replicas
        self._started_at = carry.started_at
        self._replicas = list(carry.replicas)
        self._failures = dict(carry.failures)
        self._degraded_since = carry.degraded_since
        self._starting = dict(carry.starting)
        self._phase_deadline = carry.phase_deadline
        self._transitions = list(carry.transitions)
        self._counters = carry.counters.model_copy()
        self._last_rejection = carry.last_rejection
        self._active_color = carry.active_color
        self._service = carry.service
        self._deployment_id = carry.deployment_id

    @workflow.run
    async def run(self, input: AgentLifecycleInput) -> AgentReport:
        """Run the agent until ``shutdown``.

        Args:
            input: the :class:`AgentSpec` (JSON field names as in the README); its ``carry`` is
                set only by continue-as-new.

        Returns:
            The final report: transitions (most recent 50) and counters.
        """
        self._upsert_search_attributes()
        rounds = 0
        next_probe = workflow.now()
        while True:
            while self._commands:
                await self._apply(self._commands.popleft())
            if self._state == S.TERMINATED:
                await workflow.wait_condition(workflow.all_handlers_finished)
                return self._report()
            if self._state == S.INITIALIZING:
                await self._bring_up()
                next_probe = workflow.now() + self._interval
                continue
            if self._state in PROBED_STATES and workflow.now() >= next_probe:
                await self._health_round()
                rounds += 1
                next_probe = workflow.now() + self._interval
                if self._should_continue_as_new(rounds):
                    await workflow.wait_condition(
                        lambda: not self._commands and workflow.all_handlers_finished()
                    )
                    self._counters.continued_as_new += 1
                    workflow.continue_as_new(
                        AgentLifecycleInput(**self._spec.model_dump(), carry=self._carry())
                    )
            timeout = None
            if self._state in PROBED_STATES:
                timeout = max(next_probe - workflow.now(), timedelta(0))
            await self._wait_for_command(timeout)

    # --- operator messages ----------------------------------------------------------------

    # Signal payloads arrive raw and are decoded here, so a malformed one is recorded as a
    # rejection in `status` instead of being dropped by the SDK with only a worker log line.

    @workflow.signal
    def pause(self, req: RawValue = None) -> None:  # type: ignore[assignment]
        """Stop all replicas, keeping spec and state (PAUSED). Payload: ``{"reason": ...}``."""
        self._on_signal("pause", req)

    @workflow.signal
    def resume(self, req: RawValue = None) -> None:  # type: ignore[assignment]
        """Provision again from PAUSED or ERROR (-> INITIALIZING -> READY)."""
        self._on_signal("resume", req)

    @workflow.signal
    def scale(self, req: RawValue = None) -> None:  # type: ignore[assignment]
        """Set the desired replica count: ``{"replicas": n}``, within [min, max]_replicas."""
        self._on_signal("scale", req)

    @workflow.signal
    def shutdown(self, req: RawValue = None) -> None:  # type: ignore[assignment]
        """Deprovision and complete the workflow with its final report."""
        self._on_signal("shutdown", req)

    @workflow.update
    async def transition(self, req: TransitionRequest) -> TransitionResult:
        """Carry out an operator action and answer once it is done.

        Args:
            req: ``{"action": "pause"|"resume"|"scale"|"shutdown", "replicas": n, "reason": ...}``.

        Returns:
            The state and replica count after the action.

        Raises:
            ApplicationError: ``InvalidTransition`` if the state changed before the action ran.
        """
        cmd = _Command(req.action, req.replicas, req.reason, req.requested_by)
        self._commands.append(cmd)
        await workflow.wait_condition(lambda: cmd.result is not None or cmd.error is not None)
        if cmd.error is not None:
            raise ApplicationError(cmd.error, type="InvalidTransition", non_retryable=True)
        assert cmd.result is not None
        return cmd.result

    @transition.validator
    def _validate_transition(self, req: TransitionRequest) -> None:
        """Reject, before anything is written to history, an action the state does not allow."""
        error = action_error(self._state, self._spec, req.action, req.replicas, self._deployment_id)
        if error is not None:
            raise ApplicationError(error, type="InvalidTransition", non_retryable=True)

    @workflow.query
    def status(self) -> AgentStatus:
        """The agent now: state, replicas with health, recent transitions, counters."""
        replicas = []
        for r in self._replicas:
            probe = self._probes.get(r.index)
            replicas.append(
                ReplicaHealth(
                    index=r.index,
                    endpoint=r.endpoint,
                    pid=r.pid,
                    color=r.color,
                    version=r.version,
                    healthy=probe.healthy if probe else False,
                    consecutive_failures=self._failures.get(r.index, 0),
                    in_flight=probe.in_flight if probe else 0,
                    last_error=probe.error if probe else None,
                )
            )
        return AgentStatus(
            agent_id=self._spec.agent_id,
            version=self._spec.version,
            state=self._state,
            desired_replicas=self._desired,
            min_replicas=self._spec.min_replicas,
            max_replicas=self._spec.max_replicas,
            replicas=replicas,
            transitions=list(self._transitions),
            counters=self._counters,
            last_rejection=self._last_rejection,
            active_color=self._active_color,
            service=self._service,
            deployment_id=self._deployment_id,
        )

    # --- deployments (BlueGreenDeployment talks to the agent through these) --------------

    @workflow.update
    def begin_deployment(self, claim: DeploymentClaim) -> AgentDeploymentView:
        """Hold the agent for deployment ``claim.deployment_id``; answer the running spec.

        While held, operator actions are refused, and a second deployment is refused by the
        validator. Claiming again with the same id is allowed (a retried activity).

        Args:
            claim: ``{"deployment_id": "deploy/<agent>/<version>", "version": ...}``.

        Returns:
            The running spec, state, active colour, its replicas and the service.

        Raises:
            ApplicationError: ``DeploymentRefused`` (from the validator, before anything is
                written to history) while another deployment holds the agent or the agent is
                not serving (state outside READY, PROCESSING, DEGRADED, ERROR).
        """
        self._deployment_id = claim.deployment_id
        return AgentDeploymentView(
            spec=self._spec,
            state=self._state,
            active_color=self._active_color,
            replicas=self._replicas,
            service=self._service,
        )

    @begin_deployment.validator
    def _validate_begin_deployment(self, claim: DeploymentClaim) -> None:
        """Refuse a deployment while another runs or the agent is not serving."""
        error = deployment_error(
            self._state, self._spec.agent_id, self._deployment_id, claim.deployment_id
        )
        if error is not None:
            raise ApplicationError(error, type="DeploymentRefused", non_retryable=True)

    @workflow.signal
    def end_deployment(self, outcome: DeploymentOutcome) -> None:
        """Release the agent. When promoted, adopt the new spec, colour, replicas and service.

        Args:
            outcome: ``{"deployment_id", "promoted", "spec", "active_color", "replicas",
                "service"}`` from the deployment that holds the agent; one from any other
                deployment is recorded as a rejection (``last_rejection`` in ``status``).
        """
        if outcome.deployment_id != self._deployment_id:
            self._reject(f"end_deployment from {outcome.deployment_id}, which does not hold it")
            return
        self._deployment_id = None
        self._counters.deployments += 1
        if outcome.service is not None:
            self._service = outcome.service
        if outcome.promoted and outcome.spec is not None:
            workflow.logger.info(
                "agent %s now runs %s on %s",
                self._spec.agent_id,
                outcome.spec.version,
                outcome.active_color,
            )
            self._spec = outcome.spec
            self._desired = outcome.spec.replicas
            self._active_color = outcome.active_color
            self._replicas = list(outcome.replicas)
            self._failures = {}
            self._probes = {}

    def _on_signal(self, action: Action, raw: RawValue | None) -> None:
        model: type[ScaleRequest | OperatorRequest] = (
            ScaleRequest if action == "scale" else OperatorRequest
        )
        try:
            if raw is None:
                req = model.model_validate({})
            else:
                req = workflow.payload_converter().from_payload(raw.payload, model)
        except (ApplicationError, ValidationError) as err:
            self._reject(f"{action} signal ignored: {err}")
            return
        replicas = req.replicas if isinstance(req, ScaleRequest) else None
        reason = req.reason if isinstance(req, OperatorRequest) else ""
        who = req.requested_by if isinstance(req, OperatorRequest) else ""
        error = action_error(self._state, self._spec, action, replicas, self._deployment_id)
        if error is not None:
            self._reject(error)
            return
        self._commands.append(_Command(action, replicas, reason, who))

    def _reject(self, error: str) -> None:
        workflow.logger.warning("rejected operator request: %s", error)
        self._counters.rejected_requests += 1
        self._last_rejection = error

    # --- the main loop's steps -------------------------------------------------------------

    async def _apply(self, cmd: _Command) -> None:
        error = action_error(self._state, self._spec, cmd.action, cmd.replicas, self._deployment_id)
        if error is not None:
            self._reject(error)
            cmd.error = error
            return
        who = f" by {cmd.requested_by}" if cmd.requested_by else ""
        reason = f"{cmd.action}{who}" + (f": {cmd.reason}" if cmd.reason else "")
        if cmd.action == "pause":
            self._set_state(S.PAUSED, reason)
            await self._deprovision(
                on_failure="pause could not stop the replicas",
                keep_service=workflow.patched(PAUSE_SCALES_DOWN_PATCH),
            )
        elif cmd.action == "resume":
            self._enter_initializing(reason)
        elif cmd.action == "scale":
            assert cmd.replicas is not None
            self._desired = cmd.replicas
            if self._state != S.PAUSED:
                await self._provision()
        else:
            self._set_state(S.SHUTTING_DOWN, reason)
            if await self._deprovision(on_failure="shutdown could not stop the replicas"):
                self._set_state(S.TERMINATED, "all replicas stopped")
        cmd.result = TransitionResult(
            action=cmd.action, state=self._state, replicas=self._desired, message=reason
        )

    async def _bring_up(self) -> None:
        """INITIALIZING: provision, then probe until all replicas are healthy or time runs out."""
        if not await self._provision():
            return
        assert self._phase_deadline is not None
        interval = timedelta(seconds=min(STARTUP_PROBE_SECONDS, self._spec.health.interval_seconds))
        while not self._commands:
            results = await self._probe()
            if results and all(p.healthy for p in results):
                self._failures = {}
                self._starting = {}
                self._set_state(self._serving_state(results), f"{len(results)} replicas healthy")
                if self._service is None and workflow.patched(FETCH_SERVICE_PATCH):
                    self._service = await calls.describe_service(self._spec.agent_id)
                return
            if workflow.now() >= self._phase_deadline:
                self._set_state(S.ERROR, "replicas not healthy within startup_timeout_seconds")
                return
            await self._wait_for_command(interval)

    async def _health_round(self) -> None:
        results = await self._probe()
        self._counters.health_rounds += 1
        if len(results) != len(self._replicas):
            return  # the probe activity itself failed: no evidence about the agent this round
        threshold = self._spec.health.failure_threshold
        now = workflow.now()
        for r, p in zip(self._replicas, results, strict=True):
            self._counters.failed_probes += 0 if p.healthy else 1
            if p.healthy or self._starting.get(r.index, now) <= now:
                self._starting.pop(r.index, None)  # started, or out of startup time
            elif workflow.patched(STARTUP_GRACE_PATCH):
                continue  # still starting: not a failure yet
            self._failures[r.index] = 0 if p.healthy else self._failures.get(r.index, 0) + 1
        failing = sorted(i for i, n in self._failures.items() if n >= threshold)
        if not failing and len(results) == self._desired and all(p.healthy for p in results):
            self._degraded_since = None
            self._set_state(self._serving_state(results), f"{len(results)} replicas healthy")
            return
        if failing and self._state in (S.READY, S.PROCESSING):
            self._set_state(
                S.DEGRADED, f"replicas {failing} failed {threshold} consecutive health probes"
            )
        if self._state != S.DEGRADED:
            return
        if self._degraded_since is None:
            self._degraded_since = now
        limit = timedelta(seconds=self._spec.health.recovery_timeout_seconds)
        if now - self._degraded_since >= limit:
            self._set_state(S.ERROR, f"agent did not recover within {limit}")
            return
        if failing:
            await self._restart(failing)

    async def _probe(self) -> list[ProbeResult]:
        results = await calls.probe(self._spec, self._replicas)
        if results is None:
            return []
        self._probes = {r.index: p for r, p in zip(self._replicas, results, strict=True)}
        return results

    async def _provision(self) -> bool:
        known = {r.index for r in self._replicas}
        try:
            self._replicas = await calls.provision(self._spec, self._desired, self._active_color)
        except ActivityError as err:
            self._set_state(S.ERROR, f"provisioning failed: {calls.cause(err)}")
            return False
        live = {r.index for r in self._replicas}
        self._failures = {i: n for i, n in self._failures.items() if i in live}
        self._mark_starting(live - known)
        return True

    async def _restart(self, indices: list[int]) -> None:
        try:
            self._replicas = await calls.restart(self._spec, indices, self._active_color)
        except ActivityError as err:
            workflow.logger.warning("self-heal restart failed: %s", calls.cause(err))
            return
        self._counters.replica_restarts += len(indices)
        for i in indices:
            self._failures[i] = 0
        self._mark_starting(set(indices))

    def _mark_starting(self, indices: set[int]) -> None:
        """Give new or restarted replicas ``startup_timeout_seconds`` before failures count."""
        deadline = workflow.now() + timedelta(seconds=self._spec.health.startup_timeout_seconds)
        for i in indices:
            self._starting[i] = deadline

    async def _deprovision(self, *, on_failure: str, keep_service: bool = False) -> bool:
        """Stop the replicas: only the active colour if ``keep_service``, else the whole agent."""
        try:
            await calls.deprovision(
                self._spec.agent_id, self._active_color, keep_service=keep_service
            )
        except ActivityError as err:
            self._set_state(S.ERROR, f"{on_failure}: {calls.cause(err)}")
            return False
        self._replicas = []
        self._probes = {}
        self._failures = {}
        if not keep_service:
            self._service = None  # stop_all removes the service
        return True

    async def _wait_for_command(self, timeout: timedelta | None) -> None:
        """Sleep until an operator command is queued or ``timeout`` passes (None: forever)."""
        with contextlib.suppress(TimeoutError):
            await workflow.wait_condition(lambda: bool(self._commands), timeout=timeout)

    # --- state bookkeeping -----------------------------------------------------------------

    def _enter_initializing(self, reason: str) -> None:
        self._set_state(S.INITIALIZING, reason)
        startup = timedelta(seconds=self._spec.health.startup_timeout_seconds)
        self._phase_deadline = workflow.now() + startup

    def _set_state(self, target: AgentState, reason: str) -> None:
        if target == self._state:
            return
        check_transition(self._state, target)
        self._transitions.append(
            Transition(at=workflow.now(), from_state=self._state, to_state=target, reason=reason)
        )
        del self._transitions[:-MAX_TRANSITIONS]
        self._counters.transitions += 1
        workflow.logger.info(
            "agent %s: %s -> %s (%s)", self._spec.agent_id, self._state, target, reason
        )
        self._state = target
        self._upsert_search_attributes()

    def _upsert_search_attributes(self) -> None:
        workflow.upsert_search_attributes(
            [AGENT_ID_KEY.value_set(self._spec.agent_id), STATE_KEY.value_set(str(self._state))]
        )

    @staticmethod
    def _serving_state(results: list[ProbeResult]) -> AgentState:
        return S.PROCESSING if any(p.in_flight > 0 for p in results) else S.READY

    @property
    def _interval(self) -> timedelta:
        return timedelta(seconds=self._spec.health.interval_seconds)

    def _should_continue_as_new(self, rounds: int) -> bool:
        return (
            rounds >= self._spec.health_rounds_per_run
            or workflow.info().is_continue_as_new_suggested()
        )

    def _carry(self) -> LifecycleCarry:
        return LifecycleCarry(
            state=self._state,
            desired_replicas=self._desired,
            started_at=self._started_at,
            replicas=self._replicas,
            failures=self._failures,
            degraded_since=self._degraded_since,
            starting=self._starting,
            phase_deadline=self._phase_deadline,
            transitions=self._transitions,
            counters=self._counters,
            last_rejection=self._last_rejection,
            active_color=self._active_color,
            service=self._service,
            deployment_id=self._deployment_id,
        )

    def _report(self) -> AgentReport:
        return AgentReport(
            agent_id=self._spec.agent_id,
            version=self._spec.version,
            final_state=self._state,
            started_at=self._started_at,
            ended_at=workflow.now(),
            transitions=self._transitions,
            counters=self._counters,
        )
