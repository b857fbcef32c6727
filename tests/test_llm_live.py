"""``llm_triage`` against any OpenAI-compatible endpoint: ``FLEETOPS_TEST_LLM_BASE_URL``.

Optional ``FLEETOPS_TEST_LLM_MODEL``, ``FLEETOPS_TEST_LLM_API_KEY`` and
``FLEETOPS_TEST_LLM_STRUCTURED_OUTPUT`` (``json_schema``, the default, or ``json_object``).
Skipped when the base URL is unset (CI has no hosted LLM; the real small model runs in
``test_llm_real.py``). Checks the protocol, not the judgement.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime

import httpx
import pytest
from prometheus_client import CollectorRegistry
from temporalio.testing import ActivityEnvironment

from activities.llm import LlmActivities
from fleetops.incidents import EvidenceItem, Severity, TriageRequest
from fleetops.llm_answers import screen_proposals
from fleetops.settings import LlmSettings

pytestmark = pytest.mark.live_llm


def live_settings() -> LlmSettings:
    base_url = os.environ.get("FLEETOPS_TEST_LLM_BASE_URL")
    if not base_url:
        pytest.skip("FLEETOPS_TEST_LLM_BASE_URL is unset (an OpenAI-compatible endpoint)")
    fields: dict[str, object] = {"base_url": base_url, "context_tokens": {}}
    for name in ("model", "api_key", "structured_output"):
        value = os.environ.get(f"FLEETOPS_TEST_LLM_{name.upper()}")
        if value:
            fields[name] = value
    return LlmSettings.model_validate(fields)


async def test_live_endpoint_answers_a_valid_triage() -> None:
    settings = live_settings()
    evidence = EvidenceItem(
        ref="E1",
        kind="logs",
        source="checkout-blue-0.log",
        text="ERROR POST /checkout 500 upstream payments timeout after 2s\n" * 5,
        collected_at=datetime.now(UTC),
    )
    req = TriageRequest(
        incident_id="incident/checkout/live",
        agent_id="checkout",
        title="HighErrorRate: checkout 5xx above 5% for 5m",
        rule_severity=Severity.SEV3,
        rule_category="errors",
        evidence=[evidence],
    )
    async with httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(retries=0)) as http:
        acts = LlmActivities(http, settings, registry=CollectorRegistry())
        out = await ActivityEnvironment().run(acts.llm_triage, req)
    assert out.failure is None, out
    assert out.answer is not None
    assert out.usage and out.usage[0].input_tokens > 0 and out.usage[0].output_tokens > 0
    _, dropped = screen_proposals(out.answer, "checkout")
    assert dropped == []
