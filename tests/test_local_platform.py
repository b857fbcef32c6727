"""LocalPlatform and PlatformActivities against real processes (the sample agent and tiny scripts).

Every replica gets ``FLEETOPS_TEST_TAG=<uuid>`` in its environment, so the tests count "our"
processes by scanning ``/proc`` and the fixture kills whatever is left, whatever the platform did.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path

import httpx
import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.platform import LocalPlatform, PlatformActivities, PlatformError, build_platform
from activities.platform.local import process as _process
from fleetops.models import AgentSpec, DeprovisionRequest, ProvisionRequest, RestartRequest
from fleetops.settings import LocalPlatformSettings, Settings
from tests.e2e_support import TAG_VAR, port_block, tag, tagged_pids

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc")

__all__ = ["tag"]  # the fixture

SLEEPER = [sys.executable, "-c", "import time; time.sleep(600)"]
IGNORES_SIGTERM = [
    sys.executable,
    "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "print('ready', flush=True); time.sleep(600)",
]
WORKER_SCRIPT = """
import asyncio, json, sys
from pathlib import Path
from activities.platform import LocalPlatform
from fleetops.models import AgentSpec
from fleetops.settings import LocalPlatformSettings

settings = LocalPlatformSettings.model_validate_json(sys.argv[1])
spec = AgentSpec.model_validate_json(sys.argv[2])
replicas = asyncio.run(LocalPlatform(settings, Path(sys.argv[3])).ensure(spec, 2))
print(json.dumps([r.pid for r in replicas]))
"""


async def eventually(
    check: Callable[[], bool | Awaitable[bool]], what: str, timeout: float = 20.0
) -> None:
    """Poll ``check`` until it is true; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


async def answers_health(endpoint: str, *, version: str | None = None) -> bool:
    try:
        async with httpx.AsyncClient() as client:
            response = await client.get(f"{endpoint}/health", timeout=1.0)
    except httpx.HTTPError:
        return False
    return response.status_code == 200 and version in (None, response.json()["version"])


@pytest.fixture
def settings() -> LocalPlatformSettings:
    start, _ = port_block()
    return LocalPlatformSettings(
        host="127.0.0.1", port_range_start=start, port_range_end=start + 19, stop_grace_seconds=5.0
    )


@pytest.fixture
def platform(settings: LocalPlatformSettings, tmp_path: Path) -> LocalPlatform:
    return LocalPlatform(settings, tmp_path)


def make_spec(
    tag: str, command: list[str] | None = None, suffix: str = "", **kwargs: object
) -> AgentSpec:
    return AgentSpec.model_validate(
        {
            "agent_id": f"t-{tag[:10]}{suffix}",
            "command": command or ["fleetops-sample-agent"],
            "env": {TAG_VAR: tag},
            "max_replicas": 5,
            **kwargs,
        }
    )


async def test_ensure_starts_healthy_replicas_and_is_idempotent(
    platform: LocalPlatform, settings: LocalPlatformSettings, tmp_path: Path, tag: str
) -> None:
    spec = make_spec(tag)
    replicas = await platform.ensure(spec, 2)

    assert [r.index for r in replicas] == [0, 1]
    assert all(r.running for r in replicas)
    ports = {int(r.endpoint.rsplit(":", 1)[1]) for r in replicas}
    assert len(ports) == 2
    assert all(settings.port_range_start <= p <= settings.port_range_end for p in ports)
    for replica in replicas:
        await eventually(partial(answers_health, replica.endpoint), f"{replica} healthy")
    assert (tmp_path / "agents" / spec.agent_id / "state.json").is_file()
    assert (tmp_path / "agents" / spec.agent_id / "replica-1.log").is_file()

    again = await platform.ensure(spec, 2)
    assert again == replicas
    assert tagged_pids(tag) == {r.pid for r in replicas}


async def test_new_platform_adopts_running_replicas(
    platform: LocalPlatform, settings: LocalPlatformSettings, tmp_path: Path, tag: str
) -> None:
    spec = make_spec(tag, command=SLEEPER)
    replicas = await platform.ensure(spec, 2)

    restarted_worker = LocalPlatform(settings, tmp_path)
    assert await restarted_worker.list_replicas(spec.agent_id) == replicas
    assert await restarted_worker.ensure(spec, 2) == replicas
    assert tagged_pids(tag) == {r.pid for r in replicas}


async def test_replica_left_draining_by_a_crash_is_replaced_not_adopted(
    platform: LocalPlatform, settings: LocalPlatformSettings, tmp_path: Path, tag: str
) -> None:
    # A worker died between marking replica 1 draining (so no gateway routes to it) and
    # stopping it: the next ensure must not keep a replica nobody would ever route to.
    spec = make_spec(tag, command=SLEEPER)
    replicas = await platform.ensure(spec, 2)
    state_file = tmp_path / "agents" / spec.agent_id / "state.json"
    state = json.loads(state_file.read_text())
    state["replicas"][1]["draining"] = True
    state_file.write_text(json.dumps(state))

    again = await LocalPlatform(settings, tmp_path).ensure(spec, 2)

    assert again[0] == replicas[0]
    assert again[1].pid != replicas[1].pid and again[1].endpoint == replicas[1].endpoint
    assert tagged_pids(tag) == {r.pid for r in again}
    assert not any(r["draining"] for r in json.loads(state_file.read_text())["replicas"])


async def test_replicas_survive_their_worker_process_and_are_adopted(
    settings: LocalPlatformSettings, tmp_path: Path, tag: str
) -> None:
    spec = make_spec(tag, command=SLEEPER)
    worker = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        WORKER_SCRIPT,
        settings.model_dump_json(),
        spec.model_dump_json(),
        str(tmp_path),
        cwd=Path(__file__).parents[1],
        stdout=asyncio.subprocess.PIPE,
    )
    stdout, _ = await asyncio.wait_for(worker.communicate(), timeout=60)
    assert worker.returncode == 0
    started_by_dead_worker = json.loads(stdout)

    platform = LocalPlatform(settings, tmp_path)
    replicas = await platform.ensure(spec, 2)

    assert [r.pid for r in replicas] == started_by_dead_worker
    assert all(r.running for r in replicas)
    assert await platform.stop_all(spec.agent_id) == 2
    assert tagged_pids(tag) == set()


async def test_recycled_pid_is_neither_adopted_nor_killed(
    platform: LocalPlatform, tmp_path: Path, tag: str
) -> None:
    spec = make_spec(tag, command=SLEEPER)
    [original] = await platform.ensure(spec, 1)
    # Pretend the kernel recycled the pid: the recorded start time no longer matches the process.
    state_path = tmp_path / "agents" / spec.agent_id / "state.json"
    state = json.loads(state_path.read_text())
    state["replicas"][0]["start_time"] += 1
    state_path.write_text(json.dumps(state))

    assert not (await platform.list_replicas(spec.agent_id))[0].running
    [replacement] = await platform.ensure(spec, 1)

    assert replacement.pid != original.pid
    assert _process.is_alive(original.pid or 0, None), "a stranger's process was killed"
    assert tagged_pids(tag) == {original.pid, replacement.pid}


async def test_two_workers_racing_do_not_start_duplicates(
    platform: LocalPlatform, settings: LocalPlatformSettings, tmp_path: Path, tag: str
) -> None:
    spec = make_spec(tag, command=SLEEPER)
    other = LocalPlatform(settings, tmp_path)

    first, second = await asyncio.gather(platform.ensure(spec, 3), other.ensure(spec, 3))

    assert first == second
    assert tagged_pids(tag) == {r.pid for r in first}


async def test_scale_down_stops_higher_indices(platform: LocalPlatform, tag: str) -> None:
    spec = make_spec(tag, command=SLEEPER)
    replicas = await platform.ensure(spec, 2)

    remaining = await platform.ensure(spec, 1)

    assert remaining == replicas[:1]
    assert not _process.is_alive(replicas[1].pid or 0, None)
    assert tagged_pids(tag) == {replicas[0].pid}


async def test_restart_gives_new_pid_on_same_port(platform: LocalPlatform, tag: str) -> None:
    spec = make_spec(tag)
    [before] = await platform.ensure(spec, 1)
    await eventually(lambda: answers_health(before.endpoint), "replica healthy")

    [after] = await platform.restart(spec, [0])

    assert after.pid != before.pid
    assert after.endpoint == before.endpoint
    assert after.running
    await eventually(lambda: answers_health(after.endpoint), "restarted replica healthy")
    assert tagged_pids(tag) == {after.pid}


async def test_killed_replica_is_reported_and_replaced(platform: LocalPlatform, tag: str) -> None:
    spec = make_spec(tag)
    [before] = await platform.ensure(spec, 1)
    await eventually(lambda: answers_health(before.endpoint), "replica healthy")

    os.kill(before.pid or 0, signal.SIGKILL)

    async def reported_dead() -> bool:
        return not (await platform.list_replicas(spec.agent_id))[0].running

    await eventually(reported_dead, "killed replica reported as not running")
    [after] = await platform.ensure(spec, 1)
    assert after.running
    assert after.pid != before.pid
    assert after.endpoint == before.endpoint
    await eventually(lambda: answers_health(after.endpoint), "replacement healthy")


async def test_new_version_restarts_replicas(platform: LocalPlatform, tag: str) -> None:
    old = await platform.ensure(make_spec(tag), 1)

    new = await platform.ensure(make_spec(tag, version="v2"), 1)

    assert new[0].pid != old[0].pid
    await eventually(lambda: answers_health(new[0].endpoint, version="v2"), "v2 answers")
    assert tagged_pids(tag) == {new[0].pid}


async def test_stop_all_stops_everything_and_keeps_logs(
    platform: LocalPlatform, tmp_path: Path, tag: str
) -> None:
    spec = make_spec(tag)
    replicas = await platform.ensure(spec, 2)
    for replica in replicas:
        await eventually(partial(answers_health, replica.endpoint), f"{replica} healthy")

    assert await platform.stop_all(spec.agent_id) == 2

    assert tagged_pids(tag) == set()
    agent_dir = tmp_path / "agents" / spec.agent_id
    assert not (agent_dir / "state.json").exists()
    assert "Uvicorn running" in (agent_dir / "replica-0.log").read_text()
    assert await platform.list_replicas(spec.agent_id) == []
    assert await platform.stop_all(spec.agent_id) == 0


async def test_replica_ignoring_sigterm_is_killed_after_grace(
    settings: LocalPlatformSettings, tmp_path: Path, tag: str
) -> None:
    grace = 0.5
    platform = LocalPlatform(settings.model_copy(update={"stop_grace_seconds": grace}), tmp_path)
    spec = make_spec(tag, command=IGNORES_SIGTERM)
    await platform.ensure(spec, 1)
    log = tmp_path / "agents" / spec.agent_id / "replica-0.log"
    # The log also starts with a banner quoting the command: look for the printed line itself.
    await eventually(lambda: "ready" in log.read_text().splitlines(), "SIGTERM handler installed")

    started = time.monotonic()
    assert await platform.stop_all(spec.agent_id) == 1

    assert time.monotonic() - started >= grace
    assert tagged_pids(tag) == set()


async def test_ports_skip_foreign_listeners_and_other_agents(
    settings: LocalPlatformSettings, tmp_path: Path, tag: str
) -> None:
    start = settings.port_range_start
    platform = LocalPlatform(settings.model_copy(update={"port_range_end": start + 2}), tmp_path)
    with socket.socket() as foreign:
        foreign.bind((settings.host, start))
        foreign.listen()
        [a] = await platform.ensure(make_spec(tag, command=SLEEPER, suffix="a"), 1)
        [b] = await platform.ensure(make_spec(tag, command=SLEEPER, suffix="b"), 1)
        with pytest.raises(PlatformError, match=r"replicas=1 .* exceeds the 0 free ports"):
            await platform.ensure(make_spec(tag, command=SLEEPER, suffix="c"), 1)

    assert a.endpoint.endswith(f":{start + 1}")
    assert b.endpoint.endswith(f":{start + 2}")


async def test_missing_executable_or_command_is_a_platform_error(
    platform: LocalPlatform, tag: str
) -> None:
    with pytest.raises(PlatformError, match="not found"):
        await platform.ensure(make_spec(tag, command=["fleetops-no-such-binary"]), 1)
    image_only = AgentSpec.model_validate(
        {"agent_id": f"t-{tag[:10]}", "image": "registry.example/agent:1"}
    )
    with pytest.raises(PlatformError, match="needs `command`"):
        await platform.ensure(image_only, 1)
    with pytest.raises(PlatformError, match="invalid agent id"):
        await platform.list_replicas("../etc")
    assert await platform.list_replicas(f"t-{tag[:10]}") == []


async def test_activities_provision_list_deprovision(platform: LocalPlatform, tag: str) -> None:
    activities = PlatformActivities(platform)
    env = ActivityEnvironment()
    heartbeats: list[object] = []
    env.on_heartbeat = lambda *details: heartbeats.append(details)
    spec = make_spec(tag, command=SLEEPER)

    provisioned = await env.run(
        activities.provision_replicas, ProvisionRequest(spec=spec, replicas=2)
    )
    listed = await env.run(activities.list_replicas, spec.agent_id)
    restarted = await env.run(activities.restart_replicas, RestartRequest(spec=spec, indices=[1]))
    stopped = await env.run(
        activities.deprovision_agent, DeprovisionRequest(agent_id=spec.agent_id)
    )

    assert listed == provisioned
    assert restarted[0] == provisioned[0]
    assert restarted[1].pid != provisioned[1].pid
    assert stopped == 2
    assert heartbeats == []  # quick calls send none
    assert tagged_pids(tag) == set()


async def test_activities_heartbeat_while_they_wait(
    settings: LocalPlatformSettings, tmp_path: Path, tag: str
) -> None:
    # A replica that ignores SIGTERM keeps its stop waiting for the 1 s grace period.
    platform = LocalPlatform(settings.model_copy(update={"stop_grace_seconds": 1.0}), tmp_path)
    activities = PlatformActivities(platform)
    env = ActivityEnvironment()
    heartbeats: list[object] = []
    env.on_heartbeat = lambda *details: heartbeats.append(details)
    spec = make_spec(tag, command=IGNORES_SIGTERM)
    await env.run(activities.provision_replicas, ProvisionRequest(spec=spec, replicas=1))
    log = tmp_path / "agents" / spec.agent_id / "replica-0.log"
    await eventually(
        lambda: log.is_file() and "ready" in log.read_text().splitlines(), "SIGTERM ignored"
    )

    stopped = await env.run(
        activities.deprovision_agent, DeprovisionRequest(agent_id=spec.agent_id)
    )

    assert stopped == 1
    assert len(heartbeats) >= 2  # every 0.25 s while it waits
    assert tagged_pids(tag) == set()


async def test_activity_maps_platform_error_to_non_retryable(
    platform: LocalPlatform, tag: str
) -> None:
    activities = PlatformActivities(platform)
    spec = make_spec(tag, command=["fleetops-no-such-binary"])

    with pytest.raises(ApplicationError, match="fleetops-no-such-binary") as info:
        await ActivityEnvironment().run(
            activities.provision_replicas, ProvisionRequest(spec=spec, replicas=1)
        )

    assert info.value.type == "PlatformError"
    assert info.value.non_retryable
    assert "fleetops-no-such-binary" in info.value.message


def test_build_platform(tmp_path: Path) -> None:
    local = Settings.model_validate({"state_dir": tmp_path})
    assert isinstance(build_platform(local), LocalPlatform)
    kubernetes = Settings.model_validate(
        {
            "state_dir": tmp_path,
            "platform": {"kind": "kubernetes", "kubernetes": {"kubeconfig": tmp_path / "none"}},
        }
    )
    # no usable cluster configuration here
    with pytest.raises(PlatformError, match=r"no Kubernetes configuration .*KUBECONFIG"):
        build_platform(kubernetes)
