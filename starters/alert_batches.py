"""From one Alertmanager notification to one :class:`AlertBatch` per agent (pure functions).

The receiver (``starters/alertmanager.py``) groups a webhook's alerts by the agent label
(``alerts.agent_label``, default ``agent``), bounds every label and annotation value to
:data:`~fleetops.incidents.MAX_LABEL_CHARS` and every batch to
:data:`~fleetops.incidents.MAX_ALERTS_PER_BATCH` alerts (firing ones first; the rest counted in
``truncated_alerts``), and derives the incident's key, title and initial severity.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from fleetops.constants import is_agent_id
from fleetops.incidents import (
    MAX_ALERTS_PER_BATCH,
    MAX_LABEL_CHARS,
    Alert,
    AlertBatch,
    AlertEvidence,
    AlertmanagerWebhook,
    IncidentStart,
    Severity,
    incident_key,
    stricter,
)

ZERO_TIME_YEAR = 1
"""Alertmanager sends ``endsAt: 0001-01-01T00:00:00Z`` while an alert fires (Go's zero time)."""

SEVERITY_LABELS: dict[str, Severity] = {
    "sev1": Severity.SEV1,
    "critical": Severity.SEV1,
    "page": Severity.SEV1,
    "sev2": Severity.SEV2,
    "error": Severity.SEV2,
    "high": Severity.SEV2,
    "sev3": Severity.SEV3,
    "warning": Severity.SEV3,
    "medium": Severity.SEV3,
    "sev4": Severity.SEV4,
    "info": Severity.SEV4,
    "low": Severity.SEV4,
}
"""Values of the conventional ``severity`` label (case-insensitive) and the severity they mean;
other values give no initial severity (the incident's rules decide)."""


def bound(text: str, limit: int = MAX_LABEL_CHARS) -> str:
    """``text`` cut to at most ``limit`` characters, ending with a marker saying how much was cut.

    Args:
        text: a label/annotation key or value (untrusted).
        limit: most characters kept, marker included.

    Returns:
        ``text`` unchanged when short enough, else its start plus ``"...[cut N chars]"``.
    """
    if len(text) <= limit:
        return text
    marker = f"...[cut {len(text) - limit} chars]"
    return text[: max(0, limit - len(marker))] + marker


def _bounded(mapping: dict[str, str]) -> dict[str, str]:
    return {bound(k, 200): bound(v) for k, v in mapping.items()}


def evidence(alert: Alert) -> AlertEvidence:
    """The incident's bounded copy of one alert (``ends_at`` None while firing)."""
    ends = alert.endsAt
    if ends is not None and ends.year == ZERO_TIME_YEAR:
        ends = None
    return AlertEvidence(
        name=bound(alert.labels.get("alertname", "") or "unnamed", 200),
        status=alert.status,
        labels=_bounded(alert.labels),
        annotations=_bounded(alert.annotations),
        starts_at=alert.startsAt,
        ends_at=ends,
        fingerprint=bound(alert.fingerprint, 64),
        generator_url=bound(alert.generatorURL),
    )


@dataclass
class AgentAlerts:
    """One agent's share of a notification."""

    agent_id: str
    firing: list[Alert] = field(default_factory=list)
    resolved: list[Alert] = field(default_factory=list)


@dataclass
class Grouped:
    """A notification split by agent, plus what could not be attributed to one."""

    agents: dict[str, AgentAlerts] = field(default_factory=dict)
    without_agent: int = 0
    invalid_agents: dict[str, int] = field(default_factory=dict)


def group_by_agent(webhook: AlertmanagerWebhook, agent_label: str) -> Grouped:
    """Split a notification's alerts by the value of ``agent_label``.

    Alerts without the label count in ``without_agent``; alerts whose label is not a valid agent
    id (a DNS label) are counted per (bounded) value in ``invalid_agents``. Neither starts anything.

    Args:
        webhook: the validated notification.
        agent_label: label naming the agent (``alerts.agent_label``).

    Returns:
        The alerts of each agent, in the notification's order.
    """
    out = Grouped()
    for alert in webhook.alerts:
        agent = alert.labels.get(agent_label)
        if not agent:
            out.without_agent += 1
            continue
        if not is_agent_id(agent):
            key = bound(agent, 100)
            out.invalid_agents[key] = out.invalid_agents.get(key, 0) + 1
            continue
        share = out.agents.setdefault(agent, AgentAlerts(agent))
        (share.firing if alert.status == "firing" else share.resolved).append(alert)
    return out


def batch_for(share: AgentAlerts, webhook: AlertmanagerWebhook, now: datetime) -> AlertBatch:
    """The :class:`AlertBatch` of one agent: firing alerts first, at most MAX_ALERTS_PER_BATCH.

    ``truncated_alerts`` counts the agent's alerts left out plus the notification's own
    ``truncatedAlerts`` (Alertmanager's ``max_alerts``; it does not say whose they were).
    """
    alerts = share.firing + share.resolved
    kept = alerts[:MAX_ALERTS_PER_BATCH]
    return AlertBatch(
        source="alertmanager",
        group_key=bound(webhook.groupKey),
        receiver=bound(webhook.receiver, 200),
        alerts=[evidence(a) for a in kept],
        truncated_alerts=len(alerts) - len(kept) + webhook.truncatedAlerts,
        received_at=now,
    )


def initial_severity(alerts: list[Alert]) -> Severity | None:
    """The strictest severity named by the alerts' ``severity`` labels, if any names one."""
    found: Severity | None = None
    for alert in alerts:
        sev = SEVERITY_LABELS.get(alert.labels.get("severity", "").strip().lower())
        if sev is not None:
            found = sev if found is None else stricter(found, sev)
    return found


def start_for(share: AgentAlerts, webhook: AlertmanagerWebhook) -> IncidentStart:
    """Input of a new incident for the agent's firing alerts (used only if none is open).

    The key is :func:`~fleetops.incidents.incident_key` of the agent and the ``groupKey``; the
    title names the first firing alert's ``alertname`` (or the group) and the agent.
    """
    first = share.firing[0] if share.firing else None
    name = first.labels.get("alertname", "") if first is not None else ""
    summary = first.annotations.get("summary", "") if first is not None else ""
    title = f"{name or 'alert'} on {share.agent_id}" + (f": {summary}" if summary else "")
    receiver = webhook.receiver.strip()
    return IncidentStart(
        agent_id=share.agent_id,
        key=incident_key(share.agent_id, webhook.groupKey),
        title=bound(title, 200),
        source="alertmanager",
        opened_by=bound(f"alertmanager:{receiver}" if receiver else "alertmanager", 100),
        severity=initial_severity(share.firing),
    )
