"""AgentLifecycle updates ``restart`` and ``configure`` on the time-skipping server.

The real workflow runs against the stand-in platform of ``tests/standins.py`` (registered under
the real activity names): what is checked is the workflow's side, i.e. which refusals happen
before anything is written to history, what is recorded, how versions are kept and carried
across continue-as-new, and that a failed configuration is rolled back. The platform's side
(surge, drain, zero failed requests) is ``tests/test_rolling_restart.py``.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHandle, WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from fleetops.errors import INVALID_INPUT, OPERATION_FAILED, OPERATION_REFUSED
from tests.conftest import assert_eventually, new_worker
from tests.standins import ColorPlatform
from worker import INTERCEPTORS, WORKFLOWS

SCHEMA = {
    "type": "object",
    "properties": {"temperature": {"type": "number", "minimum": 0, "maximum": 2}},
    "additionalProperties": False,
}


@pytest.fixture
def platform() -> ColorPlatform:
    return ColorPlatform()


STARTED: list[WorkflowHandle] = []
"""Agents the running test started; terminated when its worker stops."""


@pytest.fixture
async def worker(env: WorkflowEnvironment, platform: ColorPlatform) -> AsyncIterator[Worker]:
    """A worker for the test; its agents are terminated afterwards, since an agent left running
    in the shared time-skipping server would fire its next health round with no worker, and an
    activity nobody picks up stops time skipping for every later test."""
    w = new_worker(
        env.client,
        workflows=WORKFLOWS,
        activities=platform.activities(),
        interceptors=list(INTERCEPTORS),
    )
    async with w:
        yield w
        while STARTED:
            with contextlib.suppress(RPCError):
                await STARTED.pop().terminate("test over")


async def start(env: WorkflowEnvironment, worker: Worker, **spec: Any) -> WorkflowHandle:
    agent = f"ops-{uuid.uuid4().hex[:8]}"
    body = {"agent_id": agent, "command": ["agent"], "replicas": 2, **spec}
    body.setdefault("health", {"interval_seconds": 3600})
    h = await env.client.start_workflow(
        "AgentLifecycle", body, id=f"agent/{agent}", task_queue=worker.task_queue
    )
    STARTED.append(h)
    await wait_state(h, "READY")
    return h


async def wait_state(h: WorkflowHandle, state: str) -> dict[str, Any]:
    async def check() -> dict[str, Any]:
        st = await h.query("status")
        assert st["state"] == state, st["state"]
        return st

    return await assert_eventually(check)


async def accepted_updates(h: WorkflowHandle) -> int:
    kind = EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED
    return len([e async for e in h.fetch_history_events() if e.event_type == kind])


async def refused(h: WorkflowHandle, name: str, body: dict[str, Any], error_type: str) -> str:
    """Send update ``name``; assert its validator refused it with ``error_type``, unrecorded."""
    before = await accepted_updates(h)
    with pytest.raises(WorkflowUpdateFailedError) as info:
        await h.execute_update(name, body)
    cause = info.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == error_type, cause
    assert await accepted_updates(h) == before, "refused after it was written to history"
    return cause.message


def notes(st: dict[str, Any]) -> list[str]:
    return [t["reason"] for t in st["transitions"]]


async def test_restart_replaces_the_active_replicas_and_is_recorded(env, worker, platform) -> None:
    h = await start(env, worker)
    before = (await h.query("status"))["replicas"]
    result = await h.execute_update("restart", {"requested_by": "ops", "reason": "rotate"})
    assert result == {"restarted": 2, "color": "blue"}
    st = await h.query("status")
    after = [r["endpoint"] for r in st["replicas"]]
    assert after != [r["endpoint"] for r in before] and len(after) == 2
    assert [c for c in platform.calls if c[0] == "rolling_restart"] == [
        ("rolling_restart", ("blue", "v1", {}))
    ]
    assert st["counters"]["rolling_restarts"] == 1
    assert any("rolling restart of blue requested by ops: rotate" in n for n in notes(st))
    assert any("rolling restart done: 2 blue replicas replaced" in n for n in notes(st))
    assert st["state"] == "READY"


async def test_restart_is_refused_before_history_when_not_serving(env, worker) -> None:
    h = await start(env, worker)
    await h.execute_update("transition", {"action": "pause"})
    message = await refused(h, "restart", {}, OPERATION_REFUSED)
    assert "PAUSED" in message and "resume" in message
    await h.execute_update("transition", {"action": "shutdown"})
    await h.result()


async def test_restart_is_refused_during_a_deployment(env, worker, platform) -> None:
    platform.hang.add("wait_healthy")  # the deployment stays in progress
    h = await start(env, worker)
    agent = h.id.removeprefix("agent/")
    started = await h.execute_update("deploy", {"agent_id": agent, "version": "v2"})
    message = await refused(h, "restart", {}, OPERATION_REFUSED)
    assert started["deployment_id"] in message
    await refused(h, "configure", {"config": {"a": 1}}, OPERATION_REFUSED)
    platform.release.set()


async def test_restart_failure_is_reported_and_the_agent_serves_on(env, worker, platform) -> None:
    h = await start(env, worker)
    platform.fail.add("rolling_restart")
    with pytest.raises(WorkflowUpdateFailedError) as info:
        await h.execute_update("restart", {})
    assert isinstance(info.value.cause, ApplicationError)
    assert info.value.cause.type == OPERATION_FAILED
    st = await h.query("status")
    assert st["state"] == "READY" and len(st["replicas"]) == 2
    assert st["operation"] is None
    # The agent takes the next operation.
    platform.fail.clear()
    assert (await h.execute_update("restart", {}))["restarted"] == 2


async def test_configure_validates_versions_and_restores(env, worker, platform) -> None:
    h = await start(env, worker, config={"temperature": 0.5}, config_schema=SCHEMA)
    st = await h.query("status")
    assert st["config_version"] == 1 and st["config"] == {"temperature": 0.5}

    message = await refused(h, "configure", {"config": {"temperature": 5}}, INVALID_INPUT)
    assert "config.temperature" in message and "maximum" in message
    await refused(h, "configure", {"config": {"other": 1}}, INVALID_INPUT)
    await refused(h, "configure", {"restore_version": 7}, INVALID_INPUT)

    result = await h.execute_update("configure", {"config": {"temperature": 1.5}})
    assert result == {"config_version": 2, "previous_version": 1}
    key = (h.id.removeprefix("agent/"), "blue")
    assert platform.configs[key] == {"temperature": 1.5}  # delivered by a rolling restart

    result = await h.execute_update("configure", {"restore_version": 1, "reason": "undo"})
    assert result == {"config_version": 3, "previous_version": 2}
    assert platform.configs[key] == {"temperature": 0.5}
    st = await h.query("status")
    assert st["config_version"] == 3 and st["config"] == {"temperature": 0.5}
    assert [(v["version"], v["restored_from"]) for v in st["config_versions"]] == [
        (1, None),
        (2, None),
        (3, 1),
    ]
    # The same config again: no version, no restart.
    rolls = len([c for c in platform.calls if c[0] == "rolling_restart"])
    result = await h.execute_update("configure", {"config": {"temperature": 0.5}})
    assert result == {"config_version": 3, "previous_version": 3}
    assert len([c for c in platform.calls if c[0] == "rolling_restart"]) == rolls


async def test_failed_configure_rolls_the_previous_config_back(env, worker, platform) -> None:
    h = await start(env, worker, config={"mode": "a"})
    key = (h.id.removeprefix("agent/"), "blue")
    platform.fail_times["rolling_restart"] = 1  # the new config fails, the roll back works
    with pytest.raises(WorkflowUpdateFailedError) as info:
        await h.execute_update("configure", {"config": {"mode": "b"}})
    assert isinstance(info.value.cause, ApplicationError)
    assert info.value.cause.type == OPERATION_FAILED
    assert "v1 rolled back" in info.value.cause.message
    rolls = [c[1][2] for c in platform.calls if c[0] == "rolling_restart"]
    assert rolls == [{"mode": "b"}, {"mode": "a"}]
    assert platform.configs[key] == {"mode": "a"}
    st = await h.query("status")
    assert st["config_version"] == 1 and st["config"] == {"mode": "a"}
    assert [v["version"] for v in st["config_versions"]] == [1]


async def test_configure_while_paused_is_applied_on_resume(env, worker, platform) -> None:
    h = await start(env, worker)
    await h.execute_update("transition", {"action": "pause"})
    result = await h.execute_update("configure", {"config": {"mode": "quiet"}})
    assert result == {"config_version": 2, "previous_version": 1}
    assert not [c for c in platform.calls if c[0] == "rolling_restart"]
    await h.execute_update("transition", {"action": "resume"})
    await wait_state(h, "READY")
    provisions = [c for c in platform.calls if c[0] == "provision_replicas"]
    assert provisions, "resume provisions"
    assert (await h.query("status"))["config"] == {"mode": "quiet"}


async def test_config_versions_survive_continue_as_new(env, worker) -> None:
    h = await start(env, worker, health={"interval_seconds": 1}, health_rounds_per_run=3)
    await h.execute_update("configure", {"config": {"n": 1}, "requested_by": "ops"})
    await h.execute_update("configure", {"config": {"n": 2}})
    before = await h.query("status")

    async def continued() -> dict[str, Any]:
        st = await h.query("status")
        assert st["counters"]["continued_as_new"] >= 1
        return st

    await env.sleep(10)
    st = await assert_eventually(continued)
    assert st["config_versions"] == before["config_versions"]
    assert st["config_version"] == 3 and st["config"] == {"n": 2}
    # A kept version of the earlier run can still be restored.
    result = await h.execute_update("configure", {"restore_version": 2})
    assert result == {"config_version": 4, "previous_version": 3}
    assert (await h.query("status"))["config"] == {"n": 1}
