"""BlueGreenDeployment on the time-skipping server: promotion, rollback of every phase, abort.

The real AgentLifecycle and the real claim activity run beside the deployment; the platform,
probes and metrics are the in-memory stand-ins of tests/standins.py.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from temporalio.client import (
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowHandle,
    WorkflowUpdateFailedError,
)
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.deployments import DeploymentActivities
from activities.notify import NotifyActivities
from fleetops.approvals import ApprovalDecision, DecisionRequest
from fleetops.deploy import AbortRequest, DeploymentReport, DeploymentRequest
from fleetops.models import AgentLifecycleInput, AgentSpec, AgentStatus
from fleetops.settings import ApprovalSettings
from tests.conftest import assert_eventually, new_worker
from tests.standins import ColorPlatform
from workflows.agent_lifecycle import AgentLifecycle
from workflows.blue_green import BlueGreenDeployment

DAY = 86400
OPENED: list[WorkflowHandle] = []
"""Workflows the current test started (the test server cannot list them)."""


@pytest.fixture
def env(isolated_env: WorkflowEnvironment) -> WorkflowEnvironment:
    return isolated_env


@pytest.fixture
def platform() -> ColorPlatform:
    return ColorPlatform()


@pytest.fixture
async def worker(env: WorkflowEnvironment, platform: ColorPlatform) -> AsyncIterator[Worker]:
    async with httpx.AsyncClient() as http:
        notify = NotifyActivities(http, ApprovalSettings(roles={"bob": ["sre"]}))
        w = new_worker(
            env.client,
            workflows=[AgentLifecycle, BlueGreenDeployment],
            activities=[
                *platform.activities(),
                DeploymentActivities(env.client).claim_agent,
                notify.send_notification,
                notify.approver_roles,
            ],
        )
        async with w:
            yield w
            # Open workflows whose worker is gone would stall time skipping in later tests.
            while OPENED:
                h = OPENED.pop()
                if (await h.describe()).status == WorkflowExecutionStatus.RUNNING:
                    await h.terminate("test finished")


async def start_agent(env: WorkflowEnvironment, worker: Worker) -> tuple[str, WorkflowHandle]:
    agent = f"bg-{uuid.uuid4().hex[:8]}"
    spec = AgentSpec(
        agent_id=agent,
        command=["agent"],
        replicas=2,
        version="v1",
        health={"interval_seconds": 3600},  # a virtual day of rounds would be real work
    )
    h = await env.client.start_workflow(
        AgentLifecycle.run,
        AgentLifecycleInput(**spec.model_dump()),
        id=f"agent/{agent}",
        task_queue=worker.task_queue,
    )
    OPENED.append(h)

    async def ready() -> None:
        st: AgentStatus = await h.query(AgentLifecycle.status)
        assert st.state == "READY"

    await assert_eventually(ready)
    return agent, h


async def deploy(env: WorkflowEnvironment, worker: Worker, agent: str, **kw: Any) -> WorkflowHandle:
    req = DeploymentRequest.model_validate({"agent_id": agent, "version": "v2", **kw})
    h = await env.client.start_workflow(
        BlueGreenDeployment.run,
        req,
        id=f"deploy/{agent}/{req.version}",
        task_queue=worker.task_queue,
    )
    OPENED.append(h)
    return h


async def agent_status(h: WorkflowHandle) -> AgentStatus:
    return await h.query(AgentLifecycle.status)


async def wait_phase(h: WorkflowHandle, phase: str) -> None:
    async def check() -> None:
        st = await h.query(BlueGreenDeployment.status)
        assert st.phase == phase, st.phase

    await assert_eventually(check)


async def assert_rolled_back(
    platform: ColorPlatform, agent: str, lifecycle: WorkflowHandle, report: DeploymentReport
) -> None:
    """Traffic on blue, green scaled down, agent still v1 and released."""
    assert report.active_version == "v1" and report.active_color == "blue"
    assert platform.services[agent].active_color == "blue"
    assert platform.running(agent, "green") == 0 and platform.running(agent, "blue") == 2
    st = await agent_status(lifecycle)
    assert st.version == "v1" and st.active_color == "blue" and st.deployment_id is None
    assert [p.phase for p in report.phases][-2:] == ["ROLLING_BACK", "ROLLED_BACK"]


async def test_auto_promotion_after_delay(env, worker, platform) -> None:
    agent, lifecycle = await start_agent(env, worker)
    h = await deploy(
        env, worker, agent,
        promotion={"mode": "auto", "auto_promote_after_seconds": 600},
        scale_down_delay_seconds=120,
    )  # fmt: skip
    report: DeploymentReport = await asyncio.wait_for(h.result(), 120)
    assert report.outcome == "promoted" and report.active_color == "green"
    waited = {p.phase: p for p in report.phases}["AWAITING_PROMOTION"]
    assert waited.ended_at is not None
    assert (waited.ended_at - waited.started_at).total_seconds() >= 600
    assert platform.services[agent].active_color == "green"
    assert platform.running(agent, "blue") == 0 and platform.running(agent, "green") == 2
    st = await agent_status(lifecycle)
    assert st.version == "v2" and st.active_color == "green" and st.deployment_id is None
    assert {r.color for r in st.replicas} == {"green"}


async def test_manual_promotion_waits_days_then_applies_timeout_outcome(
    env, worker, platform
) -> None:
    agent, lifecycle = await start_agent(env, worker)
    h = await deploy(
        env, worker, agent,
        promotion={"approval_timeout_seconds": 2 * DAY, "timeout_outcome": "reject"},
    )  # fmt: skip
    await wait_phase(h, "AWAITING_PROMOTION")
    await env.sleep(DAY)
    assert (await h.query(BlueGreenDeployment.status)).phase == "AWAITING_PROMOTION"
    report: DeploymentReport = await asyncio.wait_for(h.result(), 120)
    assert report.outcome == "rejected"
    assert report.approvals[-1].outcome == "timed_out"
    await assert_rolled_back(platform, agent, lifecycle, report)


async def test_timeout_outcome_proceed_promotes(env, worker, platform) -> None:
    agent, _ = await start_agent(env, worker)
    h = await deploy(
        env, worker, agent,
        promotion={"approval_timeout_seconds": 3600, "timeout_outcome": "proceed"},
    )  # fmt: skip
    report: DeploymentReport = await asyncio.wait_for(h.result(), 120)
    assert report.outcome == "promoted"


async def test_validator_refuses_unauthorised_approver(env, worker, platform) -> None:
    agent, lifecycle = await start_agent(env, worker)
    h = await deploy(env, worker, agent, promotion={"approvers": ["alice"], "roles": ["sre"]})
    await wait_phase(h, "AWAITING_PROMOTION")
    with pytest.raises(WorkflowUpdateFailedError, match="update failed") as exc:
        await h.execute_update("decide", DecisionRequest(approver="mallory", approved=True))
    assert "mallory" in str(exc.value.cause)
    events = [e async for e in h.fetch_history_events()]
    assert not [
        e for e in events if e.HasField("workflow_execution_update_accepted_event_attributes")
    ]
    decision = await h.execute_update(
        "decide",
        DecisionRequest(approver="bob", approved=True, comment="metrics look fine"),
        result_type=ApprovalDecision,
    )
    assert decision.approver == "bob" and decision.approver_roles == ["sre"]
    report: DeploymentReport = await asyncio.wait_for(h.result(), 120)
    assert report.outcome == "promoted"
    assert report.approvals[-1].comment == "metrics look fine"
    assert (await agent_status(lifecycle)).version == "v2"


@pytest.mark.parametrize(
    ("failing", "extra"),
    [
        ("provision_replicas", {}),
        ("wait_healthy", {}),
        ("run_smoke_tests", {"smoke_tests": [{"name": "health"}]}),
        ("pre_analysis", {}),
        ("post_analysis", {}),
    ],
)
async def test_failure_in_each_phase_rolls_back(env, worker, platform, failing, extra) -> None:
    agent, lifecycle = await start_agent(env, worker)
    analysis = {
        "metrics": [
            {"name": "errors", "builtin": "error_rate", "success_condition": "result < 0.05",
             "interval_seconds": 10, "count": 2}
        ]
    }  # fmt: skip
    kw: dict[str, Any] = {"promotion": {"mode": "auto"}, **extra}
    if failing == "run_smoke_tests":
        platform.smoke_status = 503
    elif failing == "pre_analysis":
        kw["pre_promotion_analysis"] = analysis
        platform.metric_values["errors"] = [0.5]
    elif failing == "post_analysis":
        kw["post_promotion_analysis"] = analysis
        platform.metric_values["errors"] = [0.01, 0.4]
    else:
        platform.fail.add(failing)
    h = await deploy(env, worker, agent, **kw)
    report: DeploymentReport = await asyncio.wait_for(h.result(), 120)
    assert report.outcome == "rolled_back", report.message
    await assert_rolled_back(platform, agent, lifecycle, report)
    if failing == "post_analysis":
        assert report.switched_at is not None and report.switched_back_at is not None
        switches = [c[1] for c in platform.calls if c[0] == "switch_traffic"]
        assert ("green", None) in switches and switches[-1][0] == "blue"
    else:
        assert report.switched_at is None


@pytest.mark.parametrize(
    "phase", ["WAITING_READY", "AWAITING_PROMOTION", "POST_PROMOTION_ANALYSIS"]
)
async def test_abort_in_phase_rolls_back(env, worker, platform, phase) -> None:
    agent, lifecycle = await start_agent(env, worker)
    kw: dict[str, Any] = {}
    if phase == "WAITING_READY":
        platform.hang.add("wait_healthy")
        kw["promotion"] = {"mode": "auto"}
    elif phase == "POST_PROMOTION_ANALYSIS":
        kw["promotion"] = {"mode": "auto"}
        kw["post_promotion_analysis"] = {
            "metrics": [{"name": "rate", "builtin": "request_rate",
                         "success_condition": "result >= 0", "interval_seconds": 3600, "count": 5}]
        }  # fmt: skip
    h = await deploy(env, worker, agent, **kw)
    await wait_phase(h, phase)
    await h.signal(
        BlueGreenDeployment.abort, AbortRequest(reason="pager went off", requested_by="carol")
    )
    # the hung activity is cancelled by the abort
    report: DeploymentReport = await asyncio.wait_for(h.result(), 120)
    platform.release.set()
    assert report.outcome == "aborted" and "carol" in report.message and phase in report.message
    await assert_rolled_back(platform, agent, lifecycle, report)


async def test_inconclusive_analysis_goes_to_approval(env, worker, platform) -> None:
    agent, _ = await start_agent(env, worker)
    h = await deploy(
        env, worker, agent,
        promotion={"mode": "auto"},
        pre_promotion_analysis={"metrics": [
            {"name": "latency", "builtin": "p95_latency_seconds",
             "success_condition": "result < 0.5", "failure_condition": "result > 2", "count": 1}
        ]},
    )  # fmt: skip
    platform.metric_values["latency"] = [1.0]  # neither success nor failure: Inconclusive
    await wait_phase(h, "AWAITING_PROMOTION")
    pending = await h.query("pending_approval")
    assert "inconclusive" in pending["question"].lower()
    await h.execute_update("decide", DecisionRequest(approver="dave", approved=False))
    report: DeploymentReport = await asyncio.wait_for(h.result(), 120)
    assert report.outcome == "rejected"


async def test_concurrent_deployment_refused(env, worker, platform) -> None:
    agent, _ = await start_agent(env, worker)
    first = await deploy(env, worker, agent)
    await wait_phase(first, "AWAITING_PROMOTION")
    second = await deploy(env, worker, agent, version="v3")
    with pytest.raises(WorkflowFailureError, match="execution failed") as exc:
        await asyncio.wait_for(second.result(), 120)
    cause = exc.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == "DeploymentRefused"
    assert first.id in cause.message
    await first.signal(BlueGreenDeployment.abort, AbortRequest(reason="done testing"))
    assert (await asyncio.wait_for(first.result(), 120)).outcome == "aborted"


async def test_inconsistent_promotion_rejected_at_start(env, worker) -> None:
    h = await env.client.start_workflow(
        "BlueGreenDeployment",
        {"agent_id": "x", "version": "v2", "promotion": {"mode": "auto", "approvers": ["alice"]}},
        id=f"deploy/x/{uuid.uuid4().hex[:6]}",
        task_queue=worker.task_queue,
    )
    with pytest.raises(WorkflowFailureError, match="execution failed") as exc:
        await asyncio.wait_for(h.result(), 120)
    cause = exc.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == "InvalidInput"
    assert "promotion.approvers applies only to mode 'manual'" in cause.message
