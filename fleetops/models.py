"""Pydantic models that cross process boundaries: workflow inputs, messages, activity payloads.

Every model forbids unknown fields, so a typo in ``temporal workflow start --input`` is an error
that names the field instead of a silently ignored setting. JSON field names are the ones
operators type (see the README).
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints, model_validator

from fleetops.agent_config import (
    CONFIG_ENV,
    MAX_CONFIG_KEYS,
    ConfigValue,
    check_config_bounds,
    config_error,
)
from fleetops.constants import AGENT_ID_PATTERN
from fleetops.labels import LABEL_KEY_PATTERN, LABEL_VALUE_PATTERN, MAX_LABELS
from fleetops.limits import (
    MAX_CPU_MILLICORES,
    MAX_DURATION_SECONDS,
    MAX_FAILURE_THRESHOLD,
    MAX_HEALTH_ROUNDS_PER_RUN,
    MAX_INTERVAL_SECONDS,
    MAX_MEMORY_MIB,
    MAX_REPLICAS,
    MIN_HEALTH_INTERVAL_SECONDS,
    Count,
    Seconds,
)
from fleetops.secrets import MAX_SECRETS_PER_AGENT, SecretRef, looks_like_secret

VERSION_PATTERN = r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
"""Versions are Kubernetes label values (at most 63 characters), since they label replicas and
name deployments (``deploy/<agent>/<version>``)."""

SAMPLE_AGENT_COMMAND = ["fleetops-sample-agent"]
"""Default ``AgentSpec.command``: the sample agent shipped in ``infra/sample_agent``."""


class StrictModel(BaseModel):
    """Base for FleetOps models: unknown fields are rejected."""

    model_config = ConfigDict(extra="forbid")


class FrozenModel(StrictModel):
    """Base for immutable value objects."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# --- agent specification -------------------------------------------------------------------


class Resources(StrictModel):
    """CPU and memory of one replica (Kubernetes requests and limits).

    Bounds: CPU at most :data:`~fleetops.limits.MAX_CPU_MILLICORES` (256 cores), memory at most
    :data:`~fleetops.limits.MAX_MEMORY_MIB` (1 TiB).
    """

    cpu_request_millicores: Count = Field(
        250, ge=1, le=MAX_CPU_MILLICORES, description="CPU request, millicores (<= 256000)."
    )
    cpu_limit_millicores: Count = Field(
        1000, ge=1, le=MAX_CPU_MILLICORES, description="CPU limit, millicores (<= 256000)."
    )
    memory_request_mib: Count = Field(
        256, ge=1, le=MAX_MEMORY_MIB, description="Memory request, MiB (<= 1048576)."
    )
    memory_limit_mib: Count = Field(
        512, ge=1, le=MAX_MEMORY_MIB, description="Memory limit, MiB (<= 1048576)."
    )

    @model_validator(mode="after")
    def _limits_cover_requests(self) -> Resources:
        if self.cpu_limit_millicores < self.cpu_request_millicores:
            raise ValueError("resources.cpu_limit_millicores must be >= cpu_request_millicores")
        if self.memory_limit_mib < self.memory_request_mib:
            raise ValueError("resources.memory_limit_mib must be >= memory_request_mib")
        return self


class HealthCheck(StrictModel):
    """How replicas are probed (HTTP GET ``path`` on each replica every ``interval_seconds``).

    Semantics follow Kubernetes probes: ``failure_threshold`` consecutive failures mark a replica
    unhealthy. Intervals are at most :data:`~fleetops.limits.MAX_INTERVAL_SECONDS` (1 day),
    timeouts at most :data:`~fleetops.limits.MAX_DURATION_SECONDS` (30 days).
    """

    path: str = Field(
        "/health", pattern=r"^/", max_length=2048, description="HTTP path probed on each replica."
    )
    interval_seconds: Seconds = Field(
        10.0,
        ge=MIN_HEALTH_INTERVAL_SECONDS,
        le=MAX_INTERVAL_SECONDS,
        description="Seconds between health rounds (0.01 to 86400, 1 day).",
    )
    timeout_seconds: Seconds = Field(
        2.0,
        gt=0,
        le=MAX_DURATION_SECONDS,
        description="Seconds before one probe fails (<= 2592000, 30 days).",
    )
    failure_threshold: Count = Field(
        3,
        ge=1,
        le=MAX_FAILURE_THRESHOLD,
        description="Consecutive failed probes before a replica is unhealthy (<= 100).",
    )
    startup_timeout_seconds: Seconds = Field(
        120.0,
        gt=0,
        le=MAX_DURATION_SECONDS,
        description="Seconds for new replicas to become healthy before ERROR (<= 30 days).",
    )
    recovery_timeout_seconds: Seconds = Field(
        300.0,
        gt=0,
        le=MAX_DURATION_SECONDS,
        description="Seconds DEGRADED may last (self-heal included) before ERROR (<= 30 days).",
    )
    probing: Literal["workflow", "data-plane"] = Field(
        "workflow",
        description=(
            "Who runs the probe rounds: `workflow` (a timer and an activity per round, ~11"
            " history events) or `data-plane` (the worker's prober host probes the agent and"
            " reports only health changes; an idle healthy agent writes ~6 events an hour)."
        ),
    )


class AgentSpec(StrictModel):
    """Input of ``AgentLifecycle``: what to run and how to keep it healthy.

    Exactly one of ``command`` (local platform) or ``image`` (Kubernetes) is normally used; with
    neither, ``command`` defaults to the sample agent. Replica counts are at most
    :data:`~fleetops.limits.MAX_REPLICAS` here; the worker's ``max_replicas_per_agent`` quota
    (default 50) is checked when replicas are provisioned (see ``activities/quota.py``).
    """

    agent_id: str = Field(pattern=AGENT_ID_PATTERN, description="DNS-label id of the agent.")
    command: list[str] | None = Field(None, description="argv of one replica (local platform).")
    image: str | None = Field(None, min_length=1, description="Container image (Kubernetes).")
    version: str = Field(
        "v1",
        pattern=VERSION_PATTERN,
        description="Version label (a Kubernetes label value: letters, digits, '-', '_', '.').",
    )
    replicas: Count = Field(1, ge=1, le=MAX_REPLICAS, description="Desired replicas (<= 1000).")
    min_replicas: Count = Field(
        1, ge=1, le=MAX_REPLICAS, description="Lowest replica count `scale` accepts (<= 1000)."
    )
    max_replicas: Count = Field(
        10, ge=1, le=MAX_REPLICAS, description="Highest replica count `scale` accepts (<= 1000)."
    )
    resources: Resources = Field(default_factory=Resources)
    labels: dict[
        Annotated[str, StringConstraints(pattern=LABEL_KEY_PATTERN, max_length=317)],
        Annotated[str, StringConstraints(pattern=LABEL_VALUE_PATTERN, max_length=63)],
    ] = Field(
        default_factory=dict,
        max_length=MAX_LABELS,
        description="Labels (Kubernetes syntax, <= 20) maintenance plans select agents by.",
    )
    env: dict[str, str] = Field(
        default_factory=dict,
        description="Environment of each replica (plain values: they are in workflow history; "
        "names that look like secrets are refused, use `secrets`).",
    )
    secrets: list[SecretRef] = Field(
        default_factory=list,
        max_length=MAX_SECRETS_PER_AGENT,
        description="Environment variables set from the secret store when replicas start "
        '(references only: [{"env": "OPENAI_API_KEY", "path": "agents/demo", "key": "openai"}]).',
    )
    health: HealthCheck = Field(default_factory=HealthCheck)
    config: dict[str, ConfigValue] = Field(
        default_factory=dict,
        max_length=MAX_CONFIG_KEYS,
        description=(
            "Versioned agent configuration (keys: letters, digits, '_', '.', '-'; values: JSON"
            " scalars). Delivered to each replica as env FLEETOPS_AGENT_CONFIG (one JSON object)."
            " At most 64 keys, 16 KiB as JSON. Changed by the `configure` update."
        ),
    )
    config_schema: dict[str, Any] | None = Field(
        None,
        description="JSON Schema (Draft 2020-12) `config` must satisfy; at most 16 KiB as JSON.",
    )
    health_rounds_per_run: Count = Field(
        300,
        ge=1,
        le=MAX_HEALTH_ROUNDS_PER_RUN,
        description=(
            "Health rounds before continue-as-new (bounds history; ~11 events per round, so the"
            " server's own suggestion at ~4K events comes later). At most 1000."
        ),
    )

    @model_validator(mode="after")
    def _check(self) -> AgentSpec:
        if self.command is not None and (not self.command or not all(self.command)):
            raise ValueError("command must be a non-empty list of non-empty strings")
        if self.command is None and self.image is None:
            self.command = list(SAMPLE_AGENT_COMMAND)
        check_config_bounds(self.config, self.config_schema)
        self._check_secrets()
        if CONFIG_ENV in self.env:
            raise ValueError(
                f"env must not set {CONFIG_ENV}: use `config` (the `configure` update)"
            )
        if (error := config_error(self.config, self.config_schema)) is not None:
            raise ValueError(error)
        if self.min_replicas > self.max_replicas:
            raise ValueError("min_replicas must be <= max_replicas")
        if not self.min_replicas <= self.replicas <= self.max_replicas:
            raise ValueError(
                f"replicas={self.replicas} is outside "
                f"[min_replicas={self.min_replicas}, max_replicas={self.max_replicas}]"
            )
        return self

    def _check_secrets(self) -> None:
        """Refuse secret-looking ``env`` names and ``secrets`` that clash."""
        for name in self.env:
            if looks_like_secret(name):
                raise ValueError(
                    f"env.{name} looks like a secret (*_KEY, *_TOKEN, *PASSWORD*, *SECRET*): its "
                    "value would be stored in plain workflow history. Put it in the secret store "
                    f"(`fleetops secrets put <path> <key>`) and reference it in `secrets`: "
                    f'[{{"env": "{name}", "path": "<path>", "key": "<key>"}}]'
                )
        names = [ref.env for ref in self.secrets]
        for i, name in enumerate(names):
            if name in names[:i]:
                raise ValueError(f"secrets[{i}].env {name!r} is given twice")
            if name in self.env:
                raise ValueError(f"secrets[{i}].env {name!r} is also in env; keep one")
            if name in RESERVED_ENV:
                raise ValueError(f"secrets[{i}].env {name!r} is set by FleetOps itself")


RESERVED_ENV = frozenset(
    {"HOST", "PORT", "AGENT_ID", "AGENT_VERSION", "AGENT_COLOR", "REPLICA_INDEX"}
)
"""Environment variables the platforms set on every replica."""


# --- lifecycle ------------------------------------------------------------------------------


class AgentState(StrEnum):
    """Operational state of an agent (one ``AgentLifecycle`` workflow)."""

    INITIALIZING = "INITIALIZING"
    READY = "READY"
    PROCESSING = "PROCESSING"
    PAUSED = "PAUSED"
    DEGRADED = "DEGRADED"
    ERROR = "ERROR"
    SHUTTING_DOWN = "SHUTTING_DOWN"
    TERMINATED = "TERMINATED"


Action = Literal["pause", "resume", "scale", "shutdown"]

Color = Literal["blue", "green"]
"""A colour slot of an agent (blue-green deployment). An agent starts on ``blue``."""


def other_color(color: Color) -> Color:
    """The other colour slot: ``blue`` <-> ``green``."""
    return "green" if color == "blue" else "blue"


class Transition(FrozenModel):
    """One recorded state change."""

    at: datetime
    from_state: AgentState
    to_state: AgentState
    reason: str


class ScaleRequest(StrictModel):
    """Payload of the ``scale`` signal: ``{"replicas": n}``."""

    replicas: Count = Field(ge=1, le=MAX_REPLICAS, description="New desired replica count.")


class OperatorRequest(StrictModel):
    """Payload of ``pause`` / ``resume`` / ``shutdown`` signals (all fields optional)."""

    reason: str = Field("", max_length=500, description="Why; kept in the transition record.")
    requested_by: str = Field("", max_length=200, description="Who asked.")


class TransitionRequest(StrictModel):
    """Payload of the ``transition`` update: an operator action answered synchronously."""

    action: Action
    replicas: Count | None = Field(
        None, ge=1, le=MAX_REPLICAS, description="Required for `scale` (<= 1000)."
    )
    reason: str = Field("", max_length=500)
    requested_by: str = Field("", max_length=200)

    @model_validator(mode="after")
    def _replicas_for_scale(self) -> TransitionRequest:
        if (self.action == "scale") != (self.replicas is not None):
            raise ValueError("replicas is required for action 'scale' and only for it")
        return self


class TransitionResult(FrozenModel):
    """Answer of the ``transition`` update once the action has been carried out."""

    action: Action
    state: AgentState
    replicas: int
    message: str


class Replica(FrozenModel):
    """One running (or expected) replica as the platform reports it."""

    index: int = Field(ge=0)
    endpoint: str = Field(description="Base URL, e.g. http://127.0.0.1:18000.")
    pid: int | None = None
    running: bool = True
    color: Color = "blue"
    version: str | None = None


class ServiceInfo(FrozenModel):
    """An agent's stable entry points (Argo Rollouts' active and preview services).

    Local platform: ports of the local gateway. Kubernetes: the ``<agent>`` and
    ``<agent>-preview`` Services, whose selectors pick a colour.
    """

    agent_id: str
    active_color: Color
    preview_color: Color | None = None
    active_url: str = Field(description="URL clients use; always routes to the active colour.")
    preview_url: str | None = Field(None, description="URL of the preview colour, if any.")
    generation: int = Field(0, ge=0, description="Bumped on every switch.")


class ProbeResult(FrozenModel):
    """Outcome of one HTTP health probe against one replica."""

    endpoint: str
    healthy: bool
    status_code: int | None = None
    latency_seconds: float | None = None
    in_flight: int = Field(0, ge=0, description="Requests the replica is executing right now.")
    error: str | None = None


class ReplicaHealth(FrozenModel):
    """A replica as shown by the ``status`` query."""

    index: int
    endpoint: str
    pid: int | None
    color: Color = "blue"
    version: str | None = None
    healthy: bool
    consecutive_failures: int
    in_flight: int = 0
    last_error: str | None = None
    probed_at: datetime | None = Field(
        None, description="When these results were probed (data-plane prober; UTC)."
    )


class ConfigVersion(FrozenModel):
    """One kept configuration version (the agent keeps the last few in its state)."""

    version: int = Field(ge=1)
    config: dict[str, ConfigValue]
    at: datetime
    requested_by: str = ""
    reason: str = ""
    restored_from: int | None = Field(None, description="Set when this came from a restore.")


# --- deployments an agent owns --------------------------------------------------------------

DeploymentClosure = Literal["completed", "failed", "canceled", "terminated", "timed_out", "unknown"]
"""How a deployment workflow closed, as Temporal reports it (``unknown``: its history is gone)."""


class DeploymentRecord(FrozenModel):
    """A deployment the agent's ``AgentLifecycle`` started as its child, kept in its own state.

    The lifecycle adopts ``spec`` only if, when the deployment ends, the platform's Service
    really serves ``new_color``; nothing in it comes from a message another client can send.
    """

    deployment_id: str = Field(description="Workflow id, deploy/<agent>/<version>.")
    run_id: str = Field(description="Run id of the child (pins the execution the agent owns).")
    version: str
    spec: AgentSpec = Field(description="The spec the deployment runs on the new colour.")
    stable_spec: AgentSpec = Field(description="The spec the agent ran when it started.")
    stable_version: str
    stable_color: Color
    new_color: Color
    abort_scale_down_delay_seconds: float = Field(
        ge=0, description="Seconds the losing colour is kept after an abnormal end."
    )
    started_at: datetime
    requested_by: str = ""


class DeploymentEnded(FrozenModel):
    """How the agent's last deployment ended and what the agent reconciled to (``status``)."""

    deployment_id: str
    closed_as: DeploymentClosure
    outcome: str | None = Field(None, description="The deployment's own outcome, if it said.")
    active_color: Color = Field(description="Colour the Service serves after reconciliation.")
    version: str = Field(description="The agent's version after reconciliation.")
    at: datetime
    message: str = ""
    previous_spec: AgentSpec | None = Field(
        None,
        description="The spec the agent ran before this deployment, when the deployment's new "
        "colour is serving (what an incident's rollback deploys again); None otherwise.",
    )


class AgentCounters(StrictModel):
    """Running totals, carried across continue-as-new."""

    health_rounds: int = 0
    failed_probes: int = 0
    replica_restarts: int = 0
    transitions: int = 0
    rejected_requests: int = 0
    continued_as_new: int = 0
    deployments: int = 0
    rolling_restarts: int = 0
    config_changes: int = 0


class AgentStatus(FrozenModel):
    """Answer of the ``status`` query."""

    agent_id: str
    version: str
    state: AgentState
    desired_replicas: int
    min_replicas: int
    max_replicas: int
    replicas: list[ReplicaHealth]
    transitions: list[Transition]
    counters: AgentCounters
    last_rejection: str | None = None
    active_color: Color = "blue"
    service: ServiceInfo | None = None
    deployment_id: str | None = Field(None, description="Deployment in progress, if any.")
    deployment: DeploymentRecord | None = Field(None, description="The deployment in progress.")
    last_deployment: DeploymentEnded | None = Field(
        None, description="How the last deployment ended and what the agent reconciled to."
    )
    config_version: int | None = Field(None, description="Configuration version applied.")
    config: dict[str, ConfigValue] = Field(default_factory=dict, description="Applied config.")
    config_versions: list[ConfigVersion] = Field(
        default_factory=list, description="Kept configuration versions, oldest first (<= 10)."
    )
    operation: str | None = Field(None, description="Restart or configure in progress, if any.")
    secrets: list[SecretRef] = Field(
        default_factory=list,
        description="The spec's secret references (store path, key, env name; never a value).",
    )


class AgentReport(FrozenModel):
    """Result of a completed ``AgentLifecycle``: the final status."""

    agent_id: str
    version: str
    final_state: AgentState
    started_at: datetime
    ended_at: datetime
    transitions: list[Transition]
    counters: AgentCounters


class LifecycleCarry(FrozenModel):
    """What ``AgentLifecycle`` hands to its next run on continue-as-new.

    Its times are timezone-aware (UTC, as the workflow writes them): a naive one, given by
    hand, is refused at start instead of failing a later comparison with ``workflow.now()``;
    so is a replica count out of the spec's bounds (0 to ``MAX_REPLICAS``).
    """

    state: AgentState
    desired_replicas: Count = Field(ge=0, le=MAX_REPLICAS)
    started_at: AwareDatetime
    replicas: list[Replica] = Field(max_length=2 * MAX_REPLICAS)  # both colours in a switch
    failures: dict[int, Count] = Field(default_factory=dict)
    degraded_since: AwareDatetime | None = None
    starting: dict[int, AwareDatetime] = Field(default_factory=dict)
    phase_deadline: AwareDatetime | None = None
    transitions: list[Transition]
    counters: AgentCounters
    last_rejection: str | None = None
    active_color: Color = "blue"
    service: ServiceInfo | None = None
    deployment_id: str | None = Field(None, description="Unused; kept so old carries decode.")
    deployment: DeploymentRecord | None = None
    last_deployment: DeploymentEnded | None = None
    cleanup_color: Color | None = Field(None, description="Colour to scale down at cleanup_at.")
    cleanup_at: AwareDatetime | None = None
    config_version: int | None = Field(None, description="None: carried by older code.")
    config_versions: list[ConfigVersion] = Field(default_factory=list)
    prober_host: str | None = Field(None, description="The data-plane prober host, if any.")
    prober_queue: str | None = Field(None, description="That host's task queue.")
    probes: dict[int, ProbeResult] = Field(
        default_factory=dict, description="Replica index -> its last recorded probe result."
    )
    probed_at: AwareDatetime | None = Field(None, description="When the prober last reported them.")


class AgentLifecycleInput(AgentSpec):
    """Workflow input of ``AgentLifecycle``: an :class:`AgentSpec`, plus the state carried over
    continue-as-new (the pattern of Temporal's safe-message-handlers sample). Operators never set
    ``carry``."""

    carry: LifecycleCarry | None = Field(None, description="Internal: set by continue-as-new.")

    def spec(self) -> AgentSpec:
        """The :class:`AgentSpec` part, without ``carry``."""
        return AgentSpec.model_validate(self.model_dump(exclude={"carry"}))


# --- activity payloads ----------------------------------------------------------------------


class ProvisionRequest(FrozenModel):
    """Converge an agent to ``replicas`` running replicas (idempotent)."""

    spec: AgentSpec
    replicas: int = Field(ge=0)
    color: Color = "blue"


class RestartRequest(FrozenModel):
    """Restart the replicas at ``indices`` (stop if running, start again on the same endpoint)."""

    spec: AgentSpec
    indices: list[int]
    color: Color = "blue"


class DeprovisionRequest(FrozenModel):
    """Stop and forget every replica of an agent."""

    agent_id: str


class ScaleDownRequest(FrozenModel):
    """Stop every replica of one colour of an agent (the other colour is untouched)."""

    agent_id: str
    color: Color


class SwitchTrafficRequest(FrozenModel):
    """Point the active service at ``active_color`` and the preview service at ``preview_color``."""

    agent_id: str
    active_color: Color
    preview_color: Color | None = None


class ProbeRequest(FrozenModel):
    """Probe each endpoint with ``GET <endpoint><path>``."""

    endpoints: list[str]
    path: str = "/health"
    timeout_seconds: float = Field(2.0, gt=0)


# --- agent operations: restart and configure -----------------------------------------------


class RestartAgentRequest(StrictModel):
    """Payload of the ``AgentLifecycle`` update ``restart``: a rolling restart of the active colour.

    Every replica is re-provisioned (so it re-reads its environment and secret references) one
    at a time, surge first: a replacement starts and turns healthy before the old one is drained
    and stopped.
    """

    requested_by: str = Field("", max_length=200, description="Who asked.")
    reason: str = Field("", max_length=500, description="Why; kept in the transition record.")


class RestartAgentResult(FrozenModel):
    """Answer of ``restart`` once every replica of ``color`` has been replaced."""

    restarted: int = Field(ge=0, description="Replicas replaced.")
    color: Color = Field(description="The (active) colour that was restarted.")


class ConfigureAgentRequest(StrictModel):
    """Payload of the ``AgentLifecycle`` update ``configure``.

    Exactly one of ``config`` (a new configuration, validated against ``AgentSpec.config_schema``)
    or ``restore_version`` (put a kept earlier version back) is given.
    """

    config: dict[str, ConfigValue] | None = Field(
        None, max_length=MAX_CONFIG_KEYS, description="New configuration (JSON scalars)."
    )
    restore_version: Count | None = Field(
        None, ge=1, description="A kept configuration version to restore."
    )
    requested_by: str = Field("", max_length=200, description="Who asked.")
    reason: str = Field("", max_length=500, description="Why; kept in the audit record.")

    @model_validator(mode="after")
    def _one_of(self) -> ConfigureAgentRequest:
        if (self.config is None) == (self.restore_version is None):
            raise ValueError("give exactly one of config or restore_version")
        if self.config is not None:
            check_config_bounds(self.config, None)
        return self


class ConfigureAgentResult(FrozenModel):
    """Answer of ``configure`` once every replica runs the new configuration."""

    config_version: int = Field(ge=1, description="The version now applied.")
    previous_version: int | None = Field(None, description="The version it replaced, if any.")


class RollingRestartRequest(FrozenModel):
    """Replace every replica of ``color`` one by one, surge first (activity ``rolling_restart``).

    ``rollout_id`` names this restart: a retried activity skips the replicas it already
    replaced and adopts a replacement it had started. ``requested_at`` is the Kubernetes
    ``kubectl.kubernetes.io/restartedAt`` annotation.
    """

    spec: AgentSpec
    color: Color = "blue"
    rollout_id: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9._-]+$")
    requested_at: datetime
    ready_timeout_seconds: float = Field(
        120.0,
        gt=0,
        le=MAX_DURATION_SECONDS,
        description="Seconds for each replacement to turn healthy.",
    )
