"""IncidentResponse: an alert group of one agent becomes one durable incident, closed with a review.

Workflow id ``incident/<agent_id>/<key>``, started by signal-with-start with its first
``alerts`` signal (:func:`activities.incident_intake.signal_incident`); every later notification
of the group joins it as evidence. The seeds' procedure, each step a phase in ``status`` and the
``FleetOpsState`` search attribute, with Dispatch's status Active -> Stable -> Closed:

1. DETECTED: read the policy (``incident_policy``).
2. TRIAGE: severity and category by the rules (:mod:`fleetops.incident_rules`); SEV1/SEV2 page
   on-call at once and escalate every ``ack_timeout_seconds`` until acknowledged.
3. ASSESSMENT: evidence (``gather_evidence``), then the LLM (``llm_triage``) within budget: the
   stricter severity wins unless an operator overrode it.
4. CONTAINMENT: proposals (the LLM's, else the rules') screened against the catalogue and the
   agent; low-risk ones run by themselves only at SEV3/SEV4 with ``auto_contain_low_risk``,
   everything else waits for the approval gate; ``run_containment`` runs them. Then Stable.
5. ROOT_CAUSE: likely causes (a second LLM call within budget, else the rules).
6. RESOLUTION: until ``check_recovery`` stays healthy for ``resolve_window_seconds``, every alert
   is resolved by Alertmanager, an operator resolves, or ``resolution_timeout_seconds`` pass.
7. REVIEW: the :class:`~fleetops.incident_report.ReviewReport` (the result), written as Markdown
   by ``write_review``. 8. CLOSED.

History is bounded: alerts are deduplicated by fingerprint (the signals themselves are the only
per-notification events), recovery checks are spaced so at most :data:`MAX_RECOVERY_CHECKS` run,
and the resolution phase ends at its timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta

from pydantic import ValidationError
from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from fleetops import incident_rules as rules
    from fleetops.constants import AGENT_ID_KEY, SEVERITY_KEY, STATE_KEY
    from fleetops.incident_markdown import build_review
    from fleetops.incident_report import IncidentPolicy, ReviewReport, WriteReviewRequest
    from fleetops.incidents import (
        ContainmentAction,
        ContainmentRequest,
        EvidenceItem,
        EvidenceRequest,
        IncidentPhase,
        IncidentStart,
        IncidentStatusName,
        LikelyCause,
        OperatorRequest,
        RecoveryCheck,
        Severity,
        TriageAnswer,
        stricter,
    )
    from workflows import incident_calls as calls
    from workflows import incident_steps as steps
    from workflows.approval import ApprovalGate
    from workflows.incident_book import MAX_EVIDENCE, IncidentBook
    from workflows.incident_handlers import IncidentHandlers
    from workflows.payload_guard import requires_input

MAX_RECOVERY_CHECKS = 2000
"""Most ``check_recovery`` calls of one incident: the poll interval grows to fit the timeout."""
PAGED = (Severity.SEV1, Severity.SEV2)
"""Severities that page on-call."""


@workflow.defn(name="IncidentResponse")
class IncidentResponse(IncidentHandlers):
    """One incident of one agent, from its first alert to its review."""

    @workflow.init
    @requires_input
    def __init__(self, start: IncidentStart) -> None:
        """Open the record; handlers are live before ``run`` (the first signal arrives first)."""
        info = workflow.info()
        self._book = IncidentBook(start, incident_id=info.workflow_id, opened_at=workflow.now())
        self._approval_gate = ApprovalGate()
        self._resolve_request: OperatorRequest | None = None
        self._policy = IncidentPolicy()
        self._closing = False
        self._answer: TriageAnswer | None = None

    @workflow.run
    async def run(self, start: IncidentStart) -> ReviewReport:
        """Run the incident procedure to its review.

        Args:
            start: agent, key, title, source, who opened it, optional initial severity.

        Returns:
            The post-incident review (also written under ``<state_dir>/incidents/``).
        """
        b = self._book
        workflow.upsert_search_attributes([AGENT_ID_KEY.value_set(start.agent_id)])
        self._enter(IncidentPhase.DETECTED, f"opened by {start.opened_by} ({start.source})")
        self._policy, note = await calls.read_policy()
        if note:
            b.record("policy", note)
        b.llm = b.llm.model_copy(
            update={
                "configured": self._policy.llm_configured,
                "budget_tokens": self._policy.budget_tokens_per_incident,
                "budget_usd": self._policy.budget_usd_per_incident,
            }
        )
        self._triage()
        pager = asyncio.create_task(self._pager())
        if not self._resolving():
            await self._assess()
        if not self._resolving():
            await self._contain()
        b.status = IncidentStatusName.STABLE
        b.record("status", "Stable")
        await self._root_cause()
        await self._resolution()
        report = await self._review()
        self._closing = True
        await pager
        b.status = IncidentStatusName.CLOSED
        self._enter(IncidentPhase.CLOSED, f"resolved by {b.resolved_by or 'nobody'}")
        await workflow.wait_condition(workflow.all_handlers_finished)
        return report

    # --- phases ---------------------------------------------------------------------------

    def _enter(self, phase: IncidentPhase, detail: str = "") -> None:
        self._book.phase = phase
        workflow.upsert_search_attributes(
            [STATE_KEY.value_set(phase.value), SEVERITY_KEY.value_set(self._book.severity.value)]
        )
        self._book.record("phase", f"{phase.value}" + (f": {detail}" if detail else ""))

    def _resolving(self) -> bool:
        return self._resolve_request is not None

    def _set_severity(self, sev: Severity, source: str, why: str) -> None:
        b = self._book
        weaker = stricter(b.severity, sev) == b.severity and b.severity_source != "default"
        if b.overridden or weaker:
            return
        if sev != b.severity:
            b.record("severity", f"{b.severity.value} -> {sev.value}: {why}")
        b.severity, b.severity_source = sev, source
        workflow.upsert_search_attributes([SEVERITY_KEY.value_set(sev.value)])

    def _triage(self) -> None:
        b = self._book
        self._enter(IncidentPhase.TRIAGE)
        found = rules.classify(b.alert_evidence(), source=b.start.source)
        b.category = found.category
        b.record("rules", "; ".join(found.reasons)[:500])
        sev = stricter(found.severity, b.start.severity) if b.start.severity else found.severity
        self._set_severity(sev, "rules", f"rules ({found.category})")

    async def _assess(self) -> None:
        b, p = self._book, self._policy
        self._enter(IncidentPhase.ASSESSMENT)
        now = workflow.now()
        starts = [a.starts_at for a in b.alerts.values()] or [now]
        since = max(
            min(starts) - timedelta(seconds=p.evidence_window_seconds),
            now - timedelta(seconds=86_000),
        )
        names = sorted({a.name for a in b.alerts.values()})[:20]
        try:
            req = EvidenceRequest(
                incident_id=b.incident_id,
                agent_id=b.start.agent_id,
                since=min(since, now - timedelta(seconds=1)),
                until=now,
                alert_names=names,
            )
            items, note = await calls.gather(req)
        except ValidationError as err:
            items, note = [], f"evidence request not built: {err.errors()[0]['msg']}"
        b.evidence = items[:MAX_EVIDENCE]
        b.record("evidence", note or f"{len(b.evidence)} item(s): {[e.ref for e in b.evidence]}")
        answer = await steps.ask_llm(b, p, "assessment", self._evidence())
        self._answer = answer
        if answer is None:
            return
        self._set_severity(answer.severity, "llm", "the LLM's assessment is stricter")
        if b.category == "other" and answer.category.strip():
            b.category = answer.category.strip()[:64]
        b.summary = answer.summary
        b.causes = list(answer.likely_causes)

    def _evidence(self) -> list[EvidenceItem]:
        return [*self._book.alert_items(), *self._book.evidence][:MAX_EVIDENCE]

    async def _contain(self) -> None:
        b = self._book
        self._enter(IncidentPhase.CONTAINMENT)
        for i, item in enumerate(steps.screen(b, self._answer), start=1):
            if self._resolving():
                b.record("containment", f"{item[1].value} not considered: incident resolved")
                break
            b.add_action(await steps.contain(b, self._approval_gate, self._policy, item, i))

    async def _root_cause(self) -> None:
        b = self._book
        self._enter(IncidentPhase.ROOT_CAUSE)
        if not self._resolving():
            done = "; ".join(f"{a.action.value} {a.outcome}" for a in b.actions) or "none"
            note = EvidenceItem(
                ref="N1",
                kind="note",
                source="incident actions",
                text=f"actions so far: {done}",
                collected_at=workflow.now(),
            )
            answer = await steps.ask_llm(b, self._policy, "root cause", [*self._evidence(), note])
            if answer is not None:
                b.causes = list(answer.likely_causes) or b.causes
                b.summary = answer.summary or b.summary
        if not b.causes:
            refs = [e.ref for e in b.alert_items(5)]
            deploys = [e.ref for e in b.evidence if e.kind == "deployment"]
            if deploys:
                b.causes.append(
                    LikelyCause(
                        cause="a recent deployment of the agent",
                        confidence=0.4,
                        evidence_refs=deploys[:5],
                    )
                )
            b.causes.append(
                LikelyCause(
                    cause=f"rules: {b.category} incident, cause not determined automatically",
                    confidence=0.2,
                    evidence_refs=refs,
                )
            )
        b.record("root_cause", "; ".join(c.cause for c in b.causes)[:500])

    async def _resolution(self) -> None:
        b, p = self._book, self._policy
        self._enter(IncidentPhase.RESOLUTION)
        deadline = workflow.now() + timedelta(seconds=p.resolution_timeout_seconds)
        poll = max(p.recovery_poll_seconds, p.resolution_timeout_seconds / MAX_RECOVERY_CHECKS)
        healthy_since = None
        check = RecoveryCheck(
            agent_id=b.start.agent_id,
            error_rate_max=p.error_rate_max,
            p95_latency_max_seconds=p.p95_latency_max_seconds,
        )
        while True:
            if self._resolve_request is not None:
                self._resolved(f"operator {self._resolve_request.requested_by.strip()}")
                break
            if b.all_resolved():
                self._resolved("alertmanager")
                break
            now = workflow.now()
            if now >= deadline:
                b.record("resolution", f"not resolved in {p.resolution_timeout_seconds:.0f} s")
                break
            rs = await calls.recovered(check)
            now = workflow.now()
            if rs.healthy:
                if healthy_since is None:
                    healthy_since = now
                    b.record("recovery", f"metrics within thresholds: {rs.values}")
                if (now - healthy_since).total_seconds() >= p.resolve_window_seconds:
                    self._resolved("metrics")
                    break
            elif healthy_since is not None:
                healthy_since = None
                b.record("recovery", f"metrics out of thresholds again: {rs.detail}")
            wait = min(poll, max((deadline - now).total_seconds(), 0.001))
            with contextlib.suppress(TimeoutError):
                await workflow.wait_condition(
                    lambda: self._resolve_request is not None or b.all_resolved(),
                    timeout=timedelta(seconds=wait),
                )
        await self._lift_rate_limit()

    def _resolved(self, by: str) -> None:
        b = self._book
        b.resolved_by, b.resolved_at = by, workflow.now()
        mttr = b.seconds_since_open(b.resolved_at) or 0.0
        b.record("resolved", f"resolved by {by} after {mttr:.0f} s")

    async def _lift_rate_limit(self) -> None:
        b = self._book
        if not any(
            a.action == ContainmentAction.RATE_LIMIT and a.outcome == "ran" for a in b.actions
        ):
            return
        result = await calls.contain(
            ContainmentRequest(
                incident_id=b.incident_id,
                agent_id=b.start.agent_id,
                action=ContainmentAction.RATE_LIMIT,
                requested_by=steps.AUTOMATION,
                reason="incident resolved",
                lift=True,
                action_id=f"{workflow.info().run_id[:8]}.lift",
            )
        )
        b.record("action", f"rate limit lifted: {result.ok} {result.detail}"[:500])

    async def _review(self) -> ReviewReport:
        b = self._book
        self._enter(IncidentPhase.REVIEW)
        info = workflow.info()
        st = b.status_now(self._approval_gate.audit)
        report = build_review(st, run_id=info.run_id, closed_at=workflow.now(), evidence=b.evidence)
        path, note = await calls.write_review(
            WriteReviewRequest(
                agent_id=b.start.agent_id,
                key=b.start.key,
                run_id=info.run_id,
                markdown=report.markdown[:1_000_000],
            )
        )
        b.record("review", note or f"written to {path}")
        return report.model_copy(update={"path": path})

    # --- paging ---------------------------------------------------------------------------

    async def _pager(self) -> None:
        """Page once severity is SEV1/SEV2; escalate each ack timeout without an ack."""
        b, p = self._book, self._policy
        await workflow.wait_condition(
            lambda: self._closing or b.acked_by is not None or b.severity in PAGED
        )
        if self._closing or b.acked_by is not None:
            return
        await steps.page(b, 0)
        for level in range(1, p.max_escalations + 1):
            try:
                await workflow.wait_condition(
                    lambda: self._closing or b.acked_by is not None,
                    timeout=timedelta(seconds=p.ack_timeout_seconds),
                )
                return
            except TimeoutError:
                await steps.page(b, level)
