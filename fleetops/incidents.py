"""Incident response: the shared vocabulary of the receiver, the workflow and the LLM activities.

Names follow the SRE field and Netflix Dispatch: severities SEV1 (worst) .. SEV4, an incident's
status Active -> Stable -> Closed, and the seeds' procedure as phases (detection, triage,
assessment, containment, root cause analysis, resolution, post-incident review). Alert payloads
follow the Prometheus Alertmanager webhook, version 4
(https://prometheus.io/docs/alerting/latest/configuration/#webhook_config).

Workflow ids are ``incident/<agent_id>/<key>``: ``key`` is a short stable hash of the agent and
the Alertmanager group (:func:`incident_key`), so every notification of one alert group, repeats
and storms included, joins the one open incident (signal-with-start); once that incident closes,
the same id starts a new one (Temporal's default id reuse policy allows a closed id).
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from fleetops.constants import AGENT_ID_PATTERN, agent_workflow_id
from fleetops.limits import Count, Seconds

INCIDENT_WORKFLOW = "IncidentResponse"
"""Workflow type name of an incident."""
ALERTS_SIGNAL = "alerts"
"""Signal carrying an :class:`AlertBatch` (firing or resolved alerts) to an incident."""
LIFECYCLE_KEY = "lifecycle"
"""Incident key used by ``AgentLifecycle`` when an agent enters ERROR."""
MAX_ALERTS_PER_BATCH = 200
"""Alerts kept from one webhook notification for one agent (the rest are counted as truncated)."""
MAX_LABEL_CHARS = 1024
"""Longest label or annotation value kept (longer values are cut, with a marker)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Lenient(BaseModel):
    """Alertmanager may add fields in later versions: unknown fields are ignored, not refused."""

    model_config = ConfigDict(extra="ignore")


# --- severities, phases, status ------------------------------------------------------------


class Severity(StrEnum):
    """Incident severity, SEV1 the worst (Dispatch / PagerDuty convention)."""

    SEV1 = "SEV1"
    SEV2 = "SEV2"
    SEV3 = "SEV3"
    SEV4 = "SEV4"


def stricter(a: Severity, b: Severity) -> Severity:
    """The more severe of two severities (SEV1 beats SEV2 ...).

    Args:
        a: one severity.
        b: the other.

    Returns:
        Whichever has the lower number.
    """
    return a if a.value <= b.value else b


class IncidentPhase(StrEnum):
    """Where the incident procedure is (also the ``FleetOpsState`` search attribute)."""

    DETECTED = "DETECTED"
    TRIAGE = "TRIAGE"
    ASSESSMENT = "ASSESSMENT"
    CONTAINMENT = "CONTAINMENT"
    ROOT_CAUSE = "ROOT_CAUSE"
    RESOLUTION = "RESOLUTION"
    REVIEW = "REVIEW"
    CLOSED = "CLOSED"


class IncidentStatusName(StrEnum):
    """Dispatch's incident status: Active (impact ongoing), Stable (contained), Closed."""

    ACTIVE = "Active"
    STABLE = "Stable"
    CLOSED = "Closed"


# --- Alertmanager webhook v4 ---------------------------------------------------------------


class Alert(_Lenient):
    """One alert of an Alertmanager notification.

    ``endsAt`` is ``0001-01-01T00:00:00Z`` while the alert fires (Alertmanager's zero time).
    """

    status: Literal["firing", "resolved"]
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    startsAt: datetime
    endsAt: datetime | None = None
    generatorURL: str = ""
    fingerprint: str = ""


class AlertmanagerWebhook(_Lenient):
    """Body of an Alertmanager webhook notification (``version`` "4")."""

    version: Literal["4"] = "4"
    groupKey: str = Field(min_length=1)
    truncatedAlerts: int = Field(0, ge=0)
    status: Literal["firing", "resolved"]
    receiver: str = ""
    groupLabels: dict[str, str] = Field(default_factory=dict)
    commonLabels: dict[str, str] = Field(default_factory=dict)
    commonAnnotations: dict[str, str] = Field(default_factory=dict)
    externalURL: str = ""
    alerts: list[Alert] = Field(default_factory=list)


# --- ids -------------------------------------------------------------------------------------


def incident_key(agent_id: str, group: str) -> str:
    """Short stable key of an agent's alert group (or :data:`LIFECYCLE_KEY`).

    Args:
        agent_id: the agent's id (a DNS label).
        group: the Alertmanager ``groupKey``, or any stable name of the alert source.

    Returns:
        12 lowercase hex characters: the start of SHA-256 over ``agent_id`` NUL ``group``.
    """
    return hashlib.sha256(f"{agent_id}\0{group}".encode()).hexdigest()[:12]


def incident_workflow_id(agent_id: str, key: str) -> str:
    """Workflow id of an agent's incident.

    Args:
        agent_id: the agent's id (a DNS label).
        key: :func:`incident_key` of the alert group, or :data:`LIFECYCLE_KEY`.

    Returns:
        ``incident/<agent_id>/<key>``.

    Raises:
        ValueError: ``agent_id`` is not a DNS label.
    """
    agent_workflow_id(agent_id)  # validates the id
    return f"incident/{agent_id}/{key}"


# --- workflow input and signals --------------------------------------------------------------


class AlertEvidence(_Strict):
    """An alert as the incident keeps it: labels and annotations bounded in size."""

    name: str = Field(description="``alertname`` label, or 'unnamed'.")
    status: Literal["firing", "resolved"]
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    starts_at: datetime
    ends_at: datetime | None = Field(None, description="None while firing.")
    fingerprint: str = ""
    generator_url: str = ""


class AlertBatch(_Strict):
    """Payload of the :data:`ALERTS_SIGNAL` signal: one notification's alerts for one agent."""

    source: Literal["alertmanager", "lifecycle", "operator"] = "alertmanager"
    group_key: str = ""
    receiver: str = ""
    alerts: list[AlertEvidence] = Field(default_factory=list, max_length=MAX_ALERTS_PER_BATCH)
    truncated_alerts: int = Field(0, ge=0, description="Alerts left out of this batch.")
    received_at: datetime


class IncidentStart(_Strict):
    """Input of ``IncidentResponse`` (the start of signal-with-start)."""

    agent_id: str = Field(pattern=AGENT_ID_PATTERN)
    key: str = Field(min_length=1, max_length=64, pattern=r"^[a-z0-9-]+$")
    title: str = Field(min_length=1, max_length=200)
    source: Literal["alertmanager", "lifecycle", "operator"] = "alertmanager"
    opened_by: str = Field("alertmanager", min_length=1, max_length=100)
    severity: Severity | None = Field(None, description="Initial severity, if the source knows.")
    carry: dict[str, Any] | None = Field(
        None,
        description="Set only by the incident itself when it continues as new in RESOLUTION: "
        "its state (fleetops.incident_report.IncidentCarry as JSON). Leave unset.",
    )


# --- containment catalogue -------------------------------------------------------------------


class ContainmentAction(StrEnum):
    """The fixed catalogue of containment actions; nothing outside it is ever run."""

    ROLLBACK_DEPLOYMENT = "rollback_deployment"
    RESTART_REPLICAS = "restart_replicas"
    SCALE_UP = "scale_up"
    PAUSE_AGENT = "pause_agent"
    RATE_LIMIT = "rate_limit"
    PAGE_ONCALL = "page_oncall"


Risk = Literal["low", "medium", "high"]

ACTION_RISK: dict[ContainmentAction, Risk] = {
    ContainmentAction.PAGE_ONCALL: "low",
    ContainmentAction.SCALE_UP: "low",
    ContainmentAction.RESTART_REPLICAS: "medium",
    ContainmentAction.RATE_LIMIT: "medium",
    ContainmentAction.ROLLBACK_DEPLOYMENT: "high",
    ContainmentAction.PAUSE_AGENT: "high",
}
"""Risk of each action. Only ``low`` actions may run without approval, and only at SEV3/SEV4
when settings allow (kubectl-ai's rule: anything that is not read-only needs a human)."""


# --- LLM contract ----------------------------------------------------------------------------


class EvidenceItem(_Strict):
    """One piece of evidence, bounded in size; ``truncated`` says it was cut and how much."""

    ref: str = Field(description="Stable reference, e.g. 'E3', used by findings.")
    kind: Literal["alert", "metrics", "status", "deployment", "logs", "note"]
    source: str = Field(description="Where it came from (query, workflow id, file).")
    text: str = Field(description="The evidence itself, as untrusted text.")
    truncated: str | None = Field(None, description="Why and how much was cut, if it was.")
    collected_at: datetime


class TriageRequest(_Strict):
    """Input of the ``llm_triage`` activity: facts and untrusted evidence about one incident."""

    incident_id: str
    agent_id: str
    title: str
    rule_severity: Severity
    rule_category: str
    evidence: list[EvidenceItem]
    catalogue: list[ContainmentAction] = Field(default_factory=lambda: list(ContainmentAction))
    max_output_tokens: int = Field(512, ge=16, le=8192)
    redact_values: list[str] = Field(
        default_factory=list,
        description="Values to mask before anything is sent, besides the agent's secret values"
        " (which the LLM activity looks up itself, so they never enter history).",
    )
    names: list[str] = Field(
        default_factory=list,
        max_length=200,
        description="Other names to anonymise when llm.anonymise_names is on (hosts, replicas).",
    )
    budget_tokens_remaining: int | None = Field(
        None,
        ge=0,
        description="Tokens the incident may still spend; the call is refused ('over_budget') "
        "when its prompt estimate plus max output exceeds it. None: no limit here.",
    )
    budget_usd_remaining: float | None = Field(
        None, ge=0, description="USD the incident may still spend (same rule); None: no limit."
    )


class ProposedAction(_Strict):
    """An action the model (or the rules) proposes; validated against the catalogue later."""

    action: str = Field(max_length=64, description="A ContainmentAction value, if valid.")
    target: str = Field(max_length=64, description="Must be the incident's agent id.")
    reasoning: str = Field("", max_length=500)


class LikelyCause(_Strict):
    """A likely cause with the model's confidence (0..1) and evidence refs."""

    cause: str = Field(max_length=300)
    confidence: float = Field(ge=0, le=1)
    evidence_refs: list[str] = Field(default_factory=list, max_length=10)


class TriageAnswer(_Strict):
    """The model's structured answer (validated with pydantic; one repair retry)."""

    severity: Severity
    category: str = Field(max_length=64)
    summary: str = Field(max_length=600)
    likely_causes: list[LikelyCause] = Field(default_factory=list, max_length=5)
    proposed_actions: list[ProposedAction] = Field(default_factory=list, max_length=5)


class LlmUsage(_Strict):
    """What one LLM call cost (OpenTelemetry GenAI attribute names in comments)."""

    request_model: str  # gen_ai.request.model
    response_model: str = ""  # gen_ai.response.model
    input_tokens: int = Field(0, ge=0)  # gen_ai.usage.input_tokens
    output_tokens: int = Field(0, ge=0)  # gen_ai.usage.output_tokens
    latency_seconds: float = Field(0.0, ge=0)
    usd: float = Field(0.0, ge=0, description="From the price table in settings.")


class LlmOutcome(_Strict):
    """Result of ``llm_triage``: an answer, or why there is none (the workflow uses the rules)."""

    answer: TriageAnswer | None = None
    failure: str | None = Field(
        None,
        description="'not_configured', 'truncated', 'invalid_output', 'invalid_response', "
        "'over_budget' or 'prompt_too_large', when answer is None (HTTP failures are raised "
        "as ApplicationError: LlmUnavailable, LlmRateLimited, LlmRejected).",
    )
    usage: list[LlmUsage] = Field(default_factory=list, description="One entry per call made.")
    prompt_notes: list[str] = Field(
        default_factory=list, description="What was cut or redacted before sending."
    )


# --- incident-ops activities: evidence, containment, recovery ------------------------------

MAX_EVIDENCE_CHARS = 20_000
"""Upper bound of ``EvidenceRequest.max_chars_per_item`` (characters of one evidence item)."""
MAX_EVIDENCE_WINDOW_SECONDS = 86_400
"""Longest evidence window ``until - since``: one day, in seconds."""
MAX_RATE_LIMIT_RPS = 100_000.0
"""Highest gateway rate limit one agent may be given, requests per second."""


class EvidenceRequest(_Strict):
    """Input of ``gather_evidence``: what to collect about one agent around an alert.

    Bounds: at most 20 alert names, ``max_chars_per_item`` 200..:data:`MAX_EVIDENCE_CHARS`,
    ``until`` after ``since`` and at most :data:`MAX_EVIDENCE_WINDOW_SECONDS` later (checked by
    the activity, which answers a non-retryable ``InvalidInput`` naming the field).
    """

    incident_id: str = Field(min_length=1, max_length=200)
    agent_id: str = Field(pattern=AGENT_ID_PATTERN)
    since: datetime = Field(description="Start of the metrics window (timezone-aware).")
    until: datetime = Field(description="End of the metrics window (timezone-aware).")
    alert_names: list[str] = Field(default_factory=list, max_length=20)
    max_chars_per_item: Count = Field(4000, ge=200, le=MAX_EVIDENCE_CHARS)
    log_lines: Count = Field(50, ge=1, le=1000, description="Last log lines per replica.")
    step_seconds: Seconds = Field(
        15.0, ge=1, le=3600, description="Prometheus range query resolution, seconds."
    )
    first_ref: Count = Field(
        1, ge=1, le=100_000, description="Items are numbered E<first_ref>, E<first_ref + 1>, ..."
    )


class ContainmentRequest(_Strict):
    """Input of ``run_containment``: one catalogue action against the incident's agent.

    ``replicas`` is the ``scale_up`` target (default: current + 1, capped at the agent's
    ``max_replicas``); ``rate_limit_rps`` is the ``rate_limit`` limit in requests per second
    (required unless ``lift``); ``lift`` with ``rate_limit`` removes the limit (at resolution).

    Idempotency: each action changes the agent through a Temporal update whose id is
    ``<incident_id>/<action>/<action_id>``, so a retried activity gets the first outcome instead
    of acting twice (no double scale-up). Give a new ``action_id`` to run one action again
    deliberately in the same incident.
    """

    incident_id: str = Field(min_length=1, max_length=200)
    agent_id: str = Field(pattern=AGENT_ID_PATTERN)
    action: ContainmentAction
    requested_by: str = Field(min_length=1, max_length=200)
    reason: str = Field("", max_length=1000)
    replicas: Count | None = Field(None, ge=1, le=1000, description="scale_up target replicas.")
    rate_limit_rps: Seconds | None = Field(
        None, gt=0, le=MAX_RATE_LIMIT_RPS, description="rate_limit: requests/second."
    )
    lift: bool = Field(False, description="rate_limit: remove the agent's limit instead.")
    action_id: str = Field(
        "1", min_length=1, max_length=40, pattern=r"^[A-Za-z0-9._-]+$", description="See above."
    )

    @model_validator(mode="after")
    def _check(self) -> ContainmentRequest:
        prefix = f"incident/{self.agent_id}/"
        if self.incident_id.startswith("incident/") and not self.incident_id.startswith(prefix):
            raise ValueError(
                f"agent_id: {self.agent_id} is not the agent of incident {self.incident_id}"
            )
        rate_limit = self.action == ContainmentAction.RATE_LIMIT
        if rate_limit and not self.lift and self.rate_limit_rps is None:
            raise ValueError("rate_limit_rps: required for rate_limit (or set lift)")
        return self


class ContainmentResult(_Strict):
    """Result of ``run_containment``; ``ok=False`` means the action could not be applied."""

    action: ContainmentAction
    ok: bool
    detail: str = Field("", max_length=2000)
    workflow_id: str | None = Field(
        None, description="Workflow acted on (agent/<id>, deploy/<id>/<version>), if any."
    )


class RecoveryCheck(_Strict):
    """Input of ``check_recovery``: thresholds the agent must be back within.

    ``window_seconds`` is the rate window of the error rate and of the latency quantile (the
    PromQL ``rate(...[window])``; with a direct scrape, the window between two scrapes).
    """

    agent_id: str = Field(pattern=AGENT_ID_PATTERN)
    error_rate_max: Seconds = Field(0.05, ge=0, le=1, description="Errors / requests, 0..1.")
    p95_latency_max_seconds: Seconds = Field(1.0, gt=0, le=3600, description="Seconds.")
    window_seconds: Seconds = Field(60.0, ge=1, le=3600, description="Rate window, seconds.")
    min_requests: Count = Field(
        0, ge=0, le=1_000_000, description="Requests the window needs to judge (else unhealthy)."
    )


class RecoveryStatus(_Strict):
    """Result of ``check_recovery``: healthy when every value is within its threshold.

    ``values`` holds ``error_rate`` (0..1), ``p95_latency_seconds`` and ``requests`` (count in the
    window) when known.
    """

    healthy: bool
    detail: str = Field("", max_length=2000)
    values: dict[str, float] = Field(default_factory=dict)


class LlmPolicy(_Strict):
    """What the workflow needs to know about the LLM (activity ``llm_policy``, from settings)."""

    configured: bool = Field(description="False: no LLM, triage by the rules alone.")
    model: str = ""
    budget_tokens_per_incident: int = Field(0, ge=0)
    budget_usd_per_incident: float = Field(0.0, ge=0)
    activity_timeout_seconds: float = Field(
        150.0, gt=0, description="A good start_to_close for one llm_triage attempt (seconds)."
    )


# --- IncidentResponse messages (signals, updates, query) --------------------------------------

ACK = "ack"
"""Signal and update: acknowledge the page (:class:`OperatorRequest`); stops escalation."""
RESOLVE = "resolve"
"""Signal and update: resolve the incident by hand (:class:`OperatorRequest`)."""
SET_SEVERITY = "set_severity"
"""Signal and update: override the severity (:class:`SeverityOverride`)."""
STATUS_QUERY = "status"
"""Query: the incident now (``IncidentStatus`` of :mod:`fleetops.incident_report`)."""


class OperatorRequest(_Strict):
    """Payload of ``ack`` and ``resolve``: ``{"requested_by": "<you>", "reason": "..."}``."""

    requested_by: str = Field(min_length=1, max_length=200, pattern=r"\S")
    reason: str = Field("", max_length=1000)


class SeverityOverride(_Strict):
    """Payload of ``set_severity``: ``{"severity": "SEV2", "requested_by": ..., "reason": ...}``.

    The override wins over the rules and the LLM for the rest of the incident; who and why are
    kept in the audit trail. ``reason`` is required: an override must say why.
    """

    severity: Severity
    requested_by: str = Field(min_length=1, max_length=200, pattern=r"\S")
    reason: str = Field(min_length=1, max_length=1000, pattern=r"\S")
