"""What ``IncidentResponse`` keeps, shows and returns: policy, status, the post-incident review.

Every list here is bounded (the workflow drops the oldest, or counts what it left out), so a
storm of alerts or a long incident never grows its status, its result or its history without
limit. Times are workflow time (UTC); durations are seconds.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from fleetops.incidents import (
    ContainmentAction,
    IncidentPhase,
    IncidentStatusName,
    LikelyCause,
    Severity,
)

MAX_AUDIT = 200
"""Audit entries kept (oldest dropped; the review says how many were)."""
MAX_ALERTS = 100
"""Distinct alerts (by fingerprint) kept; further ones are only counted."""
MAX_PAGES = 20
MAX_ACTIONS = 10
MAX_DROPPED = 20
MAX_DETAIL = 500


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class IncidentPolicy(_Model):
    """Result of the ``incident_policy`` activity: ``incidents.*`` and the LLM budget settings."""

    auto_contain_low_risk: bool = False
    ack_timeout_seconds: float = Field(900.0, ge=1, le=86400)
    max_escalations: int = Field(3, ge=0, le=10)
    approval_timeout_seconds: float = Field(3600.0, ge=1, le=30 * 86400)
    approvers: list[str] = Field(default_factory=list, max_length=100)
    approver_roles: list[str] = Field(default_factory=list, max_length=100)
    resolve_window_seconds: float = Field(300.0, ge=1, le=86400)
    recovery_poll_seconds: float = Field(30.0, ge=1, le=3600)
    resolution_timeout_seconds: float = Field(3 * 86400.0, ge=60, le=30 * 86400)
    error_rate_max: float = Field(0.05, ge=0, le=1)
    p95_latency_max_seconds: float = Field(1.0, gt=0, le=3600)
    evidence_window_seconds: float = Field(900.0, ge=60, le=86400)
    rate_limit_rps: float = Field(10.0, gt=0, le=100000)
    llm_configured: bool = Field(False, description="llm.base_url is set.")
    llm_model: str = ""
    llm_timeout_seconds: float = Field(150.0, gt=0, le=3600)
    budget_tokens_per_incident: int = Field(20000, ge=0)
    budget_usd_per_incident: float = Field(1.0, ge=0)


class AuditRecord(_Model):
    """One line of the incident's audit trail (the review's timeline)."""

    at: datetime
    kind: str = Field(description="phase, alerts, severity, page, ack, action, llm, refused...")
    actor: str | None = None
    detail: str = Field("", max_length=MAX_DETAIL)


class AlertRecord(_Model):
    """One distinct alert (by fingerprint) with how often it was notified."""

    fingerprint: str
    name: str
    status: Literal["firing", "resolved"]
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    starts_at: datetime
    ends_at: datetime | None = None
    count: int = Field(1, ge=1, description="Notifications of this alert received.")
    first_seen: datetime
    last_seen: datetime


class PageRecord(_Model):
    """One page of on-call (first page or an escalation)."""

    at: datetime
    level: int = Field(ge=0, description="0: first page, n: n-th escalation.")
    severity: Severity
    sent: bool
    detail: str = Field("", max_length=MAX_DETAIL)


class ActionRecord(_Model):
    """One containment proposal and what became of it."""

    action: ContainmentAction
    risk: str
    proposed_by: Literal["llm", "rules"]
    reasoning: str = Field("", max_length=MAX_DETAIL)
    evidence_refs: list[str] = Field(default_factory=list, max_length=10)
    mode: Literal["automatic", "approval"]
    outcome: Literal["ran", "failed", "rejected", "skipped", "pending"] = "pending"
    approver: str | None = Field(None, description="Who approved (or rejected); null: nobody.")
    detail: str = Field("", max_length=MAX_DETAIL)
    at: datetime | None = None


class LlmTotals(_Model):
    """What the incident spent on the LLM and how each call went."""

    configured: bool = False
    used: bool = Field(False, description="At least one answer was used.")
    calls: int = Field(0, ge=0)
    input_tokens: int = Field(0, ge=0)
    output_tokens: int = Field(0, ge=0)
    usd: float = Field(0.0, ge=0)
    budget_tokens: int = Field(0, ge=0)
    budget_usd: float = Field(0.0, ge=0)
    failures: list[str] = Field(
        default_factory=list, max_length=10, description="Why an answer was not used, per call."
    )

    @property
    def tokens(self) -> int:
        """Input + output tokens spent."""
        return self.input_tokens + self.output_tokens


class Finding(_Model):
    """A key finding with the evidence it rests on."""

    text: str = Field(max_length=MAX_DETAIL)
    evidence_refs: list[str] = Field(default_factory=list, max_length=10)


class IncidentStatus(_Model):
    """Answer of the ``status`` query (also carried in the review)."""

    incident_id: str
    agent_id: str
    title: str
    source: str
    opened_by: str
    opened_at: datetime
    phase: IncidentPhase
    status: IncidentStatusName
    severity: Severity
    severity_source: str = Field(description="rules, llm, operator <name>, or start.")
    category: str
    summary: str = ""
    acknowledged_by: str | None = None
    acknowledged_at: datetime | None = None
    resolved_by: str | None = Field(None, description="alertmanager, metrics, operator <name>...")
    resolved_at: datetime | None = None
    alerts: list[AlertRecord] = Field(default_factory=list, max_length=MAX_ALERTS)
    notifications: int = Field(0, ge=0, description="Alert batches received.")
    alerts_received: int = Field(0, ge=0, description="Alerts received, repeats included.")
    alerts_not_kept: int = Field(0, ge=0, description="Distinct alerts beyond MAX_ALERTS.")
    evidence_refs: list[str] = Field(default_factory=list)
    actions: list[ActionRecord] = Field(default_factory=list, max_length=MAX_ACTIONS)
    dropped_proposals: list[str] = Field(default_factory=list, max_length=MAX_DROPPED)
    likely_causes: list[LikelyCause] = Field(default_factory=list, max_length=5)
    pages: list[PageRecord] = Field(default_factory=list, max_length=MAX_PAGES)
    llm: LlmTotals = Field(default_factory=LlmTotals)
    audit: list[AuditRecord] = Field(default_factory=list)
    audit_dropped: int = Field(0, ge=0)


class ReviewReport(_Model):
    """The post-incident review: the workflow's result, also written as Markdown.

    ``markdown`` is :func:`fleetops.incident_markdown.render_review` of the rest (what
    ``fleetops incident review`` prints); ``path`` is the file ``write_review`` wrote, if any.
    """

    incident_id: str
    run_id: str
    agent_id: str
    title: str
    severity: Severity
    category: str
    summary: str
    opened_at: datetime
    closed_at: datetime
    resolved_by: str | None
    impact: str
    timeline: list[AuditRecord]
    key_findings: list[Finding]
    likely_causes: list[LikelyCause]
    actions: list[ActionRecord]
    pages: list[PageRecord]
    mtta_seconds: float | None = Field(None, description="Opened -> first ack (seconds).")
    mttr_seconds: float | None = Field(None, description="Opened -> resolved (seconds).")
    follow_ups: list[str]
    llm: LlmTotals
    markdown: str = ""
    path: str | None = None


class WriteReviewRequest(_Model):
    """Input of ``write_review``: where (agent, key, run) and what (Markdown)."""

    agent_id: str = Field(pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
    key: str = Field(min_length=1, max_length=64, pattern=r"^[a-z0-9-]+$")
    run_id: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9-]+$")
    markdown: str = Field(min_length=1, max_length=1_000_000)
