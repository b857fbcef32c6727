"""KubernetesPlatform against the fake API server (tests/fakes/k8s_api.py) with the real client.

The fake's controller makes pods ready ``ready_delay`` seconds after it creates them, so every
``ensure`` really waits for its rollout.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from kubernetes.client import ApiClient, Configuration
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.platform import PlatformActivities, PlatformError, build_platform
from activities.platform._k8s_manifests import deployment_manifest
from activities.platform.kubernetes import KubernetesPlatform
from fleetops.models import AgentSpec, DeprovisionRequest, ProvisionRequest
from fleetops.settings import KubernetesSettings, Settings
from tests.conftest import assert_eventually
from tests.fakes.k8s_api import APPLY, FakeKubernetes, RecordedRequest

NS = "agents"
SPEC = AgentSpec(agent_id="echo", image="fleetops/sample-agent:v1", env={"MODE": "test"})
SPEC_V2 = SPEC.model_copy(update={"image": "fleetops/sample-agent:v2", "version": "v2"})
DEPLOYMENTS = f"/apis/apps/v1/namespaces/{NS}/deployments"
SERVICES = f"/api/v1/namespaces/{NS}/services"


@pytest.fixture
def fake() -> Iterator[FakeKubernetes]:
    with FakeKubernetes(controller_delay=0.05, ready_delay=0.2) as server:
        yield server


@pytest.fixture
def settings() -> KubernetesSettings:
    return KubernetesSettings(namespace=NS, rollout_poll_seconds=0.05)


@pytest.fixture
async def platform(
    fake: FakeKubernetes, settings: KubernetesSettings
) -> AsyncIterator[KubernetesPlatform]:
    api = ApiClient(Configuration(host=fake.url))
    yield KubernetesPlatform(api, settings, rollout_timeout_seconds=10)
    api.close()


def requests(fake: FakeKubernetes, method: str, path: str) -> list[RecordedRequest]:
    with fake.lock:
        return [r for r in fake.requests if r.method == method and r.path == path]


async def test_ensure_applies_deployment_waits_and_creates_services(
    fake: FakeKubernetes, platform: KubernetesPlatform
) -> None:
    started = time.monotonic()
    replicas = await platform.ensure(SPEC, 2, "blue")

    assert time.monotonic() - started >= fake.ready_delay
    assert [(r.index, r.endpoint, r.running, r.color, r.version) for r in replicas] == [
        (0, "http://127.0.0.1:8080", True, "blue", "v1"),
        (1, "http://127.0.0.1:8080", True, "blue", "v1"),
    ]
    (apply,) = requests(fake, "PATCH", f"{DEPLOYMENTS}/echo-blue")
    assert apply.content_type == APPLY
    assert apply.query["fieldManager"] == "fleetops" and apply.query["force"] == "true"
    assert apply.status == 201
    assert len(requests(fake, "GET", f"{DEPLOYMENTS}/echo-blue")) >= 2  # polled until ready
    manifest = apply.body
    labels = {
        "app.kubernetes.io/name": "echo",
        "app.kubernetes.io/managed-by": "fleetops",
        "fleetops.io/agent": "echo",
        "fleetops.io/color": "blue",
        "fleetops.io/version": "v1",
    }
    assert manifest["metadata"]["labels"] == labels
    assert manifest["spec"]["replicas"] == 2
    assert manifest["spec"]["selector"]["matchLabels"] == {
        "fleetops.io/agent": "echo",
        "fleetops.io/color": "blue",
    }
    assert manifest["spec"]["template"]["metadata"]["labels"] == labels
    (container,) = manifest["spec"]["template"]["spec"]["containers"]
    assert container["name"] == "agent" and container["image"] == "fleetops/sample-agent:v1"
    assert "args" not in container
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env == {
        "MODE": "test",
        "AGENT_ID": "echo",
        "AGENT_VERSION": "v1",
        "HOST": "0.0.0.0",
        "PORT": "8080",
    }
    assert container["resources"] == {
        "requests": {"cpu": "250m", "memory": "256Mi"},
        "limits": {"cpu": "1000m", "memory": "512Mi"},
    }
    probe = {
        "httpGet": {"path": "/health", "port": 8080},
        "periodSeconds": 10,
        "timeoutSeconds": 2,
        "failureThreshold": 3,
    }
    assert container["readinessProbe"] == probe and container["livenessProbe"] == probe

    for name in ("echo", "echo-preview"):
        (svc_apply,) = requests(fake, "PATCH", f"{SERVICES}/{name}")
        assert svc_apply.content_type == APPLY and svc_apply.query["fieldManager"] == "fleetops"
        svc = fake.get("services", name, NS)
        assert svc is not None
        assert svc["spec"]["selector"] == {"fleetops.io/agent": "echo", "fleetops.io/color": "blue"}
        assert svc["spec"]["ports"] == [
            {"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}
        ]
    info = await platform.describe_service("echo")
    assert info is not None
    assert (info.active_color, info.preview_color, info.generation) == ("blue", None, 0)
    assert info.active_url == f"http://echo.{NS}.svc:80" and info.preview_url is None


async def test_re_ensure_is_idempotent(fake: FakeKubernetes, platform: KubernetesPlatform) -> None:
    first = await platform.ensure(SPEC, 2, "blue")
    pods = fake.names("pods")
    second = await platform.ensure(SPEC, 2, "blue")

    assert second == first
    assert fake.names("pods") == pods
    deployment = fake.get("deployments", "echo-blue", NS)
    assert deployment is not None and deployment["metadata"]["generation"] == 1
    assert len(requests(fake, "PATCH", f"{SERVICES}/echo")) == 1  # Services applied once


async def test_other_colour_switch_and_rollback(
    fake: FakeKubernetes, platform: KubernetesPlatform
) -> None:
    await platform.ensure(SPEC, 2, "blue")
    blue_pods = fake.names("pods")
    green = await platform.ensure(SPEC_V2, 1, "green")

    assert [(r.color, r.version, r.running) for r in green] == [("green", "v2", True)]
    assert set(blue_pods) < set(fake.names("pods"))  # blue untouched
    assert [r.color for r in await platform.list_replicas("echo")] == ["blue", "blue", "green"]
    info = await platform.describe_service("echo")
    assert info is not None and info.active_color == "blue"  # ensure never moves traffic

    info = await platform.switch_traffic("echo", "green", "blue")
    assert (info.active_color, info.preview_color, info.generation) == ("green", "blue", 1)
    assert info.preview_url == f"http://echo-preview.{NS}.svc:80"
    last = requests(fake, "PATCH", f"{SERVICES}/echo")[-1]
    assert last.content_type == APPLY and last.query["fieldManager"] == "fleetops"
    assert last.body["spec"]["selector"]["fleetops.io/color"] == "green"
    assert last.body["metadata"]["annotations"] == {"fleetops.io/generation": "1"}
    for name, color in (("echo", "green"), ("echo-preview", "blue")):
        svc = fake.get("services", name, NS)
        assert svc is not None and svc["spec"]["selector"]["fleetops.io/color"] == color
    assert await platform.describe_service("echo") == info

    patches = len(fake.requests)
    assert await platform.switch_traffic("echo", "green", "blue") == info  # a retry: no-op
    assert not [r for r in fake.requests[patches:] if r.method == "PATCH"]

    rollback = await platform.switch_traffic("echo", "blue")
    assert (rollback.active_color, rollback.preview_color, rollback.generation) == (
        "blue",
        None,
        2,
    )
    for name in ("echo", "echo-preview"):
        svc = fake.get("services", name, NS)
        assert svc is not None and svc["spec"]["selector"]["fleetops.io/color"] == "blue"


async def test_switch_without_service_is_platform_error(platform: KubernetesPlatform) -> None:
    with pytest.raises(PlatformError, match="run ensure first"):
        await platform.switch_traffic("echo", "green")


async def test_restart_deletes_pods_and_waits(
    fake: FakeKubernetes, platform: KubernetesPlatform
) -> None:
    await platform.ensure(SPEC, 2, "blue")
    first, second = fake.names("pods")
    replicas = await platform.restart(SPEC, [0], "blue")

    assert [r.method for r in requests(fake, "DELETE", f"/api/v1/namespaces/{NS}/pods/{first}")]
    pods = fake.names("pods")
    assert first not in pods and second in pods and len(pods) == 2
    assert len(replicas) == 2 and all(r.running for r in replicas)


async def test_scale_down_keeps_the_deployment(
    fake: FakeKubernetes, platform: KubernetesPlatform
) -> None:
    await platform.ensure(SPEC, 2, "blue")
    assert await platform.scale_down("echo", "blue") == 2

    (scale,) = requests(fake, "PATCH", f"{DEPLOYMENTS}/echo-blue")[1:]
    assert scale.content_type == "application/merge-patch+json"
    assert scale.body == {"spec": {"replicas": 0}}
    deployment = fake.get("deployments", "echo-blue", NS)
    assert deployment is not None and deployment["spec"]["replicas"] == 0

    async def no_pods() -> None:
        assert await platform.list_replicas("echo", "blue") == []

    await assert_eventually(no_pods, timeout=5)
    assert await platform.scale_down("echo", "green") == 0  # no green Deployment: nothing to do


async def test_stop_all_removes_everything(
    fake: FakeKubernetes, platform: KubernetesPlatform
) -> None:
    await platform.ensure(SPEC, 2, "blue")
    await platform.ensure(SPEC_V2, 1, "green")
    assert await platform.stop_all("echo") == 3

    assert fake.names("deployments") == fake.names("services") == fake.names("pods") == []
    assert await platform.stop_all("echo") == 0  # 404s ignored
    assert await platform.describe_service("echo") is None


async def test_spec_without_image_is_platform_error(
    fake: FakeKubernetes, platform: KubernetesPlatform
) -> None:
    with pytest.raises(PlatformError, match="needs `image`"):
        await platform.ensure(AgentSpec(agent_id="echo"), 1)
    assert fake.requests == []


def test_command_becomes_args(settings: KubernetesSettings) -> None:
    spec = SPEC.model_copy(update={"command": ["serve", "--fast"]})
    manifest = deployment_manifest(spec, 1, "green", settings)
    (container,) = manifest["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["serve", "--fast"] and "command" not in container


async def test_names_too_long_are_platform_errors(platform: KubernetesPlatform) -> None:
    spec = SPEC.model_copy(update={"agent_id": "a" * 56})
    with pytest.raises(PlatformError, match="fits in 63"):
        await platform.ensure(spec, 1)


@pytest.mark.parametrize(
    ("code", "retryable"),
    [(c, False) for c in (400, 401, 403, 405, 410, 422)]
    + [(c, True) for c in (404, 409, 429, 500, 502, 503, 504)],
)
async def test_errors_map_by_status(
    fake: FakeKubernetes, platform: KubernetesPlatform, code: int, retryable: bool
) -> None:
    fake.fail_next(code, method="PATCH", resource="deployments")
    expected = ApplicationError if retryable else PlatformError
    with pytest.raises(expected, match=f"HTTP {code}: ") as caught:
        await platform.ensure(SPEC, 1)
    if retryable:
        assert isinstance(caught.value, ApplicationError) and not caught.value.non_retryable
        assert caught.value.type == "KubernetesUnavailable"
    if code == 403:
        assert "worker-rbac.yaml" in str(caught.value)


async def test_unreachable_api_is_retryable(settings: KubernetesSettings) -> None:
    with FakeKubernetes() as gone:
        url = gone.url
    api = ApiClient(Configuration(host=url))
    api.configuration.retries = False
    with pytest.raises(ApplicationError, match="unreachable") as caught:
        await KubernetesPlatform(api, settings).list_replicas("echo")
    assert not caught.value.non_retryable


async def test_rollout_timeout_is_retryable(
    fake: FakeKubernetes, settings: KubernetesSettings
) -> None:
    fake.ready_delay = 60
    platform = KubernetesPlatform(
        ApiClient(Configuration(host=fake.url)), settings, rollout_timeout_seconds=0.3
    )
    with pytest.raises(ApplicationError, match="not rolled out") as caught:
        await platform.ensure(SPEC, 1)
    assert caught.value.type == "RolloutTimeout" and not caught.value.non_retryable


async def test_platform_activities_over_kubernetes(
    fake: FakeKubernetes, platform: KubernetesPlatform
) -> None:
    env = ActivityEnvironment()
    heartbeats: list[object] = []
    env.on_heartbeat = lambda *details: heartbeats.append(details)
    activities = PlatformActivities(platform)

    replicas = await env.run(
        activities.provision_replicas, ProvisionRequest(spec=SPEC, replicas=1, color="blue")
    )
    assert [r.running for r in replicas] == [True]
    assert heartbeats  # the rollout wait heartbeats
    assert await env.run(activities.list_replicas, "echo") == replicas

    fake.fail_next(403, method="DELETE")
    with pytest.raises(ApplicationError, match="HTTP 403") as caught:
        await env.run(activities.deprovision_agent, DeprovisionRequest(agent_id="echo"))
    assert caught.value.non_retryable and caught.value.type == "PlatformError"
    assert await env.run(activities.deprovision_agent, DeprovisionRequest(agent_id="echo")) == 1


async def test_from_settings_and_build_platform(fake: FakeKubernetes, tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: fake\n"
        f"clusters: [{{name: fake, cluster: {{server: '{fake.url}'}}}}]\n"
        "users: [{name: u, user: {token: t}}]\n"
        "contexts: [{name: fake, context: {cluster: fake, user: u, namespace: x}}]\n"
    )
    settings = Settings(platform={"kind": "kubernetes", "kubernetes": {"kubeconfig": kubeconfig}})
    platform = build_platform(settings)
    assert isinstance(platform, KubernetesPlatform)
    assert await platform.describe_service("echo") is None
    (read,) = fake.requests
    assert read.path == "/api/v1/namespaces/fleetops/services/echo"

    with pytest.raises(PlatformError, match="KUBECONFIG"):
        KubernetesPlatform.from_settings(KubernetesSettings(kubeconfig=tmp_path / "missing"))
