"""The typed helpers of ``starters.agents`` against AgentLifecycle with stand-in activities."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from fleetops.models import AgentReport, AgentState, AgentStatus, TransitionResult
from starters import agents
from starters.agents import (
    AgentAlreadyRunningError,
    AgentNotFoundError,
    AgentSummary,
    InvalidTransitionError,
)
from tests.conftest import assert_eventually, new_worker
from tests.helpers import result_within
from tests.test_agent_lifecycle import FakePlatform, spec
from workflows.agent_lifecycle import AgentLifecycle

S = AgentState


@pytest.fixture
async def worker(env: WorkflowEnvironment) -> AsyncIterator[Worker]:
    platform = FakePlatform()
    w = new_worker(env.client, workflows=[AgentLifecycle], activities=platform.activities())
    async with w:
        yield w


@pytest.fixture
async def dev_worker(dev_env: WorkflowEnvironment) -> AsyncIterator[Worker]:
    platform = FakePlatform()
    w = new_worker(dev_env.client, workflows=[AgentLifecycle], activities=platform.activities())
    async with w:
        yield w


async def wait_state(env: WorkflowEnvironment, agent_id: str, state: AgentState) -> AgentStatus:
    async def check() -> AgentStatus:
        st = await agents.status(env.client, agent_id)
        assert st.state == state, f"state {st.state}, waiting for {state}"
        return st

    return await assert_eventually(check)


async def test_start_steer_and_shutdown(env: WorkflowEnvironment, worker: Worker) -> None:
    s = spec(replicas=1, max_replicas=3)
    client = env.client
    handle = await agents.start_agent(client, s, task_queue=worker.task_queue)
    assert handle.id == f"agent/{s.agent_id}" and handle.result_run_id
    await wait_state(env, s.agent_id, S.READY)

    with pytest.raises(AgentAlreadyRunningError, match=s.agent_id) as dup:
        await agents.start_agent(client, s, task_queue=worker.task_queue)
    assert dup.value.agent_id == s.agent_id

    res = await agents.pause(client, s.agent_id, reason="maintenance", requested_by="alice")
    assert res == TransitionResult(
        action="pause", state=S.PAUSED, replicas=1, message="pause by alice: maintenance"
    )
    with pytest.raises(InvalidTransitionError, match="cannot pause") as bad:
        await agents.pause(client, s.agent_id)
    assert bad.value.action == "pause"

    res = await agents.resume(client, s.agent_id)
    assert res.state == S.INITIALIZING
    await wait_state(env, s.agent_id, S.READY)

    res = await agents.scale(client, s.agent_id, 3, requested_by="bob")
    assert (res.state, res.replicas) == (S.READY, 3)
    assert len((await agents.status(client, s.agent_id)).replicas) == 3
    with pytest.raises(InvalidTransitionError, match="max_replicas=3"):
        await agents.scale(client, s.agent_id, 4)

    report = await agents.shutdown(client, s.agent_id, reason="done")
    assert isinstance(report, AgentReport)
    assert report.final_state == S.TERMINATED
    assert report.transitions[-1].to_state == S.TERMINATED

    with pytest.raises(AgentNotFoundError, match=rf"agent {s.agent_id} is not running"):
        await agents.pause(client, s.agent_id)
    with pytest.raises(AgentNotFoundError, match=rf"no open AgentLifecycle agent/{s.agent_id}"):
        await agents.status(client, s.agent_id)

    # A terminated agent's id may be used again.
    again = await agents.start_agent(client, s, task_queue=worker.task_queue)
    assert again.result_run_id != handle.result_run_id
    await wait_state(env, s.agent_id, S.READY)
    result = await agents.shutdown(client, s.agent_id, wait=False)
    assert isinstance(result, TransitionResult) and result.state == S.TERMINATED
    await result_within(again.result())


async def test_unknown_agent_is_not_found(env: WorkflowEnvironment) -> None:
    with pytest.raises(AgentNotFoundError, match="never-started is not running"):
        await agents.scale(env.client, "never-started", 2)
    with pytest.raises(AgentNotFoundError, match="agent never-started is not running"):
        await agents.status(env.client, "never-started")
    with pytest.raises(AgentNotFoundError, match="agent never-started is not running"):
        await agents.shutdown(env.client, "never-started")


async def test_list_agents(dev_env: WorkflowEnvironment, dev_worker: Worker) -> None:
    # The time-skipping test server has no visibility queries, so this runs on the dev server.
    client = dev_env.client
    ready, paused = spec(), spec()
    for s in (ready, paused):
        await agents.start_agent(client, s, task_queue=dev_worker.task_queue)
        await wait_state(dev_env, s.agent_id, S.READY)
    await agents.pause(client, paused.agent_id)

    async def listed(**kw: object) -> list[AgentSummary]:
        return [
            a
            for a in await agents.list_agents(client, **kw)  # type: ignore[arg-type]
            if a.agent_id in (ready.agent_id, paused.agent_id)
        ]

    async def all_listed() -> None:
        got = {a.agent_id: a for a in await listed()}
        assert got.keys() == {ready.agent_id, paused.agent_id}
        assert got[paused.agent_id].state == S.PAUSED
        assert got[ready.agent_id].state == S.READY
        a = got[ready.agent_id]
        assert (a.workflow_id, a.status) == (f"agent/{ready.agent_id}", "RUNNING")

    async def only_paused() -> None:
        assert [a.agent_id for a in await listed(state=S.PAUSED)] == [paused.agent_id]

    await assert_eventually(all_listed)
    await assert_eventually(only_paused)

    await agents.shutdown(client, ready.agent_id)

    async def closed() -> None:
        assert [a.agent_id for a in await listed()] == [paused.agent_id]
        rows = [a for a in await listed(include_closed=True) if a.agent_id == ready.agent_id]
        assert [(a.status, a.state) for a in rows] == [("COMPLETED", S.TERMINATED)]

    await assert_eventually(closed)
    await agents.shutdown(client, paused.agent_id)
