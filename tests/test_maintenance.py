"""Maintenance on the time-skipping server: windows, emergency approval, batches, rollback,
halt vs continue, pre-check refusals and cancellation.

The workflow, the approval gate and notifications are real; the agents, the secret store and
nodes are the in-memory stand-ins of tests/maintenance_standins.py (registered under the real
activity names), so each test asserts what the plan did to the world.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from temporalio.client import WorkflowFailureError, WorkflowHandle, WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError, CancelledError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.notify import NotifyActivities
from fleetops.approvals import DecisionRequest
from fleetops.maintenance import MaintenancePlan, MaintenanceStatus, StepConfirmation
from fleetops.settings import ApprovalSettings
from tests.conftest import assert_eventually, new_worker
from tests.maintenance_standins import Fleet
from workflows.maintenance import Maintenance

SECRETS = {"secrets": [{"path": "agents/{agent_id}", "key": "openai"}]}


@pytest.fixture
def env(isolated_env: WorkflowEnvironment) -> WorkflowEnvironment:
    return isolated_env


@pytest.fixture
def fleet() -> Fleet:
    f = Fleet("a1", "a2", "a3", "a4", labels={"tier": "prod"})
    for a in f.agents:
        f.put_secret(f"agents/{a}")
    return f


@pytest.fixture
async def worker(env: WorkflowEnvironment, fleet: Fleet) -> AsyncIterator[Worker]:
    async with httpx.AsyncClient() as http:
        notify = NotifyActivities(http, ApprovalSettings(roles={"bob": ["sre"]}))
        w = new_worker(
            env.client,
            workflows=[Maintenance],
            activities=[
                *fleet.activities(),
                notify.send_notification,
                notify.approval_policy,
                notify.approver_roles,
            ],
        )
        async with w:
            yield w


def plan(**kw: Any) -> MaintenancePlan:
    base: dict[str, Any] = {
        "name": "rotate",
        "kind": "secret_rotation",
        "targets": {"selector": {"tier": "prod"}},
        "parameters": SECRETS,
        "approval": {"required": "never"},
    }
    base.update(kw)
    return MaintenancePlan.model_validate(base)


async def start(env: WorkflowEnvironment, worker: Worker, p: MaintenancePlan) -> WorkflowHandle:
    return await env.client.start_workflow(
        Maintenance.run,
        p,
        id=f"maintenance/{p.name}/{uuid.uuid4().hex[:8]}",
        task_queue=worker.task_queue,
        result_type=MaintenanceStatus,
    )


def states(st: MaintenanceStatus) -> dict[str, str]:
    return {t.agent_id: t.state for t in st.targets}


async def test_rotation_changes_every_target_in_batches_and_confirms(
    env: WorkflowEnvironment, worker: Worker, fleet: Fleet
) -> None:
    h = await start(env, worker, plan(batch_size=2, max_unavailable=1))
    st: MaintenanceStatus = await h.result()
    assert st.outcome == "completed", st.message
    assert states(st) == dict.fromkeys(["a1", "a2", "a3", "a4"], "done")
    assert [t.batch for t in st.targets] == [1, 1, 2, 2]
    assert fleet.max_changing == 1  # max_unavailable=1: one at a time inside a batch
    assert sorted(fleet.confirmed) == [(f"agents/a{i}", 2) for i in range(1, 5)]
    assert st.targets[0].facts["agents/a1:openai"] == "v1->v2"
    steps = [(e.step, e.target) for e in st.audit if e.target == "a1"]
    assert steps[:3] == [("apply", "a1"), ("post_check", "a1"), ("confirm", "a1")]
    # Each secret was rotated once; the value never left the store.
    assert all(len(fleet.secrets[f"agents/a{i}"]) == 2 for i in range(1, 5))


async def test_max_unavailable_bounds_the_targets_changing_at_once(
    env: WorkflowEnvironment, worker: Worker, fleet: Fleet
) -> None:
    fleet.step_seconds = 0.5
    p = plan(
        kind="config_change",
        parameters={"config": {"x": 1}},
        batch_size=4,
        max_unavailable=2,
        approval={"required": "never"},
    )
    st: MaintenanceStatus = await (await start(env, worker, p)).result()
    assert st.outcome == "completed", st.message
    assert fleet.max_changing == 2
    assert all(len(a.configs) == 1 for a in fleet.agents.values())


async def test_waits_for_the_window_with_a_durable_timer(
    env: WorkflowEnvironment, worker: Worker, fleet: Fleet
) -> None:
    now = await env.get_current_time()
    opens = now + timedelta(hours=5)
    p = plan(window={"start": opens.isoformat(), "end": (opens + timedelta(hours=2)).isoformat()})
    h = await start(env, worker, p)

    async def waiting() -> None:
        st = await h.query(Maintenance.status)
        assert st.phase == "WAITING_FOR_WINDOW"

    await assert_eventually(waiting)
    assert fleet.names("rotate_secret") == []  # nothing before the window opens
    st: MaintenanceStatus = await h.result()  # skips the 5 virtual hours
    assert st.outcome == "completed", st.message
    assert await env.get_current_time() >= opens
    assert st.window_opens == opens


async def test_a_plan_started_after_its_window_changes_nothing(
    env: WorkflowEnvironment, worker: Worker, fleet: Fleet
) -> None:
    now = await env.get_current_time()
    p = plan(
        window={
            "start": (now - timedelta(hours=3)).isoformat(),
            "end": (now - timedelta(hours=1)).isoformat(),
        }
    )
    st: MaintenanceStatus = await (await start(env, worker, p)).result()
    assert st.outcome == "window_missed"
    assert fleet.names("rotate_secret") == []


async def test_window_closing_mid_plan_stops_at_the_next_safe_point(
    env: WorkflowEnvironment, worker: Worker, fleet: Fleet
) -> None:
    p = plan(
        kind="custom",
        parameters={"description": "swap disks", "steps": ["swap"], "step_timeout_seconds": 86400},
        targets={"agents": ["a1", "a2", "a3"]},
        window={"duration_seconds": 3600},
    )
    h = await start(env, worker, p)

    async def awaiting(agent: str) -> None:
        st = await h.query(Maintenance.status)
        assert any(e.step == "awaiting_confirmation" and e.target == agent for e in st.audit)

    await assert_eventually(lambda: awaiting("a1"))
    await h.signal(Maintenance.confirm_step, StepConfirmation(agent_id="a1", step=0, by="ann"))
    await assert_eventually(lambda: awaiting("a2"))
    await env.sleep(2 * 3600)  # the window closes while a2 is in the middle of its change
    await h.signal(Maintenance.confirm_step, StepConfirmation(agent_id="a2", step=0, by="ann"))
    st: MaintenanceStatus = await h.result()
    assert st.outcome == "window_closed", st.message
    assert states(st) == {"a1": "done", "a2": "done", "a3": "not_done"}
    assert "not done: a3" in st.message


async def test_emergency_skips_the_window_but_needs_an_allowed_approver(
    env: WorkflowEnvironment, worker: Worker, fleet: Fleet
) -> None:
    now = await env.get_current_time()
    opens = now + timedelta(days=3)
    p = plan(
        emergency=True,
        approval={"approvers": ["alice"]},
        window={"start": opens.isoformat(), "duration_seconds": 3600},
        targets={"agents": ["a1"]},
    )
    h = await start(env, worker, p)

    async def pending() -> None:
        st = await h.query(Maintenance.status)
        assert st.phase == "AWAITING_APPROVAL" and st.pending_approval is not None

    await assert_eventually(pending)
    with pytest.raises(WorkflowUpdateFailedError) as refused:
        await h.execute_update(
            Maintenance.decide, DecisionRequest(approver="mallory", approved=True)
        )
    assert isinstance(refused.value.cause, ApplicationError)
    assert refused.value.cause.type == "ApprovalRefused"
    assert fleet.names("rotate_secret") == []
    await h.execute_update(
        Maintenance.decide, DecisionRequest(approver="alice", approved=True, comment="leak")
    )
    st: MaintenanceStatus = await h.result()
    assert st.outcome == "completed" and st.risk == "high"
    assert st.targets[0].ended_at is not None and st.targets[0].ended_at < opens  # no wait
    assert st.approvals[0].approver == "alice"


async def test_rejected_approval_changes_nothing(
    env: WorkflowEnvironment, worker: Worker, fleet: Fleet
) -> None:
    h = await start(env, worker, plan(approval={"required": "always", "roles": ["sre"]}))

    async def pending() -> None:
        assert (await h.query(Maintenance.status)).pending_approval is not None

    await assert_eventually(pending)
    await h.execute_update(
        Maintenance.decide, DecisionRequest(approver="bob", approved=False, comment="not now")
    )
    st: MaintenanceStatus = await h.result()
    assert st.outcome == "rejected"
    assert fleet.names("rotate_secret") == []


@pytest.mark.parametrize("policy", ["halt", "continue"])
async def test_failed_post_check_rolls_the_target_back_then_halts_or_continues(
    env: WorkflowEnvironment, worker: Worker, fleet: Fleet, policy: str
) -> None:
    fleet.breaks.add("a2")
    p = plan(targets={"agents": ["a1", "a2", "a3"]}, on_failure=policy)
    st: MaintenanceStatus = await (await start(env, worker, p)).result()
    got = states(st)
    assert got["a1"] == "done" and got["a2"] == "rolled_back"
    assert fleet.names("restore_secret") == [("agents/a2", 1)]  # the previous version is back
    assert fleet.secrets["agents/a2"][2] == fleet.secrets["agents/a2"][0]
    assert ("agents/a2", 2) not in fleet.confirmed  # never confirmed
    assert fleet.agents["a2"].restarts == 2 and fleet.agents["a2"].healthy
    if policy == "halt":
        assert st.outcome == "halted" and got["a3"] == "not_done"
        assert "agents/a3" not in [p for p in fleet.names("rotate_secret")]
    else:
        assert st.outcome == "completed_with_failures" and got["a3"] == "done"


async def test_version_update_rolls_back_to_the_previous_version_on_a_failed_post_check(
    env: WorkflowEnvironment, worker: Worker, fleet: Fleet
) -> None:
    fleet.breaks.add("a1")
    p = plan(kind="version_update", parameters={"version": "v2"}, targets={"agents": ["a1"]})
    st: MaintenanceStatus = await (await start(env, worker, p)).result()
    assert st.outcome == "halted"
    assert fleet.names("agent_deploy") == [("a1", "v2"), ("a1", "v1")]
    assert fleet.agents["a1"].version == "v1"


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        (lambda f: f.incidents.update(a2="incident/a2/lifecycle"), "incident open"),
        (lambda f: setattr(f.agents["a3"], "deployment_id", "deploy/a3/v9"), "deployment"),
        (lambda f: setattr(f.agents["a1"], "healthy", False), "1 of 2 replicas healthy"),
        (lambda f: f.agents.pop("a4"), "not running: a4"),
    ],
)
async def test_pre_checks_refuse_before_anything_changes(
    env: WorkflowEnvironment, worker: Worker, fleet: Fleet, setup: Any, expected: str
) -> None:
    setup(fleet)
    p = plan(targets={"agents": ["a1", "a2", "a3", "a4"]})
    st: MaintenanceStatus = await (await start(env, worker, p)).result()
    assert st.outcome == "refused"
    assert expected in st.message
    assert fleet.names("rotate_secret") == [] and fleet.names("agent_restart") == []


async def test_cancel_mid_plan_leaves_every_target_consistent(
    env: WorkflowEnvironment, worker: Worker, fleet: Fleet
) -> None:
    p = plan(targets={"agents": ["a1", "a2", "a3"]})
    h = await start(env, worker, p)
    fleet.hang.add("agent_restart")

    async def restarting() -> None:
        assert ("agent_restart", ("a1", "secret rotation")) in fleet.calls

    await assert_eventually(restarting)
    await h.cancel()
    fleet.release.set()  # the compensation's restart may go through
    with pytest.raises(WorkflowFailureError) as info:
        await h.result()
    assert isinstance(info.value.cause, CancelledError)
    st: MaintenanceStatus = await h.query(Maintenance.status)
    assert st.outcome == "cancelled"
    assert states(st) == {"a1": "rolled_back", "a2": "not_done", "a3": "not_done"}
    assert fleet.names("restore_secret") == [("agents/a1", 1)]
    assert fleet.secrets["agents/a1"][-1] == fleet.secrets["agents/a1"][0]
    assert fleet.names("agent_restart")[-1] == ("a1", "secret rollback")  # replicas read it back


async def test_cancel_while_a_target_is_paused_resumes_it(
    env: WorkflowEnvironment, worker: Worker, fleet: Fleet
) -> None:
    p = plan(
        kind="custom",
        parameters={"description": "swap disks", "steps": ["swap"]},
        targets={"agents": ["a1"]},
        pause_targets=True,
    )
    h = await start(env, worker, p)

    async def paused() -> None:
        assert fleet.agents["a1"].state == "PAUSED"
        st = await h.query(Maintenance.status)
        assert any(e.step == "awaiting_confirmation" for e in st.audit)

    await assert_eventually(paused)
    await h.cancel()
    with pytest.raises(WorkflowFailureError):
        await h.result()
    assert fleet.names("agent_transition") == [("a1", "pause"), ("a1", "resume")]
    assert fleet.agents["a1"].state == "READY"


async def test_a_paused_target_is_rotated_without_a_restart(
    env: WorkflowEnvironment, worker: Worker, fleet: Fleet
) -> None:
    st: MaintenanceStatus = await (
        await start(env, worker, plan(targets={"agents": ["a1"]}, pause_targets=True))
    ).result()
    assert st.outcome == "completed", st.message
    assert fleet.names("agent_restart") == []  # resume provisions replicas anew
    assert fleet.names("agent_transition") == [("a1", "pause"), ("a1", "resume")]
    assert st.targets[0].facts["restarted"] == "on resume"


async def test_cancel_during_a_version_update_aborts_the_deployment(
    env: WorkflowEnvironment, worker: Worker, fleet: Fleet
) -> None:
    fleet.hang.add("agent_deploy")
    p = plan(kind="version_update", parameters={"version": "v2"}, targets={"agents": ["a1"]})
    h = await start(env, worker, p)

    async def deploying() -> None:
        assert fleet.agents["a1"].deployment_id == "deploy/a1/v2"

    await assert_eventually(deploying)
    await h.cancel()
    with pytest.raises(WorkflowFailureError):
        await h.result()
    assert fleet.names("agent_abort_deployment") == ["a1"]
    assert fleet.agents["a1"].deployment_id is None and fleet.agents["a1"].version == "v1"


async def test_security_patch_cordons_drains_and_uncordons_each_node(
    env: WorkflowEnvironment, worker: Worker, fleet: Fleet
) -> None:
    fleet.nodes = {"a1": ["node-1", "node-2"]}
    p = plan(kind="security_patch", parameters={}, targets={"agents": ["a1", "a2"]})
    st: MaintenanceStatus = await (await start(env, worker, p)).result()
    assert st.outcome == "completed", st.message
    assert fleet.names("drain_node") == ["node-1", "node-2"]
    assert fleet.cordoned == set()
    assert fleet.agents["a2"].restarts == 1  # no nodes: the local platform's rolling restart


async def test_a_workflow_id_that_does_not_name_the_plan_is_refused(
    env: WorkflowEnvironment, worker: Worker
) -> None:
    h = await env.client.start_workflow(
        Maintenance.run,
        plan(),
        id=f"maintenance/other/{uuid.uuid4().hex[:6]}",
        task_queue=worker.task_queue,
    )
    with pytest.raises(WorkflowFailureError) as info:
        await h.result()
    assert isinstance(info.value.cause, ApplicationError)
    assert info.value.cause.type == "MaintenanceRefused"


async def test_malformed_confirmations_are_audited_not_fatal(
    env: WorkflowEnvironment, worker: Worker, fleet: Fleet
) -> None:
    p = plan(
        kind="custom", parameters={"description": "d", "steps": ["s"]}, targets={"agents": ["a1"]}
    )
    h = await start(env, worker, p)
    await h.signal("confirm_step", {"agent_id": "a1", "step": 0, "by": "early"})  # not awaited

    async def awaiting() -> None:
        st = await h.query(Maintenance.status)
        assert any(e.step == "awaiting_confirmation" for e in st.audit)

    await assert_eventually(awaiting)
    await h.signal("confirm_step", {"agent_id": "a1"})  # no step, no by
    await h.signal("confirm_step", {"agent_id": "zz", "step": 0, "by": "x"})  # not a target
    await h.signal("confirm_step", b"raw bytes")
    await h.signal(Maintenance.confirm_step, StepConfirmation(agent_id="a1", step=0, by="ann"))
    st: MaintenanceStatus = await h.result()
    assert st.outcome == "completed", [(e.step, e.detail) for e in st.audit]
    refused = [e.detail for e in st.audit if e.step == "confirm_step" and not e.ok]
    assert len(refused) == 4
    assert "not awaited" in refused[0] and "Field required" in refused[1]
    assert "step 0 of zz is not awaited" in refused[2]
    assert st.targets[0].facts == {"step0": "done by ann"}
