"""Steps of ``IncidentResponse``: asking the LLM within budget, containing, paging (workflow code).

The LLM is asked at most twice per incident (assessment, root cause) and never once its
per-incident budget (``llm.budget_tokens_per_incident``, ``llm.budget_usd_per_incident``) is
spent; every failure (not configured, over budget, truncated, invalid output, activity failed)
is recorded and the rules decide. Its proposals are screened (catalogue, target) and gated by
risk and severity exactly like the rules' own (:mod:`fleetops.incident_rules`).
"""

from __future__ import annotations

from pydantic import ValidationError
from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from fleetops import incident_rules as rules
    from fleetops.approvals import ApprovalRequest, Notification
    from fleetops.incident_report import ActionRecord, IncidentPolicy, PageRecord
    from fleetops.incidents import (
        ACTION_RISK,
        ContainmentAction,
        ContainmentRequest,
        EvidenceItem,
        LlmOutcome,
        ProposedAction,
        TriageAnswer,
        TriageRequest,
    )
    from workflows import incident_calls as calls
    from workflows.approval import ApprovalGate
    from workflows.approval_calls import send_notification
    from workflows.incident_book import MAX_COUNT, IncidentBook

AUTOMATION = "incident-automation"
"""``requested_by`` of actions that ran without approval."""


def _spend(book: IncidentBook, outcome: LlmOutcome) -> None:
    llm = book.llm
    usage = outcome.usage[:10]
    book.llm = llm.model_copy(
        update={
            "calls": min(llm.calls + max(len(usage), 1), MAX_COUNT),
            "input_tokens": min(llm.input_tokens + sum(u.input_tokens for u in usage), MAX_COUNT),
            "output_tokens": min(
                llm.output_tokens + sum(u.output_tokens for u in usage), MAX_COUNT
            ),
            "usd": min(llm.usd + sum(u.usd for u in usage), 1e9),
        }
    )


def _fail(book: IncidentBook, purpose: str, why: str) -> None:
    text = f"{purpose}: {why}"[:300]
    book.record("llm", f"rules decide ({text})")
    if len(book.llm.failures) < 10:
        book.llm = book.llm.model_copy(update={"failures": [*book.llm.failures, text]})


async def ask_llm(
    book: IncidentBook, policy: IncidentPolicy, purpose: str, evidence: list[EvidenceItem]
) -> TriageAnswer | None:
    """One ``llm_triage`` call within the incident's budget; None when the rules decide.

    Args:
        book: the incident (its severity, category, LLM totals; spend is added to it).
        policy: whether an LLM is configured, the budget, the activity timeout.
        purpose: ``assessment`` or ``root cause`` (in the audit and the review).
        evidence: items shown to the model as untrusted data.
    """
    if not policy.llm_configured:
        _fail(book, purpose, "not_configured: no LLM (llm.base_url unset)")
        return None
    tokens_left = policy.budget_tokens_per_incident - book.llm.tokens
    usd_left = policy.budget_usd_per_incident - book.llm.usd
    if tokens_left <= 0 or usd_left <= 0:
        _fail(
            book,
            purpose,
            f"over_budget: spent {book.llm.tokens} of {policy.budget_tokens_per_incident} "
            f"tokens, {book.llm.usd:.4f} of {policy.budget_usd_per_incident:.4f} USD",
        )
        return None
    try:
        req = TriageRequest(
            incident_id=book.incident_id,
            agent_id=book.start.agent_id,
            title=book.start.title,
            rule_severity=book.severity,
            rule_category=book.category,
            evidence=evidence[:40],
            names=[book.start.agent_id],
            budget_tokens_remaining=tokens_left,
            budget_usd_remaining=usd_left,
        )
    except ValidationError as err:
        _fail(book, purpose, f"request not built: {err.errors()[0]['msg']}")
        return None
    outcome = await calls.triage(req, policy.llm_timeout_seconds)
    _spend(book, outcome)
    if outcome.answer is None:
        _fail(book, purpose, outcome.failure or "no answer")
        return None
    book.llm = book.llm.model_copy(update={"used": True})
    book.record("llm", f"{purpose}: answered ({outcome.answer.severity.value})")
    return outcome.answer


def proposals_for(book: IncidentBook, answer: TriageAnswer | None) -> list[tuple[str, list]]:
    """(proposed_by, proposals): the LLM's when it answered with any, else the rules'."""
    agent = book.start.agent_id
    found: list[tuple[str, list[ProposedAction]]] = []
    if answer is not None and answer.proposed_actions:
        found.append(("llm", list(answer.proposed_actions)))
    found.append(("rules", rules.rule_proposals(book.category, agent)))
    return found


def screen(
    book: IncidentBook, answer: TriageAnswer | None
) -> list[tuple[str, ContainmentAction, ProposedAction]]:
    """The proposals to consider, each (proposed_by, action, proposal); drops recorded.

    The LLM's are screened first; when none survives, the rules' are used instead.
    """
    for who, proposals in proposals_for(book, answer):
        screened = rules.screen_proposals(proposals, book.start.agent_id)
        for why in screened.dropped:
            book.add_dropped(f"{who}: {why}")
        if screened.kept:
            return [(who, a, p) for a, p in screened.kept]
        if who == "llm":
            book.record("containment", "no LLM proposal survived screening: the rules propose")
    return []


def _refs(book: IncidentBook) -> list[str]:
    refs = [r for c in book.causes for r in c.evidence_refs]
    refs += [e.ref for e in book.evidence]
    return list(dict.fromkeys(refs))[:10]


async def contain(
    book: IncidentBook,
    gate: ApprovalGate,
    policy: IncidentPolicy,
    item: tuple[str, ContainmentAction, ProposedAction],
    index: int,
) -> ActionRecord:
    """Decide and (if allowed) run one screened proposal; the record of what happened."""
    who, action, proposal = item
    agent, sev = book.start.agent_id, book.severity
    approval = rules.needs_approval(action, sev, auto_low_risk=policy.auto_contain_low_risk)
    refs = _refs(book)
    rec = ActionRecord(
        action=action,
        risk=ACTION_RISK[action],
        proposed_by="llm" if who == "llm" else "rules",
        reasoning=proposal.reasoning[:500],
        evidence_refs=refs,
        mode="approval" if approval else "automatic",
        at=workflow.now(),
    )
    approver = AUTOMATION
    if approval:
        decision = await gate.request(
            ApprovalRequest(
                question=f"Run {action.value} on {agent} for {book.incident_id}?",
                context={
                    "incident": book.incident_id,
                    "agent": agent,
                    "action": action.value,
                    "risk": ACTION_RISK[action],
                    "severity": sev.value,
                    "proposed_by": rec.proposed_by,
                    "reasoning": proposal.reasoning[:300],
                    "evidence": ", ".join(refs) or "none",
                },
                approvers=policy.approvers,
                roles=policy.approver_roles,
                timeout_seconds=policy.approval_timeout_seconds,
                timeout_outcome="reject",
            )
        )
        if not decision.approved:
            rec = rec.model_copy(
                update={
                    "outcome": "rejected" if decision.outcome == "rejected" else "skipped",
                    "approver": decision.approver,
                    "detail": f"{decision.outcome}: {decision.comment}"[:500],
                }
            )
            book.record("action", f"{action.value} not run: {rec.detail}", decision.approver)
            return rec
        approver = decision.approver or AUTOMATION
    try:
        req = ContainmentRequest(
            incident_id=book.incident_id,
            agent_id=agent,
            action=action,
            requested_by=approver,
            reason=(proposal.reasoning or f"incident {book.incident_id}")[:1000],
            rate_limit_rps=policy.rate_limit_rps
            if action == ContainmentAction.RATE_LIMIT
            else None,
            action_id=f"{workflow.info().run_id[:8]}.{index}",
        )
    except ValidationError as err:
        detail = f"request not built: {err.errors()[0]['msg']}"
        book.record("action", f"{action.value} failed: {detail}", approver)
        return rec.model_copy(update={"outcome": "failed", "detail": detail[:500]})
    result = await calls.contain(req)
    rec = rec.model_copy(
        update={
            "outcome": "ran" if result.ok else "failed",
            "approver": approver if approval else None,
            "detail": result.detail[:500],
        }
    )
    book.record("action", f"{action.value} {rec.outcome}: {result.detail}", approver)
    return rec


async def page(book: IncidentBook, level: int) -> None:
    """Page on-call (level 0) or escalate (level n) through ``send_notification``."""
    info = workflow.info()
    wid, sev = book.incident_id, book.severity
    what = "Incident" if level == 0 else f"Escalation {level}: unacknowledged incident"
    text = (
        f"*{what} {sev.value}* `{wid}`: {book.start.title} (agent {book.start.agent_id}).\n"
        f"Ack: fleetops incident ack '{wid}' --as <you>, or temporal workflow update execute "
        f"--workflow-id '{wid}' --name ack --input '{{\"requested_by\": \"<you>\"}}'"
    )
    failure = await send_notification(
        Notification(
            kind="request" if level == 0 else "escalation",
            workflow_id=wid,
            text=text,
            dedupe_key=f"{wid}/{info.run_id}/page-{level}",
            escalation=level > 0,
        )
    )
    book.add_page(
        PageRecord(
            at=workflow.now(), level=level, severity=sev, sent=failure is None, detail=failure or ""
        )
    )
    book.record(
        "page",
        ("paged on-call" if level == 0 else f"escalation {level}")
        + (f" (failed: {failure})" if failure else ""),
    )
