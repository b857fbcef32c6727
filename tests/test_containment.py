"""``run_containment`` against a real AgentLifecycle (and its deployments) on a dev server.

The platform is the in-memory stand-in of tests/standins.py (which cannot rate-limit, so that
action answers "not supported"); the gateway's limit itself is tested in
tests/test_gateway_rate_limit.py. ``restart`` is the agent's rolling-restart update.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from pydantic import ValidationError
from temporalio import workflow
from temporalio.client import Client, WorkflowHandle
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment
from temporalio.worker import Worker

with workflow.unsafe.imports_passed_through():  # the sandbox re-imports this module
    from activities.containment import ContainmentActivities
    from activities.notify import NotifyActivities
    from fleetops.deploy import DeploymentRequest
    from fleetops.incidents import ContainmentAction, ContainmentRequest, ContainmentResult
    from fleetops.models import AgentLifecycleInput, AgentSpec, AgentState, AgentStatus
    from fleetops.settings import ApprovalSettings
    from tests.cli_support import deployment_worker
    from tests.conftest import assert_eventually
    from tests.standins import ColorPlatform
    from tests.test_approval import Receiver, receiver
    from workflows.agent_lifecycle import AgentLifecycle

__all__ = ["receiver"]  # the fixture
A = ContainmentAction
S = AgentState


@pytest.fixture
async def world(dev_env: WorkflowEnvironment) -> AsyncIterator[tuple[Worker, ColorPlatform]]:
    platform = ColorPlatform()
    async with deployment_worker(dev_env.client, platform) as w:
        yield w, platform


async def start_agent(client: Client, w: Worker, **spec: Any) -> WorkflowHandle[Any, Any]:
    agent = f"ct-{uuid.uuid4().hex[:6]}"
    s = AgentSpec.model_validate({"agent_id": agent, "command": ["agent"], **spec})
    h = await client.start_workflow(
        AgentLifecycle.run, AgentLifecycleInput(**s.model_dump()), id=f"agent/{agent}",
        task_queue=w.task_queue,
    )  # fmt: skip
    await assert_eventually(lambda: state_is(h, S.READY), timeout=30)
    return h


async def state_is(h: WorkflowHandle[Any, Any], state: AgentState) -> AgentStatus:
    st: AgentStatus = await h.query(AgentLifecycle.status)
    assert st.state == state, st.state
    return st


def request(agent: str, action: A, **kw: Any) -> ContainmentRequest:
    return ContainmentRequest(
        incident_id=f"incident/{agent}/k1", agent_id=agent, action=action,
        requested_by="alice", reason="test", **kw,
    )  # fmt: skip


async def contain(acts: ContainmentActivities, req: ContainmentRequest) -> ContainmentResult:
    result: ContainmentResult = await ActivityEnvironment().run(acts.run_containment, req)
    return result


async def test_scale_up_is_idempotent_and_bounded(dev_env: WorkflowEnvironment, world) -> None:
    w, platform = world
    h = await start_agent(dev_env.client, w, replicas=1, max_replicas=3)
    agent = h.id.removeprefix("agent/")
    acts = ContainmentActivities(dev_env.client, platform, max_replicas_per_agent=50)
    first = await contain(acts, request(agent, A.SCALE_UP))
    assert first.ok and first.detail == "scaled to 2 replicas", first
    again = await contain(acts, request(agent, A.SCALE_UP))  # a retried attempt
    assert again == first
    assert (await state_is(h, S.READY)).desired_replicas == 2
    more = await contain(acts, request(agent, A.SCALE_UP, action_id="2"))
    assert more.ok and more.detail == "scaled to 3 replicas"
    full = await contain(acts, request(agent, A.SCALE_UP, action_id="3"))
    assert not full.ok and "max_replicas 3" in full.detail
    quota = ContainmentActivities(dev_env.client, platform, max_replicas_per_agent=3)
    capped = await contain(quota, request(agent, A.SCALE_UP, replicas=10, action_id="4"))
    assert not capped.ok and (await state_is(h, S.READY)).desired_replicas == 3
    await h.terminate("test finished")


async def test_pause_and_nothing_to_roll_back(dev_env: WorkflowEnvironment, world) -> None:
    w, platform = world
    h = await start_agent(dev_env.client, w)
    agent = h.id.removeprefix("agent/")
    acts = ContainmentActivities(dev_env.client, platform)
    nothing = await contain(acts, request(agent, A.ROLLBACK_DEPLOYMENT))
    assert not nothing.ok and "nothing to roll back" in nothing.detail
    limited = await contain(acts, request(agent, A.RATE_LIMIT, rate_limit_rps=5))
    assert not limited.ok and "not supported" in limited.detail
    paused = await contain(acts, request(agent, A.PAUSE_AGENT))
    assert paused.ok and paused.workflow_id == h.id
    st = await state_is(h, S.PAUSED)
    assert "alice (incident incident/" in st.transitions[-1].reason
    assert (await contain(acts, request(agent, A.PAUSE_AGENT))).ok  # a retry: same outcome
    refused = await contain(acts, request(agent, A.PAUSE_AGENT, action_id="2"))  # its rules
    assert not refused.ok and "refused transition" in refused.detail
    missing = await contain(acts, request("nosuch", A.PAUSE_AGENT))
    assert not missing.ok and "no running agent agent/nosuch" in missing.detail
    await h.terminate("test finished")


async def test_rollback_of_a_completed_deployment_deploys_the_previous_version(
    dev_env: WorkflowEnvironment, world
) -> None:
    w, platform = world
    h = await start_agent(dev_env.client, w, health={"interval_seconds": 3600})
    agent = h.id.removeprefix("agent/")
    req = DeploymentRequest(
        agent_id=agent, version="v2", env={"MODEL": "big"}, promotion={"mode": "auto"},
        scale_down_delay_seconds=0,
    )  # fmt: skip
    await h.execute_update(AgentLifecycle.deploy, req)

    async def on(version: str) -> AgentStatus:
        st = await state_is(h, S.READY)
        assert st.version == version and st.deployment is None, (st.version, st.deployment)
        return st

    st = await assert_eventually(lambda: on("v2"), timeout=30)
    assert st.last_deployment is not None and st.last_deployment.previous_spec is not None
    assert st.last_deployment.previous_spec.version == "v1"
    acts = ContainmentActivities(dev_env.client, platform)
    back = await contain(acts, request(agent, A.ROLLBACK_DEPLOYMENT))
    assert back.ok and back.workflow_id == f"deploy/{agent}/v1", back
    assert (await contain(acts, request(agent, A.ROLLBACK_DEPLOYMENT))) == back  # a retry
    st = await h.query(AgentLifecycle.status)
    rolling = st.deployment  # the rollback (its scale-down delay keeps it open for 30 s)
    assert rolling is not None and rolling.deployment_id == back.workflow_id
    assert rolling.spec.version == "v1" and rolling.spec.env == {}  # v1's spec, not v2's env
    assert rolling.requested_by == f"alice (incident incident/{agent}/k1)"

    async def serving_v1() -> None:
        st = await state_is(h, S.READY)
        assert st.version == "v1" and st.active_color == "blue", (st.version, st.active_color)

    await assert_eventually(serving_v1, timeout=30)
    await h.terminate("test finished")


async def test_restart_runs_once_through_the_agents_restart_update(
    dev_env: WorkflowEnvironment, world
) -> None:
    w, platform = world
    h = await start_agent(dev_env.client, w, replicas=2)
    agent = h.id.removeprefix("agent/")
    acts = ContainmentActivities(dev_env.client, platform)
    for _ in range(2):  # the second is a retried attempt: same outcome, no second restart
        done = await contain(acts, request(agent, A.RESTART_REPLICAS))
        assert done.ok and done.detail == "restarted 2 blue replicas", done
    assert [c for c, _ in platform.calls].count("rolling_restart") == 1
    st = await state_is(h, S.READY)
    assert any(f"alice (incident incident/{agent}/k1)" in t.reason for t in st.transitions)
    paused = await contain(acts, request(agent, A.PAUSE_AGENT))
    assert paused.ok
    refused = await contain(acts, request(agent, A.RESTART_REPLICAS, action_id="2"))
    assert not refused.ok and "refused restart" in refused.detail  # the agent's validator
    await h.terminate("test finished")


async def test_page_posts_once_to_the_escalation_webhook(
    dev_env: WorkflowEnvironment, receiver: Receiver
) -> None:
    async with httpx.AsyncClient() as http:
        settings = ApprovalSettings(escalation_webhook_url=receiver.url("oncall"))
        notify = NotifyActivities(http, settings)
        acts = ContainmentActivities(dev_env.client, ColorPlatform(), notify)
        for _ in range(2):
            paged = await contain(acts, request("demo", A.PAGE_ONCALL))
            assert paged.ok and paged.detail == "on-call paged"
        texts = receiver.texts("oncall")
        assert len(texts) == 1 and "incident `incident/demo/k1`" in texts[0]
        silent = ContainmentActivities(
            dev_env.client,
            ColorPlatform(),
            NotifyActivities(http, ApprovalSettings()),
        )
        unset = await contain(silent, request("demo", A.PAGE_ONCALL))
        assert not unset.ok and "no webhook configured" in unset.detail


def test_bad_requests_are_refused_naming_the_field() -> None:
    with pytest.raises(ValidationError, match="rate_limit_rps: required"):
        request("demo", A.RATE_LIMIT)
    with pytest.raises(ValidationError, match="agent_id: other is not the agent"):
        ContainmentRequest(
            incident_id="incident/demo/k1", agent_id="other", action=A.PAUSE_AGENT,
            requested_by="alice",
        )  # fmt: skip
    with pytest.raises(ValidationError, match="rate_limit_rps"):
        request("demo", A.RATE_LIMIT, rate_limit_rps=float("inf"))
    assert request("demo", A.RATE_LIMIT, lift=True).rate_limit_rps is None
