"""Incident activities on the kubernetes platform, against the wire-level fake API server:
evidence reads pod logs (``tailLines``/``limitBytes``), a rate limit is refused as unsupported."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
from kubernetes.client import ApiClient, Configuration
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment

from activities.containment import ContainmentActivities
from activities.incident_evidence import EvidenceActivities
from activities.platform.kubernetes import KubernetesPlatform
from fleetops.incidents import ContainmentAction, ContainmentRequest, EvidenceRequest
from fleetops.models import AgentSpec
from fleetops.settings import KubernetesSettings, MetricsSettings
from tests.fakes.k8s_api import FakeKubernetes


async def test_pod_logs_are_evidence_and_rate_limits_are_not_supported(
    env: WorkflowEnvironment,
) -> None:
    spec = AgentSpec(agent_id="echo", image="fleetops/sample-agent:v1")
    with FakeKubernetes(controller_delay=0.01, ready_delay=0.05) as fake:
        platform = KubernetesPlatform(
            ApiClient(Configuration(host=fake.url)), KubernetesSettings(rollout_poll_seconds=0.02)
        )
        await platform.ensure(spec, 2, "blue")
        first, second = fake.names("pods")
        fake.pod_logs = {first: "".join(f"line {i}\n" for i in range(100)), second: "short\n"}
        now = datetime.now(UTC)
        req = EvidenceRequest(
            incident_id="incident/echo/k", agent_id="echo", since=now - timedelta(minutes=1),
            until=now, log_lines=10, max_chars_per_item=300,
        )  # fmt: skip
        async with httpx.AsyncClient() as http:
            acts = EvidenceActivities(env.client, platform, http, MetricsSettings())
            items = await ActivityEnvironment().run(acts.gather_evidence, req)
        logs = {i.source: i for i in items if i.kind == "logs"}
        assert set(logs) == {f"pod/{first}", f"pod/{second}"}
        long = logs[f"pod/{first}"]
        assert long.text.endswith("line 99") and "line 89" not in long.text
        assert long.truncated is not None and "earlier output left out" in long.truncated
        assert logs[f"pod/{second}"].text.endswith("short")
        assert logs[f"pod/{second}"].truncated is None
        log_calls = [r for r in fake.requests if r.resource == "pods/log"]
        assert {r.query["tailLines"] for r in log_calls} == {"10"}
        assert {r.query["limitBytes"] for r in log_calls} == {"1200"}
        # No AgentLifecycle runs here: its status is a note, and so are the metrics.
        assert [i.kind for i in items][:2] == ["note", "note"]

        contain = ContainmentActivities(env.client, platform)
        limited = await ActivityEnvironment().run(
            contain.run_containment,
            ContainmentRequest(
                incident_id="incident/echo/k",
                agent_id="echo",
                action=ContainmentAction.RATE_LIMIT,
                requested_by="alice",
                rate_limit_rps=5,
            ),
        )
        assert not limited.ok and "not supported on kubernetes" in limited.detail
