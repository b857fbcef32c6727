"""Stand-ins for the incident activities other modules own, under their real activity names.

``llm_triage`` answers from a script (an outcome or an exception per call), ``gather_evidence``
returns fixed items, ``run_containment`` and ``check_recovery`` record their calls and answer
from knobs. They stand in for the activities of ``activities/llm.py``, ``incident_evidence.py``,
``containment.py`` and ``recovery.py`` only in the workflow tests; those modules have their own
tests. ``send_notification`` is the real activity over an in-memory webhook
(``httpx.MockTransport``) that records every post.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.incident_review import IncidentActivities
from activities.notify import NotifyActivities
from fleetops.incidents import (
    AlertBatch,
    AlertEvidence,
    ContainmentRequest,
    ContainmentResult,
    EvidenceItem,
    EvidenceRequest,
    IncidentStart,
    LikelyCause,
    LlmOutcome,
    LlmUsage,
    ProposedAction,
    RecoveryCheck,
    RecoveryStatus,
    Severity,
    TriageAnswer,
    TriageRequest,
    incident_key,
)
from fleetops.settings import ApprovalSettings, IncidentSettings, LlmSettings

WEBHOOK = "http://chat.invalid/hooks/secret-path"
ESCALATION_WEBHOOK = "http://pager.invalid/hooks/secret-path"


def answer(
    severity: Severity = Severity.SEV3,
    proposals: list[tuple[str, str]] | None = None,
    *,
    tokens: tuple[int, int] = (300, 50),
    usd: float = 0.001,
) -> LlmOutcome:
    """A scripted model answer: severity, (action, target) proposals, what it cost."""
    return LlmOutcome(
        answer=TriageAnswer(
            severity=severity,
            category="errors",
            summary="the model's summary",
            likely_causes=[LikelyCause(cause="bad deploy", confidence=0.7, evidence_refs=["E1"])],
            proposed_actions=[
                ProposedAction(action=a, target=t, reasoning=f"model says {a}")
                for a, t in (proposals or [])
            ],
        ),
        usage=[
            LlmUsage(request_model="m", input_tokens=tokens[0], output_tokens=tokens[1], usd=usd)
        ],
    )


def failed(failure: str, tokens: tuple[int, int] = (300, 0)) -> LlmOutcome:
    """An outcome without answer (truncated, invalid_output...), with its cost."""
    return LlmOutcome(
        failure=failure,
        usage=[LlmUsage(request_model="m", input_tokens=tokens[0], output_tokens=tokens[1])],
    )


@dataclass
class Standins:
    """Scripts and records of the stand-in activities."""

    triage_script: list[LlmOutcome | Exception] = field(default_factory=list)
    triage_calls: list[TriageRequest] = field(default_factory=list)
    evidence_calls: list[EvidenceRequest] = field(default_factory=list)
    containment_calls: list[ContainmentRequest] = field(default_factory=list)
    containment_ok: bool = True
    healthy: bool = False
    recovery_calls: int = 0
    posts: list[tuple[str, str]] = field(default_factory=list)  # (host, text)

    @activity.defn(name="llm_triage")
    async def llm_triage(self, req: TriageRequest) -> LlmOutcome:
        self.triage_calls.append(req)
        step = self.triage_script.pop(0) if self.triage_script else failed("invalid_output")
        if isinstance(step, Exception):
            raise step
        return step

    @activity.defn(name="gather_evidence")
    async def gather_evidence(self, req: EvidenceRequest) -> list[EvidenceItem]:
        self.evidence_calls.append(req)
        now = datetime.now(UTC)
        return [
            EvidenceItem(ref="E1", kind="metrics", source="prometheus", text="errors 0.3",
                         collected_at=now),
            EvidenceItem(ref="E2", kind="deployment", source=f"agent/{req.agent_id}",
                         text="v2 deployed 5 min ago", collected_at=now, truncated="cut 10 lines"),
        ]  # fmt: skip

    @activity.defn(name="run_containment")
    async def run_containment(self, req: ContainmentRequest) -> ContainmentResult:
        self.containment_calls.append(req)
        if not self.containment_ok:
            raise ApplicationError("platform said no", type="Injected", non_retryable=True)
        return ContainmentResult(action=req.action, ok=True, detail=f"{req.action.value} done")

    @activity.defn(name="check_recovery")
    async def check_recovery(self, check: RecoveryCheck) -> RecoveryStatus:
        self.recovery_calls += 1
        return RecoveryStatus(
            healthy=self.healthy, values={"error_rate": 0.0 if self.healthy else 0.3}
        )

    def stand_ins(self) -> list[Any]:
        """The four stand-in activities (llm_triage, gather_evidence, run_containment,
        check_recovery)."""
        return [self.llm_triage, self.gather_evidence, self.run_containment, self.check_recovery]

    def actions(self) -> list[str]:
        """Actions run, lifts excluded, in order."""
        return [c.action.value for c in self.containment_calls if not c.lift]

    def pages(self) -> list[str]:
        return [text for _, text in self.posts if "incident" in text.lower() and "Ack:" in text]


@contextlib.asynccontextmanager
async def activities(
    s: Standins,
    state_dir: Path,
    *,
    incidents: IncidentSettings | None = None,
    llm: LlmSettings | None = None,
) -> AsyncIterator[list[Any]]:
    """Every activity IncidentResponse calls: stand-ins, the real notify and incident ones."""

    def webhook(request: httpx.Request) -> httpx.Response:
        s.posts.append((request.url.host, json.loads(request.content)["text"]))
        return httpx.Response(200, text="ok")

    async with httpx.AsyncClient(transport=httpx.MockTransport(webhook)) as http:
        notify = NotifyActivities(
            http,
            ApprovalSettings(
                roles={"bob": ["sre"]},
                webhook_url=WEBHOOK,
                escalation_webhook_url=ESCALATION_WEBHOOK,
            ),
        )
        own = IncidentActivities(incidents or IncidentSettings(), llm or LlmSettings(), state_dir)
        yield [
            *s.stand_ins(),
            notify.send_notification,
            notify.approval_policy,
            own.incident_policy,
            own.write_review,
        ]


def alert(
    name: str,
    *,
    severity: str = "warning",
    status: str = "firing",
    fingerprint: str = "",
    **annotations: str,
) -> AlertEvidence:
    """One alert of agent ``agent``'s group."""
    return AlertEvidence(
        name=name,
        status=status,  # type: ignore[arg-type]
        labels={"alertname": name, "severity": severity},
        annotations=annotations,
        starts_at=datetime(2026, 1, 1, tzinfo=UTC),
        fingerprint=fingerprint or f"fp-{name}",
    )


def start_and_batch(agent: str, *alerts: AlertEvidence) -> tuple[IncidentStart, AlertBatch]:
    """The intake's input for ``alerts`` of one group of ``agent``."""
    key = incident_key(agent, "group-1")
    start = IncidentStart(agent_id=agent, key=key, title=f"{alerts[0].name} on {agent}")
    batch = AlertBatch(group_key="group-1", alerts=list(alerts), received_at=datetime.now(UTC))
    return start, batch
