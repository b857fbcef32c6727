"""The post-incident review as Markdown (a pure function: the workflow renders it itself).

Sections follow the usual postmortem template (Google SRE book, ch. 15; Dispatch's incident
review document): summary, impact, timeline, key findings, likely causes, actions taken, paging,
measures (MTTA, MTTR), follow-ups, and what the LLM cost. Untrusted text (alert annotations,
model output) is shown inside inline code or escaped so it cannot add Markdown structure.
"""

from __future__ import annotations

from datetime import datetime

from fleetops.incident_report import Finding, IncidentStatus, ReviewReport
from fleetops.incidents import EvidenceItem

_ESCAPE = str.maketrans({c: "\\" + c for c in "\\`*_[]<>#|"})


def _text(s: str) -> str:
    """One line of untrusted text, Markdown specials escaped."""
    return " ".join(s.split()).translate(_ESCAPE)


def _seconds(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.0f} s"


def _section(title: str, items: list[str], empty: str) -> list[str]:
    """The lines of a ``## title`` section: a blank line, the heading, a blank line, then
    ``items`` (``empty`` alone when there are none)."""
    return ["", f"## {title}", "", *(items or [empty])]


def render_review(r: ReviewReport) -> str:
    """Markdown of a review.

    Args:
        r: the review (``markdown`` and ``path`` are ignored).

    Returns:
        The document, ending with a newline.
    """
    lines = [
        f"# Incident review: {_text(r.title)}",
        "",
        f"- Incident: `{r.incident_id}` (run `{r.run_id}`)",
        f"- Agent: `{r.agent_id}`",
        f"- Severity: **{r.severity.value}**, category {_text(r.category)}",
        f"- Opened {r.opened_at:%Y-%m-%d %H:%M:%S} UTC, closed {r.closed_at:%Y-%m-%d %H:%M:%S} UTC",
        f"- Resolved by: {_text(r.resolved_by or 'nobody (closed unresolved)')}",
        f"- MTTA: {_seconds(r.mtta_seconds)}; MTTR: {_seconds(r.mttr_seconds)}",
        "",
        "## Summary",
        "",
        _text(r.summary) or "No summary.",
        "",
        "## Impact",
        "",
        _text(r.impact),
    ]
    lines += _section(
        "Timeline",
        [
            f"- {e.at:%H:%M:%S} {e.kind}"
            + (f" ({_text(e.actor)})" if e.actor else "")
            + f": {_text(e.detail)}"
            for e in r.timeline
        ],
        "- (empty)",
    )
    lines += _section(
        "Key findings",
        [
            f"- {_text(f.text)}" + (f" [{', '.join(f.evidence_refs)}]" if f.evidence_refs else "")
            for f in r.key_findings
        ],
        "- none",
    )
    lines += _section(
        "Likely causes",
        [
            f"- {_text(c.cause)} (confidence {c.confidence:.0%})"
            + (f" [{', '.join(_text(x) for x in c.evidence_refs)}]" if c.evidence_refs else "")
            for c in r.likely_causes
        ],
        "- not determined",
    )
    lines += _section(
        "Actions taken",
        [
            f"- `{a.action.value}` ({a.risk} risk, proposed by {a.proposed_by}, {a.mode}): "
            f"{a.outcome}"
            + (f", approver {_text(a.approver)}" if a.approver else "")
            + (f": {_text(a.detail)}" if a.detail else "")
            for a in r.actions
        ],
        "- none",
    )
    lines += _section(
        "Paging",
        [
            f"- {p.at:%H:%M:%S} {'page' if p.level == 0 else f'escalation {p.level}'} "
            f"({p.severity.value}): {'sent' if p.sent else 'not sent'}"
            + (f": {_text(p.detail)}" if p.detail else "")
            for p in r.pages
        ],
        "- nobody was paged",
    )
    lines += _section("Follow-ups", [f"- [ ] {_text(f)}" for f in r.follow_ups], "- none")
    llm = r.llm
    lines += ["", "## LLM", ""]
    if not llm.configured:
        lines.append("- No LLM configured: triage, proposals and causes by the rules alone.")
    else:
        used = "used" if llm.used else "not used (rules decided)"
        lines.append(
            f"- {used}; {llm.calls} call(s), {llm.input_tokens} input + {llm.output_tokens} "
            f"output tokens, {llm.usd:.4f} USD (budget {llm.budget_tokens} tokens, "
            f"{llm.budget_usd:.4f} USD)"
        )
        lines += [f"- fell back to the rules: {_text(f)}" for f in llm.failures]
    return "\n".join(lines) + "\n"


def build_review(
    st: IncidentStatus, *, run_id: str, closed_at: datetime, evidence: list[EvidenceItem]
) -> ReviewReport:
    """The review of a closing incident, from its status and evidence (pure).

    Args:
        st: the incident's last status (its audit trail is the timeline).
        run_id: the workflow run (the review file's name carries it).
        closed_at: workflow time of closing.
        evidence: the evidence items gathered (key findings cite their refs).

    Returns:
        The report, ``markdown`` filled in, ``path`` None.
    """
    alert_refs = [f"A{i}" for i in range(1, min(len(st.alerts), 20) + 1)]
    names = sorted({a.name for a in st.alerts})
    findings = [
        Finding(
            text=f"{len(st.alerts)} distinct alert(s) in {st.notifications} notification(s), "
            f"{st.alerts_received} received: {', '.join(names[:10]) or 'none'}",
            evidence_refs=alert_refs[:10],
        )
    ]
    findings += [
        Finding(
            text=f"{e.kind} from {e.source[:200]}"
            + (f" (cut: {e.truncated})" if e.truncated else ""),
            evidence_refs=[e.ref],
        )
        for e in evidence[:8]
    ]
    findings += [Finding(text=f"proposal dropped: {d}") for d in st.dropped_proposals[:5]]
    mtta = _since(st.opened_at, st.acknowledged_at)
    mttr = _since(st.opened_at, st.resolved_at)
    follow_ups = [
        f"{a.action.value} was {a.outcome}: decide whether it is still needed"
        for a in st.actions
        if a.outcome in ("failed", "rejected", "skipped")
    ]
    if not any(c.confidence >= 0.5 for c in st.likely_causes):
        follow_ups.append("confirm the root cause: no likely cause reached 50% confidence")
    if st.pages and st.acknowledged_at is None:
        follow_ups.append("the page was never acknowledged: check the on-call routing")
    if st.resolved_at is None:
        follow_ups.append("the incident closed unresolved: find out why it did not recover")
    follow_ups.append(f"review the alert rules and runbook of {st.category} incidents")
    duration = (closed_at - st.opened_at).total_seconds()
    impact = (
        f"{st.agent_id}: {st.category} incident at {st.severity.value} for {duration:.0f} s; "
        f"{sum(1 for a in st.alerts if a.status == 'firing')} alert(s) still firing at close"
    )
    report = ReviewReport(
        incident_id=st.incident_id,
        run_id=run_id,
        agent_id=st.agent_id,
        title=st.title,
        severity=st.severity,
        category=st.category,
        summary=st.summary or f"{st.title} ({st.category}, {st.severity.value})",
        opened_at=st.opened_at,
        closed_at=closed_at,
        resolved_by=st.resolved_by,
        impact=impact,
        timeline=list(st.audit),
        key_findings=findings,
        likely_causes=list(st.likely_causes),
        actions=list(st.actions),
        pages=list(st.pages),
        mtta_seconds=mtta,
        mttr_seconds=mttr,
        follow_ups=follow_ups[:10],
        llm=st.llm,
    )
    return report.model_copy(update={"markdown": render_review(report)})


def _since(start: datetime, at: datetime | None) -> float | None:
    return None if at is None else max((at - start).total_seconds(), 0.0)
