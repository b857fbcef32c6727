"""Record the histories that tests/test_replay.py replays, with the workflow code of this checkout.

Run ``uv run python tests/histories/record.py [scenario ...]`` (all six by default, about half a
minute). It starts a Temporal dev server (tests/conftest.py ``start_dev_server``) and a worker
with every workflow and interceptor the FleetOps worker registers (``worker.WORKFLOWS``,
``worker.INTERCEPTORS``); the activities are the in-memory stand-ins of tests/standins.py plus
the real ``describe_deployment`` and notification activities, as in tests/test_blue_green.py.
Intervals are short and analyses bounded, so each history stays small. The scenarios, each
checked before it is written:

``lifecycle/degraded_heal.run1.json``, ``.run2.json``
    AgentLifecycle: READY -> DEGRADED (replica 0 fails ``failure_threshold`` probes) -> self-heal
    restart -> partial recovery (replica 1 fails one probe: still DEGRADED, the DEGRADED clock
    kept) -> READY; pause, resume, scale 2 -> 3; continue-as-new; the second run shuts down.
``lifecycle/degraded_timeout.json``
    AgentLifecycle: READY -> DEGRADED -> restart, then a partial recovery (the replicas fail one
    probe in turn) that outlasts ``recovery_timeout_seconds``: the DEGRADED clock kept through
    it ends in ERROR; all healthy again: ERROR -> READY; shutdown.
``deployments/promote_rollback.agent.json``, ``.v2.json``, ``.v3.json``
    AgentLifecycle that deploys v2 (child BlueGreenDeployment, manual promotion approved through
    the ``decide`` update) and then v3, whose post-promotion analysis fails (scripted metric
    values) and which rolls back; the agent cleans up the losing colour and shuts down.
``lifecycle/operations.run1.json``, ``.run2.json``
    AgentLifecycle: update ``restart`` (rolling restart), ``configure`` (v2), ``configure``
    with ``restore_version`` 1 (v3), continue-as-new carrying the kept versions; shutdown.
``lifecycle/prober_heal.json``
    AgentLifecycle with ``health.probing: data-plane`` (a prober host and its lease, real HTTP
    to a scripted loopback server): READY -> DEGRADED -> self-heal -> READY, scale 2 -> 3,
    PROCESSING -> READY; shutdown.
``deployments/cancel_awaiting.agent.json``, ``.v2.json``
    AgentLifecycle whose child deployment is cancelled in AWAITING_PROMOTION; the agent
    reconciles, scales the new colour down and shuts down.
``lifecycle/error_incident.json``
    AgentLifecycle whose provisioning fails: ERROR opens its incident (patch
    ``open-incident-on-error``, the real ``open_incident`` activity signal-with-starting
    ``incident/<agent>/lifecycle`` on a task queue nobody polls); resume, READY, shutdown.

Record again only when a change is intended to break replay and no execution of the old code
runs anywhere; otherwise put the change behind ``workflow.patched`` and keep these files.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as a script: make the project's packages importable
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from temporalio.client import (  # noqa: E402
    Client,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowHandle,
)
from temporalio.worker import Replayer, Worker  # noqa: E402

import worker as fleetops_worker  # noqa: E402
from activities.deployments import DeploymentActivities  # noqa: E402
from activities.incident_intake import IncidentIntakeActivities  # noqa: E402
from activities.notify import NotifyActivities  # noqa: E402
from fleetops.approvals import DecisionRequest  # noqa: E402
from fleetops.converter import data_converter  # noqa: E402
from fleetops.deploy import DeploymentReport, DeploymentRequest, DeploymentStatus  # noqa: E402
from fleetops.models import (  # noqa: E402
    AgentLifecycleInput,
    AgentReport,
    AgentSpec,
    AgentState,
    AgentStatus,
    ConfigureAgentRequest,
    RestartAgentRequest,
    TransitionRequest,
)
from fleetops.settings import ApprovalSettings  # noqa: E402
from tests.conftest import assert_eventually, new_worker, start_dev_server  # noqa: E402
from tests.prober_support import FarmPlatform, HealthFarm, prober_worker  # noqa: E402
from tests.standins import ColorPlatform  # noqa: E402
from workflows.agent_lifecycle import AgentLifecycle  # noqa: E402
from workflows.blue_green import BlueGreenDeployment  # noqa: E402

HERE = Path(__file__).parent
S = AgentState
T = TypeVar("T")
INTERVAL = 0.5
"""Seconds between health rounds of the recorded agents."""


async def eventually(fn: Callable[[], Awaitable[T]], timeout: float = 30.0) -> T:
    return await assert_eventually(fn, timeout=timeout, interval=0.1)


async def start_agent(client: Client, w: Worker, name: str, **health: Any) -> WorkflowHandle:
    """Start an agent of 2 replicas (``health`` overrides the short intervals); once READY."""
    agent = f"{name}-{uuid.uuid4().hex[:6]}"
    rounds = health.pop("rounds_per_run", 300)
    spec = AgentSpec(
        agent_id=agent,
        command=["agent"],
        replicas=2,
        version="v1",
        health={"interval_seconds": INTERVAL, "failure_threshold": 2} | health,
        health_rounds_per_run=rounds,
    )
    h = await client.start_workflow(
        AgentLifecycle.run,
        AgentLifecycleInput(**spec.model_dump()),
        id=f"agent/{agent}",
        task_queue=w.task_queue,
    )
    await eventually(lambda: expect_state(h, S.READY))
    return h


async def expect_state(h: WorkflowHandle, state: AgentState) -> AgentStatus:
    st: AgentStatus = await h.query(AgentLifecycle.status)
    assert st.state == state, st.state
    return st


def path_of(st: AgentStatus) -> list[tuple[str, str]]:
    return [(str(t.from_state), str(t.to_state)) for t in st.transitions]


async def write(client: Client, wid: str, run_id: str | None, name: str) -> None:
    """Check that run ``run_id`` (None: the latest) replays with this code, store it as ``name``."""
    history = await client.get_workflow_handle(wid, run_id=run_id).fetch_history()
    replayer = Replayer(
        workflows=list(fleetops_worker.WORKFLOWS),
        interceptors=list(fleetops_worker.INTERCEPTORS),
        data_converter=data_converter(),
    )
    await replayer.replay_workflow(history)
    out = HERE / name
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(history.to_json() + "\n")
    print(f"{out.relative_to(ROOT)}: {len(history.events)} events")


async def shutdown(client: Client, h: WorkflowHandle) -> AgentReport:
    await h.signal(AgentLifecycle.shutdown)
    report: AgentReport = await asyncio.wait_for(
        client.get_workflow_handle_for(AgentLifecycle.run, h.id).result(), 30
    )
    assert report.final_state == S.TERMINATED, report.final_state
    return report


async def degraded_heal(client: Client, w: Worker, platform: ColorPlatform) -> None:
    """READY -> DEGRADED -> restart -> partial recovery -> READY, operator actions, CAN."""
    h = await start_agent(client, w, "heal", rounds_per_run=12, startup_timeout_seconds=30)
    agent = h.id.removeprefix("agent/")
    # Probes from now on, per replica: round 1 both healthy; rounds 2-3 replica 0 fails
    # (2 = failure_threshold: DEGRADED, restart of 0); round 4 replica 0 healthy, replica 1
    # fails once (no replica at the threshold, not all healthy: partial recovery, DEGRADED
    # kept); round 5 all healthy: READY.
    platform.probe_script[platform.endpoint(agent, "blue", 0)] = [True, False, False, True]
    platform.probe_script[platform.endpoint(agent, "blue", 1)] = [True, True, True, False]

    async def healed() -> AgentStatus:
        st = await expect_state(h, S.READY)
        assert path_of(st)[-2:] == [("READY", "DEGRADED"), ("DEGRADED", "READY")], path_of(st)
        return st

    st = await eventually(healed)
    assert st.counters.replica_restarts == 1 and st.counters.continued_as_new == 0
    assert not any(platform.probe_script.values()), "scripted probes not all consumed"
    first_run = (await h.describe()).run_id
    for req in (
        TransitionRequest(action="pause", reason="recording"),
        TransitionRequest(action="resume"),
        TransitionRequest(action="scale", replicas=3),
    ):
        await h.execute_update(AgentLifecycle.transition, req)
    await eventually(lambda: expect_state(h, S.READY))

    async def continued() -> AgentStatus:
        st: AgentStatus = await client.get_workflow_handle(h.id).query(AgentLifecycle.status)
        assert st.counters.continued_as_new >= 1, st.counters
        return st

    await eventually(continued)
    # The first run itself holds the operator actions (they finish before it continues as new).
    st = await client.get_workflow_handle(h.id, run_id=first_run).query(AgentLifecycle.status)
    assert st.desired_replicas == 3 and st.state == S.READY
    path = path_of(st)
    for step in [("READY", "PAUSED"), ("PAUSED", "INITIALIZING"), ("INITIALIZING", "READY")]:
        assert step in path, path
    await shutdown(client, h)
    await write(client, h.id, first_run, "lifecycle/degraded_heal.run1.json")
    await write(client, h.id, None, "lifecycle/degraded_heal.run2.json")


async def degraded_timeout(client: Client, w: Worker, platform: ColorPlatform) -> None:
    """DEGRADED, then a partial recovery that outlasts ``recovery_timeout_seconds``: ERROR."""
    h = await start_agent(
        client, w, "slow", recovery_timeout_seconds=4 * INTERVAL, startup_timeout_seconds=30
    )
    agent = h.id.removeprefix("agent/")
    # Rounds 2-3: replica 0 fails (DEGRADED, restart of 0); then the replicas fail in turn,
    # one probe each: never at the threshold, never all healthy, so the DEGRADED clock runs on.
    platform.probe_script[platform.endpoint(agent, "blue", 0)] = [True, False, False]
    platform.probe_script[platform.endpoint(agent, "blue", 1)] = [True, True, True]
    platform.probe_script[platform.endpoint(agent, "blue", 0)] += [True, False] * 20
    platform.probe_script[platform.endpoint(agent, "blue", 1)] += [False, True] * 20

    async def timed_out() -> AgentStatus:
        st = await expect_state(h, S.ERROR)
        assert path_of(st)[-2:] == [("READY", "DEGRADED"), ("DEGRADED", "ERROR")], path_of(st)
        return st

    st = await eventually(timed_out)
    assert st.counters.replica_restarts == 1, st.counters  # none during the partial recovery
    assert any(platform.probe_script.values()), "the partial recovery ran out of script"
    platform.probe_script.clear()  # all healthy from now on: ERROR -> READY by itself
    st = await eventually(lambda: expect_state(h, S.READY))
    assert path_of(st)[-1] == ("ERROR", "READY"), path_of(st)
    await shutdown(client, h)
    await write(client, h.id, None, "lifecycle/degraded_timeout.json")


async def deploy(client: Client, agent_h: WorkflowHandle, version: str, **kw: Any) -> Any:
    """The ``deploy`` update; returns the child's handle."""
    agent = agent_h.id.removeprefix("agent/")
    req = DeploymentRequest.model_validate({"agent_id": agent, "version": version, **kw})
    started = await agent_h.execute_update(AgentLifecycle.deploy, req)
    return client.get_workflow_handle_for(
        BlueGreenDeployment.run, started.deployment_id, run_id=started.run_id
    )


async def wait_phase(h: WorkflowHandle, phase: str) -> None:
    async def check() -> None:
        st = await h.query(BlueGreenDeployment.status)
        assert st.phase == phase, st.phase

    await eventually(check)


async def idle_on(h: WorkflowHandle, platform: ColorPlatform, color: str, version: str) -> None:
    """The agent holds no deployment, serves ``version`` on ``color``, and only it runs."""
    agent = h.id.removeprefix("agent/")

    async def check() -> None:
        st = await expect_state(h, S.READY)
        assert st.deployment_id is None and st.active_color == color and st.version == version
        running = {c for c in ("blue", "green") if platform.running(agent, c)}
        assert running == {color}, running

    await eventually(check)


async def promote_rollback(client: Client, w: Worker, platform: ColorPlatform) -> None:
    """v2 promoted by a manual decision; v3 rolled back by its post-promotion analysis."""
    h = await start_agent(client, w, "promo", interval_seconds=3600)  # no rounds meanwhile
    fast = {"scale_down_delay_seconds": 1, "abort_scale_down_delay_seconds": 1}
    v2 = await deploy(client, h, "v2", **fast)
    await wait_phase(v2, "AWAITING_PROMOTION")
    await v2.execute_update(
        "decide", DecisionRequest(approver="bob", approved=True, comment="recording")
    )
    report: DeploymentReport = await asyncio.wait_for(v2.result(), 30)
    assert report.outcome == "promoted", report.message
    await idle_on(h, platform, "green", "v2")

    platform.metric_values["errors"] = [0.01, 0.4]  # 2nd measurement fails the condition
    analysis = {
        "metrics": [
            {"name": "errors", "builtin": "error_rate", "success_condition": "result < 0.05",
             "interval_seconds": 0.5, "count": 2}
        ]
    }  # fmt: skip
    v3 = await deploy(
        client, h, "v3", promotion={"mode": "auto"}, post_promotion_analysis=analysis, **fast
    )
    report = await asyncio.wait_for(v3.result(), 30)
    assert report.outcome == "rolled_back", report.message
    assert report.switched_at is not None and report.switched_back_at is not None
    await idle_on(h, platform, "green", "v2")
    st = await expect_state(h, S.READY)
    assert st.counters.deployments == 2
    await shutdown(client, h)
    await write(client, h.id, None, "deployments/promote_rollback.agent.json")
    await write(client, v2.id, v2.run_id, "deployments/promote_rollback.v2.json")
    await write(client, v3.id, v3.run_id, "deployments/promote_rollback.v3.json")


async def cancel_awaiting(client: Client, w: Worker, platform: ColorPlatform) -> None:
    """A deployment cancelled while it waits for approval."""
    h = await start_agent(client, w, "cancel", interval_seconds=3600)
    v2 = await deploy(client, h, "v2", abort_scale_down_delay_seconds=1)
    await wait_phase(v2, "AWAITING_PROMOTION")
    await v2.cancel()
    with contextlib.suppress(WorkflowFailureError):
        await asyncio.wait_for(v2.result(), 30)
    assert (await v2.describe()).status == WorkflowExecutionStatus.CANCELED
    final: DeploymentStatus = await v2.query(BlueGreenDeployment.status)
    assert final.phase == "CANCELLED" and final.outcome == "cancelled", final.phase
    await idle_on(h, platform, "blue", "v1")
    st = await expect_state(h, S.READY)
    assert st.last_deployment is not None and st.last_deployment.closed_as == "canceled"
    await shutdown(client, h)
    await write(client, h.id, None, "deployments/cancel_awaiting.agent.json")
    await write(client, v2.id, v2.run_id, "deployments/cancel_awaiting.v2.json")


async def operations(client: Client, w: Worker, platform: ColorPlatform) -> None:
    """Rolling restart, configure, a refused config, restore, and continue-as-new carrying the
    kept configuration versions."""
    h = await start_agent(client, w, "ops", rounds_per_run=6)
    restarted = await h.execute_update(
        AgentLifecycle.restart, RestartAgentRequest(requested_by="rec", reason="recording")
    )
    assert restarted.restarted == 2
    first_run = (await h.describe()).run_id
    done = await h.execute_update(
        AgentLifecycle.configure, ConfigureAgentRequest(config={"mode": "b"}, requested_by="rec")
    )
    assert (done.config_version, done.previous_version) == (2, 1)
    restored = await h.execute_update(
        AgentLifecycle.configure, ConfigureAgentRequest(restore_version=1)
    )
    assert restored.config_version == 3

    async def continued() -> AgentStatus:
        st: AgentStatus = await client.get_workflow_handle(h.id).query(AgentLifecycle.status)
        assert st.counters.continued_as_new >= 1, st.counters
        return st

    st = await eventually(continued)
    assert [v.version for v in st.config_versions] == [1, 2, 3], st.config_versions
    await shutdown(client, h)
    await write(client, h.id, first_run, "lifecycle/operations.run1.json")
    await write(client, h.id, None, "lifecycle/operations.run2.json")


async def error_incident(client: Client, w: Worker, platform: ColorPlatform) -> None:
    """Provisioning fails: ERROR, the agent's lifecycle incident is opened; resume, shutdown."""
    platform.fail.add("provision_replicas")
    agent = f"err-{uuid.uuid4().hex[:6]}"
    spec = AgentSpec(agent_id=agent, command=["agent"], replicas=1, version="v1",
                     health={"interval_seconds": INTERVAL})  # fmt: skip
    h = await client.start_workflow(
        AgentLifecycle.run,
        AgentLifecycleInput(**spec.model_dump()),
        id=f"agent/{agent}",
        task_queue=w.task_queue,
    )

    async def noted() -> AgentStatus:
        st = await expect_state(h, S.ERROR)
        assert "incident incident/" in st.transitions[-1].reason, st.transitions[-1]
        return st

    await eventually(noted)
    incident = await client.get_workflow_handle(f"incident/{agent}/lifecycle").describe()
    assert incident.workflow_type == "IncidentResponse", incident.workflow_type
    platform.fail.clear()
    await h.execute_update(AgentLifecycle.transition, TransitionRequest(action="resume"))
    await eventually(lambda: expect_state(h, S.READY))
    await shutdown(client, h)
    await client.get_workflow_handle(incident.id).terminate("recorded")
    await write(client, h.id, None, "lifecycle/error_incident.json")


async def prober_heal(client: Client, w: Worker, platform: ColorPlatform) -> None:
    """The data-plane prober: READY -> DEGRADED (replica 0 fails) -> restart -> READY, scale
    2 -> 3 (the prober restarted with the new spec), PROCESSING -> READY; shutdown."""
    farm = HealthFarm()
    await farm.start()
    farm_platform = FarmPlatform(farm)
    pw = new_worker(
        client,
        workflows=fleetops_worker.WORKFLOWS,
        activities=farm_platform.activities(),
        interceptors=list(fleetops_worker.INTERCEPTORS),
    )
    async with pw, prober_worker(client, pw.task_queue):
        h = await start_agent(client, pw, "probed", probing="data-plane", timeout_seconds=1)
        agent = h.id.removeprefix("agent/")
        first = farm_platform.endpoint(agent, "blue", 0)
        farm.broken.add(first)
        await eventually(lambda: expect_state(h, S.DEGRADED))

        async def restarted() -> None:
            assert ("restart_replicas", ("blue", [0])) in farm_platform.calls

        await eventually(restarted)
        farm.broken.discard(first)
        await eventually(lambda: expect_state(h, S.READY))
        await h.execute_update(
            AgentLifecycle.transition, TransitionRequest(action="scale", replicas=3)
        )
        farm.busy[farm_platform.endpoint(agent, "blue", 2)] = 1
        await eventually(lambda: expect_state(h, S.PROCESSING))
        farm.busy.clear()
        await eventually(lambda: expect_state(h, S.READY))
        await shutdown(client, h)
    await farm.stop()
    await write(client, h.id, None, "lifecycle/prober_heal.json")


SCENARIOS = {
    "prober_heal": prober_heal,
    "operations": operations,
    "degraded_heal": degraded_heal,
    "degraded_timeout": degraded_timeout,
    "promote_rollback": promote_rollback,
    "cancel_awaiting": cancel_awaiting,
    "error_incident": error_incident,
}


async def main(names: list[str]) -> None:
    unknown = set(names) - set(SCENARIOS)
    if unknown:
        raise SystemExit(f"unknown scenarios {sorted(unknown)}; choose from {list(SCENARIOS)}")
    env = await start_dev_server()
    platform = ColorPlatform()
    try:
        async with httpx.AsyncClient() as http:
            notify = NotifyActivities(http, ApprovalSettings(roles={"bob": ["sre"]}))
            w = new_worker(
                env.client,
                workflows=fleetops_worker.WORKFLOWS,
                activities=[
                    *platform.activities(),
                    DeploymentActivities(env.client).describe_deployment,
                    notify.send_notification,
                    notify.approval_policy,
                    notify.approver_roles,
                    IncidentIntakeActivities(env.client, "incidents-unpolled").open_incident,
                ],
                interceptors=list(fleetops_worker.INTERCEPTORS),
            )
            async with w:
                for name in names or SCENARIOS:
                    await SCENARIOS[name](env.client, w, platform)
    finally:
        await env.shutdown()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
