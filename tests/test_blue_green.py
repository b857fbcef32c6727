"""BlueGreenDeployment on the time-skipping server: promotion, rollback of every phase, abort,
cancel and terminate, and the agent that owns each deployment.

The real AgentLifecycle (which starts every deployment as its child) and the real
``wait_deployment`` activity run beside the deployment; the platform, probes and metrics are the
in-memory stand-ins of tests/standins.py. Every test ends by checking the cross-workflow
invariant (:func:`assert_consistent`).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.workflowservice.v1 import ResetWorkflowExecutionRequest
from temporalio.client import (
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowHandle,
    WorkflowQueryFailedError,
    WorkflowUpdateFailedError,
)
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer, Worker

from activities.deployments import DeploymentActivities
from activities.notify import NotifyActivities
from fleetops.approvals import ApprovalDecision, DecisionRequest
from fleetops.converter import data_converter
from fleetops.deploy import AbortRequest, DeploymentReport, DeploymentRequest, DeploymentStatus
from fleetops.models import (
    AgentLifecycleInput,
    AgentSpec,
    AgentStatus,
    TransitionRequest,
    TransitionResult,
)
from fleetops.settings import ApprovalSettings
from starters import deployments
from tests.conftest import assert_eventually, new_worker
from tests.standins import ColorPlatform
from workflows.agent_lifecycle import AgentLifecycle
from workflows.blue_green import BlueGreenDeployment

DAY = 86400
OPENED: list[WorkflowHandle] = []
"""Workflows the current test started (the test server cannot list them)."""


@pytest.fixture
def env(request: pytest.FixtureRequest) -> WorkflowEnvironment:
    """A fresh time-skipping server per test; ``dev`` (indirect parameter): the dev server, for
    what the time-skipping server does not do (it never tells a parent its child was
    terminated)."""
    name = "dev_env" if getattr(request, "param", None) == "dev" else "isolated_env"
    return request.getfixturevalue(name)


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
                DeploymentActivities(env.client).describe_deployment,
                notify.send_notification,
                notify.approval_policy,
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


async def start_agent(
    env: WorkflowEnvironment, worker: Worker, *, interval: float = 3600
) -> tuple[str, WorkflowHandle]:
    agent = f"bg-{uuid.uuid4().hex[:8]}"
    spec = AgentSpec(
        agent_id=agent,
        command=["agent"],
        replicas=2,
        version="v1",
        health={"interval_seconds": interval},  # a virtual day of rounds would be real work
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
    """Ask the agent to deploy (update ``deploy``); the handle of the child it started."""
    req = DeploymentRequest.model_validate({"agent_id": agent, "version": "v2", **kw})
    h = await deployments.deploy(env.client, req)
    OPENED.append(h)
    return h


async def finish(env: WorkflowEnvironment, h: WorkflowHandle, timeout: float = 120.0) -> Any:
    """The deployment's result, skipping virtual time while waiting, within a real deadline.

    A handle the agent's update hands back is not one the test environment started, so its
    ``result()`` would not unlock time skipping by itself.
    """
    unlocked = getattr(env, "time_skipping_unlocked", None)
    async with unlocked() if unlocked is not None else contextlib.nullcontext():
        return await asyncio.wait_for(h.result(), timeout)


async def closed_status(h: WorkflowHandle) -> DeploymentStatus:
    """``status`` of a closed deployment, after checking its history replays deterministically.

    A query on a closed workflow replays its whole history on the worker; the time-skipping
    server has been seen to fail such a query once under load although the same history replays
    cleanly. The replay of the fetched history is the determinism check; the query is asked
    up to three times.
    """
    history = await h.fetch_history()
    await Replayer(
        workflows=[BlueGreenDeployment], data_converter=data_converter()
    ).replay_workflow(history)
    for _ in range(2):
        with contextlib.suppress(WorkflowQueryFailedError):
            return await h.query(BlueGreenDeployment.status)
    return await h.query(BlueGreenDeployment.status)


async def assert_consistent(
    platform: ColorPlatform,
    agent: str,
    lifecycle: WorkflowHandle,
    *,
    version: str,
    timeout: float = 10.0,
) -> AgentStatus:
    """The cross-workflow invariant once no deployment runs, within a deadline.

    The Service's active colour is the agent's; only that colour runs; the agent's version is
    the version label of the active replicas; no preview is left; the agent holds no deployment.
    """

    async def check() -> AgentStatus:
        st = await agent_status(lifecycle)
        assert st.deployment is None and st.deployment_id is None
        svc = platform.services[agent]
        assert svc.active_color == st.active_color and svc.preview_color is None
        running = {c for c in ("blue", "green") if platform.running(agent, c)}
        assert running == {st.active_color}, running
        labels = {r.version for r in platform.replicas[(agent, st.active_color)]}
        assert labels == {st.version} == {version}, labels
        assert {r.color for r in st.replicas} == {st.active_color}
        return st

    return await assert_eventually(check, timeout=timeout)


async def agent_status(h: WorkflowHandle) -> AgentStatus:
    return await h.query(AgentLifecycle.status)


async def wait_phase(h: WorkflowHandle, phase: str) -> None:
    async def check() -> None:
        st = await h.query(BlueGreenDeployment.status)
        assert st.phase == phase, st.phase

    await assert_eventually(check)


async def first_measurement(h: WorkflowHandle, analysis: str) -> None:
    """Assert that ``analysis`` of the deployment has recorded at least one measurement."""
    st = await h.query(BlueGreenDeployment.status)
    result = st.analyses.get(analysis)
    assert result is not None and result.metrics and result.metrics[0].measurements, result


async def assert_rolled_back(
    platform: ColorPlatform, agent: str, lifecycle: WorkflowHandle, report: DeploymentReport
) -> None:
    """Traffic on blue, green scaled down, agent still v1 and released."""
    assert report.active_version == "v1" and report.active_color == "blue"
    assert platform.services[agent].active_color == "blue"
    assert platform.running(agent, "green") == 0 and platform.running(agent, "blue") == 2
    st = await assert_consistent(platform, agent, lifecycle, version="v1")
    assert st.active_color == "blue"
    assert st.last_deployment is not None and st.last_deployment.closed_as == "completed"
    assert [p.phase for p in report.phases][-2:] == ["ROLLING_BACK", "ROLLED_BACK"]


async def test_auto_promotion_after_delay(env, worker, platform) -> None:
    agent, lifecycle = await start_agent(env, worker)
    h = await deploy(
        env, worker, agent,
        promotion={"mode": "auto", "auto_promote_after_seconds": 600},
        scale_down_delay_seconds=120,
    )  # fmt: skip
    report: DeploymentReport = await finish(env, h)
    assert report.outcome == "promoted" and report.active_color == "green"
    waited = {p.phase: p for p in report.phases}["AWAITING_PROMOTION"]
    assert waited.ended_at is not None
    assert (waited.ended_at - waited.started_at).total_seconds() >= 600
    assert platform.services[agent].active_color == "green"
    assert platform.running(agent, "blue") == 0 and platform.running(agent, "green") == 2
    st = await assert_consistent(platform, agent, lifecycle, version="v2")
    assert st.active_color == "green" and st.counters.deployments == 1


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
    report: DeploymentReport = await finish(env, h)
    assert report.outcome == "rejected"
    assert report.approvals[-1].outcome == "timed_out"
    await assert_rolled_back(platform, agent, lifecycle, report)


async def test_timeout_outcome_proceed_promotes(env, worker, platform) -> None:
    agent, lifecycle = await start_agent(env, worker)
    h = await deploy(
        env, worker, agent,
        promotion={"approval_timeout_seconds": 3600, "timeout_outcome": "proceed"},
    )  # fmt: skip
    report: DeploymentReport = await finish(env, h)
    assert report.outcome == "promoted"
    assert report.approvals[-1].outcome == "timed_out"
    await assert_consistent(platform, agent, lifecycle, version="v2")


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
    report: DeploymentReport = await finish(env, h)
    assert report.outcome == "promoted"
    assert report.approvals[-1].comment == "metrics look fine"
    await assert_consistent(platform, agent, lifecycle, version="v2")


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
    report: DeploymentReport = await finish(env, h)
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
    report: DeploymentReport = await finish(env, h)  # the hung activity is cancelled by the abort
    platform.release.set()
    assert report.outcome == "aborted" and "carol" in report.message and phase in report.message
    await assert_rolled_back(platform, agent, lifecycle, report)


async def test_inconclusive_analysis_goes_to_approval(env, worker, platform) -> None:
    agent, lifecycle = await start_agent(env, worker)
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
    report: DeploymentReport = await finish(env, h)
    assert report.outcome == "rejected"
    await assert_rolled_back(platform, agent, lifecycle, report)


async def test_concurrent_deployment_refused(env, worker, platform) -> None:
    agent, lifecycle = await start_agent(env, worker)
    first = await deploy(env, worker, agent)
    await wait_phase(first, "AWAITING_PROMOTION")
    with pytest.raises(deployments.DeploymentRefusedError, match=first.id):
        await deploy(env, worker, agent, version="v3")
    await first.signal(BlueGreenDeployment.abort, AbortRequest(reason="done testing"))
    assert (await finish(env, first)).outcome == "aborted"
    await assert_consistent(platform, agent, lifecycle, version="v1")


async def test_deploying_the_running_version_is_refused(env, worker, platform) -> None:
    agent, lifecycle = await start_agent(env, worker)
    with pytest.raises(deployments.DeploymentRefusedError, match="already runs v1"):
        await deploy(env, worker, agent, version="v1")
    assert (await agent_status(lifecycle)).deployment is None


async def test_inconsistent_promotion_refused_by_the_agent(env, worker) -> None:
    _, lifecycle = await start_agent(env, worker)
    bad = {"agent_id": "x", "version": "v2", "promotion": {"mode": "auto", "approvers": ["a"]}}
    with pytest.raises(WorkflowUpdateFailedError, match="update failed") as exc:
        await lifecycle.execute_update("deploy", bad)
    cause = exc.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == "InvalidInput"
    assert "promotion.approvers applies only to mode 'manual'" in cause.message


@pytest.mark.parametrize("env", ["dev"], indirect=True)  # the test server fails on unknown updates
async def test_deployment_started_by_a_client_refuses_to_run(env, worker, platform) -> None:
    """A forged start (not the agent's child) changes nothing, whatever its input claims."""
    agent, lifecycle = await start_agent(env, worker)
    before = await agent_status(lifecycle)
    forged = {
        "request": {"agent_id": agent, "version": "v666"},
        "stable": {**before.model_dump(include={"state", "active_color"}),
                   "spec": {"agent_id": agent, "env": {"FAULT": "1"}}, "replicas": []},
    }  # fmt: skip
    h = await env.client.start_workflow(
        "BlueGreenDeployment", forged, id=f"deploy/{agent}/v666", task_queue=worker.task_queue
    )
    with pytest.raises(WorkflowFailureError, match="failed") as exc:
        await finish(env, h)
    cause = exc.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == "DeploymentRefused"
    assert f"agent/{agent} --name deploy" in cause.message
    # the old hand-off messages are gone, and the change hint takes nothing from its payload
    with pytest.raises(WorkflowUpdateFailedError, match="update failed") as refused:  # no handler
        await lifecycle.execute_update("begin_deployment", {"deployment_id": "x", "version": "v6"})
    assert "begin_deployment" in str(refused.value.cause)
    await lifecycle.signal("deployment_changed", {"promoted": True, "spec": {"version": "v666"}})
    st = await agent_status(lifecycle)
    assert st.version == "v1" and st.active_color == "blue" and st.deployment is None
    assert [c for c in platform.calls if c[0] != "provision_replicas"] == []
    await assert_consistent(platform, agent, lifecycle, version="v1")


@pytest.mark.parametrize("env", ["dev"], indirect=True)
async def test_terminated_deployment_is_reconciled_by_the_agent(env, worker, platform) -> None:
    """Terminate runs no code: the agent notices, keeps the colour the Service serves, scales
    the other one down after the abort delay, and accepts actions again."""
    agent, lifecycle = await start_agent(env, worker)
    h = await deploy(env, worker, agent, abort_scale_down_delay_seconds=5)
    await wait_phase(h, "AWAITING_PROMOTION")
    assert platform.running(agent, "green") == 2
    await h.terminate("operator pulled the plug")

    async def released() -> AgentStatus:
        st = await agent_status(lifecycle)
        assert st.deployment is None and st.last_deployment is not None
        return st

    st = await assert_eventually(released)
    assert st.last_deployment.closed_as == "terminated"
    assert st.last_deployment.active_color == "blue" and st.version == "v1"
    assert any(h.id in t.reason and "terminated" in t.reason for t in st.transitions)
    assert platform.running(agent, "green") == 2  # kept for the abort delay
    await assert_consistent(platform, agent, lifecycle, version="v1", timeout=30)
    assert platform.services[agent].preview_color is None
    text = await deployments.closed_deployment_text(env.client, h.id)
    assert "TERMINATED" in text and "serves blue" in text and "runs v1" in text
    # the agent is not locked: actions and the next deployment work
    await lifecycle.execute_update(
        "transition", TransitionRequest(action="scale", replicas=3), result_type=TransitionResult
    )
    nxt = await deploy(env, worker, agent, version="v7", promotion={"mode": "auto"})
    assert (await finish(env, nxt)).outcome == "promoted"
    await assert_consistent(platform, agent, lifecycle, version="v7")


async def test_terminated_after_switch_keeps_what_the_service_serves(env, worker, platform) -> None:
    agent, lifecycle = await start_agent(env, worker, interval=2)
    h = await deploy(
        env, worker, agent,
        promotion={"mode": "auto"},
        post_promotion_analysis={"metrics": [
            {"name": "rate", "builtin": "request_rate", "success_condition": "result >= 0",
             "interval_seconds": 3600, "count": 5}]},
        abort_scale_down_delay_seconds=1,
    )  # fmt: skip
    await wait_phase(h, "POST_PROMOTION_ANALYSIS")
    await env.client.get_workflow_handle(h.id).terminate("mid-analysis")
    st = await assert_consistent(platform, agent, lifecycle, version="v2", timeout=30)
    assert st.active_color == "green" and st.last_deployment.closed_as == "terminated"


@pytest.mark.parametrize(
    "phase", ["WAITING_READY", "AWAITING_PROMOTION", "POST_PROMOTION_ANALYSIS"]
)
async def test_cancel_rolls_back_and_ends_canceled(env, worker, platform, phase) -> None:
    agent, lifecycle = await start_agent(env, worker)
    kw: dict[str, Any] = {"scale_down_delay_seconds": 60}
    if phase == "WAITING_READY":
        platform.hang.add("wait_healthy")  # released only by the cancellation
    if phase == "POST_PROMOTION_ANALYSIS":
        kw["promotion"] = {"mode": "auto"}
        kw["post_promotion_analysis"] = {"metrics": [
            {"name": "rate", "builtin": "request_rate", "success_condition": "result >= 0",
             "interval_seconds": 3600, "count": 5}]}  # fmt: skip
    h = await deploy(env, worker, agent, **kw)
    await wait_phase(h, phase)
    if phase == "POST_PROMOTION_ANALYSIS":
        # Cancel while the analysis waits on its timer, not while its first measurement is in
        # flight: a cancel that crosses an activity's completion wedges the run on the
        # time-skipping server (sdk-typescript#1058, ACTIVITY_UNKNOWN); the dev server copes.
        await assert_eventually(lambda: first_measurement(h, "post_promotion"))
    await h.cancel()
    with pytest.raises(WorkflowFailureError, match="failed"):
        await finish(env, h)
    assert (await h.describe()).status == WorkflowExecutionStatus.CANCELED
    st = await closed_status(h)
    assert st.outcome == "cancelled" and st.phase == "CANCELLED" and phase in st.message
    assert platform.services[agent].active_color == "blue"
    agent_st = await assert_consistent(platform, agent, lifecycle, version="v1")
    assert agent_st.last_deployment.closed_as == "canceled"


async def test_cancel_after_verified_switch_finishes_the_promotion(env, worker, platform) -> None:
    agent, lifecycle = await start_agent(env, worker)
    h = await deploy(env, worker, agent, promotion={"mode": "auto"}, scale_down_delay_seconds=60)
    await wait_phase(h, "SCALING_DOWN_OLD")
    await h.cancel()
    with pytest.raises(WorkflowFailureError, match="failed"):
        await finish(env, h)
    st = await closed_status(h)
    assert st.outcome == "promoted" and "verified" in st.message
    await assert_consistent(platform, agent, lifecycle, version="v2")


async def test_failed_post_analysis_switches_back_before_scaling_down(
    env, worker, platform
) -> None:
    """The compensations run in reverse: traffic back to blue first, then green scaled down."""
    agent, lifecycle = await start_agent(env, worker)
    platform.metric_values["errors"] = [0.01, 0.4]
    h = await deploy(
        env, worker, agent,
        promotion={"mode": "auto"},
        post_promotion_analysis={"metrics": [
            {"name": "errors", "builtin": "error_rate", "success_condition": "result < 0.05",
             "interval_seconds": 10, "count": 2}]},
    )  # fmt: skip
    report: DeploymentReport = await finish(env, h)
    assert report.outcome == "rolled_back"
    steps = [c for c in platform.calls if c[0] in ("switch_traffic", "scale_down_color")]
    back = steps.index(("switch_traffic", ("blue", None)))
    down = steps.index(("scale_down_color", "green"))
    assert back < down, steps
    assert steps[back - 1] == ("switch_traffic", ("green", None))  # the switch it undoes
    await assert_rolled_back(platform, agent, lifecycle, report)


async def test_shutdown_during_deployment_cancels_it(env, worker, platform) -> None:
    agent, lifecycle = await start_agent(env, worker)
    h = await deploy(env, worker, agent)
    await wait_phase(h, "AWAITING_PROMOTION")
    await lifecycle.signal(AgentLifecycle.shutdown, {"reason": "decommission"})
    report = await lifecycle.result()
    assert report.final_state == "TERMINATED"
    assert (await h.describe()).status == WorkflowExecutionStatus.CANCELED
    assert platform.running(agent, "blue") == 0 and platform.running(agent, "green") == 0


@pytest.mark.parametrize("env", ["dev"], indirect=True)
async def test_reset_deployment_stays_owned_until_its_new_run_ends(env, worker, platform) -> None:
    """A reset ends the run the agent started and goes on in a new one: the agent keeps the
    deployment until that one ends, then reconciles."""
    agent, lifecycle = await start_agent(env, worker, interval=1)
    h = await deploy(env, worker, agent)
    await wait_phase(h, "AWAITING_PROMOTION")
    events = [e async for e in h.fetch_history_events()]
    first_task = next(
        e.event_id for e in events if e.HasField("workflow_task_completed_event_attributes")
    )
    reset = await env.client.workflow_service.reset_workflow_execution(
        ResetWorkflowExecutionRequest(
            namespace=env.client.namespace,
            workflow_execution=WorkflowExecution(workflow_id=h.id, run_id=h.run_id),
            reason="operator reset",
            workflow_task_finish_event_id=first_task,
            request_id=str(uuid.uuid4()),
        )
    )
    new_run = env.client.get_workflow_handle(
        h.id, run_id=reset.run_id, result_type=DeploymentReport
    )
    await wait_phase(new_run, "AWAITING_PROMOTION")

    async def still_owned() -> None:  # past a few health intervals of the agent
        st = await agent_status(lifecycle)
        assert st.deployment is not None and st.deployment.deployment_id == h.id
        assert st.counters.health_rounds >= 3

    await assert_eventually(still_owned, timeout=30)
    await new_run.signal(BlueGreenDeployment.abort, AbortRequest(reason="after the reset"))
    assert (await finish(env, new_run)).outcome == "aborted"
    st = await assert_consistent(platform, agent, lifecycle, version="v1", timeout=30)
    assert st.last_deployment is not None and st.last_deployment.outcome == "aborted"


async def test_deployment_keeps_the_scaled_replica_count(env, worker, platform) -> None:
    """``replicas`` defaults to the running count, as scaled, not the count first asked for."""
    agent, lifecycle = await start_agent(env, worker)
    await lifecycle.execute_update(
        "transition", TransitionRequest(action="scale", replicas=3), result_type=TransitionResult
    )
    h = await deploy(env, worker, agent, promotion={"mode": "auto"})
    assert (await finish(env, h)).outcome == "promoted"
    st = await assert_consistent(platform, agent, lifecycle, version="v2")
    assert st.desired_replicas == 3 and platform.running(agent, "green") == 3


async def test_an_agent_workflow_under_another_id_fails_at_once(env, worker, platform) -> None:
    """``agent/evil`` running agent ``victim`` would drive the victim's replicas and Service."""
    h = await env.client.start_workflow(
        "AgentLifecycle",
        {"agent_id": "victim", "command": ["agent"]},
        id="agent/evil",
        task_queue=worker.task_queue,
    )
    with pytest.raises(WorkflowFailureError, match="failed") as exc:
        await asyncio.wait_for(h.result(), 60)
    cause = exc.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == "InvalidInput"
    assert "agent/victim" in cause.message
    assert platform.calls == []
