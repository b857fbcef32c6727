"""AgentLifecycle end to end: real dev server, the real worker, the local platform, real replicas.

Set ``FLEETOPS_RECORD_HISTORIES=1`` to (re)write ``tests/histories/agent_lifecycle_e2e.json``,
the history that ``test_replay.py`` replays against the current workflow code.
"""

from __future__ import annotations

import os
import signal
import uuid
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer

from fleetops.converter import data_converter
from fleetops.models import (
    AgentLifecycleInput,
    AgentReport,
    AgentState,
    AgentStatus,
    TransitionRequest,
)
from tests.e2e_support import (
    agent_spec,
    alive,
    eventually,
    local_settings,
    status,
    tag,
    tagged_pids,
    wait_ready,
)
from tests.helpers import result_within
from worker import fleetops_worker
from workflows.agent_lifecycle import AgentLifecycle

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc")

__all__ = ["tag"]  # the fixture, imported so tests here can use it

S = AgentState
HISTORY_FILE = Path(__file__).parent / "histories" / "agent_lifecycle_e2e.json"


async def listed_with_state(env: WorkflowEnvironment, workflow_id: str, state: S) -> None:
    query = f"FleetOpsState='{state}' AND WorkflowId='{workflow_id}'"
    found = [wf.id async for wf in env.client.list_workflows(query)]
    assert found == [workflow_id], f"visibility query {query!r} returned {found}"


async def test_agent_lifecycle_end_to_end(
    dev_env: WorkflowEnvironment, tmp_path: Path, tag: str
) -> None:
    settings = local_settings(tmp_path)
    spec = agent_spec(tag, "e2e", replicas=2)
    workflow_id = f"agent/{spec.agent_id}"
    async with fleetops_worker(dev_env.client, settings, task_queue=str(uuid.uuid4())) as worker:
        handle: WorkflowHandle[Any, AgentReport] = await dev_env.client.start_workflow(
            AgentLifecycle.run,
            AgentLifecycleInput(**spec.model_dump()),
            id=workflow_id,
            task_queue=worker.task_queue,
        )

        # start -> READY, two live replicas, visible to `temporal workflow list --query`.
        first = await wait_ready(handle, 2)
        first_pids = {r.pid for r in first.replicas}
        assert tagged_pids(tag) == first_pids
        await eventually(
            lambda: listed_with_state(dev_env, workflow_id, S.READY), "FleetOpsState=READY"
        )

        # pause: the replica processes are gone.
        paused = await handle.execute_update(
            AgentLifecycle.transition, TransitionRequest(action="pause", reason="e2e")
        )
        assert paused.state == S.PAUSED
        assert not any(alive(pid) for pid in first_pids)
        assert tagged_pids(tag) == set()
        assert (await status(handle)).replicas == []
        await eventually(
            lambda: listed_with_state(dev_env, workflow_id, S.PAUSED), "FleetOpsState=PAUSED"
        )

        # resume: READY again, on new processes.
        resumed = await handle.execute_update(
            AgentLifecycle.transition, TransitionRequest(action="resume")
        )
        assert resumed.state == S.INITIALIZING
        second = await wait_ready(handle, 2)
        second_pids = [r.pid for r in second.replicas]
        assert not set(second_pids) & first_pids
        assert tagged_pids(tag) == set(second_pids)

        # SIGKILL one replica: DEGRADED, self-healed to READY on a new pid, same endpoint.
        victim = second.replicas[1]
        assert victim.pid is not None
        os.kill(victim.pid, signal.SIGKILL)
        healed = await eventually(
            lambda: _healed(handle, victim.pid), "self-heal of the killed replica", timeout=45
        )
        assert healed.replicas[1].endpoint == victim.endpoint
        assert healed.replicas[0].pid == second_pids[0]
        assert tagged_pids(tag) == {r.pid for r in healed.replicas}

        # shutdown: TERMINATED, nothing left running.
        await handle.signal(AgentLifecycle.shutdown)
        report = await result_within(handle.result())
        assert report.final_state == S.TERMINATED
        assert report.counters.replica_restarts >= 1
        assert tagged_pids(tag) == set()
        await eventually(
            lambda: listed_with_state(dev_env, workflow_id, S.TERMINATED),
            "FleetOpsState=TERMINATED",
        )

    history = await handle.fetch_history()
    # The history this test produced replays against the code that produced it.
    await Replayer(workflows=[AgentLifecycle], data_converter=data_converter()).replay_workflow(
        history
    )
    if os.environ.get("FLEETOPS_RECORD_HISTORIES") == "1":
        HISTORY_FILE.write_text(history.to_json() + "\n")


async def _healed(handle: WorkflowHandle[Any, Any], killed_pid: int | None) -> AgentStatus:
    st = await status(handle)
    path = [(t.from_state, t.to_state) for t in st.transitions]
    assert (S.READY, S.DEGRADED) in path, f"no READY -> DEGRADED yet: {path}"
    assert path[-1] == (S.DEGRADED, S.READY), f"not healed yet: {path}"
    assert st.state == S.READY
    assert st.counters.replica_restarts >= 1
    assert len(st.replicas) == 2 and all(r.healthy for r in st.replicas)
    assert st.replicas[1].pid != killed_pid and alive(st.replicas[1].pid)
    return st
