"""The worker's Kubernetes manifests (infra/k8s/) are valid, and its Role is least privilege.

Validation: every object is deserialized into the official client's model (required fields are
enforced) and serialized back; a field lost on the way (a typo, a field at the wrong level) fails.

Least privilege: a full platform flow runs against the fake API server, each recorded request is
mapped to the (API group, resource, verb) RBAC authorizes it as, and the Role must grant exactly
that set. The mapping follows the Kubernetes authorization docs (GET of one object -> get, of a
collection -> list, ?watch -> watch, POST -> create, PATCH -> patch, DELETE -> delete, of a
collection -> deletecollection), plus one rule from kube-apiserver (endpoints/handlers/patch.go):
a server-side apply that creates the object (HTTP 201) is also authorized as ``create``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes.client import ApiClient, Configuration
from temporalio.testing import ActivityEnvironment

from activities.platform.k8s_drain import NodeDrain
from activities.platform.kubernetes import KubernetesPlatform
from activities.secret_stores import LocalStore, SecretResolver
from fleetops.drain import DrainRequest
from fleetops.models import AgentSpec
from fleetops.settings import KubernetesSettings
from tests.fakes.k8s_api import FakeKubernetes, RecordedRequest

K8S = Path(__file__).resolve().parent.parent / "infra" / "k8s"
MODELS = {
    ("v1", "ServiceAccount"): "V1ServiceAccount",
    ("rbac.authorization.k8s.io/v1", "Role"): "V1Role",
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): "V1RoleBinding",
    ("rbac.authorization.k8s.io/v1", "ClusterRole"): "V1ClusterRole",
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"): "V1ClusterRoleBinding",
    ("apps/v1", "Deployment"): "V1Deployment",
}
Triple = tuple[str, str, str]  # (apiGroup, resource, verb)


def load(name: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all((K8S / name).read_text()) if doc]


def objects() -> dict[str, dict[str, Any]]:
    """All objects of infra/k8s by kind (each kind occurs once)."""
    found = {
        doc["kind"]: doc
        for name in sorted(p.name for p in K8S.glob("*.yaml"))
        for doc in load(name)
    }
    assert len(found) == sum(len(load(p.name)) for p in K8S.glob("*.yaml")), "duplicate kinds"
    return found


@pytest.mark.parametrize("name", ["worker-rbac.yaml", "worker-deployment.yaml"])
def test_manifests_match_the_client_models(name: str) -> None:
    api = ApiClient()
    for doc in load(name):
        model = MODELS[(doc["apiVersion"], doc["kind"])]
        parsed = api.deserialize(json.dumps(doc), model, "application/json")
        assert api.sanitize_for_serialization(parsed) == doc, f"{doc['kind']}: unknown fields"
        if not doc["kind"].startswith("Cluster"):
            assert doc["metadata"]["namespace"] == KubernetesSettings().namespace


def test_binding_and_worker_use_the_service_account() -> None:
    found = objects()
    account, role, binding = found["ServiceAccount"], found["Role"], found["RoleBinding"]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "fleetops-worker", "namespace": "fleetops"}
    ]
    assert account["metadata"]["name"] == "fleetops-worker"
    cluster = found["ClusterRoleBinding"]
    assert cluster["roleRef"]["name"] == found["ClusterRole"]["metadata"]["name"]
    assert cluster["roleRef"]["kind"] == "ClusterRole"
    assert cluster["subjects"] == binding["subjects"]
    pod = found["Deployment"]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "fleetops-worker"
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["FLEETOPS_PLATFORM__KIND"] == "kubernetes"
    assert env["FLEETOPS_TEMPORAL__ADDRESS"]


def verbs(request: RecordedRequest) -> set[str]:
    """The RBAC verbs the API server authorizes ``request`` as."""
    if request.method == "GET":
        return {"get"} if request.name else {"watch" if request.query.get("watch") else "list"}
    if request.method == "DELETE":
        return {"delete"} if request.name else {"deletecollection"}
    if request.method == "PATCH":
        return {"patch", "create"} if request.status == 201 else {"patch"}
    return {"create"} if request.method == "POST" else {request.method.lower()}


@pytest.fixture
async def used_triples(tmp_path: Path) -> AsyncIterator[set[Triple]]:
    """Everything the platform does in one full flow, as RBAC triples."""
    store = LocalStore(tmp_path)
    store.write("agents/echo", {"api": "value"}, cas=0)
    ref = {"env": "API_KEY", "path": "agents/echo", "key": "api"}
    spec = AgentSpec(agent_id="echo", image="fleetops/sample-agent:v1", secrets=[ref])
    v2 = spec.model_copy(update={"image": "fleetops/sample-agent:v2", "version": "v2"})
    settings = KubernetesSettings(rollout_poll_seconds=0.02)
    with FakeKubernetes(controller_delay=0.01, ready_delay=0.05) as fake:
        platform = KubernetesPlatform(
            ApiClient(Configuration(host=fake.url)), settings, secrets=SecretResolver(store)
        )
        await platform.ensure(spec, 2, "blue")
        await platform.ensure(v2, 2, "green")
        await platform.switch_traffic("echo", "green", "blue")
        await platform.switch_traffic("echo", "blue", "green")
        await platform.restart(spec, [1], "blue")
        await platform.rolling_restart(
            spec, "blue", rollout_id="r1", requested_at=datetime.now(UTC), ready_timeout=30
        )
        await ActivityEnvironment().run(
            NodeDrain(platform.api_client, "fleetops").agent_nodes, "echo"
        )
        await platform.scale_down("echo", "green")
        await platform.describe_service("echo")
        await platform.list_replicas("echo")
        fake.pod_logs = {name: "one\ntwo\nthree\n" for name in fake.names("pods")}
        tails = await platform.replica_logs("echo", lines=2, max_bytes=1000)
        blue = [t for t in tails if t.replica.startswith("blue/")]  # green may still terminate
        assert len(blue) == 2 and all(t.text == "two\nthree" and t.cut for t in blue), tails
        await platform.stop_all("echo")
        # 404s are expected (a Service read before it exists) and are authorized like any call.
        assert all(r.status < 400 or r.status == 404 for r in fake.requests), "an error"
        yield {(r.group, r.resource, v) for r in fake.requests for v in verbs(r)}


@pytest.fixture
async def drain_triples() -> AsyncIterator[set[Triple]]:
    """Everything cordon, drain and uncordon do, as RBAC triples."""
    spec = AgentSpec(agent_id="echo", image="fleetops/sample-agent:v1")
    settings = KubernetesSettings(rollout_poll_seconds=0.02)
    with FakeKubernetes(controller_delay=0.01, ready_delay=0.05) as fake:
        fake.add_node("node-a")
        platform = KubernetesPlatform(ApiClient(Configuration(host=fake.url)), settings)
        await platform.ensure(spec, 1, "blue")
        fake.add_pod("kube-system", "ds-pod", "node-a", owner_kind="DaemonSet")
        fake.add_pdb("fleetops", {"fleetops.io/agent": "echo"}, refuse=1)
        before = len(fake.requests)
        drain, env = NodeDrain(platform.api_client, "fleetops"), ActivityEnvironment()
        await env.run(drain.cordon_node, "node-a")
        await env.run(drain.drain_node, DrainRequest(node="node-a", retry_interval_seconds=0.01))
        await env.run(drain.uncordon_node, "node-a")
        made = fake.requests[before:]
        assert all(r.status < 400 or r.status == 429 for r in made), "an error"
        yield {(r.group, r.resource, v) for r in made for v in verbs(r)}


def rules_of(kind: str) -> set[Triple]:
    rules = objects()[kind]["rules"]
    assert all("resourceNames" not in rule for rule in rules)
    return {
        (group, resource, verb)
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def test_cluster_role_grants_exactly_what_node_maintenance_uses(
    drain_triples: set[Triple],
) -> None:
    granted = rules_of("ClusterRole")
    assert not any("*" in t for t in granted), "no wildcards"
    assert drain_triples == granted
    assert granted == {
        ("", "nodes", "patch"),
        ("", "pods", "list"),
        ("", "pods/eviction", "create"),
    }


def test_role_grants_exactly_what_the_platform_uses(used_triples: set[Triple]) -> None:
    rules = objects()["Role"]["rules"]
    granted = {
        (group, resource, verb)
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    assert not any("*" in t for t in granted), "no wildcards"
    assert all("resourceNames" not in rule for rule in rules)
    assert used_triples - granted == set(), "the worker would get 403 for these"
    assert granted - used_triples == set(), "granted but never used: remove them"
    assert used_triples == {
        ("apps", "deployments", "get"),
        ("apps", "deployments", "create"),
        ("apps", "deployments", "patch"),
        ("apps", "deployments", "delete"),
        ("", "services", "get"),
        ("", "services", "create"),
        ("", "services", "patch"),
        ("", "services", "delete"),
        ("", "pods", "list"),
        ("", "pods", "delete"),
        ("", "secrets", "get"),
        ("", "secrets", "create"),
        ("", "secrets", "patch"),
        ("", "secrets", "delete"),
        ("", "pods/log", "get"),
    }
