"""What a ``Maintenance`` run reports (``status`` query and result) and the ``confirm_step``
signal's payload. Re-exported by :mod:`fleetops.maintenance`."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from fleetops.approvals import ApprovalDecision, AuditEntry, PendingApproval
from fleetops.constants import AGENT_ID_PATTERN
from fleetops.limits import Count
from fleetops.models import FrozenModel, StrictModel

MAX_STEPS = 20
"""Most manual steps of a custom plan (the bound of ``StepConfirmation.step``)."""
Kind = Literal["secret_rotation", "version_update", "config_change", "security_patch", "custom"]
Risk = Literal["low", "medium", "high"]
AgentId = Annotated[str, StringConstraints(pattern=AGENT_ID_PATTERN)]

Phase = Literal[
    "STARTING",
    "WAITING_FOR_WINDOW",
    "PRE_CHECKS",
    "NOTIFYING",
    "AWAITING_APPROVAL",
    "RUNNING",
    "FINISHING",
    "DONE",
]
Outcome = Literal[
    "completed",  # every target changed and verified
    "completed_with_failures",  # on_failure=continue and some targets rolled back
    "halted",  # a target failed and on_failure=halt
    "window_closed",  # the window ended before every target was done
    "window_missed",  # the plan started after its window
    "refused",  # pre-checks failed: nothing changed
    "rejected",  # approval rejected or timed out
    "cancelled",
]
TargetState = Literal[
    "pending", "running", "done", "failed", "rolled_back", "rollback_failed", "not_done"
]
Fact = str | int | bool | None


class TargetRecord(FrozenModel):
    """One target as ``status`` shows it."""

    agent_id: str
    state: TargetState = "pending"
    batch: int | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    detail: str = ""
    facts: dict[str, Fact] = Field(
        default_factory=dict, description="Versions and ids (secret versions, deployment id)."
    )


class MaintenanceAudit(FrozenModel):
    """One line of a run's audit trail."""

    at: datetime
    step: str
    target: str | None = None
    ok: bool = True
    detail: str = ""


class MaintenanceStatus(FrozenModel):
    """Answer of the ``status`` query, and the workflow's result."""

    maintenance_id: str
    name: str
    kind: Kind
    phase: Phase
    outcome: Outcome | None = None
    emergency: bool = False
    risk: Risk | None = None
    window_opens: datetime | None = None
    window_closes: datetime | None = None
    targets: list[TargetRecord] = Field(default_factory=list)
    audit: list[MaintenanceAudit] = Field(default_factory=list)
    pending_approval: PendingApproval | None = None
    approvals: list[ApprovalDecision] = Field(default_factory=list)
    approval_audit: list[AuditEntry] = Field(
        default_factory=list, description="The approval gate's trail (requests, refusals)."
    )
    message: str = ""


class StepConfirmation(StrictModel):
    """Payload of the ``confirm_step`` signal of a custom plan."""

    agent_id: AgentId
    step: Count = Field(ge=0, le=MAX_STEPS, description="0-based index of the step.")
    done: bool = Field(True, description="false: the step failed; the target is rolled back.")
    by: str = Field(min_length=1, max_length=200)
    note: str = Field("", max_length=500)
