"""Durability: agents outlive the worker and ``fleetops up``; the next one adopts their replicas.

Real dev servers, the real worker, the local platform and real sample-agent replicas.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import WorkflowExecutionStatus, WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from activities.platform import LocalPlatform
from fleetops.client import connect
from fleetops.models import AgentLifecycleInput, AgentReport, AgentState, TransitionRequest
from fleetops.settings import Settings
from tests.e2e_support import (
    agent_spec,
    alive,
    eventually,
    free_port,
    local_settings,
    port_block,
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
FLEETOPS = Path(sys.executable).parent / "fleetops"


async def health_rounds_pass(handle: WorkflowHandle[Any, Any], beyond: int) -> None:
    st = await status(handle)
    assert st.counters.health_rounds > beyond, f"health_rounds {st.counters.health_rounds}"


async def test_new_worker_adopts_replicas_of_stopped_worker(
    dev_env: WorkflowEnvironment, tmp_path: Path, tag: str
) -> None:
    settings = local_settings(tmp_path)
    local = settings.platform.local
    task_queue = str(uuid.uuid4())
    spec = agent_spec(tag, "dur", replicas=2)
    platform_a = LocalPlatform(local, tmp_path)
    async with fleetops_worker(
        dev_env.client, settings, platform=platform_a, task_queue=task_queue
    ):
        handle: WorkflowHandle[Any, AgentReport] = await dev_env.client.start_workflow(
            AgentLifecycle.run,
            AgentLifecycleInput(**spec.model_dump()),
            id=f"agent/{spec.agent_id}",
            task_queue=task_queue,
        )
        before = await wait_ready(handle, 2)

    # Worker A is gone; its replicas keep running.
    original = [r.pid for r in before.replicas]
    assert all(alive(pid) for pid in original)
    assert tagged_pids(tag) == set(original)

    platform_b = LocalPlatform(local, tmp_path)
    async with fleetops_worker(
        dev_env.client, settings, platform=platform_b, task_queue=task_queue
    ):
        result = await handle.execute_update(
            AgentLifecycle.transition, TransitionRequest(action="scale", replicas=3)
        )
        assert (result.state, result.replicas) == (S.READY, 3)
        scaled = await wait_ready(handle, 3)
        pids = [r.pid for r in scaled.replicas]
        # Same pids: adopted, not restarted. (Replica 2 is new; on a loaded machine it may be
        # self-healed while it boots, so replica_restarts is not asserted here.)
        assert pids[:2] == original, "worker B restarted replicas it should have adopted"
        assert tagged_pids(tag) == set(pids)
        await eventually(
            lambda: health_rounds_pass(handle, scaled.counters.health_rounds),
            "health rounds by worker B",
        )

        await handle.signal(AgentLifecycle.shutdown)
        report = await result_within(handle.result())
    assert report.final_state == S.TERMINATED
    assert tagged_pids(tag) == set()


# --- fleetops up --------------------------------------------------------------------------------


class Up:
    """``fleetops up`` as a subprocess; stdout and stderr go to ``<state_dir>/../up-<n>.log``."""

    def __init__(self, env: dict[str, str], state_dir: Path) -> None:
        self.env = env
        self.state_dir = state_dir
        self.proc: subprocess.Popen[bytes] | None = None
        self.log: Path | None = None
        self.runs = 0

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log else ""

    async def start(self, timeout: float = 60.0) -> None:
        self.runs += 1
        self.log = self.state_dir.parent / f"up-{self.runs}.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [str(FLEETOPS), "up"],
                env=self.env,
                cwd=self.state_dir.parent,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        proc = self.proc

        async def ready() -> None:
            assert proc.poll() is None, f"fleetops up exited with {proc.returncode}"
            assert "worker ready" in self.output()

        try:
            await eventually(ready, "fleetops up to print 'worker ready'", timeout=timeout)
        except BaseException:
            sys.stderr.write(self.output())
            raise

    async def interrupt(self, timeout: float = 40.0) -> int:
        """SIGINT (Ctrl-C) and wait for the exit code."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGINT)
        return await asyncio.to_thread(self.proc.wait, timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for pid in dev_server_pids(self.state_dir):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def dev_server_pids(state_dir: Path) -> set[int]:
    """Live ``temporal server start-dev`` processes whose database is under ``state_dir``."""
    needle = str(state_dir.resolve()).encode()
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"start-dev" in cmdline and needle in cmdline and alive(int(entry.name)):
            found.add(int(entry.name))
    return found


@pytest.fixture
def up_settings(tmp_path: Path) -> Settings:
    start, end = port_block()
    port = free_port()
    return Settings.model_validate(
        {
            "state_dir": tmp_path / "state",
            "temporal": {"address": f"127.0.0.1:{port}"},
            "dev_server": {"port": port, "ui_port": free_port()},
            "telemetry": {"metrics_bind_address": ""},
            "platform": {"local": {"port_range_start": start, "port_range_end": end}},
        }
    )


@pytest.fixture
def up(up_settings: Settings) -> Iterator[Up]:
    s = up_settings
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETOPS_")}
    env.update(
        {
            "FLEETOPS_STATE_DIR": str(s.state_dir),
            "FLEETOPS_DEV_SERVER__PORT": str(s.dev_server.port),
            "FLEETOPS_DEV_SERVER__UI_PORT": str(s.dev_server.ui_port),
            "FLEETOPS_TELEMETRY__METRICS_BIND_ADDRESS": "",
            "FLEETOPS_PLATFORM__LOCAL__PORT_RANGE_START": str(s.platform.local.port_range_start),
            "FLEETOPS_PLATFORM__LOCAL__PORT_RANGE_END": str(s.platform.local.port_range_end),
        }
    )
    runner = Up(env, s.state_dir)
    yield runner
    runner.kill()


async def test_fleetops_up_restart_keeps_agent_and_adopts_replicas(
    up: Up, up_settings: Settings, tag: str
) -> None:
    spec = agent_spec(tag, "up", replicas=2)
    workflow_id = f"agent/{spec.agent_id}"

    await up.start()
    client = await connect(up_settings)
    handle: WorkflowHandle[Any, AgentReport] = await client.start_workflow(
        AgentLifecycle.run,
        AgentLifecycleInput(**spec.model_dump()),
        id=workflow_id,
        task_queue=up_settings.temporal.task_queue,
    )
    before = await wait_ready(handle, 2)
    pids = [r.pid for r in before.replicas]
    run_id = (await handle.describe()).run_id

    assert await up.interrupt() == 0, up.output()
    assert "FleetOps stopped." in up.output()
    assert dev_server_pids(up.state_dir) == set(), "fleetops up left its dev server running"
    # Ctrl-C stops FleetOps, not the fleet.
    assert tagged_pids(tag) == set(pids)

    await up.start()
    client = await connect(up_settings)
    handle = client.get_workflow_handle_for(AgentLifecycle.run, workflow_id)
    desc = await handle.describe()
    assert (desc.status, desc.run_id) == (WorkflowExecutionStatus.RUNNING, run_id)
    adopted = await eventually(lambda: status(handle), "status query answered", timeout=30)
    after = await eventually(
        lambda: _probed_again(handle, adopted.counters.health_rounds),
        "health rounds by the restarted worker",
        timeout=30,
    )
    assert [r.pid for r in after.replicas] == pids, "replicas were restarted, not adopted"
    assert after.counters.replica_restarts == 0
    assert tagged_pids(tag) == set(pids)

    await handle.signal(AgentLifecycle.shutdown)
    report = await result_within(handle.result())
    assert report.final_state == S.TERMINATED
    assert tagged_pids(tag) == set()
    assert await up.interrupt() == 0, up.output()
    assert dev_server_pids(up.state_dir) == set()


async def _probed_again(handle: WorkflowHandle[Any, Any], rounds: int) -> Any:
    st = await status(handle)
    assert st.counters.health_rounds > rounds, f"health_rounds {st.counters.health_rounds}"
    assert st.state == S.READY, f"state {st.state}"
    assert all(r.healthy for r in st.replicas)
    return st
