"""The agent's own secret values are masked in every prompt about it: looked up by the LLM
activity (the agent's ``status`` names the references, the store gives the values), so they
never enter workflow history. Real dev server and agent workflow, real local secret store,
the LLM endpoint on loopback."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry
from temporalio.testing import ActivityEnvironment

from activities.agent_secrets import AgentSecretValues
from activities.llm import LlmActivities
from activities.secret_stores import LocalStore, SecretResolver, ops
from fleetops.models import AgentLifecycleInput, AgentState, AgentStatus
from fleetops.secrets import SecretRef, SecretRotation
from fleetops.settings import LlmSettings
from tests.conftest import assert_eventually, new_worker
from tests.fakes.llm import FakeLlm
from tests.standins import ColorPlatform
from tests.test_llm_activity import evidence, request
from workflows.agent_lifecycle import AgentLifecycle

REF = {"env": "OPENAI_API_KEY", "path": "agents/demo", "key": "openai"}
FIRST, ROTATED = "correct-horse-battery", "staple-orbit-lantern"


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    found = LocalStore(tmp_path / "store")
    found.write("agents/demo", {"openai": FIRST}, cas=0)
    return found


async def test_the_agents_secret_values_are_masked_in_its_prompts(
    dev_env, store: LocalStore, http: httpx.AsyncClient
) -> None:
    platform = ColorPlatform()
    agent = f"s-{uuid.uuid4().hex[:8]}"
    w = new_worker(dev_env.client, workflows=[AgentLifecycle], activities=platform.activities())
    with FakeLlm() as fake:
        async with w:
            await run_agent(dev_env, w.task_queue, agent, store, fake, http)


async def run_agent(dev_env, task_queue: str, agent: str, store: LocalStore, fake: FakeLlm,
                    http: httpx.AsyncClient) -> None:  # fmt: skip
    """Start the agent, wait for READY, check its masked prompt, shut it down."""
    h = await dev_env.client.start_workflow(
        AgentLifecycle.run,
        AgentLifecycleInput(agent_id=agent, command=["agent"], secrets=[REF]),
        id=f"agent/{agent}",
        task_queue=task_queue,
    )

    async def ready() -> None:
        st: AgentStatus = await h.query(AgentLifecycle.status)
        assert st.state == AgentState.READY

    await assert_eventually(ready, timeout=20)
    values = AgentSecretValues(dev_env.client, SecretResolver(store))
    assert await values(agent) == [FIRST]
    assert await values("no-such-agent") == []
    settings = LlmSettings(base_url=fake.base_url, model="m")
    acts = LlmActivities(http, settings, registry=CollectorRegistry(), secret_values=values)
    store.write("agents/demo", {"openai": ROTATED}, cas=1)  # rotated since it started
    log = f"auth failed with key {ROTATED} (old {FIRST})"
    outcome = await ActivityEnvironment().run(
        acts.llm_triage, request(evidence(log), agent_id=agent)
    )
    [sent] = fake.requests
    body = json.dumps(sent.body)
    assert ROTATED not in body and "auth failed with key" in body
    assert FIRST not in body  # the replicas started with it may still run with it
    assert "redacted 2 secret(s)" in outcome.prompt_notes
    history = json.dumps([str(e) async for e in h.fetch_history_events()])
    assert ROTATED not in history and FIRST not in history
    await h.signal(AgentLifecycle.shutdown)


def test_masked_values_are_the_recent_and_pinned_versions(store: LocalStore) -> None:
    """Each referenced key's value in pinned versions (a rotation's rollback target) and in the
    last ten readable versions (the store keeps ten, as Vault KV v2 does by default), also
    without surrounding whitespace; a deleted version or a path that is gone gives nothing (no
    failure: there is nothing to mask)."""
    store.write("agents/demo", {"openai": "second-value\n", "other": "not-referenced"}, cas=1)
    rotated = ops.rotate(store, SecretRotation(path="agents/demo", key="openai"), "r1")
    random_value = store.read("agents/demo", rotated.version).data["openai"]
    for n in range(4):  # versions 4-7
        store.write("agents/demo", {"openai": f"later-{n}"}, cas=rotated.version + n)
    ops.delete_versions(store, "agents/demo", [7])
    refs = [SecretRef(**REF), SecretRef(env="GONE", path="agents/gone", key="k")]
    masked = ops.mask_values(store, refs)
    # The pinned version 2 first, then the readable ones newest first: 6 down to 1.
    assert masked == [
        "second-value\n", "second-value", "later-2", "later-1", "later-0", random_value, FIRST
    ]  # fmt: skip
    assert "later-3" not in masked and "not-referenced" not in masked
