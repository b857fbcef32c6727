"""Kubernetes rolling restart (``kubectl rollout restart``) and config delivery, against the fake.

The restart sets ``kubectl.kubernetes.io/restartedAt`` on the pod template with a JSON merge
patch under its own field manager, so every pod is replaced, and a later server-side apply by
``fleetops`` (an ``ensure``) keeps it: no second rollout. The config reaches the pods as the env
``FLEETOPS_AGENT_CONFIG``; the strategy never lowers the ready count.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from kubernetes.client import ApiClient, Configuration

from activities.platform.kubernetes import RESTART_MANAGER, RESTARTED_AT, KubernetesPlatform
from fleetops.models import AgentSpec
from fleetops.settings import KubernetesSettings
from tests.fakes.k8s_api import FakeKubernetes

NS = KubernetesSettings().namespace
SPEC = AgentSpec(agent_id="echo", image="fleetops/sample-agent:v1", replicas=2)
AT = datetime(2026, 12, 1, 23, 0, tzinfo=UTC)


@pytest.fixture
def fake() -> Iterator[FakeKubernetes]:
    with FakeKubernetes(controller_delay=0.01, ready_delay=0.02) as fake:
        yield fake


@pytest.fixture
def platform(fake: FakeKubernetes) -> KubernetesPlatform:
    api = ApiClient(Configuration(host=fake.url))
    return KubernetesPlatform(api, KubernetesSettings(rollout_poll_seconds=0.02))


def env_of(fake: FakeKubernetes) -> dict[str, str]:
    dep = fake.get("deployments", "echo-blue", NS)
    assert dep is not None
    container = dep["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e["value"] for e in container["env"]}


async def test_rollout_restart_replaces_every_pod_once(
    fake: FakeKubernetes, platform: KubernetesPlatform
) -> None:
    await platform.ensure(SPEC, 2)
    names = set(fake.names("pods"))
    replicas = await platform.rolling_restart(
        SPEC, "blue", rollout_id="r1", requested_at=AT, ready_timeout=30
    )
    assert len(replicas) == 2 and all(r.running for r in replicas)
    assert not names & set(fake.names("pods")), "a pod was not replaced"
    dep = fake.get("deployments", "echo-blue", NS)
    assert dep is not None
    assert dep["spec"]["template"]["metadata"]["annotations"] == {RESTARTED_AT: AT.isoformat()}
    assert dep["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    patches = [r for r in fake.requests if r.method == "PATCH" and r.query.get("fieldManager")]
    assert any(
        r.query["fieldManager"] == RESTART_MANAGER
        and r.content_type == "application/merge-patch+json"
        for r in patches
    )
    # A retry (same requested_at) and a later ensure change nothing: no second rollout.
    after = set(fake.names("pods"))
    await platform.rolling_restart(SPEC, "blue", rollout_id="r1", requested_at=AT, ready_timeout=30)
    await platform.ensure(SPEC, 2)
    assert set(fake.names("pods")) == after


async def test_config_reaches_the_pod_template(
    fake: FakeKubernetes, platform: KubernetesPlatform
) -> None:
    await platform.ensure(SPEC, 2)
    assert "FLEETOPS_AGENT_CONFIG" not in env_of(fake)  # no config: the env is as before
    configured = SPEC.model_copy(update={"config": {"b": 2, "a": "x"}})
    await platform.rolling_restart(
        configured, "blue", rollout_id="r2", requested_at=AT, ready_timeout=30
    )
    assert json.loads(env_of(fake)["FLEETOPS_AGENT_CONFIG"]) == {"a": "x", "b": 2}
