"""Models of a blue-green deployment: the ``BlueGreenDeployment`` input, status and report.

Semantics follow Argo Rollouts' BlueGreen strategy (active/preview services, pre/post-promotion
analysis, manual or timed promotion, scale-down delay, abort), with its ambiguities removed: a
promotion setting that does not apply to the chosen mode is an error, not ignored.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field, model_validator

from fleetops.analysis import Analysis, AnalysisResult
from fleetops.approvals import (
    DEFAULT_REMINDER_INTERVAL_SECONDS,
    DEFAULT_TIMEOUT_SECONDS,
    ApprovalDecision,
    AuditEntry,
    Name,
    PendingApproval,
    TimeoutOutcome,
)
from fleetops.checks import SmokeTest
from fleetops.constants import AGENT_ID_PATTERN
from fleetops.limits import (
    MAX_APPROVERS,
    MAX_DURATION_SECONDS,
    MAX_INTERVAL_SECONDS,
    MAX_REMINDERS,
    MAX_REPLICAS,
    MAX_SMOKE_TESTS,
    MIN_REMINDER_INTERVAL_SECONDS,
    Count,
    Seconds,
)
from fleetops.models import (
    VERSION_PATTERN,
    AgentSpec,
    AgentState,
    Color,
    DeploymentClosure,
    FrozenModel,
    Replica,
    ServiceInfo,
    StrictModel,
)
from fleetops.secrets import MAX_SECRETS_PER_AGENT, SecretRef, looks_like_secret

Phase = Literal[
    "STARTING",
    "DEPLOYING_PREVIEW",
    "WAITING_READY",
    "SMOKE_TESTS",
    "PRE_PROMOTION_ANALYSIS",
    "AWAITING_PROMOTION",
    "SCALING_UP",
    "SWITCHING_TRAFFIC",
    "POST_PROMOTION_ANALYSIS",
    "SCALING_DOWN_OLD",
    "SUCCEEDED",
    "ROLLING_BACK",
    "ROLLED_BACK",
    "CANCELLED",
]
"""Phases of a deployment, in order; each is also the workflow's ``FleetOpsState``."""

Outcome = Literal["promoted", "rolled_back", "aborted", "rejected", "cancelled"]
"""How a deployment ended: the new version is live, or the stable one kept (after a failure,
an operator ``abort``, a rejected/timed-out promotion, or a cancellation of the workflow; a
cancellation after the switch was verified finishes the promotion instead, outcome
``promoted``)."""


class Promotion(StrictModel):
    """How the new colour gets promoted (Argo's autoPromotionEnabled/autoPromotionSeconds).

    ``manual`` (default) waits for an approval from ``approvers``/``roles`` until
    ``approval_timeout_seconds``, then applies ``timeout_outcome``. ``auto`` promotes after
    ``auto_promote_after_seconds`` (default 0: at once) unless aborted. Fields of the other mode
    are rejected.

    Bounds: delays and timeouts at most 30 days (:data:`~fleetops.limits.MAX_DURATION_SECONDS`);
    reminders between 1 minute and 1 day apart, and at most
    :data:`~fleetops.limits.MAX_REMINDERS` per approval; at most
    :data:`~fleetops.limits.MAX_APPROVERS` approvers and roles, each a non-empty name.
    """

    mode: Literal["manual", "auto"] = Field("manual", description="Who promotes.")
    approvers: list[Name] = Field(
        default_factory=list,
        max_length=MAX_APPROVERS,
        description="manual: users who may approve (empty: any named; at most 50).",
    )
    roles: list[Name] = Field(
        default_factory=list,
        max_length=MAX_APPROVERS,
        description="manual: roles whose holders may approve (at most 50).",
    )
    auto_promote_after_seconds: Seconds | None = Field(
        None,
        ge=0,
        le=MAX_DURATION_SECONDS,
        description="auto: seconds to wait before promoting (None: 0; <= 30 days).",
    )
    approval_timeout_seconds: Seconds = Field(
        DEFAULT_TIMEOUT_SECONDS,
        gt=0,
        le=MAX_DURATION_SECONDS,
        description="manual: seconds to wait for a decision (<= 30 days).",
    )
    timeout_outcome: TimeoutOutcome = Field(
        "reject", description="manual: what a timeout means (reject | proceed | escalate)."
    )
    reminder_interval_seconds: Seconds | None = Field(
        DEFAULT_REMINDER_INTERVAL_SECONDS,
        ge=MIN_REMINDER_INTERVAL_SECONDS,
        le=MAX_INTERVAL_SECONDS,
        description="manual: seconds between reminders (None: no reminders; 60 to 86400).",
    )

    @model_validator(mode="after")
    def _consistent(self) -> Promotion:
        # Compared with the defaults, not `model_fields_set`: a request that went through the
        # data converter has every field set.
        manual_only = {
            "approvers": bool(self.approvers),
            "roles": bool(self.roles),
            "approval_timeout_seconds": self.approval_timeout_seconds != DEFAULT_TIMEOUT_SECONDS,
            "timeout_outcome": self.timeout_outcome != "reject",
        }
        if self.mode == "auto":
            given = [name for name, changed in manual_only.items() if changed]
            if given:
                raise ValueError(
                    f"promotion.{given[0]} applies only to mode 'manual'; remove it or use "
                    "mode 'manual'"
                )
        elif self.auto_promote_after_seconds is not None:
            raise ValueError(
                "promotion.auto_promote_after_seconds applies only to mode 'auto'; "
                "set mode 'auto' or remove it"
            )
        interval = self.reminder_interval_seconds
        if interval is not None and self.approval_timeout_seconds / interval > MAX_REMINDERS:
            raise ValueError(
                f"promotion.reminder_interval_seconds={interval:g} would send more than "
                f"{MAX_REMINDERS} reminders in approval_timeout_seconds="
                f"{self.approval_timeout_seconds:g}; use an interval of at least "
                f"{self.approval_timeout_seconds / MAX_REMINDERS:g} s"
            )
        return self


class DeploymentRequest(StrictModel):
    """A deployment an operator asks for: payload of ``AgentLifecycle``'s ``deploy`` update.

    The agent starts it as its child ``BlueGreenDeployment`` (workflow id
    ``deploy/<agent_id>/<version>``). ``command``/``image``/``env``/``secrets``/``replicas`` default
    to the running spec's. Delays are seconds, at most 30 days
    (:data:`~fleetops.limits.MAX_DURATION_SECONDS`); replica counts at most
    :data:`~fleetops.limits.MAX_REPLICAS` (the worker's ``max_replicas_per_agent`` quota is
    checked when the new colour is provisioned).
    """

    agent_id: str = Field(pattern=AGENT_ID_PATTERN)
    version: str = Field(pattern=VERSION_PATTERN, description="Version label to deploy.")
    command: list[str] | None = None
    image: str | None = Field(None, min_length=1)
    env: dict[str, str] | None = None
    secrets: list[SecretRef] | None = Field(
        None, max_length=MAX_SECRETS_PER_AGENT, description="New secret references (<= 50)."
    )
    replicas: Count | None = Field(None, ge=1, le=MAX_REPLICAS, description="<= 1000.")
    preview_replicas: Count | None = Field(
        None, ge=1, le=MAX_REPLICAS, description="Replicas before promotion (<= replicas)."
    )
    smoke_tests: list[SmokeTest] = Field(
        default_factory=list, max_length=MAX_SMOKE_TESTS, description="At most 20."
    )
    pre_promotion_analysis: Analysis | None = None
    post_promotion_analysis: Analysis | None = None
    promotion: Promotion = Field(default_factory=Promotion)
    scale_down_delay_seconds: Seconds = Field(
        30.0, ge=0, le=MAX_DURATION_SECONDS, description="Old colour kept this long (<= 30 d)."
    )
    abort_scale_down_delay_seconds: Seconds = Field(
        30.0,
        ge=0,
        le=MAX_DURATION_SECONDS,
        description="New colour kept this long after a rollback (<= 30 days).",
    )
    ready_timeout_seconds: Seconds = Field(
        300.0, gt=0, le=MAX_DURATION_SECONDS, description="Bound on WAITING_READY (<= 30 days)."
    )
    requested_by: str = Field("", max_length=200, description="Who asked; kept in the record.")

    @model_validator(mode="after")
    def _check(self) -> DeploymentRequest:
        if self.command is not None and (not self.command or not all(self.command)):
            raise ValueError("command must be a non-empty list of non-empty strings")
        if (
            self.replicas is not None
            and self.preview_replicas is not None
            and self.preview_replicas > self.replicas
        ):
            raise ValueError("preview_replicas must be <= replicas")
        for name in self.env or {}:
            if looks_like_secret(name):
                raise ValueError(
                    f"env.{name} looks like a secret (*_KEY, *_TOKEN, *PASSWORD*, *SECRET*): "
                    "its value would be stored in plain workflow history; reference it in "
                    "`secrets` instead"
                )
        return self


def new_spec(running: AgentSpec, req: DeploymentRequest) -> AgentSpec:
    """The spec a deployment runs on the new colour: the running spec with the request's changes.

    Args:
        running: the agent's spec now (the stable side).
        req: the deployment; its ``version`` always applies, ``command``/``image`` (together),
            ``env``, ``secrets`` and ``replicas`` when given.

    Returns:
        The validated new spec.

    Raises:
        ValueError: the result is not a valid :class:`AgentSpec` (e.g. ``replicas`` outside the
            agent's bounds); the message names the field.
    """
    changes: dict[str, object] = {"version": req.version}
    if req.command is not None or req.image is not None:
        changes["command"], changes["image"] = req.command, req.image
    if req.env is not None:
        changes["env"] = req.env
    if req.secrets is not None:
        changes["secrets"] = [ref.model_dump() for ref in req.secrets]
    if req.replicas is not None:
        changes["replicas"] = req.replicas
    return AgentSpec.model_validate({**running.model_dump(), **changes})


class AgentDeploymentView(FrozenModel):
    """The agent as it ran when the deployment started (its stable side)."""

    spec: AgentSpec
    state: AgentState
    active_color: Color
    replicas: list[Replica]
    service: ServiceInfo | None = None


class DeploymentRun(FrozenModel):
    """Input of ``BlueGreenDeployment``, set by the agent's ``AgentLifecycle`` only.

    The workflow refuses to run unless its parent is ``agent/<request.agent_id>``, so a client
    cannot start a deployment with a made-up ``stable`` side.
    """

    request: DeploymentRequest
    stable: AgentDeploymentView


class DeploymentStarted(FrozenModel):
    """Answer of the ``deploy`` update: the child deployment has started."""

    deployment_id: str
    run_id: str
    agent_id: str
    version: str
    stable_version: str
    stable_color: Color
    new_color: Color


class DeploymentRef(FrozenModel):
    """One execution of a deployment workflow (id and run id)."""

    workflow_id: str
    run_id: str


class DeploymentEnd(FrozenModel):
    """How a deployment workflow closed (activity ``wait_deployment``)."""

    closed_as: DeploymentClosure
    outcome: Outcome | None = Field(None, description="Its own outcome, when it recorded one.")
    message: str = ""


class AbortRequest(StrictModel):
    """Payload of the ``abort`` signal."""

    reason: str = Field("", max_length=500)
    requested_by: str = Field("", max_length=200)


class PhaseRecord(FrozenModel):
    """One phase as it ran."""

    phase: Phase
    started_at: datetime
    ended_at: datetime | None = None
    detail: str = ""


class DeploymentStatus(FrozenModel):
    """Answer of the deployment's ``status`` query."""

    deployment_id: str
    agent_id: str
    version: str
    stable_version: str | None
    phase: Phase
    outcome: Outcome | None
    stable_color: Color | None
    new_color: Color | None
    active_color: Color | None
    service: ServiceInfo | None
    phases: list[PhaseRecord]
    analyses: dict[str, AnalysisResult]
    pending_approval: PendingApproval | None
    approvals: list[ApprovalDecision]
    audit: list[AuditEntry]
    message: str = ""


class DeploymentReport(FrozenModel):
    """Result of a finished ``BlueGreenDeployment``.

    The ``*_at`` times are the workflow's clock; bench/blue_green.py derives its latencies from
    them.
    """

    deployment_id: str
    agent_id: str
    version: str
    outcome: Outcome
    active_version: str
    active_color: Color
    message: str
    phases: list[PhaseRecord]
    analyses: dict[str, AnalysisResult]
    approvals: list[ApprovalDecision]
    promoted_at: datetime | None = None
    switched_at: datetime | None = None
    rollback_started_at: datetime | None = None
    switched_back_at: datetime | None = None
