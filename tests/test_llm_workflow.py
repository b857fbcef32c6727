"""``llm_triage`` called from a workflow through the activity table, on the test server:
payloads cross the data converter, a 429's Retry-After drives Temporal's retry, and a
non-retryable rejection ends the call at once."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from temporalio import workflow
from temporalio.client import WorkflowFailureError
from temporalio.exceptions import ActivityError, ApplicationError
from temporalio.testing import WorkflowEnvironment

with workflow.unsafe.imports_passed_through():
    import httpx
    from prometheus_client import CollectorRegistry

    from activities.llm import LlmActivities
    from fleetops.errors import LLM_REJECTED
    from fleetops.incidents import EvidenceItem, LlmOutcome, LlmPolicy, Severity, TriageRequest
    from fleetops.settings import LlmSettings
    from tests.conftest import new_worker
    from tests.fakes.llm import FakeLlm, FakeReply, answer_json
    from workflows.activity_options import call


@workflow.defn(name="TriageProbe")
class TriageProbe:
    @workflow.run
    async def run(self, req: TriageRequest) -> tuple[LlmPolicy, LlmOutcome]:
        policy = await workflow.execute_activity_method(
            LlmActivities.llm_policy, start_to_close_timeout=timedelta(seconds=10)
        )
        outcome = await call(LlmActivities.llm_triage, req, summary="triage")
        return policy, outcome


def request() -> TriageRequest:
    return TriageRequest(
        incident_id="incident/checkout/abc",
        agent_id="checkout",
        title="HighErrorRate",
        rule_severity=Severity.SEV3,
        rule_category="errors",
        evidence=[
            EvidenceItem(
                ref="E1", kind="logs", source="x.log", text="500s", collected_at=datetime.now(UTC)
            )
        ],
    )


async def run_probe(env: WorkflowEnvironment, fake: FakeLlm) -> tuple[LlmPolicy, LlmOutcome]:
    async with httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(retries=0)) as http:
        acts = LlmActivities(
            http, LlmSettings(base_url=fake.base_url), registry=CollectorRegistry()
        )
        async with new_worker(
            env.client, workflows=[TriageProbe], activities=[acts.llm_triage, acts.llm_policy]
        ) as worker:
            return await env.client.execute_workflow(
                TriageProbe.run,
                request(),
                id=f"triage-{uuid.uuid4()}",
                task_queue=worker.task_queue,
                result_type=tuple[LlmPolicy, LlmOutcome],  # type: ignore[arg-type]
            )


async def test_rate_limited_then_answered_through_temporal(env: WorkflowEnvironment) -> None:
    with FakeLlm() as fake:
        fake.push(
            FakeReply(status=429, headers={"Retry-After": "2"}), FakeReply(content=answer_json())
        )
        policy, outcome = await run_probe(env, fake)
        assert len(fake.requests) == 2
    assert policy.configured and policy.budget_tokens_per_incident == 20000
    assert outcome.failure is None and outcome.answer is not None
    assert outcome.answer.severity == Severity.SEV3


async def test_rejection_is_not_retried(env: WorkflowEnvironment) -> None:
    with FakeLlm() as fake:
        fake.push(FakeReply(status=401, raw="bad key"))
        with pytest.raises(WorkflowFailureError) as err:
            await run_probe(env, fake)
        assert len(fake.requests) == 1
    cause = err.value.cause
    assert isinstance(cause, ActivityError)
    assert isinstance(cause.cause, ApplicationError) and cause.cause.type == LLM_REJECTED
