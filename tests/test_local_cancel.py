"""Provisioning stops when its workflow is terminated or cancelled; dead records reserve nothing.

A real dev server runs a small workflow that provisions many replicas (a real ``sleep`` process
each, so hundreds are cheap) through the real ``provision_replicas`` activity, with the
heartbeat timeout the workflows use (60 s) and the worker's heartbeat throttle from
``worker.py``. The test terminates (or cancels) the workflow while replicas are being started,
then checks, by pid and ``/proc`` start time, that no replica process started more than 1 s
later.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from datetime import timedelta
from pathlib import Path

import pytest
from temporalio import workflow
from temporalio.client import WorkflowFailureError
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment
from temporalio.worker import Worker

from activities.platform import LocalPlatform, PlatformActivities
from activities.platform.local import process
from activities.platform.local.state import StateStore
from fleetops.models import AgentSpec, ProvisionRequest, Replica
from fleetops.settings import GatewaySettings, LocalPlatformSettings
from tests.e2e_support import TAG_VAR, alive, kill_tagged, port_block, tag, tagged_pids
from worker import HEARTBEAT_THROTTLE

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc")

__all__ = ["tag"]  # the fixture

MANY = 800
"""Replicas asked for: far more than get started before the cancellation."""
TICKS = os.sysconf("SC_CLK_TCK")


@workflow.defn(sandboxed=False)
class ProvisionMany:
    """Calls ``provision_replicas`` once, with the options the deployment workflows use."""

    @workflow.run
    async def run(self, req: ProvisionRequest) -> list[Replica]:
        return await workflow.execute_activity_method(
            PlatformActivities.provision_replicas,
            req,
            start_to_close_timeout=timedelta(minutes=10),
            heartbeat_timeout=timedelta(seconds=60),
        )


def uptime_ticks() -> float:
    """Clock ticks since boot now (the unit of ``/proc/<pid>/stat`` start times)."""
    return float(Path("/proc/uptime").read_text().split()[0]) * TICKS


def spec(tag: str, suffix: str) -> AgentSpec:
    return AgentSpec.model_validate(
        {
            "agent_id": f"k-{tag[:10]}{suffix}",
            "command": ["sleep", "600"],
            "env": {TAG_VAR: tag},
            "replicas": 1,
        }
    )


def platform_over(state_dir: Path, ports: tuple[int, int]) -> LocalPlatform:
    start, end = port_block(10)
    return LocalPlatform(
        LocalPlatformSettings(
            port_range_start=ports[0], port_range_end=ports[1], stop_grace_seconds=1.0
        ),
        state_dir,
        GatewaySettings(port_range_start=start, port_range_end=end),
    )


@pytest.mark.parametrize("how", ["terminate", "cancel"])
async def test_provisioning_stops_within_a_second_and_dead_records_reserve_no_ports(
    dev_env: WorkflowEnvironment, tmp_path: Path, tag: str, how: str
) -> None:
    ports = port_block(MANY + 20)
    platform = platform_over(tmp_path, ports)
    s = spec(tag, "a")
    task_queue = f"cancel-{tag}"
    async with Worker(
        dev_env.client,
        task_queue=task_queue,
        workflows=[ProvisionMany],
        activities=[PlatformActivities(platform).provision_replicas],
        max_heartbeat_throttle_interval=HEARTBEAT_THROTTLE,
    ):
        handle = await dev_env.client.start_workflow(
            ProvisionMany.run,
            ProvisionRequest(spec=s, replicas=MANY),
            id=f"provision-many-{tag}-{how}",
            task_queue=task_queue,
        )
        deadline = time.monotonic() + 30
        while len(tagged_pids(tag)) < 10:  # replicas are being started
            assert time.monotonic() < deadline, "no replicas started within 30 s"
            await asyncio.sleep(0.01)
        await (handle.terminate() if how == "terminate" else handle.cancel())
        stopped_at = uptime_ticks()
        if how == "cancel":
            with pytest.raises(WorkflowFailureError):
                await handle.result()

        # Watch for 2.5 s (the window in which a late start would show) and collect every
        # replica process that appears.
        seen: set[int] = set()
        watch_until = time.monotonic() + 2.5
        while time.monotonic() < watch_until:
            seen |= tagged_pids(tag)
            await asyncio.sleep(0.05)

    starts = {pid: process.start_time(pid) for pid in seen}
    late = {pid: t for pid, t in starts.items() if t is not None and t > stopped_at + TICKS}
    assert not late, f"replicas started more than 1 s after {how}: {late}"
    assert 10 <= len(seen) < MANY
    # Every started process is recorded: none was left behind unknown to the platform.
    records = StateStore(tmp_path / "agents").load(s.agent_id)
    assert seen <= {r.pid for r in records.values()}

    # The processes die (as if crashed, or killed by hand); their records stay behind.
    kill_tagged(tag)
    assert not any(alive(pid) for pid in seen)
    assert StateStore(tmp_path / "agents").load(s.agent_id)
    # A new agent can use every port of the range: dead records reserve none.
    small = platform_over(tmp_path, (ports[0], ports[0] + 19))
    replicas = await small.ensure(spec(tag, "b"), 20)
    assert len(replicas) == 20 and all(r.running for r in replicas)
    for r in replicas:
        os.kill(r.pid or 0, signal.SIGKILL)


async def test_more_replicas_than_free_ports_is_refused_before_anything_starts(
    tmp_path: Path, tag: str
) -> None:
    first, last = port_block(20)
    platform = platform_over(tmp_path, (first, last))
    activities = PlatformActivities(platform)

    with pytest.raises(ApplicationError) as refused:
        await ActivityEnvironment().run(
            activities.provision_replicas, ProvisionRequest(spec=spec(tag, "a"), replicas=1_000_000)
        )

    assert refused.value.type == "InvalidInput" and refused.value.non_retryable
    assert "replicas=1000000" in str(refused.value)
    assert "20 free ports" in str(refused.value)
    assert tagged_pids(tag) == set()
    # Exactly as many as there are free ports is fine.
    replicas = await ActivityEnvironment().run(
        activities.provision_replicas, ProvisionRequest(spec=spec(tag, "a"), replicas=20)
    )
    assert len(replicas) == 20
    assert len(tagged_pids(tag)) == 20
