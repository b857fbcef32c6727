"""AgentLifecycle: one long-running workflow per agent (id ``agent/<agent_id>``).

It provisions the agent's replicas, probes them every ``health.interval_seconds``, self-heals
(restarts replicas that failed ``failure_threshold`` consecutive probes, the Kubernetes liveness
rule), and carries out operator actions. With ``health.probing: data-plane`` the rounds run in
a long prober activity that reports only health changes (:mod:`workflows.lifecycle_prober`).
The main loop is the only code that changes state or
calls activities; signal and update handlers only queue commands, so actions never interleave.
"""

from __future__ import annotations

import contextlib
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from temporalio import workflow
from temporalio.common import RawValue
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from pydantic import ValidationError

    from fleetops.constants import AGENT_ID_KEY, LABELS_KEY, STATE_KEY, agent_workflow_id
    from fleetops.converter import INVALID_INPUT
    from fleetops.deploy import DeploymentReport, DeploymentRequest, DeploymentStarted, new_spec
    from fleetops.errors import DEPLOYMENT_REFUSED, INVALID_TRANSITION
    from fleetops.labels import label_terms
    from fleetops.models import (
        Action,
        AgentCounters,
        AgentLifecycleInput,
        AgentReport,
        AgentSpec,
        AgentState,
        AgentStatus,
        LifecycleCarry,
        OperatorRequest,
        ProbeResult,
        ReplicaHealth,
        ScaleRequest,
        Transition,
        TransitionRequest,
        TransitionResult,
    )
    from fleetops.prober import WatchReport
    from workflows import lifecycle_calls as calls
    from workflows.lifecycle_deployments import DeploymentOwner
    from workflows.lifecycle_operations import AgentOperations
    from workflows.lifecycle_prober import PROBER_PATCH, ProbedLifecycle
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
AGENT_ID_PATCH = "workflow-id-is-agent-id"
"""Patch id: a run whose workflow id is not ``agent/<agent_id>`` fails at once (InvalidInput)."""
DEGRADED_CLOCK_PATCH = "degraded-clock-kept-through-partial-recovery"
"""Patch id: a partial recovery (no replica at the threshold, not all healthy) keeps the DEGRADED
clock running. Runs begun on code before blue-green deployments (85c1238) reset it instead; runs
begun on 85c1238 or later are recognised by their service (carried, or the fetch-service marker)."""
OPEN_INCIDENT_PATCH = "open-incident-on-error"
"""Patch id: entering ERROR opens (or joins) the agent's incident ``incident/<agent>/lifecycle``
(activity ``open_incident``, bounded retries; a failure is a note, never a failure of the agent)."""

LABELS_PATCH = "labels-search-attribute"
"""Patch id: an agent with ``labels`` sets ``FleetOpsLabels`` (``k=v`` keywords) at start, so
maintenance plans can select it by label."""

SIGNAL_ORDER_PATCH = "signals-checked-when-applied"
"""Patch id: an operator signal that arrives while earlier commands wait is checked when it is
applied, against the state those commands leave (``pause`` then ``resume`` ends running), not
against the state at arrival."""


@dataclass
class _Command:
    action: Action | Literal["deploy"]
    replicas: int | None
    reason: str
    requested_by: str
    result: TransitionResult | None = None
    error: str | None = None
    deploy: DeploymentRequest | None = None
    started: DeploymentStarted | None = None


@workflow.defn(name="AgentLifecycle")
class AgentLifecycle(DeploymentOwner, AgentOperations, ProbedLifecycle):
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
        self._deployment = carry.deployment
        self._last_deployment = carry.last_deployment
        self._cleanup_color = carry.cleanup_color
        self._cleanup_at = carry.cleanup_at
        self._child: workflow.ChildWorkflowHandle[Any, DeploymentReport] | None = None
        self._check_at: datetime | None = None  # next check on a child of an earlier run
        self._follow_requested = False
        self._init_prober(carry.prober_host, carry.prober_queue)  # health.probing: data-plane
        self._probes = dict(carry.probes)  # status keeps showing replica health across runs
        self._probed_at = carry.probed_at
        self._init_config(carry.config_versions, carry.config_version)
        self._incident_reason: str | None = None  # ERROR entered, its incident not opened yet

    @workflow.run
    async def run(self, input: AgentLifecycleInput) -> AgentReport:
        """Run the agent until ``shutdown``.

        Args:
            input: the :class:`AgentSpec` (JSON field names as in the README); its ``carry`` is
                set only by continue-as-new.

        Returns:
            The final report: transitions (most recent 50) and counters.
        """
        wid = workflow.info().workflow_id
        if wid != agent_workflow_id(self._spec.agent_id) and workflow.patched(AGENT_ID_PATCH):
            # Under another id it would drive that agent's replicas, Service and deployments.
            raise ApplicationError(
                f"agent_id: workflow {wid} may only run agent "
                f"{wid.removeprefix('agent/')!r}; start agent {self._spec.agent_id} as "
                f"{agent_workflow_id(self._spec.agent_id)}",
                {"field": "agent_id"},
                type=INVALID_INPUT,
                non_retryable=True,
            )
        self._upsert_search_attributes()
        if self._spec.labels and workflow.patched(LABELS_PATCH):
            workflow.upsert_search_attributes(
                [LABELS_KEY.value_set(label_terms(self._spec.labels))]
            )
        self._clock_kept = self._service is not None or workflow.patched(DEGRADED_CLOCK_PATCH)
        if self._spec.health.probing == "data-plane" and workflow.patched(PROBER_PATCH):
            return await self._run_watched()
        rounds = 0
        next_probe = workflow.now()
        while True:
            await self._open_pending_incident()
            while self._commands:
                await self._apply(self._commands.popleft())
            if self._operations:
                await self._run_operations()
                continue
            if await self._deployment_step():
                continue
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
                await self._open_pending_incident()
                if self._should_continue_as_new(rounds):
                    await self._continue_as_new()
            wake = next_probe if self._state in PROBED_STATES else None
            at = self._deployment_wake()[1]
            if at is not None:
                wake = min(wake, at) if wake is not None else at
            await self._wait_for_command(
                None if wake is None else max(wake - workflow.now(), timedelta(0))
            )

    async def _run_watched(self) -> AgentReport:
        """The main loop with the data-plane prober: the same steps, no probe rounds here."""
        reports = 0
        brought_up = -1  # the transition count at the last bring-up's provisioning
        while True:
            await self._open_pending_incident()
            while self._commands:
                await self._apply(self._commands.popleft())
            if self._operations:
                await self._run_operations()
                continue
            if await self._deployment_step():
                continue
            if self._state == S.TERMINATED:
                self._stop_watch()
                await workflow.wait_condition(workflow.all_handlers_finished)
                return self._report()
            self._prober_step()
            if self._state == S.INITIALIZING and brought_up != self._counters.transitions:
                # Provision once per entry into INITIALIZING (each entry is a transition).
                if not await self._provision():
                    continue
                brought_up = self._counters.transitions
                self._bringup = f"{workflow.info().run_id}/{brought_up}"
            if self._state in PROBED_STATES or self._state == S.INITIALIZING:
                self._sync_watch(startup=self._state == S.INITIALIZING)
            else:
                self._stop_watch()
            times = [t for t in (self._deployment_wake()[1], self._degraded_deadline()) if t]
            wake = min(times) if times else None
            watch = self._watch
            with contextlib.suppress(TimeoutError):
                await workflow.wait_condition(
                    lambda w=watch: (  # type: ignore[misc]
                        self._woken() or self._prober_woken() or (w is not None and w.done())
                    ),
                    timeout=None if wake is None else max(wake - workflow.now(), timedelta(0)),
                )
            if watch is not None and watch.done() and watch is self._watch:
                report = self._take_report()
                if report is None:  # ask for a host again, without a hot loop
                    await self._wait_for_command(timedelta(seconds=1))
                    continue
                await self._on_report(report)
                reports += 1
                if self._should_continue_as_new(reports):
                    self._stop_watch()
                    await self._continue_as_new()
            elif (at := self._degraded_deadline()) is not None and workflow.now() >= at:
                limit = timedelta(seconds=self._spec.health.recovery_timeout_seconds)
                self._set_state(S.ERROR, f"agent did not recover within {limit}")

    async def _on_report(self, report: WatchReport) -> None:
        """Decide on a prober's report as the old health round decided on its probes."""
        if not self._record(report):
            return
        results = report.results
        if self._state == S.INITIALIZING:
            if report.reason == "healthy":
                self._failures = {}
                self._starting = {}
                self._set_state(self._serving_state(results), f"{len(results)} replicas healthy")
                if self._service is None and workflow.patched(FETCH_SERVICE_PATCH):
                    self._clock_kept = True
                    self._service = await calls.describe_service(self._spec.agent_id)
            elif report.reason == "startup_timeout":
                self._set_state(S.ERROR, "replicas not healthy within startup_timeout_seconds")
            return
        self._failures = dict(report.failures)
        self._starting = dict(report.starting)
        await self._decide(results, workflow.now())

    async def _continue_as_new(self) -> None:
        await workflow.wait_condition(
            lambda: not self._commands and not self._operations and workflow.all_handlers_finished()
        )
        self._counters.continued_as_new += 1
        workflow.continue_as_new(
            AgentLifecycleInput(**self._spec.model_dump(), carry=self._carry())
        )

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
            raise ApplicationError(cmd.error, type=INVALID_TRANSITION, non_retryable=True)
        assert cmd.result is not None
        return cmd.result

    @transition.validator
    def _validate_transition(self, req: TransitionRequest) -> None:
        """Reject, before anything is written to history, an action the state does not allow."""
        error = action_error(self._state, self._spec, req.action, req.replicas, self._deploying)
        if error is not None:
            raise ApplicationError(error, type=INVALID_TRANSITION, non_retryable=True)

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
                    probed_at=self._probed_at if probe else None,
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
            deployment_id=self._deploying,
            deployment=self._deployment,
            last_deployment=self._last_deployment,
            config_version=self._config_version,
            config=self._spec.config,
            config_versions=list(self._config_versions),
            operation=self._operation,
            secrets=list(self._spec.secrets),
        )

    # --- deployments: the agent starts each as its child and follows it to the end -------

    @workflow.update
    async def deploy(self, req: DeploymentRequest) -> DeploymentStarted:
        """Start a blue-green deployment of this agent (child ``BlueGreenDeployment``).

        The agent owns the deployment: it starts it as its child ``deploy/<agent>/<version>``,
        waits for it to close however it closes (completed, failed, cancelled, terminated,
        timed out), and then adopts the colour the platform's Service really serves. While it
        runs, operator actions other than ``shutdown`` (which cancels it) are refused.

        Args:
            req: the deployment (see the README); ``agent_id`` must be this agent's.

        Returns:
            The started deployment: workflow id, run id, stable and new version and colour.

        Raises:
            ApplicationError: from the validator, before anything is written to history:
                ``InvalidInput`` (another agent's id, a spec the change does not fit) or
                ``DeploymentRefused`` (a deployment in progress, the agent not serving, the
                version already running); ``DeploymentRefused`` if the child could not start
                (a workflow with its id is already running).
        """
        cmd = _Command("deploy", None, "", req.requested_by, deploy=req)
        self._commands.append(cmd)
        await workflow.wait_condition(lambda: cmd.started is not None or cmd.error is not None)
        if cmd.error is not None:
            raise ApplicationError(cmd.error, type=DEPLOYMENT_REFUSED, non_retryable=True)
        assert cmd.started is not None
        return cmd.started

    @deploy.validator
    def _validate_deploy(self, req: DeploymentRequest) -> None:
        """Refuse, before anything is written to history, a deployment that cannot start."""
        if req.agent_id != self._spec.agent_id:
            raise ApplicationError(
                f"agent_id: {req.agent_id} is not this agent ({self._spec.agent_id})",
                type=INVALID_INPUT,
                non_retryable=True,
            )
        error = deployment_error(self._state, self._spec, self._deploying, req.version)
        if error is not None:
            raise ApplicationError(error, type=DEPLOYMENT_REFUSED, non_retryable=True)
        try:
            new_spec(self._running_spec, req)
        except ValueError as err:
            raise ApplicationError(
                f"deployment does not fit agent {req.agent_id}: {err}",
                type=INVALID_INPUT,
                non_retryable=True,
            ) from None

    @workflow.signal
    def deployment_changed(self, _: RawValue = None) -> None:  # type: ignore[assignment]
        """A hint that the running deployment switched traffic: re-read the platform's Service.

        The payload is ignored and nothing is taken from it: the agent adopts only what the
        Service really serves, so a hint from anyone else costs one read and changes nothing.
        """
        if self._deployment is not None:
            self._follow_requested = True

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
        if not (self._commands and workflow.patched(SIGNAL_ORDER_PATCH)):
            # Nothing waits: check now. Otherwise `_apply` checks it in its turn.
            error = action_error(self._state, self._spec, action, replicas, self._deploying)
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
        if cmd.action == "deploy":
            assert cmd.deploy is not None
            started = await self._start_deployment(cmd.deploy)
            if isinstance(started, str):
                cmd.error = started
            else:
                cmd.started = started
            return
        error = action_error(self._state, self._spec, cmd.action, cmd.replicas, self._deploying)
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
            if self._deployment is not None:
                await self._cancel_deployment(reason)
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
                    self._clock_kept = True  # a run begun on 85c1238 or later
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
        now = workflow.now()
        for r, p in zip(self._replicas, results, strict=True):
            self._counters.failed_probes += 0 if p.healthy else 1
            if p.healthy or self._starting.get(r.index, now) <= now:
                self._starting.pop(r.index, None)  # started, or out of startup time
            elif workflow.patched(STARTUP_GRACE_PATCH):
                continue  # still starting: not a failure yet
            self._failures[r.index] = 0 if p.healthy else self._failures.get(r.index, 0) + 1
        await self._decide(results, now)

    async def _decide(self, results: list[ProbeResult], now: datetime) -> None:
        """The decisions on one round's evidence (failures already counted): READY/PROCESSING,
        DEGRADED, ERROR after ``recovery_timeout_seconds``, self-heal restarts."""
        threshold = self._spec.health.failure_threshold
        failing = sorted(i for i, n in self._failures.items() if n >= threshold)
        if not failing and len(results) == self._desired and all(p.healthy for p in results):
            self._degraded_since = None
            self._set_state(self._serving_state(results), f"{len(results)} replicas healthy")
            return
        if not failing and not self._clock_kept:
            self._degraded_since = None  # the rule before 85c1238
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
        """Sleep until there is work (:meth:`_woken`) or ``timeout`` passes (None: forever)."""
        with contextlib.suppress(TimeoutError):
            await workflow.wait_condition(self._woken, timeout=timeout)

    def _woken(self) -> bool:
        """Whether the main loop has work besides its timers."""
        return (
            bool(self._commands)
            or bool(self._operations)
            or self._incident_reason is not None
            or self._deployment_wake()[0]
        )

    async def _open_pending_incident(self) -> None:
        """Open the incident of an ERROR entered since the last call (at most once per entry)."""
        reason = self._incident_reason
        if reason is None:
            return
        self._incident_reason = None
        wid = await calls.open_incident(self._spec.agent_id, self._spec.version, reason)
        if wid is None:
            self._note("incident could not be opened (see the worker log); the agent goes on")
        else:
            self._note(f"incident {wid} opened or joined: {reason}"[:500])

    # --- state bookkeeping -----------------------------------------------------------------

    def _enter_initializing(self, reason: str) -> None:
        self._set_state(S.INITIALIZING, reason)
        startup = timedelta(seconds=self._spec.health.startup_timeout_seconds)
        self._phase_deadline = workflow.now() + startup

    def _set_state(self, target: AgentState, reason: str) -> None:
        if target == self._state:
            # Healthy rounds land here: refresh the replica counts the Web UI shows (and set
            # them at all in a run that continued as new).
            self._publish_details()
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
        if target == S.ERROR and workflow.patched(OPEN_INCIDENT_PATCH):
            self._incident_reason = reason
        self._upsert_search_attributes()
        self._publish_details()

    def _note(self, reason: str) -> None:
        """Record an event that keeps the state (a deployment started or ended) as a transition."""
        self._transitions.append(
            Transition(
                at=workflow.now(), from_state=self._state, to_state=self._state, reason=reason
            )
        )
        del self._transitions[:-MAX_TRANSITIONS]
        self._counters.transitions += 1
        workflow.logger.info("agent %s: %s", self._spec.agent_id, reason)
        self._publish_details()

    def _publish_details(self) -> None:
        """Set what the Web UI shows as the workflow's current details (Markdown, a few lines).

        State, version, colour, healthy/desired replicas (from the last probe round), the
        deployment in progress and the last transition's reason. Memory only: it writes no
        history event, so it is replay-safe without a patch.
        """
        healthy = sum(
            1 for r in self._replicas if (p := self._probes.get(r.index)) is not None and p.healthy
        )
        lines = [
            f"**{self._state}**: {self._spec.agent_id} {self._spec.version} on "
            f"{self._active_color}, {healthy} of {self._desired} replicas healthy"
        ]
        if (d := self._deployment) is not None:
            lines.append(
                f"deployment in progress: {d.deployment_id} ({d.stable_version} on "
                f"{d.stable_color} -> {d.version} on {d.new_color})"
            )
        if self._transitions:
            t = self._transitions[-1]
            lines.append(f"last change ({t.at.isoformat(timespec='seconds')}): {t.reason}")
        workflow.set_current_details("\n\n".join(lines))

    def _upsert_search_attributes(self) -> None:
        workflow.upsert_search_attributes(
            [AGENT_ID_KEY.value_set(self._spec.agent_id), STATE_KEY.value_set(str(self._state))]
        )

    @staticmethod
    def _serving_state(results: list[ProbeResult]) -> AgentState:
        return S.PROCESSING if any(p.in_flight > 0 for p in results) else S.READY

    @property
    def _running_spec(self) -> AgentSpec:
        """The spec as it runs now: ``replicas`` is the desired count (``scale`` changes it)."""
        if self._spec.replicas == self._desired:
            return self._spec
        return self._spec.model_copy(update={"replicas": self._desired})

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
            deployment=self._deployment,
            last_deployment=self._last_deployment,
            cleanup_color=self._cleanup_color,
            cleanup_at=self._cleanup_at,
            config_version=self._config_version,
            config_versions=self._config_versions,
            prober_host=self._host.host_id if self._host else None,
            prober_queue=self._host.task_queue if self._host else None,
            probes=self._probes,
            probed_at=self._probed_at,
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
