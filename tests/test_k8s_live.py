"""KubernetesPlatform against a real cluster: the core blue-green flow.

Runs only when ``FLEETOPS_TEST_KUBECONFIG`` names a kubeconfig (``FLEETOPS_TEST_KUBECONTEXT``
optionally picks a context), e.g. a kind cluster with the sample agent image loaded:

    docker build -f infra/sample_agent/Dockerfile -t fleetops/sample-agent:latest .
    kind load docker-image fleetops/sample-agent:latest
    FLEETOPS_TEST_KUBECONFIG=~/.kube/config uv run pytest -m live_k8s tests/test_k8s_live.py

Each test works in a throwaway namespace it creates and deletes. ``FLEETOPS_TEST_IMAGE`` picks
the agent image (default ``fleetops/sample-agent:latest``; it must serve ``/health`` on $PORT).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from kubernetes import client, config

from activities.platform.kubernetes import KubernetesPlatform
from fleetops.models import AgentSpec
from fleetops.settings import KubernetesSettings
from tests.conftest import assert_eventually

KUBECONFIG = os.environ.get("FLEETOPS_TEST_KUBECONFIG")
IMAGE = os.environ.get("FLEETOPS_TEST_IMAGE", "fleetops/sample-agent:latest")

pytestmark = [
    pytest.mark.live_k8s,
    pytest.mark.skipif(not KUBECONFIG, reason="set FLEETOPS_TEST_KUBECONFIG to run"),
]


@pytest.fixture
async def platform() -> AsyncIterator[KubernetesPlatform]:
    assert KUBECONFIG is not None
    kubeconfig, context = Path(KUBECONFIG).expanduser(), os.environ.get("FLEETOPS_TEST_KUBECONTEXT")
    namespace = f"fleetops-test-{uuid.uuid4().hex[:8]}"
    api = config.new_client_from_config(str(kubeconfig), context)
    core = client.CoreV1Api(api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    settings = KubernetesSettings(
        namespace=namespace, kubeconfig=kubeconfig, context=context, rollout_poll_seconds=1
    )
    try:
        yield KubernetesPlatform.from_settings(settings)
    finally:
        core.delete_namespace(namespace, propagation_policy="Foreground")
        api.close()


async def test_blue_green_flow(platform: KubernetesPlatform) -> None:
    spec = AgentSpec(
        agent_id="live-echo", image=IMAGE, health={"path": "/health", "interval_seconds": 2}
    )
    blue = await platform.ensure(spec, 2, "blue")
    assert len(blue) == 2 and all(r.running and r.endpoint.startswith("http://") for r in blue)
    assert await platform.ensure(spec, 2, "blue") == blue  # idempotent: same pods

    green = await platform.ensure(spec.model_copy(update={"version": "v2"}), 1, "green")
    assert [(r.color, r.version, r.running) for r in green] == [("green", "v2", True)]
    info = await platform.describe_service("live-echo")
    assert info is not None and (info.active_color, info.generation) == ("blue", 0)

    info = await platform.switch_traffic("live-echo", "green", "blue")
    assert (info.active_color, info.preview_color, info.generation) == ("green", "blue", 1)
    rollback = await platform.switch_traffic("live-echo", "blue")
    assert (rollback.active_color, rollback.generation) == ("blue", 2)

    restarted = await platform.restart(spec, [0], "blue")
    assert len(restarted) == 2 and all(r.running for r in restarted)

    assert await platform.scale_down("live-echo", "green") == 1
    assert await platform.stop_all("live-echo") >= 2
    assert await platform.describe_service("live-echo") is None

    async def gone() -> None:
        assert await platform.list_replicas("live-echo") == []

    await assert_eventually(gone, timeout=120, interval=1)


async def test_pod_answers_health_from_inside_the_cluster_network(
    platform: KubernetesPlatform,
) -> None:
    """Only meaningful where pod IPs are routable from the test host (e.g. a Linux kind node
    network); otherwise skipped."""
    spec = AgentSpec(agent_id="live-probe", image=IMAGE)
    (replica,) = await platform.ensure(spec, 1, "blue")
    try:
        async with httpx.AsyncClient(timeout=2) as http:
            response = await http.get(f"{replica.endpoint}/health")
    except httpx.ConnectError as err:  # a refused connection is a real failure
        if not any(w in str(err).lower() for w in ("unreachable", "no route")):
            raise
        pytest.skip("pod IPs are not routable from this host")
    except httpx.ConnectTimeout:
        pytest.skip("pod IPs are not routable from this host")
    assert response.status_code == 200
