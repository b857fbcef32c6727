"""Agent operations of ``AgentLifecycle``: rolling ``restart`` and versioned ``configure``.

Deterministic workflow code, a mixin like :mod:`workflows.lifecycle_deployments`. Both are
updates: the validator refuses, before anything is written to history, what the agent cannot do
now (not serving, paused, shutting down, a deployment or another operation running, a config
that fails the agent's ``config_schema``, a version that is not kept); the handler queues a
command for the main loop (so operations never interleave with other actions) and answers once
it is done.

- ``restart``: every replica of the active colour is replaced one at a time, surge first (the
  activity ``rolling_restart``): a replacement is healthy before the old replica is drained and
  stopped, so no request through the gateway fails. Replacements are provisioned anew, so they
  read their env, config and secret references again.
- ``configure``: a new configuration (or a kept older one, ``restore_version``) becomes a new
  version; it is applied by a rolling restart with the new ``AgentSpec.config``. If that fails,
  the previous configuration is rolled back onto every replica and the update fails with
  ``OperationFailed``. The last :data:`~fleetops.agent_config.MAX_CONFIG_VERSIONS_KEPT`
  versions are kept in state and carried across continue-as-new. While PAUSED, the new config
  is only recorded: ``resume`` starts the replicas with it.

Every operation is recorded as a transition note (the agent's audit trail in ``status``).
"""

from __future__ import annotations

from collections import deque
from datetime import datetime
from typing import Any

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from fleetops.agent_config import MAX_CONFIG_VERSIONS_KEPT, config_error
    from fleetops.converter import INVALID_INPUT
    from fleetops.errors import OPERATION_FAILED, OPERATION_REFUSED
    from fleetops.models import (
        AgentCounters,
        AgentSpec,
        AgentState,
        Color,
        ConfigureAgentRequest,
        ConfigureAgentResult,
        ConfigVersion,
        ProbeResult,
        Replica,
        RestartAgentRequest,
        RestartAgentResult,
    )
    from workflows import lifecycle_calls as calls

S = AgentState
RESTARTABLE_STATES = frozenset({S.READY, S.PROCESSING, S.DEGRADED})
"""States in which ``restart`` (and ``configure`` with a rolling restart) may run."""
CONFIGURABLE_STATES = RESTARTABLE_STATES | {S.PAUSED}
"""``configure`` also records a config while PAUSED (applied on ``resume``)."""


class Operation:
    """A queued ``restart`` or ``configure``: the main loop fills ``result`` or ``error``."""

    def __init__(self, request: RestartAgentRequest | ConfigureAgentRequest) -> None:
        self.request = request
        self.result: RestartAgentResult | ConfigureAgentResult | None = None
        self.error: ApplicationError | None = None

    @property
    def done(self) -> bool:
        """Whether the main loop has answered."""
        return self.result is not None or self.error is not None


class AgentOperations:
    """Mixin of ``AgentLifecycle``: the ``restart`` and ``configure`` updates."""

    # State owned by AgentLifecycle (set in its __init__), read and changed here.
    _spec: AgentSpec
    _state: AgentState
    _active_color: Color
    _replicas: list[Replica]
    _desired: int
    _failures: dict[int, int]
    _probes: dict[int, ProbeResult]
    _starting: dict[int, datetime]
    _counters: AgentCounters
    _commands: deque[Any]
    _operations: deque[Operation]
    _operation: str | None
    _config_version: int
    _config_versions: list[ConfigVersion]

    def _note(self, reason: str) -> None:
        raise NotImplementedError

    @property
    def _deploying(self) -> str | None:
        raise NotImplementedError

    @property
    def _running_spec(self) -> AgentSpec:
        raise NotImplementedError

    def _init_config(self, versions: list[ConfigVersion], version: int | None) -> None:
        """Kept versions from the carry; a first run (or one carried by older code) starts at
        version 1 = the spec's config."""
        if not versions or version is None:
            versions = [ConfigVersion(version=1, config=self._spec.config, at=workflow.now())]
            version = 1
        self._config_versions = list(versions)[-MAX_CONFIG_VERSIONS_KEPT:]
        self._config_version = version
        self._operations = deque()
        self._operation = None

    # --- updates ----------------------------------------------------------------------------

    @workflow.update
    async def restart(self, req: RestartAgentRequest) -> RestartAgentResult:
        """Rolling restart of the active colour's replicas, with no failed request.

        Each replica is replaced in turn: a new one starts (re-reading env, config and secret
        references), turns healthy, then the old one is drained and stopped. Local platform:
        through the gateway's drain; Kubernetes: a rollout restart of the Deployment
        (``kubectl.kubernetes.io/restartedAt``, ``maxSurge: 1, maxUnavailable: 0``).

        Args:
            req: ``{"requested_by": str, "reason": str}`` (both optional).

        Returns:
            How many replicas were replaced, and the colour.

        Raises:
            ApplicationError: from the validator, before anything is written to history:
                ``OperationRefused`` (not READY/PROCESSING/DEGRADED, paused, shutting down, a
                deployment or another operation in progress); after acceptance:
                ``OperationFailed`` (a replacement did not turn healthy within
                ``health.startup_timeout_seconds``; the old replicas serve on).
        """
        return await self._queue(Operation(req))  # type: ignore[return-value]

    @restart.validator
    def _validate_restart(self, req: RestartAgentRequest) -> None:
        """Refuse a restart the agent cannot run now (nothing is written to history)."""
        error = self._operation_error("restart", RESTARTABLE_STATES)
        if error is not None:
            raise ApplicationError(error, type=OPERATION_REFUSED, non_retryable=True)

    @workflow.update
    async def configure(self, req: ConfigureAgentRequest) -> ConfigureAgentResult:
        """Apply a new configuration version (or restore a kept one) by a rolling restart.

        Args:
            req: ``{"config": {...}}`` or ``{"restore_version": n}``, plus ``requested_by``,
                ``reason``.

        Returns:
            The version now applied and the one it replaced. An unchanged config creates no
            version and restarts nothing (``config_version == previous_version``).

        Raises:
            ApplicationError: from the validator: ``InvalidInput`` (the config fails the
                agent's ``config_schema``; a version not kept), ``OperationRefused`` (state,
                deployment, operation in progress); after acceptance ``OperationFailed``: the
                new config did not turn healthy; the previous one was rolled back.
        """
        return await self._queue(Operation(req))  # type: ignore[return-value]

    @configure.validator
    def _validate_configure(self, req: ConfigureAgentRequest) -> None:
        """Refuse an invalid config or one the agent cannot take now (before history)."""
        error = self._operation_error("configure", CONFIGURABLE_STATES)
        if error is not None:
            raise ApplicationError(error, type=OPERATION_REFUSED, non_retryable=True)
        try:
            self._target_config(req)
        except ValueError as err:
            raise ApplicationError(str(err), type=INVALID_INPUT, non_retryable=True) from None

    # --- checks -------------------------------------------------------------------------------

    def _operation_error(
        self, what: str, states: frozenset[AgentState], *, check_busy: bool = True
    ) -> str | None:
        """Why ``what`` cannot run now, or None (``check_busy``: also refuse while another
        operation is queued or running; the main loop checks again without it)."""
        agent = self._spec.agent_id
        if self._state in (S.SHUTTING_DOWN, S.TERMINATED) or any(
            getattr(c, "action", None) == "shutdown" for c in self._commands
        ):
            return f"agent {agent} is shutting down; {what} refused"
        if self._state not in states:
            hint = " (resume it first)" if self._state == S.PAUSED else ""
            allowed = ", ".join(sorted(states))
            return f"cannot {what} agent {agent} while it is {self._state}{hint}; needs {allowed}"
        if self._deploying is not None:
            return (
                f"deployment {self._deploying} of agent {agent} is in progress; wait for it or "
                f"abort it first (fleetops abort {self._deploying})"
            )
        if check_busy and (self._operation is not None or self._operations):
            busy = self._operation or "an operation"
            return f"{busy} of agent {agent} is in progress; retry when it is done"
        return None

    def _target_config(self, req: ConfigureAgentRequest) -> dict[str, Any]:
        """The configuration ``req`` asks for, checked against the agent's schema.

        Raises:
            ValueError: a version that is not kept, or a config the schema refuses.
        """
        if req.restore_version is not None:
            kept = {v.version: v for v in self._config_versions}
            if req.restore_version not in kept:
                raise ValueError(
                    f"restore_version: version {req.restore_version} is not kept (kept: "
                    f"{sorted(kept)})"
                )
            config = dict(kept[req.restore_version].config)
        else:
            assert req.config is not None
            config = dict(req.config)
        error = config_error(config, self._spec.config_schema)
        if error is not None:
            raise ValueError(f"{error} (agent {self._spec.agent_id}'s config_schema)")
        return config

    # --- the main loop's side -----------------------------------------------------------------

    async def _queue(self, op: Operation) -> RestartAgentResult | ConfigureAgentResult:
        self._operations.append(op)
        await workflow.wait_condition(lambda: op.done)
        if op.error is not None:
            raise op.error
        assert op.result is not None
        return op.result

    async def _run_operations(self) -> None:
        """Run the queued operations, one at a time (called by the main loop)."""
        while self._operations:
            op = self._operations.popleft()
            restart = isinstance(op.request, RestartAgentRequest)
            self._operation = "restart" if restart else "configure"
            try:
                if isinstance(op.request, RestartAgentRequest):
                    await self._do_restart(op)
                else:
                    await self._do_configure(op, op.request)
            finally:
                self._operation = None

    @staticmethod
    def _who(req: RestartAgentRequest | ConfigureAgentRequest) -> str:
        who = f" by {req.requested_by}" if req.requested_by else ""
        return who + (f": {req.reason}" if req.reason else "")

    async def _do_restart(self, op: Operation) -> None:
        error = self._operation_error("restart", RESTARTABLE_STATES, check_busy=False)
        if error is not None:
            op.error = ApplicationError(error, type=OPERATION_REFUSED, non_retryable=True)
            return
        color = self._active_color
        self._note(f"rolling restart of {color} requested{self._who(op.request)}")
        failure = await self._roll(self._running_spec)
        if failure is not None:
            self._note(f"rolling restart failed: {failure}")
            op.error = ApplicationError(
                f"restart of {self._spec.agent_id} failed: {failure}",
                type=OPERATION_FAILED,
                non_retryable=True,
            )
            return
        self._counters.rolling_restarts += 1
        self._note(f"rolling restart done: {len(self._replicas)} {color} replicas replaced")
        op.result = RestartAgentResult(restarted=len(self._replicas), color=color)

    async def _do_configure(self, op: Operation, req: ConfigureAgentRequest) -> None:
        error = self._operation_error("configure", CONFIGURABLE_STATES, check_busy=False)
        if error is not None:
            op.error = ApplicationError(error, type=OPERATION_REFUSED, non_retryable=True)
            return
        try:
            config = self._target_config(req)
        except ValueError as err:  # the schema cannot change in between; kept versions can
            op.error = ApplicationError(str(err), type=INVALID_INPUT, non_retryable=True)
            return
        previous = self._config_version
        if config == self._spec.config:
            op.result = ConfigureAgentResult(config_version=previous, previous_version=previous)
            return
        version = max(v.version for v in self._config_versions) + 1
        what = f"config v{version}" + (
            f" (restore of v{req.restore_version})" if req.restore_version else ""
        )
        old_spec = self._spec
        new_spec = old_spec.model_copy(update={"config": config})
        self._note(f"{what} requested{self._who(req)}")
        if self._state != S.PAUSED:
            failure = await self._roll(self._with_replicas(new_spec))
            if failure is not None:
                undo = await self._roll(self._with_replicas(old_spec))
                back = "rolled back" if undo is None else f"roll back failed too: {undo}"
                self._note(f"{what} failed: {failure}; v{previous} {back}")
                op.error = ApplicationError(
                    f"configure of {old_spec.agent_id} failed: {failure}; configuration "
                    f"v{previous} {back}",
                    type=OPERATION_FAILED,
                    non_retryable=True,
                )
                return
        self._spec = new_spec
        self._config_versions.append(
            ConfigVersion(
                version=version,
                config=config,
                at=workflow.now(),
                requested_by=req.requested_by,
                reason=req.reason,
                restored_from=req.restore_version,
            )
        )
        del self._config_versions[:-MAX_CONFIG_VERSIONS_KEPT]
        self._config_version = version
        self._counters.config_changes += 1
        applied = "recorded (applied on resume)" if self._state == S.PAUSED else "applied"
        self._note(f"{what} {applied}; was v{previous}")
        op.result = ConfigureAgentResult(config_version=version, previous_version=previous)

    def _with_replicas(self, spec: AgentSpec) -> AgentSpec:
        """``spec`` with the desired replica count (``scale`` changes it)."""
        if spec.replicas == self._desired:
            return spec
        return spec.model_copy(update={"replicas": self._desired})

    async def _roll(self, spec: AgentSpec) -> str | None:
        """Rolling restart of the active colour with ``spec``; None, or why it failed."""
        rollout = str(workflow.uuid4())
        try:
            replicas = await calls.rolling_restart(spec, self._active_color, self._desired, rollout)
        except ActivityError as err:
            listed = await calls.list_replicas(self._spec.agent_id)
            if listed is not None:
                self._replicas = [r for r in listed if r.color == self._active_color and r.running]
            return calls.cause(err)
        self._replicas = replicas
        self._failures, self._probes, self._starting = {}, {}, {}
        return None
