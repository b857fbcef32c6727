"""Platforms resolve ``AgentSpec.secrets`` when they start replicas, never earlier.

Local: the value is in the real replica process's environment (``/proc/<pid>/environ``) and a
restart picks up a rotated version. Kubernetes (fake API server, real client): the Secret
``<agent>-secrets`` holds the values, the Deployment only ``secretKeyRef``s. A missing secret
fails provisioning, non-retryably, naming env, path and key.
"""

from __future__ import annotations

import base64
import json
import os
import sys
from pathlib import Path

import pytest
from kubernetes.client import ApiClient, Configuration
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.platform import LocalPlatform, PlatformActivities
from activities.platform.kubernetes import KubernetesPlatform
from activities.secret_stores import LocalStore, SecretResolver, ops
from fleetops import errors
from fleetops.models import AgentSpec, ProvisionRequest
from fleetops.secrets import SecretRotation
from fleetops.settings import KubernetesSettings, LocalPlatformSettings
from tests.e2e_support import TAG_VAR, port_block, tag

__all__ = ["tag"]

SLEEPER = [sys.executable, "-c", "import time; time.sleep(600)"]
REF = {"env": "OPENAI_API_KEY", "path": "agents/demo", "key": "openai"}


def environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    found = LocalStore(tmp_path / "store")
    found.write("agents/demo", {"openai": "sk-first-value"}, cas=0)
    return found


@pytest.fixture
def local(tmp_path: Path, store: LocalStore) -> LocalPlatform:
    start, _ = port_block()
    settings = LocalPlatformSettings(port_range_start=start, port_range_end=start + 19)
    return LocalPlatform(settings, tmp_path, secrets=SecretResolver(store))


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc")
async def test_local_replicas_get_secret_values_in_their_environment(
    local: LocalPlatform, store: LocalStore, tag: str
) -> None:
    spec = AgentSpec(agent_id=f"s-{tag[:10]}", command=SLEEPER, env={TAG_VAR: tag}, secrets=[REF])
    (replica,) = await local.ensure(spec, 1)
    assert replica.pid is not None and environ(replica.pid)["OPENAI_API_KEY"] == "sk-first-value"
    state = (local._state_dir / "agents" / spec.agent_id / "state.json").read_text()
    assert "sk-first-value" not in state
    ref = ops.rotate(store, SecretRotation(path="agents/demo", key="openai"), "r1")
    (same,) = await local.ensure(spec, 1)
    assert same.pid == replica.pid, "a new version alone does not restart replicas"
    (restarted,) = await local.restart(spec, [0])
    assert restarted.pid is not None and restarted.pid != replica.pid
    assert environ(restarted.pid)["OPENAI_API_KEY"] == store.read("agents/demo").data["openai"]
    assert store.read("agents/demo").version == ref.version
    await local.stop_all(spec.agent_id)


async def test_a_missing_secret_fails_provisioning_for_good(local: LocalPlatform, tag: str) -> None:
    spec = AgentSpec(
        agent_id=f"m-{tag[:10]}",
        command=SLEEPER,
        env={TAG_VAR: tag},
        secrets=[{"env": "DB_PASSWORD", "path": "agents/demo", "key": "db"}],
    )
    with pytest.raises(ApplicationError) as raised:
        await ActivityEnvironment().run(
            PlatformActivities(local).provision_replicas, ProvisionRequest(spec=spec, replicas=1)
        )
    err = raised.value
    assert err.type == errors.SECRET_NOT_FOUND and err.non_retryable
    assert all(s in str(err) for s in ("DB_PASSWORD", "agents/demo", "'db'"))
    assert await local.list_replicas(spec.agent_id) == []


async def test_kubernetes_secret_and_secret_key_refs(tmp_path: Path, store: LocalStore) -> None:
    from tests.fakes.k8s_api import FakeKubernetes

    store.write("agents/green", {"openai": "sk-green"}, cas=0)
    blue = AgentSpec(agent_id="echo", image="img:v1", secrets=[REF])
    green = AgentSpec.model_validate(
        blue.model_dump() | {"version": "v2", "secrets": [REF | {"path": "agents/green"}]}
    )
    settings = KubernetesSettings(rollout_poll_seconds=0.02)
    with FakeKubernetes(controller_delay=0.01, ready_delay=0.05) as fake:
        api = ApiClient(Configuration(host=fake.url))
        platform = KubernetesPlatform(api, settings, secrets=SecretResolver(store))
        await platform.ensure(blue, 1, "blue")
        await platform.ensure(green, 1, "green")
        secret = fake.get("secrets", "echo-secrets", settings.namespace)
        assert secret is not None
        data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
        assert data == {"blue.OPENAI_API_KEY": "sk-first-value", "green.OPENAI_API_KEY": "sk-green"}
        for color in ("blue", "green"):
            dep = fake.get("deployments", f"echo-{color}", settings.namespace)
            assert dep is not None
            assert "sk-" not in json.dumps(dep)
            (container,) = dep["spec"]["template"]["spec"]["containers"]
            (entry,) = [e for e in container["env"] if e["name"] == "OPENAI_API_KEY"]
            ref = {"name": "echo-secrets", "key": f"{color}.OPENAI_API_KEY"}
            assert entry == {"name": "OPENAI_API_KEY", "valueFrom": {"secretKeyRef": ref}}
        ops.rotate(store, SecretRotation(path="agents/demo", key="openai"), "r1")
        await platform.restart(blue, [0], "blue")  # re-resolves before the pods are recreated
        secret = fake.get("secrets", "echo-secrets", settings.namespace)
        assert secret is not None
        value = base64.b64decode(secret["data"]["blue.OPENAI_API_KEY"]).decode()
        assert value == store.read("agents/demo").data["openai"] != "sk-first-value"
        missing = AgentSpec.model_validate(blue.model_dump() | {"secrets": [REF | {"key": "nope"}]})
        with pytest.raises(ApplicationError) as raised:
            await platform.ensure(missing, 1, "blue")
        assert raised.value.type == errors.SECRET_NOT_FOUND and raised.value.non_retryable
        await platform.stop_all("echo")
        assert fake.get("secrets", "echo-secrets", settings.namespace) is None
        api.close()


@pytest.mark.parametrize(
    "name", ["OPENAI_API_KEY", "github_token", "DB_PASSWORD", "client_secret_file", "Secret"]
)
def test_secret_looking_env_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="looks like a secret") as raised:
        AgentSpec(agent_id="a", env={name: "x"})
    assert name in str(raised.value) and "`secrets`" in str(raised.value)


@pytest.mark.parametrize("name", ["MODE", "KEYBOARD", "TOKENS_PER_MINUTE", "FLEETOPS_TEST_TAG"])
def test_ordinary_env_names_are_accepted(name: str) -> None:
    assert AgentSpec(agent_id="a", env={name: "x"}).env == {name: "x"}


def test_secret_refs_must_not_clash() -> None:
    with pytest.raises(ValueError, match="given twice"):
        AgentSpec(agent_id="a", secrets=[REF, REF])
    with pytest.raises(ValueError, match="set by FleetOps"):
        AgentSpec(agent_id="a", secrets=[REF | {"env": "PORT"}])
    with pytest.raises(ValueError, match="at most 50"):
        AgentSpec(agent_id="a", secrets=[REF | {"env": f"E{i}"} for i in range(51)])
