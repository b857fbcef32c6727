"""``fleetops deploy`` and ``fleetops abort`` refusals: the real CLI against a dev server.

A deployment of an agent that does not run, or of the version it already runs, exits 1 at once
naming the agent and starts nothing; ``abort`` of a closed deployment says how it ended and what
the agent reconciled to.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from temporalio.client import WorkflowExecutionStatus
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from fleetops.models import AgentLifecycleInput, AgentSpec
from tests.cli_support import cli_env, deployment_worker, run_fleetops
from tests.conftest import assert_eventually
from tests.standins import ColorPlatform
from workflows.agent_lifecycle import AgentLifecycle
from workflows.blue_green import BlueGreenDeployment


@pytest.fixture
async def worker(dev_env: WorkflowEnvironment) -> AsyncIterator[Worker]:
    async with deployment_worker(dev_env.client, ColorPlatform()) as w:
        yield w


async def fleetops(dev_env: WorkflowEnvironment, cwd: Path, *args: str) -> tuple[int, str]:
    """``fleetops <args>`` in ``cwd``: its exit code and its output (stdout and stderr)."""
    run = await run_fleetops(
        *args, env=cli_env(dev_env.client), cwd=cwd, timeout=60, merge_stderr=True
    )
    return run.code, run.stdout


async def test_deploy_of_an_agent_that_does_not_run_exits_at_once(
    dev_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    t0 = time.monotonic()
    code, out = await fleetops(dev_env, tmp_path, "deploy", "nosuch", "--version", "v2")
    assert code == 1, out
    assert "agent nosuch is not running" in out and "fleetops agent start nosuch" in out
    assert "Traceback" not in out and len(out.splitlines()) <= 3, out
    assert time.monotonic() - t0 < 30
    with pytest.raises(RPCError, match="not found"):
        await dev_env.client.get_workflow_handle("deploy/nosuch/v2").describe()


async def test_deploy_refusals_and_abort_of_a_closed_deployment(
    dev_env: WorkflowEnvironment, worker: Worker, tmp_path: Path
) -> None:
    agent = f"cli-{uuid.uuid4().hex[:8]}"
    spec = AgentSpec(agent_id=agent, command=["agent"], health={"interval_seconds": 1})
    lifecycle = await dev_env.client.start_workflow(
        AgentLifecycle.run,
        AgentLifecycleInput(**spec.model_dump()),
        id=f"agent/{agent}",
        task_queue=worker.task_queue,
    )

    async def ready() -> None:
        assert (await lifecycle.query(AgentLifecycle.status)).state == "READY"

    await assert_eventually(ready)
    code, out = await fleetops(dev_env, tmp_path, "deploy", agent, "--version", "v1")
    assert code == 1 and f"agent {agent} already runs v1" in out, out

    code, out = await fleetops(dev_env, tmp_path, "deploy", agent, "--version", "v2")
    assert code == 0 and f"deploy/{agent}/v2" in out, out
    deployment = dev_env.client.get_workflow_handle(f"deploy/{agent}/v2")

    async def waiting() -> None:
        st = await deployment.query(BlueGreenDeployment.status)
        assert st.phase == "AWAITING_PROMOTION", st.phase

    await assert_eventually(waiting, timeout=30)
    code, out = await fleetops(dev_env, tmp_path, "deploy", agent, "--version", "v3")
    assert code == 1 and f"deploy/{agent}/v2" in out and "in progress" in out, out

    await deployment.terminate("operator pulled the plug")
    assert (await deployment.describe()).status == WorkflowExecutionStatus.TERMINATED

    async def reconciled() -> None:
        st = await lifecycle.query(AgentLifecycle.status)
        assert st.last_deployment is not None and st.deployment is None

    await assert_eventually(reconciled, timeout=30)
    code, out = await fleetops(dev_env, tmp_path, "abort", f"deploy/{agent}/v2")
    assert code == 1, out
    assert "closed as TERMINATED" in out and "serves blue" in out and "runs v1" in out, out
    await lifecycle.terminate("test finished")
