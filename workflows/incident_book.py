"""The incident's record: alerts by fingerprint, audit trail, pages, actions, LLM spend (bounded).

Deterministic workflow code. Alerts are deduplicated by fingerprint (a storm of repeats is one
record with a count), at most :data:`~fleetops.incident_report.MAX_ALERTS` distinct ones are kept
and the rest only counted; the audit keeps the latest :data:`~fleetops.incident_report.MAX_AUDIT`
entries and counts those dropped. Label and annotation values are cut to
:data:`~fleetops.incidents.MAX_LABEL_CHARS` characters, at most :data:`MAX_KEYS` of each.
"""

from __future__ import annotations

import hashlib
from datetime import datetime

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from fleetops.approvals import AuditEntry
    from fleetops.incident_report import (
        MAX_ACTIONS,
        MAX_ALERTS,
        MAX_AUDIT,
        MAX_DETAIL,
        MAX_DROPPED,
        MAX_PAGES,
        ActionRecord,
        AlertRecord,
        AuditRecord,
        IncidentStatus,
        LlmTotals,
        PageRecord,
    )
    from fleetops.incidents import (
        MAX_LABEL_CHARS,
        AlertBatch,
        AlertEvidence,
        EvidenceItem,
        IncidentPhase,
        IncidentStart,
        IncidentStatusName,
        LikelyCause,
        Severity,
    )

MAX_KEYS = 30
"""Labels (and annotations) kept per alert."""
MAX_EVIDENCE = 40
"""Evidence items kept (alerts shown to the LLM plus gathered items)."""
MAX_COUNT = 10**9
"""Counters stop here (a bound, not an expected value)."""


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _bounded(d: dict[str, str]) -> dict[str, str]:
    items = sorted(d.items())[:MAX_KEYS]
    return {_cut(k, 128): _cut(v, MAX_LABEL_CHARS) for k, v in items}


def fingerprint(alert: AlertEvidence) -> str:
    """The alert's Alertmanager fingerprint, or a stable hash of its name and labels."""
    if alert.fingerprint:
        return _cut(alert.fingerprint, 64)
    text = alert.name + "\0" + "\0".join(f"{k}={v}" for k, v in sorted(alert.labels.items()))
    return "h" + hashlib.sha256(text.encode()).hexdigest()[:16]


class IncidentBook:
    """Everything the incident knows; :meth:`status` is the ``status`` query's answer."""

    def __init__(self, start: IncidentStart, *, incident_id: str, opened_at: datetime) -> None:
        """Open the record (phase DETECTED, status Active)."""
        self.start = start
        self.incident_id = incident_id
        self.opened_at = opened_at
        self.phase = IncidentPhase.DETECTED
        self.status = IncidentStatusName.ACTIVE
        self.severity = start.severity or Severity.SEV3
        self.severity_source = "start" if start.severity else "default"
        self.overridden = False
        self.category = "other"
        self.summary = ""
        self.alerts: dict[str, AlertRecord] = {}
        self.notifications = 0
        self.alerts_received = 0
        self.alerts_not_kept = 0
        self.evidence: list[EvidenceItem] = []
        self.actions: list[ActionRecord] = []
        self.dropped: list[str] = []
        self.causes: list[LikelyCause] = []
        self.pages: list[PageRecord] = []
        self.llm = LlmTotals()
        self.audit: list[AuditRecord] = []
        self.audit_dropped = 0
        self.acked_by: str | None = None
        self.acked_at: datetime | None = None
        self.resolved_by: str | None = None
        self.resolved_at: datetime | None = None

    def record(self, kind: str, detail: str, actor: str | None = None) -> None:
        """Append an audit entry at workflow time (the oldest beyond MAX_AUDIT is dropped)."""
        entry = AuditRecord(
            at=workflow.now(), kind=kind, actor=actor, detail=_cut(detail, MAX_DETAIL)
        )
        self.audit.append(entry)
        if len(self.audit) > MAX_AUDIT:
            del self.audit[0]
            self.audit_dropped = min(self.audit_dropped + 1, MAX_COUNT)

    def add_batch(self, batch: AlertBatch) -> list[AlertEvidence]:
        """Merge one notification's alerts; returns the alerts that newly fire.

        A known fingerprint updates status, end time and count; a new one is kept while fewer
        than MAX_ALERTS are, else only counted.
        """
        now = workflow.now()
        self.notifications = min(self.notifications + 1, MAX_COUNT)
        self.alerts_received = min(
            self.alerts_received + len(batch.alerts) + batch.truncated_alerts, MAX_COUNT
        )
        self.alerts_not_kept = min(self.alerts_not_kept + batch.truncated_alerts, MAX_COUNT)
        firing: list[AlertEvidence] = []
        for a in batch.alerts:
            fp = fingerprint(a)
            known = self.alerts.get(fp)
            if known is not None:
                was = known.status
                self.alerts[fp] = known.model_copy(
                    update={
                        "status": a.status,
                        "ends_at": a.ends_at,
                        "count": min(known.count + 1, MAX_COUNT),
                        "last_seen": now,
                    }
                )
                if was == "resolved" and a.status == "firing":
                    firing.append(a)
                continue
            if len(self.alerts) >= MAX_ALERTS:
                self.alerts_not_kept = min(self.alerts_not_kept + 1, MAX_COUNT)
                continue
            self.alerts[fp] = AlertRecord(
                fingerprint=fp,
                name=_cut(a.name, 200),
                status=a.status,
                labels=_bounded(a.labels),
                annotations=_bounded(a.annotations),
                starts_at=a.starts_at,
                ends_at=a.ends_at,
                first_seen=now,
                last_seen=now,
            )
            if a.status == "firing":
                firing.append(a)
        return firing

    def alert_evidence(self) -> list[AlertEvidence]:
        """The kept alerts as :class:`AlertEvidence` (for the rules)."""
        return [
            AlertEvidence(
                name=r.name,
                status=r.status,
                labels=r.labels,
                annotations=r.annotations,
                starts_at=r.starts_at,
                ends_at=r.ends_at,
                fingerprint=r.fingerprint,
            )
            for r in self.alerts.values()
        ]

    def all_resolved(self) -> bool:
        """Alertmanager resolved every alert of the incident (and none went uncounted)."""
        kept = self.alerts.values()
        return (
            bool(kept) and self.alerts_not_kept == 0 and all(r.status == "resolved" for r in kept)
        )

    def alert_items(self, limit: int = 20) -> list[EvidenceItem]:
        """The first ``limit`` alerts as evidence items ``A1``.. (untrusted text)."""
        items = []
        for i, r in enumerate(list(self.alerts.values())[:limit], start=1):
            text = (
                f"alert {r.name} ({r.status}, notified {r.count}x) labels={r.labels} "
                f"annotations={r.annotations}"
            )
            items.append(
                EvidenceItem(
                    ref=f"A{i}",
                    kind="alert",
                    source=f"alertmanager fingerprint {r.fingerprint}",
                    text=_cut(text, 4000),
                    collected_at=r.last_seen,
                )
            )
        return items

    def add_action(self, record: ActionRecord) -> None:
        """Keep an action record (MAX_ACTIONS at most; the workflow proposes fewer)."""
        if len(self.actions) < MAX_ACTIONS:
            self.actions.append(record)

    def add_dropped(self, why: str) -> None:
        """Record a dropped proposal (audit and list)."""
        self.record("dropped", why)
        if len(self.dropped) < MAX_DROPPED:
            self.dropped.append(_cut(why, MAX_DETAIL))

    def add_page(self, page: PageRecord) -> None:
        """Keep a page record (MAX_PAGES at most: 1 page + at most 10 escalations)."""
        if len(self.pages) < MAX_PAGES:
            self.pages.append(page)

    def seconds_since_open(self, at: datetime | None) -> float | None:
        """Seconds from opening to ``at`` (MTTA/MTTR), or None."""
        return None if at is None else max((at - self.opened_at).total_seconds(), 0.0)

    def status_now(self, approval_audit: list[AuditEntry]) -> IncidentStatus:
        """The ``status`` document: the record plus the approval gate's audit, by time."""
        gate = [
            AuditRecord(at=e.at, kind=e.kind, actor=e.actor, detail=_cut(e.detail, MAX_DETAIL))
            for e in approval_audit
        ]
        audit = sorted([*self.audit, *gate], key=lambda e: e.at)
        return IncidentStatus(
            incident_id=self.incident_id,
            agent_id=self.start.agent_id,
            title=self.start.title,
            source=self.start.source,
            opened_by=self.start.opened_by,
            opened_at=self.opened_at,
            phase=self.phase,
            status=self.status,
            severity=self.severity,
            severity_source=self.severity_source,
            category=self.category,
            summary=self.summary,
            acknowledged_by=self.acked_by,
            acknowledged_at=self.acked_at,
            resolved_by=self.resolved_by,
            resolved_at=self.resolved_at,
            alerts=list(self.alerts.values()),
            notifications=self.notifications,
            alerts_received=self.alerts_received,
            alerts_not_kept=self.alerts_not_kept,
            evidence_refs=[e.ref for e in self.evidence],
            actions=list(self.actions),
            dropped_proposals=list(self.dropped),
            likely_causes=list(self.causes),
            pages=list(self.pages),
            llm=self.llm,
            audit=audit,
            audit_dropped=self.audit_dropped,
        )
