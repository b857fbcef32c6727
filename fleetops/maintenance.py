"""The maintenance plan (input of the ``Maintenance`` workflow) and what its ``status`` reports.

A plan says what to change (``kind`` and its ``parameters``), on which agents (``targets``: ids
and/or a label selector), when (``window``), who approves, who is told, and how carefully
(``batch_size``, ``max_unavailable``, ``on_failure``). Plan files (YAML or JSON) are validated by
this same model (:func:`load_plan`), and so is ``temporal workflow start --input '{...}'``.

Every number has an explicit bound so no plan can overflow a timer or grow history without end.
Secrets travel as references (path + key); a plan never holds a secret value.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AwareDatetime, Field, StringConstraints, model_validator

from fleetops.agent_config import MAX_CONFIG_KEYS, ConfigValue, check_config_bounds
from fleetops.analysis import Analysis
from fleetops.approvals import (
    Names,
    TimeoutOutcome,
    TimeoutSeconds,
)
from fleetops.constants import AGENT_ID_PATTERN
from fleetops.labels import LABEL_KEY_PATTERN, LABEL_VALUE_PATTERN, MAX_LABELS
from fleetops.limits import MAX_TEXT_LENGTH, Count, Seconds
from fleetops.maintenance_status import (
    MAX_STEPS,
    AgentId,
    Fact,
    Kind,
    MaintenanceAudit,
    MaintenanceStatus,
    Outcome,
    Phase,
    Risk,
    StepConfirmation,
    TargetRecord,
    TargetState,
)
from fleetops.models import VERSION_PATTERN, StrictModel
from fleetops.secrets import SECRET_KEY_PATTERN, SECRET_PATH_PATTERN

MAX_TARGETS = 200
"""Most agents one plan may change (ids plus what the selector matches)."""
MAX_WINDOW_SECONDS = 7 * 86400.0
"""Longest maintenance window: 7 days, in seconds."""
MAX_WAIT_FOR_WINDOW_SECONDS = 90 * 86400.0
"""Latest a window may open after the plan starts: 90 days, in seconds (checked by the workflow)."""
MAX_BATCH_SIZE = 50
"""Most targets in one batch."""
MAX_SECRETS = 20
"""Most secrets one secret rotation rotates per target."""
MAX_AUDIT_ENTRIES = 300
"""Audit entries a run keeps (oldest dropped)."""

PLAN_NAME_PATTERN = AGENT_ID_PATTERN
"""Plan names are DNS labels: they name workflows (``maintenance/<name>/<run>``) and schedules."""
AGENT_PLACEHOLDER = "{agent_id}"
"""In a secret path, replaced by each target's id (``agents/{agent_id}``: one secret per agent)."""

OnFailure = Literal["halt", "continue"]
NotifyTarget = Literal["approvals", "escalation"]
"""Where plan notifications go: the approval webhook, the escalation webhook (settings)."""
RISK_ORDER: dict[Risk, int] = {"low": 0, "medium": 1, "high": 2}
KIND_RISK: dict[Kind, Risk] = {
    "config_change": "low",
    "secret_rotation": "medium",
    "version_update": "medium",
    "custom": "medium",
    "security_patch": "high",
}
"""Risk of each kind before adjustments (see :meth:`MaintenancePlan.risk`)."""
MANY_TARGETS = 10
"""A plan with more targets than this is one risk level higher."""

LabelKey = Annotated[str, StringConstraints(pattern=LABEL_KEY_PATTERN, max_length=317)]
LabelValue = Annotated[str, StringConstraints(pattern=LABEL_VALUE_PATTERN, max_length=63)]
Labels = Annotated[dict[LabelKey, LabelValue], Field(max_length=MAX_LABELS)]
"""Agent labels (Kubernetes label syntax), at most :data:`MAX_LABELS`."""
Text = Annotated[str, StringConstraints(max_length=MAX_TEXT_LENGTH)]


class Targets(StrictModel):
    """Which agents a plan changes: ``agents`` by id, plus every agent whose labels match
    ``selector`` (Kubernetes ``matchLabels``: all pairs must match). Resolved once, when the
    plan's pre-checks run, through the ``FleetOpsLabels`` search attribute."""

    agents: list[AgentId] = Field(default_factory=list, max_length=MAX_TARGETS)
    selector: Labels = Field(default_factory=dict, description="matchLabels; {} selects none.")

    @model_validator(mode="after")
    def _some(self) -> Targets:
        if not self.agents and not self.selector:
            raise ValueError("targets: name agents, a label selector, or both")
        if len(set(self.agents)) != len(self.agents):
            raise ValueError("targets.agents: an agent is listed twice")
        return self


class MaintenanceWindow(StrictModel):
    """When changes may run: from ``start`` (None: when the run starts) until ``end``, or for
    ``duration_seconds`` after the window opens. Scheduled plans use ``duration_seconds`` (a
    fixed ``end`` would be in the past from the second run on)."""

    start: AwareDatetime | None = Field(None, description="Opens (RFC 3339 with offset).")
    end: AwareDatetime | None = Field(None, description="Closes (RFC 3339 with offset).")
    duration_seconds: Seconds | None = Field(
        None, gt=0, le=MAX_WINDOW_SECONDS, description="Length in seconds (<= 7 days)."
    )

    @model_validator(mode="after")
    def _bounded(self) -> MaintenanceWindow:
        if (self.end is None) == (self.duration_seconds is None):
            raise ValueError("window: set exactly one of end and duration_seconds")
        if self.end is not None:
            if self.start is None:
                raise ValueError("window.end needs window.start (or use duration_seconds)")
            length = (self.end - self.start).total_seconds()
            if length <= 0:
                raise ValueError("window.end must be after window.start")
            if length > MAX_WINDOW_SECONDS:
                raise ValueError("window: at most 7 days (604800 s) long")
        return self

    def bounds(self, now: datetime) -> tuple[datetime, datetime]:
        """``(opens, closes)`` for a run that started at ``now`` (workflow time)."""
        opens = self.start or now
        if self.end is not None:
            return opens, self.end
        assert self.duration_seconds is not None
        return opens, opens + timedelta(seconds=self.duration_seconds)


class Approval(StrictModel):
    """Who approves and when approval is needed.

    ``required``: ``risk`` asks when the plan's risk is at least ``min_risk``; ``always``;
    ``never`` (refused for emergency plans, which always need approval).
    """

    required: Literal["risk", "always", "never"] = "risk"
    min_risk: Risk = Field("medium", description="With required=risk: lowest risk that asks.")
    approvers: Names = Field(default_factory=list, description="Users who may decide.")
    roles: Names = Field(default_factory=list, description="Roles (setting approval.roles).")
    timeout_seconds: TimeoutSeconds = Field(
        4 * 3600.0, description="Seconds to wait (<= 30 days; also ends when the window closes)."
    )
    timeout_outcome: TimeoutOutcome = "reject"


class SecretItem(StrictModel):
    """One secret to rotate: ``key`` at ``path`` (``{agent_id}`` in the path: per target)."""

    path: str = Field(max_length=512)
    key: str = Field(pattern=SECRET_KEY_PATTERN)
    value_bytes: Count = Field(32, ge=16, le=256, description="Random bytes of the new value.")

    @model_validator(mode="after")
    def _path(self) -> SecretItem:
        import re

        if not re.match(SECRET_PATH_PATTERN, self.path.replace(AGENT_PLACEHOLDER, "a")):
            raise ValueError(f"secrets.path {self.path!r} is not a KV path (segments a-z0-9_.-)")
        return self

    def for_agent(self, agent_id: str) -> str:
        """The path for one target."""
        return self.path.replace(AGENT_PLACEHOLDER, agent_id)


class SecretRotationParams(StrictModel):
    """``secret_rotation``: rotate each secret, restart the target so replicas read it, verify,
    confirm (the previous version stays restorable until then); rollback restores the
    previous version and restarts again."""

    secrets: list[SecretItem] = Field(min_length=1, max_length=MAX_SECRETS)


class VersionUpdateParams(StrictModel):
    """``version_update``: one blue-green deployment per target (owned by the target agent)."""

    version: str = Field(pattern=VERSION_PATTERN)
    command: list[Annotated[str, StringConstraints(min_length=1)]] | None = None
    image: str | None = Field(None, min_length=1)
    auto_promote_after_seconds: Seconds = Field(
        0.0, ge=0, le=86400, description="Seconds between ready and the switch (<= 1 day)."
    )
    ready_timeout_seconds: Seconds = Field(300.0, gt=0, le=86400, description="<= 1 day.")
    scale_down_delay_seconds: Seconds = Field(30.0, ge=0, le=86400, description="<= 1 day.")
    abort_scale_down_delay_seconds: Seconds = Field(
        30.0, ge=0, le=86400, description="Seconds the new colour is kept after a rollback."
    )


class ConfigChangeParams(StrictModel):
    """``config_change``: ``configure`` each target (validated against its schema by the agent);
    a failed post-check restores the previous config version."""

    config: dict[str, ConfigValue] = Field(max_length=MAX_CONFIG_KEYS)

    @model_validator(mode="after")
    def _small(self) -> ConfigChangeParams:
        check_config_bounds(self.config, None)  # keys and 16 KiB, as the agent checks them
        return self


class SecurityPatchParams(StrictModel):
    """``security_patch``: Kubernetes: cordon and drain the target's nodes, wait for its replicas,
    uncordon; local platform (no nodes): a rolling restart."""

    drain_timeout_seconds: Seconds = Field(600.0, gt=0, le=86400, description="<= 1 day.")


class CustomParams(StrictModel):
    """``custom``: per target, each step waits for the ``confirm_step`` signal (a person did it)."""

    description: Text = Field(min_length=1)
    steps: list[Annotated[str, StringConstraints(min_length=1, max_length=500)]] = Field(
        default_factory=list, max_length=MAX_STEPS
    )
    step_timeout_seconds: Seconds = Field(3600.0, gt=0, le=86400, description="<= 1 day.")


KIND_PARAMS: dict[Kind, type[StrictModel]] = {
    "secret_rotation": SecretRotationParams,
    "version_update": VersionUpdateParams,
    "config_change": ConfigChangeParams,
    "security_patch": SecurityPatchParams,
    "custom": CustomParams,
}


class PostChecks(StrictModel):
    """What a target must show after its change: healthy within ``health_timeout_seconds``, and,
    if ``analysis`` is set, a successful metrics analysis (same model as deployments')."""

    health_timeout_seconds: Seconds = Field(120.0, gt=0, le=3600, description="<= 1 hour.")
    analysis: dict[str, Any] | None = Field(None, description="An Analysis (see deployments).")


class MaintenancePlan(StrictModel):
    """Input of the ``Maintenance`` workflow (and the content of a plan file)."""

    name: str = Field(pattern=PLAN_NAME_PATTERN, description="DNS label; names runs/schedules.")
    kind: Kind
    description: Text = ""
    targets: Targets
    window: MaintenanceWindow | None = Field(None, description="None: now, for at most 1 day.")
    emergency: bool = Field(False, description="Skip the window's start; approval required.")
    approval: Approval = Field(default_factory=Approval)
    notify: list[NotifyTarget] = Field(
        default_factory=lambda: list[NotifyTarget](["approvals"]),
        max_length=2,
        description="Webhooks told.",
    )
    batch_size: Count = Field(1, ge=1, le=MAX_BATCH_SIZE, description="Targets per batch.")
    max_unavailable: Count = Field(
        1, ge=1, le=MAX_BATCH_SIZE, description="Targets changed at once, <= batch_size."
    )
    on_failure: OnFailure = "halt"
    pause_targets: bool = Field(
        False, description="Pause each target while it changes (it stops serving meanwhile)."
    )
    pre_check_health: bool = Field(True, description="Refuse when a target is not healthy.")
    post_checks: PostChecks = Field(default_factory=PostChecks)
    parameters: dict[str, Any] = Field(default_factory=dict, description="Per kind, see README.")
    requested_by: str = Field("", max_length=200)

    @model_validator(mode="after")
    def _consistent(self) -> MaintenancePlan:
        if self.max_unavailable > self.batch_size:
            raise ValueError("max_unavailable must be <= batch_size")
        if self.pause_targets and self.kind == "version_update":
            raise ValueError("pause_targets: a paused agent cannot be deployed; leave it false")
        if self.emergency and self.approval.required == "never":
            raise ValueError("approval.required: emergency plans always need approval")
        params = self.params()  # raises ValidationError naming the kind's field
        if isinstance(params, SecretRotationParams):
            shared = [s.path for s in params.secrets if AGENT_PLACEHOLDER not in s.path]
            if shared and (self.targets.selector or len(self.targets.agents) > 1):
                raise ValueError(
                    f"parameters.secrets: {shared[0]!r} is shared by every target; put "
                    f"{AGENT_PLACEHOLDER} in the path (one secret per agent) or target one agent"
                )
        if self.post_checks.analysis is not None:
            self.analysis()
        return self

    def params(self) -> Any:
        """``parameters`` validated as the kind's model (e.g. :class:`SecretRotationParams`)."""
        return KIND_PARAMS[self.kind].model_validate(self.parameters)

    def analysis(self) -> Analysis | None:
        """``post_checks.analysis`` as an :class:`~fleetops.analysis.Analysis`, or None."""
        a = self.post_checks.analysis
        return None if a is None else Analysis.model_validate(a)

    def risk(self, n_targets: int) -> Risk:
        """The kind's risk, one level higher with more than :data:`MANY_TARGETS` targets or a
        concurrency above 1; emergency plans are always ``high``."""
        if self.emergency:
            return "high"
        level = RISK_ORDER[KIND_RISK[self.kind]]
        if n_targets > MANY_TARGETS or self.max_unavailable > 1:
            level += 1
        return ("low", "medium", "high")[min(level, 2)]

    def needs_approval(self, n_targets: int) -> bool:
        """Whether this plan asks a human (emergency: always)."""
        a = self.approval
        if self.emergency or a.required == "always":
            return True
        if a.required == "never":
            return False
        return RISK_ORDER[self.risk(n_targets)] >= RISK_ORDER[a.min_risk]


def load_plan(path: Path) -> MaintenancePlan:
    """Read a plan file: YAML (``.yaml``/``.yml``) or JSON (anything else parses as YAML too,
    which accepts JSON).

    Raises:
        ValueError: the file is not YAML/JSON, or not an object.
        pydantic.ValidationError: the plan does not validate (names the field).
        OSError: the file cannot be read.
    """
    text = path.read_text()
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise ValueError(f"{path}: not valid {path.suffix.lstrip('.') or 'YAML'}: {err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a plan is an object (mapping), got {type(data).__name__}")
    return MaintenancePlan.model_validate(data)


__all__ = [  # the report's names are re-exported from fleetops.maintenance_status
    "MAX_STEPS",
    "AgentId",
    "Fact",
    "Kind",
    "MaintenanceAudit",
    "MaintenancePlan",
    "MaintenanceStatus",
    "MaintenanceWindow",
    "Outcome",
    "Phase",
    "Risk",
    "StepConfirmation",
    "TargetRecord",
    "TargetState",
    "load_plan",
]
