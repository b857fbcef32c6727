"""``restart`` and ``configure`` end to end: dev server, the real worker, the local platform, real
sample-agent replicas and the real gateway, with clients sending requests all along.

- restart, then configure, then restore: no request through the gateway fails; every replica
  is replaced each time and serves the configuration asked for;
- the worker is SIGKILLed in the middle of a restart: a new worker resumes it (the replacement
  already started is adopted, not started again), the update completes, no request fails, and
  no replica outlives its slot.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from temporalio.client import WorkflowHandle, WorkflowUpdateStage
from temporalio.testing import WorkflowEnvironment

from activities.platform.local.gateway import Gateway
from fleetops.models import (
    AgentLifecycleInput,
    AgentReport,
    ConfigureAgentRequest,
    RestartAgentRequest,
)
from tests.e2e_support import agent_spec, alive, eventually, status, tag, tagged_pids, wait_ready
from tests.helpers import result_within
from tests.test_rolling_restart import SAMPLE_AGENT, Load, _surge, settings_for
from worker import fleetops_worker
from workflows.agent_lifecycle import AgentLifecycle

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc")

__all__ = ["tag"]  # the fixture


async def start_agent(
    dev_env: WorkflowEnvironment, spec: Any, task_queue: str
) -> tuple[WorkflowHandle[Any, AgentReport], str]:
    handle: WorkflowHandle[Any, AgentReport] = await dev_env.client.start_workflow(
        AgentLifecycle.run,
        AgentLifecycleInput(**spec.model_dump()),
        id=f"agent/{spec.agent_id}",
        task_queue=task_queue,
    )
    await wait_ready(handle, spec.replicas, timeout=60)

    async def with_service() -> str:
        st = await status(handle)
        assert st.service is not None
        return st.service.active_url

    url = await eventually(with_service, "the agent's service")

    async def served() -> None:
        async with httpx.AsyncClient(timeout=5) as http:
            try:
                r = await http.post(f"{url}/execute", json={"prompt": "hi"})
            except httpx.HTTPError as e:
                raise AssertionError(repr(e)) from None
            assert r.status_code == 200, r.text

    await eventually(served, "the gateway serving the agent", timeout=30)
    return handle, url


async def configs(endpoints: list[str]) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(timeout=5) as http:
        return [(await http.get(f"{e}/config")).json()["config"] for e in endpoints]


async def test_restart_configure_restore_fail_no_request(
    dev_env: WorkflowEnvironment, tmp_path: Path, tag: str
) -> None:
    settings = settings_for(tmp_path)
    task_queue = f"ops-e2e-{uuid.uuid4()}"
    spec = agent_spec(
        tag,
        "ops",
        replicas=2,
        config={"greeting": "hello"},
        config_schema={"type": "object", "properties": {"greeting": {"type": "string"}}},
    )
    async with (
        Gateway(settings),
        fleetops_worker(dev_env.client, settings, task_queue=task_queue),
    ):
        handle, url = await start_agent(dev_env, spec, task_queue)
        before = await status(handle)
        load = Load(url).start()
        try:
            result = await handle.execute_update(
                AgentLifecycle.restart, RestartAgentRequest(requested_by="e2e", reason="test")
            )
            assert (result.restarted, result.color) == (2, "blue")
            restarted = await wait_ready(handle, 2)
            configured = await handle.execute_update(
                AgentLifecycle.configure, ConfigureAgentRequest(config={"greeting": "bonjour"})
            )
            assert (configured.config_version, configured.previous_version) == (2, 1)
            st = await wait_ready(handle, 2)
            assert await configs([r.endpoint for r in st.replicas]) == [{"greeting": "bonjour"}] * 2
            restored = await handle.execute_update(
                AgentLifecycle.configure, ConfigureAgentRequest(restore_version=1)
            )
            assert restored.config_version == 3
            final = await wait_ready(handle, 2)
            assert (
                await configs([r.endpoint for r in final.replicas]) == [{"greeting": "hello"}] * 2
            )
        finally:
            await load.stop()
        assert load.failures == [], f"{len(load.failures)} failed: {load.failures[:5]}"
        assert load.ok > 50, f"only {load.ok} requests"
        pids = [{r.pid for r in s.replicas} for s in (before, restarted, st, final)]
        assert all(not a & b for a, b in itertools.pairwise(pids)), "not replaced"
        assert tagged_pids(tag) == pids[-1]
        assert final.counters.rolling_restarts == 1 and final.counters.config_changes == 2
        await handle.signal(AgentLifecycle.shutdown)
        await result_within(handle.result())
    assert tagged_pids(tag) == set()


def worker_process(dev_env: WorkflowEnvironment, settings: Any, task_queue: str) -> Any:
    """``python worker.py`` with the test's settings, in its own process (it can be killed)."""
    local, gateway = settings.platform.local, settings.platform.gateway
    env = os.environ | {
        "FLEETOPS_TEMPORAL__ADDRESS": dev_env.client.service_client.config.target_host,
        "FLEETOPS_TEMPORAL__TASK_QUEUE": task_queue,
        "FLEETOPS_STATE_DIR": str(settings.state_dir),
        "FLEETOPS_PLATFORM__LOCAL__PORT_RANGE_START": str(local.port_range_start),
        "FLEETOPS_PLATFORM__LOCAL__PORT_RANGE_END": str(local.port_range_end),
        "FLEETOPS_PLATFORM__LOCAL__STOP_GRACE_SECONDS": "5",
        "FLEETOPS_PLATFORM__GATEWAY__PORT_RANGE_START": str(gateway.port_range_start),
        "FLEETOPS_PLATFORM__GATEWAY__PORT_RANGE_END": str(gateway.port_range_end),
        "FLEETOPS_TELEMETRY__METRICS_BIND_ADDRESS": "",
    }
    root = Path(__file__).resolve().parent.parent
    log = (settings.state_dir.parent / f"worker-{uuid.uuid4().hex[:6]}.log").open("wb")
    return subprocess.Popen(
        [sys.executable, str(root / "worker.py")], env=env, stdout=log, stderr=log, cwd=root
    )


async def test_restart_resumes_after_the_worker_is_killed(
    dev_env: WorkflowEnvironment, tmp_path: Path, tag: str
) -> None:
    settings = settings_for(tmp_path / "state")
    task_queue = f"ops-kill-{uuid.uuid4()}"
    spec = agent_spec(
        tag, "kill", replicas=2, command=["sh", "-c", f"sleep 2; exec {SAMPLE_AGENT}"]
    )
    async with Gateway(settings):
        worker_a = worker_process(dev_env, settings, task_queue)
        try:
            handle, url = await start_agent(dev_env, spec, task_queue)
            before = await status(handle)
            load = Load(url).start()
            update = await handle.start_update(
                AgentLifecycle.restart,
                RestartAgentRequest(requested_by="e2e"),
                wait_for_stage=WorkflowUpdateStage.ACCEPTED,
            )
            surge = await eventually(
                lambda: _surge(settings, spec.agent_id), "the first replacement", timeout=30
            )
        finally:
            worker_a.send_signal(signal.SIGKILL)
            worker_a.wait()
        assert alive(int(str(surge["pid"])))
        async with fleetops_worker(dev_env.client, settings, task_queue=task_queue):
            # The activity's heartbeat timeout (20 s) hands the restart to this worker.
            result = await asyncio.wait_for(update.result(), timeout=120)
            assert result.restarted == 2
            after = await wait_ready(handle, 2)
            await load.stop()
            assert load.failures == [], f"{len(load.failures)} failed: {load.failures[:5]}"
            assert surge["pid"] in {r.pid for r in after.replicas}, "replacement not adopted"
            assert not {r.pid for r in before.replicas} & {r.pid for r in after.replicas}
            assert tagged_pids(tag) == {r.pid for r in after.replicas}
            await handle.signal(AgentLifecycle.shutdown)
            await result_within(handle.result())
    assert tagged_pids(tag) == set()
