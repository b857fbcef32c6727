"""The data-plane prober (``health.probing: data-plane``) on a real dev server, real HTTP.

A worker's prober host probes at the agent's interval and reports only changes: DEGRADED and
self-heal on a failing replica, READY after recovery, PROCESSING while replicas execute; an idle
healthy agent writes no history while it is probed. Two hosts share a fleet (one in a child
process), each agent probed by exactly one; kill -9 of one moves its agents to the other within
the lease heartbeat timeout; a graceful restart hands the agents to the new host; a forged
``prober_lost`` moves nothing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import time
import uuid
from datetime import datetime, timedelta
from typing import Any

from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.enums.v1 import EventType
from temporalio.api.workflowservice.v1 import ResetWorkflowExecutionRequest
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.prober_host import ProberHost
from fleetops.constants import PROBER_HOST_KEY
from fleetops.models import AgentLifecycleInput, AgentSpec, AgentState, AgentStatus
from fleetops.prober import lease_workflow_id
from fleetops.settings import Settings
from tests.conftest import assert_eventually, new_worker
from tests.helpers import result_within
from tests.prober_support import HEARTBEAT_SECONDS, FarmPlatform, HealthFarm, prober_worker
from worker import prober_process
from workflows.agent_lifecycle import AgentLifecycle
from workflows.prober_lease import ProberLease

S = AgentState
INTERVAL = 0.5


def probed_spec(**health: Any) -> AgentSpec:
    return AgentSpec.model_validate(
        {
            "agent_id": f"p-{uuid.uuid4().hex[:8]}",
            "command": ["agent"],
            "replicas": 2,
            "max_replicas": 4,
            "health": {
                "interval_seconds": INTERVAL,
                "timeout_seconds": 1,
                "failure_threshold": 2,
                "startup_timeout_seconds": 5,
                "probing": "data-plane",
                **health,
            },
        }
    )


def agent_worker(env: WorkflowEnvironment, platform: FarmPlatform) -> Worker:
    """A worker (fresh task queue) for agents and prober leases on ``platform``."""
    return new_worker(
        env.client, workflows=[AgentLifecycle, ProberLease], activities=platform.activities()
    )


async def start(env: WorkflowEnvironment, tq: str, s: AgentSpec) -> WorkflowHandle[Any, Any]:
    return await env.client.start_workflow(
        AgentLifecycle.run,
        AgentLifecycleInput(**s.model_dump()),
        id=f"agent/{s.agent_id}",
        task_queue=tq,
    )


async def wait_state(h: WorkflowHandle[Any, Any], state: AgentState, timeout: float = 20):
    async def check() -> AgentStatus:
        st: AgentStatus = await h.query(AgentLifecycle.status)
        assert st.state == state, f"state {st.state}, waiting for {state}"
        return st

    return await assert_eventually(check, timeout=timeout)


async def history_length(h: WorkflowHandle[Any, Any]) -> int:
    return len([e async for e in h.fetch_history_events()])


async def test_prober_degrades_heals_and_follows_in_flight(dev_env, farm) -> None:
    platform = FarmPlatform(farm)
    w = agent_worker(dev_env, platform)
    async with w, prober_worker(dev_env.client, w.task_queue):
        s = probed_spec()
        h = await start(dev_env, w.task_queue, s)
        st = await wait_state(h, S.READY)
        assert all(r.healthy and r.probed_at is not None for r in st.replicas)
        bad = st.replicas[1].endpoint
        farm.broken.add(bad)
        st = await wait_state(h, S.DEGRADED)
        assert "replicas [1] failed 2 consecutive health probes" in st.transitions[-1].reason

        async def restarted() -> None:
            assert ("restart_replicas", ("blue", [1])) in platform.calls

        await assert_eventually(restarted, timeout=10)
        farm.broken.discard(bad)
        await wait_state(h, S.READY)
        farm.busy[st.replicas[0].endpoint] = 3
        st = await wait_state(h, S.PROCESSING)
        assert st.replicas[0].in_flight == 3
        farm.busy.clear()
        await wait_state(h, S.READY)
        await h.signal(AgentLifecycle.scale, {"replicas": 3})

        async def three_probed() -> None:
            assert farm.hits.get(platform.endpoint(s.agent_id, "blue", 2), 0) >= 2

        await assert_eventually(three_probed, timeout=10)  # the spec change reached the prober
        await h.signal(AgentLifecycle.shutdown)
        assert (await result_within(h.result())).final_state == S.TERMINATED


async def test_idle_healthy_agent_writes_no_history_while_probed(dev_env, farm) -> None:
    platform = FarmPlatform(farm)
    w = agent_worker(dev_env, platform)
    async with w, prober_worker(dev_env.client, w.task_queue):
        s = probed_spec()
        h = await start(dev_env, w.task_queue, s)
        await wait_state(h, S.READY)
        endpoint = platform.endpoint(s.agent_id, "blue", 0)
        before, hits = await history_length(h), farm.hits.get(endpoint, 0)

        async def probed_20_rounds() -> None:
            assert farm.hits.get(endpoint, 0) >= hits + 20

        await assert_eventually(probed_20_rounds, timeout=30)
        # 20 rounds of the workflow's own probing would have written ~220 events; the issue's
        # bound is 10 an hour (a workflow task in flight when `before` was read may add 2-3).
        grown = await history_length(h) - before
        assert grown <= 10, grown
        await h.signal(AgentLifecycle.shutdown)
        await result_within(h.result())


async def watch_events(h: WorkflowHandle[Any, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The run's ``watch_replicas`` in history order: ``("scheduled", request JSON)`` and
    ``("report", report JSON)`` for each watch that completed."""
    found: list[tuple[str, dict[str, Any]]] = []
    ids: set[int] = set()
    async for e in h.fetch_history_events():
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            a = e.activity_task_scheduled_event_attributes
            if a.activity_type.name == "watch_replicas":
                ids.add(e.event_id)
                found.append(("scheduled", json.loads(a.input.payloads[0].data)))
        elif e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
            done = e.activity_task_completed_event_attributes
            if done.scheduled_event_id in ids:
                found.append(("report", json.loads(done.result.payloads[0].data)))
    return found


async def test_the_watch_after_bring_up_keeps_the_probe_phase(dev_env, farm) -> None:
    """The next watch is due one interval after the round its agent last recorded (a lease
    renewal or a decision skips no round), not at a random offset."""
    platform = FarmPlatform(farm)
    w = agent_worker(dev_env, platform)
    async with w, prober_worker(dev_env.client, w.task_queue):
        h = await start(dev_env, w.task_queue, probed_spec())
        await wait_state(h, S.READY)
        watches: list[tuple[str, dict[str, Any]]] = []

        async def steady_watch_scheduled() -> None:
            watches[:] = await watch_events(h)
            assert [k for k, _ in watches][:3] == ["scheduled", "report", "scheduled"]

        await assert_eventually(steady_watch_scheduled, timeout=10)
        (_, startup), (_, report), (_, steady) = watches[:3]
        assert startup["startup"] and startup["next_round_at"] is None
        probed = datetime.fromisoformat(report["probed_at"])
        due = datetime.fromisoformat(steady["next_round_at"])
        assert due - probed == timedelta(seconds=INTERVAL)
        await h.signal(AgentLifecycle.shutdown)
        await result_within(h.result())


async def test_status_shows_new_replicas_and_keeps_health_across_runs(dev_env, farm) -> None:
    """A scaled-up replica's first result reaches ``status`` (one ``probed`` report), and the
    last results survive continue-as-new (here after two reports)."""
    platform = FarmPlatform(farm)
    w = agent_worker(dev_env, platform)
    async with w, prober_worker(dev_env.client, w.task_queue):
        s = probed_spec().model_copy(update={"health_rounds_per_run": 2})
        h = await start(dev_env, w.task_queue, s)
        await wait_state(h, S.READY)
        await h.signal(AgentLifecycle.scale, {"replicas": 3})

        async def three_healthy_in_a_new_run() -> None:
            st: AgentStatus = await h.query(AgentLifecycle.status)
            assert st.counters.continued_as_new >= 1
            assert [(r.index, r.healthy) for r in st.replicas] == [(0, True), (1, True), (2, True)]
            assert all(r.probed_at is not None for r in st.replicas)

        await assert_eventually(three_healthy_in_a_new_run, timeout=20)

        # The new run started with the results: its first watch asks for nothing new.
        async def new_runs_first_watch() -> None:
            events = await watch_events(dev_env.client.get_workflow_handle(h.id))
            assert events and events[0][0] == "scheduled"
            first = events[0][1]
            assert first["unprobed"] == [] and first["next_round_at"]

        await assert_eventually(new_runs_first_watch, timeout=20)
        await h.signal(AgentLifecycle.shutdown)
        await result_within(h.result())


async def test_a_terminated_agent_is_no_longer_probed(dev_env, farm) -> None:
    """Its host's sweep for closed agents stops the watch that its cancel never reaches."""
    platform = FarmPlatform(farm)
    w = agent_worker(dev_env, platform)
    async with w, prober_worker(dev_env.client, w.task_queue) as host:
        host.sweep_seconds = 0.5
        s, other = probed_spec(), probed_spec()
        h, kept = await start(dev_env, w.task_queue, s), await start(dev_env, w.task_queue, other)
        await wait_state(h, S.READY)
        await wait_state(kept, S.READY)
        await h.terminate("operator")

        async def unwatched() -> None:
            assert host.probers.agents == {other.agent_id}

        await assert_eventually(unwatched, timeout=15)
        gone = platform.endpoint(s.agent_id, "blue", 0)
        hits = farm.hits[gone]
        await probed_on(farm, platform.endpoint(other.agent_id, "blue", 0), more=4)
        assert farm.hits[gone] == hits  # four rounds of the other agent, none of this one
        await kept.signal(AgentLifecycle.shutdown)
        await result_within(kept.result())


async def prober_host_of(h: WorkflowHandle[Any, Any]) -> str | None:
    """The agent's ``FleetOpsProberHost`` search attribute."""
    return (await h.describe()).typed_search_attributes.get(PROBER_HOST_KEY)


async def test_two_hosts_share_a_fleet_and_a_dead_hosts_agents_move(dev_env, farm) -> None:
    """Two prober hosts (one in a child process) share six agents, each probed by exactly one;
    kill -9 of the child moves its agents to the survivor within the lease heartbeat timeout
    (3 s here) plus a check, and the survivor detects a failure on a moved agent."""
    platform = FarmPlatform(farm)
    w = agent_worker(dev_env, platform)
    address = dev_env.client.service_client.config.target_host
    doomed = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.prober_worker_main", address, w.task_queue,
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert doomed.stdout is not None
        line = (await asyncio.wait_for(doomed.stdout.readline(), 30)).decode().split()
        assert line[0] == "polling", line
        doomed_id = line[1]
        async with w:
            specs = [probed_spec(interval_seconds=1.0) for _ in range(6)]
            hs = [await start(dev_env, w.task_queue, s) for s in specs[:3]]
            for h in hs:  # the doomed host is the only one yet: it probes these three
                await wait_state(h, S.READY)
            async with prober_worker(dev_env.client, w.task_queue) as survivor:
                hs += [await start(dev_env, w.task_queue, s) for s in specs[3:]]
                for h in hs[3:]:
                    await wait_state(h, S.READY)
                hosts = [await prober_host_of(h) for h in hs]
                assert hosts[:3] == [doomed_id] * 3, hosts
                assert set(hosts) <= {doomed_id, survivor.host_id}, hosts
                await moved_on_death(dev_env, farm, platform, specs, hs, hosts, doomed, survivor)
    finally:
        if doomed.returncode is None:
            doomed.kill()
            await doomed.wait()


async def moved_on_death(
    dev_env: WorkflowEnvironment,
    farm: HealthFarm,
    platform: FarmPlatform,
    specs: list[AgentSpec],
    hs: list[WorkflowHandle[Any, Any]],
    hosts: list[str | None],
    doomed: asyncio.subprocess.Process,
    survivor: ProberHost,
) -> None:
    """Each agent probed once per round; kill the doomed host; its agents move and detect."""
    doomed_id = hosts[0]
    assert doomed_id is not None
    endpoints = [platform.endpoint(s.agent_id, "blue", i) for s in specs for i in (0, 1)]
    before = {e: farm.hits.get(e, 0) for e in endpoints}

    def new_hits() -> list[int]:
        return [farm.hits.get(e, 0) - before[e] for e in endpoints]

    async def four_rounds() -> None:
        assert min(new_hits()) >= 4, new_hits()

    await assert_eventually(four_rounds, timeout=20)
    # By the time the slowest replica had four probes, none had more than six: each is probed
    # once per round, not by both hosts (that would be about eight).
    assert max(new_hits()) <= 6, new_hits()

    moved = [h for h, host in zip(hs, hosts, strict=True) if host == doomed_id]
    doomed.kill()
    await doomed.wait()
    killed = time.monotonic()

    async def all_on_survivor() -> None:
        for h in moved:
            assert await prober_host_of(h) == survivor.host_id

    await assert_eventually(all_on_survivor, timeout=20)
    print(f"moved {len(moved)} agents in {time.monotonic() - killed:.1f} s")
    spec = specs[hs.index(moved[0])]
    endpoint = platform.endpoint(spec.agent_id, "blue", 0)
    farm.broken.add(endpoint)
    await wait_state(moved[0], S.DEGRADED, timeout=15)
    lease = dev_env.client.get_workflow_handle(lease_workflow_id(doomed_id))
    status = await lease.query(ProberLease.status)
    assert status.lost and status.released >= len(moved), status
    for h in hs:
        await h.signal(AgentLifecycle.shutdown)
        await result_within(h.result())


async def test_a_restarted_worker_takes_its_agents_back(dev_env, farm) -> None:
    """A graceful worker restart: its watches end with the worker, the agents ask again, and
    the new host probes them (and detects) without any operator step."""
    platform = FarmPlatform(farm)
    w = agent_worker(dev_env, platform)
    async with w:
        async with prober_worker(dev_env.client, w.task_queue) as first:
            s = probed_spec(interval_seconds=1.0)
            h = await start(dev_env, w.task_queue, s)
            await wait_state(h, S.READY)
            assert await prober_host_of(h) == first.host_id
        async with prober_worker(dev_env.client, w.task_queue) as second:

            async def moved() -> None:
                assert await prober_host_of(h) == second.host_id
                assert second.probers.watched == 1

            await assert_eventually(moved, timeout=20)
            farm.broken.add(platform.endpoint(s.agent_id, "blue", 1))
            st = await wait_state(h, S.DEGRADED, timeout=15)
            assert "replicas [1] failed" in st.transitions[-1].reason
            await h.signal(AgentLifecycle.shutdown)
            await result_within(h.result())


async def test_a_prober_process_is_supervised(dev_env, farm, caplog) -> None:
    """``prober_process``: the host runs in a child process with the worker's collector
    threshold; kill -9 of it starts another, which (a new host) takes the agent over once the
    old lease expires."""
    caplog.set_level(logging.INFO, logger="fleetops.worker")
    platform = FarmPlatform(farm)
    w = agent_worker(dev_env, platform)
    settings = Settings(
        prober_process=True, prober_heartbeat_seconds=HEARTBEAT_SECONDS, gc_threshold=12_345
    )
    async with w, prober_process(dev_env.client, settings, w.task_queue) as child:
        assert f"child {child.pid}: " in caplog.text
        assert "(gc threshold 12345)" in caplog.text
        s = probed_spec(interval_seconds=1.0)
        h = await start(dev_env, w.task_queue, s)
        await wait_state(h, S.READY)
        first = await prober_host_of(h)
        assert first is not None
        os.kill(child.pid, signal.SIGKILL)

        async def moved() -> None:
            host = await prober_host_of(h)
            assert host is not None and host != first, host

        await assert_eventually(moved, timeout=30)
        farm.broken.add(platform.endpoint(s.agent_id, "blue", 0))
        await wait_state(h, S.DEGRADED, timeout=15)
        await h.signal(AgentLifecycle.shutdown)
        await result_within(h.result())


PARENT = """
import os, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-m", "worker", "prober-host", *sys.argv[1:],
                          "--parent-pid", str(os.getpid())], stdout=subprocess.PIPE)
print(child.pid, flush=True)
print(child.stdout.readline().decode().strip(), flush=True)
time.sleep(600)
"""


def running(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie nobody reaped has exited)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


async def test_a_prober_process_stops_when_its_worker_is_killed(dev_env) -> None:
    """kill -9 of the worker runs none of its clean-up: its child prober host notices its
    parent is gone and stops, so its lease expires and its agents move (an orphan kept them)."""
    parent = await asyncio.create_subprocess_exec(
        sys.executable, "-c", PARENT,
        "--address", dev_env.client.service_client.config.target_host,
        "--namespace", dev_env.client.namespace, "--task-queue", f"tq-{uuid.uuid4()}",
        "--heartbeat-seconds", "3", "--max-concurrent-probes", "10",
        "--max-concurrent-probers", "10", "--gc-threshold", "50000",
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert parent.stdout is not None
    child = int(await asyncio.wait_for(parent.stdout.readline(), 60))
    try:
        ready = await asyncio.wait_for(parent.stdout.readline(), 60)
        assert ready.decode().startswith("prober host"), ready
        assert running(child)
        parent.kill()
        await parent.wait()

        async def stopped() -> None:
            assert not running(child)

        await assert_eventually(stopped, timeout=30)
    finally:
        if running(child):
            os.kill(child, signal.SIGKILL)


async def test_a_forged_prober_lost_moves_nothing(dev_env, farm) -> None:
    """``prober_lost`` from a client: the agent asks ``host_lost``, its host is alive, it stays."""
    platform = FarmPlatform(farm)
    w = agent_worker(dev_env, platform)
    async with w, prober_worker(dev_env.client, w.task_queue) as host:
        h = await start(dev_env, w.task_queue, probed_spec())
        await wait_state(h, S.READY)
        assert await prober_host_of(h) == host.host_id
        for payload in ({"host_id": host.host_id}, "binary", None):
            await h.signal("prober_lost", payload)

        async def checked() -> None:
            events = [e async for e in h.fetch_history_events()]
            done = [e for e in events if e.HasField("activity_task_completed_event_attributes")]
            scheduled = "activity_task_scheduled_event_attributes"
            kinds = [getattr(e, scheduled).activity_type.name
                     for e in events if e.HasField(scheduled)]  # fmt: skip
            assert "host_lost" in kinds and done, kinds

        await assert_eventually(checked, timeout=10)
        await probed_on(farm, platform.endpoint(h.id.removeprefix("agent/"), "blue", 0))
        st = await h.query(AgentLifecycle.status)
        assert st.state == S.READY and host.probers.watched == 1
        await h.signal(AgentLifecycle.shutdown)
        await result_within(h.result())


async def probed_on(farm: HealthFarm, endpoint: str, more: int = 3) -> None:
    """Wait until ``endpoint`` has been probed ``more`` more times."""
    hits = farm.hits.get(endpoint, 0)

    async def probed() -> None:
        assert farm.hits.get(endpoint, 0) >= hits + more

    await assert_eventually(probed, timeout=15)


async def test_a_forged_lease_on_a_hosts_queue_changes_nothing(dev_env, farm) -> None:
    """A client starts a ``ProberLease`` naming a real host's queue, then terminates it: its
    ``hold_host`` is refused at once, and the host keeps its lease and its watches."""
    platform = FarmPlatform(farm)
    w = agent_worker(dev_env, platform)
    async with w, prober_worker(dev_env.client, w.task_queue) as host:
        h = await start(dev_env, w.task_queue, probed_spec())
        await wait_state(h, S.READY)
        for host_id in ("evil", host.host_id):
            forged = await dev_env.client.start_workflow(
                "ProberLease",
                {"host_id": host_id, "task_queue": host.task_queue,
                 "release_queue": "nowhere", "heartbeat_seconds": 10},
                id=f"evil-{uuid.uuid4()}",
                task_queue=w.task_queue,
            )  # fmt: skip

            async def refused(f: WorkflowHandle[Any, Any] = forged) -> None:
                events = [e async for e in f.fetch_history_events()]
                failed = [e for e in events if e.HasField("activity_task_failed_event_attributes")]
                assert failed, "hold_host not refused yet"
                assert "NotThisHost" in str(failed[0].activity_task_failed_event_attributes)

            await assert_eventually(refused, timeout=15)
            await forged.terminate("forged")
        endpoint = platform.endpoint(h.id.removeprefix("agent/"), "blue", 0)
        await probed_on(farm, endpoint)
        assert host.probers.watched == 1 and await prober_host_of(h) == host.host_id
        lease = await dev_env.client.get_workflow_handle(lease_workflow_id(host.host_id)).describe()
        assert lease.status is not None and lease.status.name == "RUNNING"
        await h.signal(AgentLifecycle.shutdown)
        await result_within(h.result())


async def test_a_reset_lease_keeps_its_agents_probed(dev_env, farm) -> None:
    """``temporal workflow reset`` of a running lease: the old run's hold ends, the host leases
    again (the lease already runs), and its agents are probed and judged as before."""
    platform = FarmPlatform(farm)
    w = agent_worker(dev_env, platform)
    async with w, prober_worker(dev_env.client, w.task_queue) as host:
        h = await start(dev_env, w.task_queue, probed_spec())
        await wait_state(h, S.READY)
        lease = dev_env.client.get_workflow_handle(lease_workflow_id(host.host_id))
        completed = [
            e.event_id
            async for e in lease.fetch_history_events()
            if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED
        ]
        await dev_env.client.workflow_service.reset_workflow_execution(
            ResetWorkflowExecutionRequest(
                namespace=dev_env.client.namespace,
                workflow_execution=WorkflowExecution(workflow_id=lease.id),
                reason="hostile reset",
                workflow_task_finish_event_id=completed[0],
                request_id=str(uuid.uuid4()),
            )
        )

        async def old_hold_ended() -> None:  # the new run holds; the old run's hold is over
            assert host.holds >= 2 and host.holding == 1, (host.holds, host.holding)

        await assert_eventually(old_hold_ended, timeout=15)
        endpoint = platform.endpoint(h.id.removeprefix("agent/"), "blue", 0)
        await probed_on(farm, endpoint)
        farm.broken.add(endpoint)
        await wait_state(h, S.DEGRADED, timeout=15)
        farm.broken.discard(endpoint)
        await h.signal(AgentLifecycle.shutdown)
        await result_within(h.result())


async def test_startup_deadline_then_recovery_from_error(dev_env, farm) -> None:
    platform = FarmPlatform(farm)
    w = agent_worker(dev_env, platform)
    async with w, prober_worker(dev_env.client, w.task_queue):
        s = probed_spec(startup_timeout_seconds=2)
        never = platform.endpoint(s.agent_id, "blue", 0)
        farm.broken.add(never)
        h = await start(dev_env, w.task_queue, s)
        st = await wait_state(h, S.ERROR)
        assert st.transitions[-1].reason == "replicas not healthy within startup_timeout_seconds"
        assert farm.hits[never] >= 2  # it was probed, from the first attempt on
        await h.signal(AgentLifecycle.resume)

        async def provisioned_again() -> None:
            assert [c for c, _ in platform.calls].count("provision_replicas") == 2

        await assert_eventually(provisioned_again, timeout=10)  # resume brings it up anew
        await wait_state(h, S.ERROR)
        farm.broken.discard(never)
        await wait_state(h, S.READY)  # the prober keeps watching in ERROR and reports recovery
        await h.signal(AgentLifecycle.shutdown)
        await result_within(h.result())
