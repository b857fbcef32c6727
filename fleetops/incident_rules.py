"""The incident rules: severity, category, proposals and who decides (pure functions).

Everything here works without an LLM (k8sgpt #256: no analysis without an AI key is a bug), and
the LLM's answer only ever passes through :func:`screen_proposals` and :func:`needs_approval`,
so the model never names an action outside the catalogue, a target other than the incident's
agent, or anything that runs without the approval the risk table requires.

Severity table (the Alertmanager ``severity`` label; PagerDuty / Dispatch convention):

=================================== =========
label value                          severity
=================================== =========
``emergency``                        SEV1
``critical``, ``page``, ``error``,   SEV2
``high``, ``major``
``warning``, ``warn``, ``medium``    SEV3
``info``, ``low``, ``none``          SEV4
missing or unknown                   SEV3
lifecycle ERROR (source lifecycle)   SEV2
=================================== =========

Thresholds on values in annotations raise it (never lower it): ``error_rate`` (0..1) >= 0.5
-> SEV1, >= 0.05 -> SEV2; ``p95_latency_seconds`` >= 10 -> SEV2; an ``AgentDown``-like alert
(category ``availability``) at SEV2 -> SEV1 when every one of its alerts is critical. The
``value`` annotation counts as ``error_rate`` for category ``errors`` and as
``p95_latency_seconds`` for ``latency``.

Category: the ``category`` label when it is one of :data:`CATEGORIES`, else from the alert name
(``error`` -> errors, ``latency``/``slow`` -> latency, ``down``/``unreachable``/``absent`` ->
availability, ``token``/``cost``/``burn`` -> cost), ``lifecycle`` for the lifecycle's alerts,
else ``other``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from fleetops.incidents import (
    ACTION_RISK,
    AlertEvidence,
    ContainmentAction,
    ProposedAction,
    Severity,
    stricter,
)

A = ContainmentAction
LABEL_SEVERITY: dict[str, Severity] = {
    "emergency": Severity.SEV1,
    "critical": Severity.SEV2,
    "page": Severity.SEV2,
    "error": Severity.SEV2,
    "high": Severity.SEV2,
    "major": Severity.SEV2,
    "warning": Severity.SEV3,
    "warn": Severity.SEV3,
    "medium": Severity.SEV3,
    "info": Severity.SEV4,
    "low": Severity.SEV4,
    "none": Severity.SEV4,
}
"""``severity`` label value (lowercase) -> severity; anything else is :data:`UNKNOWN_SEVERITY`."""
UNKNOWN_SEVERITY = Severity.SEV3
LIFECYCLE_SEVERITY = Severity.SEV2
ERROR_RATE_SEV1 = 0.5
ERROR_RATE_SEV2 = 0.05
P95_LATENCY_SEV2_SECONDS = 10.0
CATEGORIES = ("errors", "latency", "availability", "cost", "lifecycle", "other")
_NAME_HINTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("errors", ("error", "fail", "5xx")),
    ("latency", ("latency", "slow", "duration")),
    ("availability", ("down", "unreachable", "absent", "unavailable")),
    ("cost", ("token", "cost", "burn", "spend")),
)
RULE_PROPOSALS: dict[str, tuple[ContainmentAction, ...]] = {
    "errors": (A.ROLLBACK_DEPLOYMENT, A.RESTART_REPLICAS),
    "latency": (A.SCALE_UP, A.RATE_LIMIT),
    "availability": (A.RESTART_REPLICAS,),
    "cost": (A.RATE_LIMIT,),
    "lifecycle": (A.RESTART_REPLICAS,),
    "other": (A.PAGE_ONCALL,),
}
"""What the rules propose per category (kubectl-ai's runbook idea: the least drastic first)."""
MAX_PROPOSALS = 5
"""Proposals kept per incident (the rest are dropped and recorded)."""


@dataclass(frozen=True)
class Classification:
    """What the rules conclude from an incident's alerts."""

    severity: Severity
    category: str
    reasons: list[str] = field(default_factory=list)


def _number(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        v = float(text.strip().rstrip("%"))
    except ValueError:
        return None
    if not math.isfinite(v):
        return None
    return v / 100 if text.strip().endswith("%") else v


def category_of(alert: AlertEvidence) -> str:
    """The category of one alert (see the module docstring)."""
    label = alert.labels.get("category", "").strip().lower()
    if label in CATEGORIES:
        return label
    if alert.labels.get("source") == "lifecycle":
        return "lifecycle"
    name = alert.name.lower()
    for category, hints in _NAME_HINTS:
        if any(h in name for h in hints):
            return category
    return "other"


def severity_of(alert: AlertEvidence, category: str) -> tuple[Severity, list[str]]:
    """Severity of one alert from its label and annotated values, with the reasons."""
    label = alert.labels.get("severity", "").strip().lower()
    sev = LABEL_SEVERITY.get(label, UNKNOWN_SEVERITY)
    why = [f"{alert.name}: severity label {label or 'missing'} -> {sev.value}"]
    notes = alert.annotations
    rate = _number(notes.get("error_rate"))
    latency = _number(notes.get("p95_latency_seconds"))
    if category == "errors" and rate is None:
        rate = _number(notes.get("value"))
    if category == "latency" and latency is None:
        latency = _number(notes.get("value"))
    if rate is not None and rate >= ERROR_RATE_SEV2:
        bump = Severity.SEV1 if rate >= ERROR_RATE_SEV1 else Severity.SEV2
        if stricter(sev, bump) != sev:
            why.append(f"{alert.name}: error rate {rate:.3g} -> {bump.value}")
            sev = bump
    slow = latency is not None and latency >= P95_LATENCY_SEV2_SECONDS
    if slow and stricter(sev, Severity.SEV2) != sev:
        why.append(f"{alert.name}: p95 latency {latency:.3g} s -> SEV2")
        sev = Severity.SEV2
    return sev, why


def classify(alerts: Iterable[AlertEvidence], *, source: str = "alertmanager") -> Classification:
    """Severity and category of an incident from its firing alerts.

    Args:
        alerts: the incident's alerts (resolved ones count too: they fired).
        source: the incident's source; ``lifecycle`` is at least :data:`LIFECYCLE_SEVERITY`.

    Returns:
        The strictest alert's severity, the category of the most severe alert (ties: the
        first), and one reason per rule that applied. No alerts: SEV3 (lifecycle: SEV2),
        category ``lifecycle`` or ``other``.
    """
    items = list(alerts)
    sev = LIFECYCLE_SEVERITY if source == "lifecycle" else UNKNOWN_SEVERITY
    reasons = [f"source {source} -> {sev.value}"] if source == "lifecycle" else []
    category = "lifecycle" if source == "lifecycle" else "other"
    best: Severity | None = None
    critical_down = bool(items)
    for alert in items:
        cat = category_of(alert)
        s, why = severity_of(alert, cat)
        reasons.extend(why)
        critical_down &= cat == "availability" and alert.labels.get("severity") == "critical"
        if best is None or stricter(s, best) != best:
            best, category = s, cat
    if best is not None:
        sev = best if source != "lifecycle" else stricter(best, sev)
    elif not reasons:
        reasons.append(f"no alerts -> {sev.value}")
    if critical_down and sev == Severity.SEV2:
        sev = Severity.SEV1
        reasons.append("every alert says the agent is down (critical) -> SEV1")
    return Classification(sev, category, reasons)


def rule_proposals(category: str, agent_id: str) -> list[ProposedAction]:
    """The rules' containment proposals for ``category`` (see :data:`RULE_PROPOSALS`)."""
    actions = RULE_PROPOSALS.get(category, RULE_PROPOSALS["other"])
    return [
        ProposedAction(
            action=a.value,
            target=agent_id,
            reasoning=f"rules: a {category} incident; {a.value} is the runbook's step",
        )
        for a in actions
    ]


@dataclass(frozen=True)
class Screened:
    """Proposals that may be considered, and those dropped with why."""

    kept: list[tuple[ContainmentAction, ProposedAction]]
    dropped: list[str]


def screen_proposals(proposals: Iterable[ProposedAction], agent_id: str) -> Screened:
    """Keep the proposals that name a catalogue action against the incident's agent.

    Args:
        proposals: from the LLM or the rules (untrusted either way).
        agent_id: the incident's agent; any other target is dropped.

    Returns:
        At most :data:`MAX_PROPOSALS` distinct actions, in order, and one sentence per
        dropped proposal (outside the catalogue, another target, a repeat, over the limit).
    """
    kept: list[tuple[ContainmentAction, ProposedAction]] = []
    dropped: list[str] = []
    catalogue = {a.value: a for a in ContainmentAction}
    for p in proposals:
        name = p.action.strip().lower()
        action = catalogue.get(name)
        if action is None:
            dropped.append(f"{p.action[:64]!r} is not in the catalogue")
        elif p.target.strip() != agent_id:
            dropped.append(f"{name} targets {p.target[:64]!r}, not the incident's agent")
        elif any(a == action for a, _ in kept):
            dropped.append(f"{name} proposed twice")
        elif len(kept) >= MAX_PROPOSALS:
            dropped.append(f"{name}: more than {MAX_PROPOSALS} proposals")
        else:
            kept.append((action, p))
    return Screened(kept, dropped)


def needs_approval(action: ContainmentAction, severity: Severity, *, auto_low_risk: bool) -> bool:
    """Whether ``action`` waits for a human at ``severity``.

    Only a ``low``-risk action (:data:`fleetops.incidents.ACTION_RISK`) at SEV3 or SEV4, with
    ``incidents.auto_contain_low_risk`` on, runs by itself; everything else is approved first.
    """
    low = ACTION_RISK[action] == "low"
    minor = severity in (Severity.SEV3, Severity.SEV4)
    return not (low and minor and auto_low_risk)
