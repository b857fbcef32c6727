"""Node cordon / drain / uncordon through the Eviction API, against the Kubernetes fake.

The official client talks HTTP to ``tests/fakes/k8s_api.py``, which places the agent's pods on
nodes, answers evictions of pods a PodDisruptionBudget protects with 429 a set number of times,
and recreates evicted Deployment pods on schedulable nodes. The activities run in
``ActivityEnvironment`` (heartbeats recorded).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes.client import ApiClient, Configuration
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.platform.k8s_drain import NodeDrain
from activities.platform.kubernetes import KubernetesPlatform
from fleetops.drain import DrainRequest
from fleetops.errors import (
    DRAIN_TIMEOUT,
    INVALID_INPUT,
    KUBERNETES_UNAVAILABLE,
    NOT_SUPPORTED,
    PLATFORM_ERROR,
)
from fleetops.models import AgentSpec
from fleetops.settings import KubernetesSettings
from tests.fakes.k8s_api import FakeKubernetes

NS = KubernetesSettings().namespace
SPEC = AgentSpec(agent_id="echo", image="fleetops/sample-agent:v1", replicas=2)


@pytest.fixture
def fake() -> Iterator[FakeKubernetes]:
    with FakeKubernetes(controller_delay=0.01, ready_delay=0.02) as fake:
        fake.add_node("node-a")
        fake.add_node("node-b")
        yield fake


@pytest.fixture
def api(fake: FakeKubernetes) -> ApiClient:
    return ApiClient(Configuration(host=fake.url))


@pytest.fixture
async def platform(api: ApiClient) -> KubernetesPlatform:
    platform = KubernetesPlatform(api, KubernetesSettings(rollout_poll_seconds=0.02))
    await platform.ensure(SPEC, 2, "blue")
    return platform


class Env:
    """An ActivityEnvironment that keeps the heartbeats it saw."""

    def __init__(self) -> None:
        self.env = ActivityEnvironment()
        self.beats: list[Any] = []
        self.env.on_heartbeat = lambda *details: self.beats.append(details)

    async def run(self, fn: Any, *args: Any) -> Any:
        return await self.env.run(fn, *args)


def agent_pods(fake: FakeKubernetes, node: str) -> list[str]:
    return [p for p in fake.pods_on(node) if p.startswith(f"{NS}/echo-blue-")]


async def test_drain_evicts_retries_the_pdb_skips_daemonsets_and_the_agent_moves(
    fake: FakeKubernetes, api: ApiClient, platform: KubernetesPlatform
) -> None:
    drain, env = NodeDrain(api, NS), Env()
    assert await env.run(drain.agent_nodes, "echo") == ["node-a", "node-b"]
    fake.add_pod("kube-system", "log-agent-x", "node-a", owner_kind="DaemonSet")
    fake.add_pod("kube-system", "kube-proxy-node-a", "node-a", mirror=True)
    fake.add_pod("other", "batch-job", "node-a", labels={"app": "batch"})
    fake.add_pdb(NS, {"fleetops.io/agent": "echo"}, refuse=3)
    on_a = agent_pods(fake, "node-a")
    assert len(on_a) == 1

    await env.run(drain.cordon_node, "node-a")
    await env.run(drain.cordon_node, "node-a")  # idempotent
    assert fake.unschedulable("node-a")
    result = await env.run(
        drain.drain_node, DrainRequest(node="node-a", retry_interval_seconds=0.02)
    )

    assert sorted(result.evicted) == sorted([*on_a, "other/batch-job"])
    assert result.skipped == ["kube-system/kube-proxy-node-a", "kube-system/log-agent-x"]
    assert result.retries == 3  # three 429s from the PodDisruptionBudget, then allowed
    assert any("PodDisruptionBudget" in str(b) for b in env.beats), "no heartbeat while retrying"
    # Only what must stay is left on the node; the agent's pod was recreated elsewhere.
    assert fake.pods_on("node-a") == result.skipped
    replicas = await platform._wait_ready("echo", "blue", 2)
    assert len(replicas) == 2
    assert await env.run(drain.agent_nodes, "echo") == ["node-b"]
    evictions = [r for r in fake.requests if r.resource == "pods/eviction"]
    assert [r.status for r in evictions].count(429) == 3
    assert all(r.method == "POST" for r in evictions)

    again = await env.run(drain.drain_node, DrainRequest(node="node-a"))
    assert (again.evicted, again.retries) == ([], 0)  # idempotent: nothing left to evict
    await env.run(drain.uncordon_node, "node-a")
    assert not fake.unschedulable("node-a")


async def test_drain_waits_until_evicted_pods_are_gone(
    fake: FakeKubernetes, api: ApiClient, platform: KubernetesPlatform
) -> None:
    fake.termination_delay = 0.5
    on_b = agent_pods(fake, "node-b")
    result = await Env().run(NodeDrain(api, NS).drain_node, DrainRequest(node="node-b"))
    assert result.evicted == on_b
    assert result.seconds >= 0.5
    assert not set(on_b) & set(fake.pods_on("node-b")), "returned before the pod was gone"


async def test_a_pdb_that_never_allows_fails_the_drain_at_its_deadline(
    fake: FakeKubernetes, api: ApiClient, platform: KubernetesPlatform
) -> None:
    fake.add_pdb(NS, {"fleetops.io/agent": "echo"}, refuse=10_000)
    request = DrainRequest(node="node-a", timeout_seconds=0.3, retry_interval_seconds=0.05)
    with pytest.raises(ApplicationError) as info:
        await Env().run(NodeDrain(api, NS).drain_node, request)
    assert info.value.type == DRAIN_TIMEOUT and info.value.non_retryable
    assert agent_pods(fake, "node-a")[0] in info.value.message
    assert "PodDisruptionBudget" in info.value.message


@pytest.mark.parametrize(
    ("code", "retryable"), [(500, True), (503, True), (409, True), (403, False), (422, False)]
)
async def test_eviction_errors_are_mapped_by_status(
    fake: FakeKubernetes, api: ApiClient, platform: KubernetesPlatform, code: int, retryable: bool
) -> None:
    fake.fail_next(code, method="POST", resource="pods/eviction")
    with pytest.raises(ApplicationError) as info:
        await Env().run(NodeDrain(api, NS).drain_node, DrainRequest(node="node-a"))
    assert info.value.non_retryable is not retryable
    assert info.value.type == (KUBERNETES_UNAVAILABLE if retryable else PLATFORM_ERROR)


async def test_bad_names_and_missing_nodes_are_refused(
    fake: FakeKubernetes, api: ApiClient
) -> None:
    drain, env = NodeDrain(api, NS), Env()
    for call, arg in (
        (drain.cordon_node, "Not_A_Node"),
        (drain.uncordon_node, ""),
        (drain.agent_nodes, "../x"),
    ):
        with pytest.raises(ApplicationError) as info:
            await env.run(call, arg)
        assert info.value.type == INVALID_INPUT and info.value.non_retryable
    with pytest.raises(ApplicationError) as info:
        await env.run(drain.cordon_node, "no-such-node")
    assert info.value.type == PLATFORM_ERROR and info.value.non_retryable
    with pytest.raises(ValueError):
        DrainRequest(node="node-a", timeout_seconds=0)


async def test_on_the_local_platform_there_are_no_nodes() -> None:
    drain, env = NodeDrain(None, NS), Env()
    assert await env.run(drain.agent_nodes, "echo") == []
    with pytest.raises(ApplicationError) as info:
        await env.run(drain.cordon_node, "node-a")
    assert info.value.type == NOT_SUPPORTED and info.value.non_retryable
