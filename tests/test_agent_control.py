"""The agent-control activities against real ``AgentLifecycle`` and ``BlueGreenDeployment``
workflows (dev server; platform and probes are the stand-ins of tests/standins.py).

- A custom plan with ``pause_targets``: the agent is really PAUSED while its step is pending and
  READY again after it; pausing twice is success (idempotent).
- A version update cancelled while the agent's deployment waits to promote: the deployment is
  aborted and the agent is back on v1 with no deployment running.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from temporalio import workflow
from temporalio.client import WorkflowExecutionStatus, WorkflowHandle
from temporalio.common import SearchAttributePair, TypedSearchAttributes
from temporalio.service import RPCError
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment
from temporalio.worker import Worker

from activities.agent_control import AgentControlActivities
from activities.deployments import DeploymentActivities
from activities.notify import NotifyActivities
from fleetops.agent_control import AgentAction
from fleetops.constants import AGENT_ID_KEY
from fleetops.maintenance import MaintenancePlan, StepConfirmation
from fleetops.models import AgentLifecycleInput, AgentSpec, AgentStatus
from fleetops.settings import ApprovalSettings
from tests.conftest import assert_eventually, new_worker
from tests.standins import ColorPlatform
from worker import agent_control_activities
from workflows.agent_lifecycle import AgentLifecycle
from workflows.blue_green import BlueGreenDeployment
from workflows.maintenance import Maintenance


@pytest.fixture
def env(dev_env: WorkflowEnvironment) -> WorkflowEnvironment:
    """The dev server: pre-checks list workflows (visibility), which the test server lacks."""
    return dev_env


@workflow.defn(name="IncidentResponse", sandboxed=False)
class OpenIncident:
    """Stands in for the incident workflow: open until cancelled, tagged with its agent."""

    @workflow.run
    async def run(self, agent_id: str) -> None:
        await workflow.wait_condition(lambda: False)


@pytest.fixture
async def worker(env: WorkflowEnvironment) -> AsyncIterator[Worker]:
    platform = ColorPlatform()
    async with httpx.AsyncClient() as http:
        notify = NotifyActivities(http, ApprovalSettings())
        w = new_worker(
            env.client,
            workflows=[AgentLifecycle, BlueGreenDeployment, Maintenance, OpenIncident],
            activities=[
                *platform.activities(),
                DeploymentActivities(env.client).describe_deployment,
                notify.send_notification,
                notify.approval_policy,
                notify.approver_roles,
                *agent_control_activities(AgentControlActivities(env.client)),
            ],
        )
        async with w:
            yield w


async def ready_agent(env: WorkflowEnvironment, worker: Worker) -> tuple[str, WorkflowHandle]:
    agent = f"ac-{uuid.uuid4().hex[:8]}"
    spec = AgentSpec(
        agent_id=agent, command=["agent"], replicas=2, health={"interval_seconds": 3600}
    )
    h = await env.client.start_workflow(
        AgentLifecycle.run,
        AgentLifecycleInput(**spec.model_dump()),
        id=f"agent/{agent}",
        task_queue=worker.task_queue,
    )

    async def ready() -> None:
        st: AgentStatus = await h.query(AgentLifecycle.status)
        assert st.state == "READY" and all(r.healthy for r in st.replicas)

    await assert_eventually(ready)
    return agent, h


async def closed(h: WorkflowHandle) -> WorkflowExecutionStatus | None:
    # Not h.result(): waiting on a result lets the test server skip time (the promotion delay).
    async def check() -> WorkflowExecutionStatus | None:
        status = (await h.describe()).status
        assert status != WorkflowExecutionStatus.RUNNING
        return status

    return await assert_eventually(check, timeout=30)


async def test_pause_targets_really_pauses_and_resumes_the_agent(
    env: WorkflowEnvironment, worker: Worker
) -> None:
    agent, lifecycle = await ready_agent(env, worker)
    plan = MaintenancePlan.model_validate(
        {
            "name": "look",
            "kind": "custom",
            "targets": {"agents": [agent]},
            "pause_targets": True,
            "approval": {"required": "never"},
            "parameters": {"description": "inspect", "steps": ["look at it"]},
        }
    )
    h = await env.client.start_workflow(
        Maintenance.run, plan, id=f"maintenance/look/{agent}", task_queue=worker.task_queue
    )

    async def paused() -> None:
        st: AgentStatus = await lifecycle.query(AgentLifecycle.status)
        assert st.state == "PAUSED"
        assert any(
            e.step == "awaiting_confirmation" for e in (await h.query(Maintenance.status)).audit
        )

    await assert_eventually(paused)
    # Pausing a paused agent is success, not InvalidTransition (a retried step must not fail).
    again = await ActivityEnvironment().run(
        AgentControlActivities(env.client).agent_transition,
        AgentAction(agent_id=agent, action="pause"),
    )
    assert again == "PAUSED"
    await h.signal(Maintenance.confirm_step, StepConfirmation(agent_id=agent, step=0, by="ann"))
    st = await h.result()
    assert st.outcome == "completed", st.message
    after: AgentStatus = await lifecycle.query(AgentLifecycle.status)
    assert after.state == "READY"


async def test_cancelled_version_update_aborts_the_agents_deployment(
    env: WorkflowEnvironment, worker: Worker
) -> None:
    agent, lifecycle = await ready_agent(env, worker)
    plan = MaintenancePlan.model_validate(
        {
            "name": "upd",
            "kind": "version_update",
            "targets": {"agents": [agent]},
            "approval": {"required": "never"},
            "parameters": {
                "version": "v2",
                "auto_promote_after_seconds": 86400,
                "abort_scale_down_delay_seconds": 0,
            },
        }
    )
    h = await env.client.start_workflow(
        Maintenance.run, plan, id=f"maintenance/upd/{agent}", task_queue=worker.task_queue
    )
    dep = env.client.get_workflow_handle(f"deploy/{agent}/v2")

    async def awaiting_promotion() -> None:
        try:
            st = await dep.query(BlueGreenDeployment.status)
        except RPCError as err:  # not started yet
            raise AssertionError(err.message) from None
        assert st.phase == "AWAITING_PROMOTION"

    await assert_eventually(awaiting_promotion)
    await h.cancel()
    assert await closed(h) == WorkflowExecutionStatus.CANCELED
    assert (await dep.query(BlueGreenDeployment.status)).outcome in ("aborted", "cancelled")
    st: AgentStatus = await lifecycle.query(AgentLifecycle.status)
    assert st.version == "v1" and st.deployment_id is None
    m = await h.query(Maintenance.status)
    assert m.outcome == "cancelled" and m.targets[0].state == "rolled_back"


async def test_an_open_incident_on_a_target_refuses_the_plan(
    env: WorkflowEnvironment, worker: Worker
) -> None:
    agent, _ = await ready_agent(env, worker)
    incident = await env.client.start_workflow(
        OpenIncident.run,
        agent,
        id=f"incident/{agent}/lifecycle",
        task_queue=worker.task_queue,
        search_attributes=TypedSearchAttributes([SearchAttributePair(AGENT_ID_KEY, agent)]),
    )
    plan = MaintenancePlan.model_validate(
        {
            "name": "inc",
            "kind": "security_patch",
            "targets": {"agents": [agent]},
            "approval": {"required": "never"},
        }
    )

    async def listed() -> None:  # visibility is eventually consistent
        found = [w.id async for w in env.client.list_workflows(f"WorkflowId = '{incident.id}'")]
        assert found

    await assert_eventually(listed)
    st = await env.client.execute_workflow(
        Maintenance.run, plan, id=f"maintenance/inc/{agent}", task_queue=worker.task_queue
    )
    assert st.outcome == "refused"
    assert f"incident open: incident/{agent}/lifecycle" in st.message
    await incident.cancel()
