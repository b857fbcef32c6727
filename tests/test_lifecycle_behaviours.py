"""AgentLifecycle behaviours that regressions broke silently before (issue "Tests that fail when
behaviour breaks"), on the time-skipping server with the stand-in platform of
``tests/test_agent_lifecycle.py``:

- a busy (PROCESSING) agent whose replica fails degrades and heals back to READY;
- a second degradation long after the first recovery restarts again instead of going to ERROR
  (the recovery clock restarts on each recovery);
- a promoted agent (green, a new version, its service, failure counts) is the same agent after
  continue-as-new: the whole ``status`` is compared across runs.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from fleetops.models import (
    AgentCounters,
    AgentLifecycleInput,
    AgentState,
    AgentStatus,
    LifecycleCarry,
    Replica,
    ServiceInfo,
    Transition,
)
from tests.conftest import assert_eventually, new_worker
from tests.helpers import result_within
from tests.test_agent_lifecycle import FakePlatform, spec, start, status, wait_state
from workflows.agent_lifecycle import AgentLifecycle

S = AgentState


@pytest.fixture
def platform() -> FakePlatform:
    return FakePlatform()


@pytest.fixture
def env(isolated_env: WorkflowEnvironment) -> WorkflowEnvironment:
    """A fresh server per test: a regression that fails workflow tasks forever (as an invalid
    transition does) must fail its own test, not stall the clock of the next ones."""
    return isolated_env


@pytest.fixture
async def worker(env: WorkflowEnvironment, platform: FakePlatform) -> AsyncIterator[Worker]:
    w = new_worker(env.client, workflows=[AgentLifecycle], activities=platform.activities())
    async with w:
        yield w


def path(st: AgentStatus) -> list[tuple[AgentState, AgentState]]:
    return [(t.from_state, t.to_state) for t in st.transitions]


async def shut_down(h: WorkflowHandle) -> None:
    await h.signal(AgentLifecycle.shutdown)
    report = await result_within(h.result())
    assert report.final_state == S.TERMINATED


async def test_processing_agent_degrades_and_heals_to_ready(env, worker, platform) -> None:
    h = await start(env, worker, spec(replicas=2))
    st = await wait_state(h, S.READY)
    busy = st.replicas[0].endpoint
    platform.busy.add(busy)
    await env.sleep(15)
    await wait_state(h, S.PROCESSING)

    # The busy replica stops answering (so its requests are gone too): it fails probes until
    # restarted; failure_threshold is 2 rounds of 10 s.
    platform.busy.discard(busy)
    platform.broken.add(busy)
    await env.sleep(25)

    async def healed() -> AgentStatus:
        st = await status(h)
        assert st.state == S.READY and (S.PROCESSING, S.DEGRADED) in path(st), path(st)
        return st

    st = await assert_eventually(healed)
    assert platform.restarts == [0]
    assert path(st) == [
        (S.INITIALIZING, S.READY),
        (S.READY, S.PROCESSING),
        (S.PROCESSING, S.DEGRADED),
        (S.DEGRADED, S.READY),
    ]
    assert "replicas [0] failed 2 consecutive health probes" in st.transitions[2].reason
    assert st.counters.replica_restarts == 1
    await shut_down(h)


async def test_second_degradation_after_a_long_healthy_spell_restarts_again(
    env, worker, platform
) -> None:
    s = spec(
        health={"interval_seconds": 10, "failure_threshold": 1, "recovery_timeout_seconds": 60}
    )
    h = await start(env, worker, s)
    st = await wait_state(h, S.READY)
    endpoint = st.replicas[0].endpoint

    async def restarted(n: int) -> AgentStatus:
        st = await status(h)
        assert platform.restarts == [0] * n
        assert st.state == S.READY and path(st)[-1] == (S.DEGRADED, S.READY), path(st)
        return st

    platform.broken.add(endpoint)  # healed by one restart
    await env.sleep(15)
    await assert_eventually(lambda: restarted(1))

    await env.sleep(150)  # healthy for well past recovery_timeout_seconds
    assert (await status(h)).state == S.READY

    platform.broken.add(endpoint)
    await env.sleep(15)
    st = await assert_eventually(lambda: restarted(2))
    assert S.ERROR not in {t.to_state for t in st.transitions}
    assert path(st) == [
        (S.INITIALIZING, S.READY),
        (S.READY, S.DEGRADED),
        (S.DEGRADED, S.READY),
        (S.READY, S.DEGRADED),
        (S.DEGRADED, S.READY),
    ]
    assert st.counters.replica_restarts == 2
    await shut_down(h)


T0 = datetime(2026, 1, 1, tzinfo=UTC)


def promoted_carry(agent_id: str, platform: FakePlatform) -> LifecycleCarry:
    """What a run of an agent promoted to green v2 carries on (as after a blue-green deploy)."""
    replicas = [
        Replica(index=i, endpoint=f"http://{agent_id}-green-{i}.invalid", pid=4000 + i,
                color="green", version="v2")
        for i in range(2)
    ]  # fmt: skip
    platform.replicas[agent_id] = {r.index: r for r in replicas}
    platform.broken.add(replicas[1].endpoint)  # fails every probe, below the threshold
    return LifecycleCarry(
        state=S.READY,
        desired_replicas=2,
        started_at=T0,
        replicas=replicas,
        failures={1: 3},
        transitions=[
            Transition(at=T0, from_state=S.INITIALIZING, to_state=S.READY, reason="2 healthy")
        ],
        counters=AgentCounters(health_rounds=40, failed_probes=3, transitions=1, deployments=1),
        last_rejection="cannot resume agent while it is READY",
        active_color="green",
        service=ServiceInfo(
            agent_id=agent_id,
            active_color="green",
            active_url=f"http://{agent_id}.svc",
            generation=3,
        ),
    )


async def closed_run_status(env: WorkflowEnvironment, wf_id: str, run_id: str) -> AgentStatus:
    st: AgentStatus = await env.client.get_workflow_handle(wf_id, run_id=run_id).query(
        AgentLifecycle.status
    )
    return st


async def next_run_id(env: WorkflowEnvironment, wf_id: str, run_id: str) -> str:
    async def continued() -> str:
        history = await env.client.get_workflow_handle(wf_id, run_id=run_id).fetch_history()
        last = history.events[-1]
        assert last.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW
        return str(last.workflow_execution_continued_as_new_event_attributes.new_execution_run_id)

    return await assert_eventually(continued, timeout=30)


async def test_promoted_agent_is_the_same_agent_after_continue_as_new(
    env, worker, platform
) -> None:
    s = spec(
        version="v2",
        replicas=2,
        health_rounds_per_run=2,
        health={"interval_seconds": 10, "failure_threshold": 100},
    )
    carry = promoted_carry(s.agent_id, platform)
    h = await env.client.start_workflow(
        AgentLifecycle.run,
        AgentLifecycleInput(**s.model_dump(), carry=carry),
        id=f"agent/{s.agent_id}",
        task_queue=worker.task_queue,
    )
    first = h.first_execution_run_id
    assert first is not None
    await env.sleep(45)  # runs of 2 rounds each: continue-as-new at t=10, 20, 30, 40
    second = await next_run_id(env, h.id, first)
    await next_run_id(env, h.id, second)
    before = await closed_run_status(env, h.id, first)
    after = await closed_run_status(env, h.id, second)

    # What a run legitimately changes: two more health rounds (each a failed probe of replica
    # 1, whose consecutive failures go on counting) and one more continue-as-new.
    assert after.counters.health_rounds == before.counters.health_rounds + 2
    assert after.counters.failed_probes == before.counters.failed_probes + 2
    assert after.counters.continued_as_new == before.counters.continued_as_new + 1
    assert [r.consecutive_failures for r in before.replicas] == [0, 5]
    assert [r.consecutive_failures for r in after.replicas] == [0, 7]
    changed = {
        "counters": {
            **before.counters.model_dump(),
            "health_rounds": after.counters.health_rounds,
            "failed_probes": after.counters.failed_probes,
            "continued_as_new": after.counters.continued_as_new,
        },
        "replicas": [
            {**r.model_dump(), "consecutive_failures": r.consecutive_failures + 2 * (r.index == 1)}
            for r in before.replicas
        ],
    }
    assert after.model_dump() == {**before.model_dump(), **changed}

    # ... and the run kept what the carry said: colour, version, service, failures.
    assert before.active_color == "green" and before.version == "v2"
    assert before.service == carry.service
    assert before.state == S.READY and before.desired_replicas == 2
    assert [(r.color, r.version, r.pid) for r in before.replicas] == [
        ("green", "v2", 4000),
        ("green", "v2", 4001),
    ]
    assert before.transitions == carry.transitions
    assert before.last_rejection == carry.last_rejection
    assert platform.restarts == [] and platform.starts == 0  # nothing re-provisioned
    await shut_down(h)


async def test_signals_sent_in_a_row_apply_in_order(env, platform) -> None:
    """``scale``, ``pause``, ``resume`` sent back to back (a script, the Web UI) reach the
    agent in one workflow task: each is checked against the state the ones before it leave,
    so the operator's last word wins (``resume`` was refused as 'while it is READY' before)."""
    tq = f"tq-{uuid.uuid4()}"

    def worker() -> Worker:
        # No cache, so no sticky queue: the next task goes to whichever worker polls `tq`.
        return new_worker(env.client, workflows=[AgentLifecycle], activities=platform.activities(),
                          task_queue=tq, max_cached_workflows=0)  # fmt: skip

    s = spec(max_replicas=3)
    async with worker():
        h = await env.client.start_workflow(
            AgentLifecycle.run, AgentLifecycleInput(**s.model_dump()), id=f"agent/{s.agent_id}",
            task_queue=tq,
        )  # fmt: skip
        await wait_state(h, S.READY)
    # No worker polls: the three signals wait together for the next workflow task.
    await h.signal(AgentLifecycle.scale, {"replicas": 2})
    await h.signal(AgentLifecycle.pause, {"reason": "r1"})
    await h.signal(AgentLifecycle.resume, {"reason": "r2"})
    async with worker():

        async def resumed() -> AgentStatus:
            st = await status(h)
            assert path(st)[1:] == [
                (S.READY, S.PAUSED), (S.PAUSED, S.INITIALIZING), (S.INITIALIZING, S.READY)
            ]  # fmt: skip
            return st

        st = await assert_eventually(resumed, timeout=30)
        assert st.last_rejection is None and st.counters.rejected_requests == 0
        assert st.desired_replicas == 2 and len(st.replicas) == 2
        await shut_down(h)
