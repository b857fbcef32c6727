"""Rolling restart on the local platform, with real sample-agent replicas and the real gateway.

- every replica is replaced (new pids, old ones gone) while clients keep sending requests
  through the gateway: none fails;
- the replacements read the new configuration (``FLEETOPS_AGENT_CONFIG``, ``GET /config``);
- a replacement that never turns healthy is stopped and the old replica serves on;
- a restart that is cancelled (its workflow cancelled or terminated) leaves no extra replica;
- a second platform over the same state directory resumes a restart the first one left (a
  worker that died) by adopting the replacement it had started.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from activities.platform import LocalPlatform, PlatformError
from activities.platform.local.gateway import Gateway
from activities.platform.local.rolling import SURGE_BASE
from fleetops.models import AgentSpec
from fleetops.settings import Settings
from tests.e2e_support import TAG_VAR, alive, eventually, port_block, tag, tagged_pids

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc")

__all__ = ["tag"]  # the fixture

SAMPLE_AGENT = str(Path(sys.executable).parent / "fleetops-sample-agent")


def settings_for(state_dir: Path, *, drain_seconds: float = 5.0) -> Settings:
    replicas, gateway = port_block(), port_block(10)
    return Settings.model_validate(
        {
            "state_dir": state_dir,
            "platform": {
                "local": {
                    "port_range_start": replicas[0],
                    "port_range_end": replicas[1],
                    "stop_grace_seconds": 5.0,
                    "drain_seconds": drain_seconds,
                },
                "gateway": {"port_range_start": gateway[0], "port_range_end": gateway[1]},
            },
            "telemetry": {"metrics_bind_address": ""},
        }
    )


def platform_of(settings: Settings) -> LocalPlatform:
    return LocalPlatform(
        settings.platform.local, settings.state_dir, gateway=settings.platform.gateway
    )


def sample_spec(tag: str, *, slow_start: float = 0.0, **kwargs: object) -> AgentSpec:
    """The sample agent; with ``slow_start``, each replica sleeps that long before it listens."""
    command = (
        ["sh", "-c", f"sleep {slow_start}; exec {SAMPLE_AGENT}"] if slow_start else [SAMPLE_AGENT]
    )
    return AgentSpec.model_validate(
        {
            "agent_id": f"rr-{tag[:10]}",
            "command": command,
            "env": {TAG_VAR: tag},
            "replicas": 2,
            **kwargs,
        }
    )


def state(settings: Settings, agent: str) -> list[dict[str, object]]:
    path = settings.state_dir / "agents" / agent / "state.json"
    return list(json.loads(path.read_text())["replicas"])


@dataclass
class Load:
    """Clients POSTing ``/execute`` through the gateway until stopped; records every failure."""

    url: str
    clients: int = 3
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Future[object] | None = None

    def start(self) -> Load:
        self._task = asyncio.ensure_future(self._run())
        return self

    async def stop(self) -> None:
        self._stop.set()
        assert self._task is not None
        await self._task

    async def _run(self) -> None:
        async with httpx.AsyncClient(timeout=10) as http:

            async def client() -> None:
                while not self._stop.is_set():
                    try:
                        r = await http.post(f"{self.url}/execute", json={"prompt": "hi"})
                        if r.status_code == 200:
                            self.ok += 1
                        else:
                            self.failures.append(f"HTTP {r.status_code}: {r.text[:100]}")
                    except httpx.HTTPError as e:
                        self.failures.append(repr(e))
                    await asyncio.sleep(0.005)

            await asyncio.gather(*(client() for _ in range(self.clients)))


@contextlib.asynccontextmanager
async def serving(settings: Settings, spec: AgentSpec) -> AsyncIterator[tuple[LocalPlatform, str]]:
    """A gateway and the agent's replicas; yields the platform and the gateway URL."""
    platform = platform_of(settings)
    async with Gateway(settings):
        await platform.ensure(spec, spec.replicas)
        service = await platform.describe_service(spec.agent_id)
        assert service is not None
        url = service.active_url

        async def answers() -> None:
            async with httpx.AsyncClient(timeout=2) as http:
                try:
                    r = await http.post(f"{url}/execute", json={"prompt": "hi"})
                except httpx.HTTPError as e:
                    raise AssertionError(repr(e)) from None
                assert r.status_code == 200, r.text

        await eventually(answers, "the gateway serving the agent", timeout=30)
        try:
            yield platform, url
        finally:
            await platform.stop_all(spec.agent_id)


async def test_rolling_restart_under_load_fails_no_request_and_reads_the_new_config(
    tmp_path: Path, tag: str
) -> None:
    settings = settings_for(tmp_path)
    spec = sample_spec(tag, config={"greeting": "hello"})
    async with serving(settings, spec) as (platform, url):
        before = await platform.list_replicas(spec.agent_id)
        load = Load(url).start()
        await eventually(lambda: _at_least(load, 20), "requests before the restart")
        ok_before = load.ok
        new = spec.model_copy(update={"config": {"greeting": "bonjour"}})
        replicas = await platform.rolling_restart(
            new, "blue", rollout_id="r1", requested_at=datetime.now(UTC), ready_timeout=30
        )
        during = load.ok - ok_before
        target = load.ok + 20
        await eventually(lambda: _at_least(load, target), "requests after the restart")
        await load.stop()

        assert load.failures == [], f"{len(load.failures)} failed: {load.failures[:5]}"
        assert during > 0, "no request was served during the restart"
        assert [r.index for r in replicas] == [0, 1]
        assert not {r.pid for r in replicas} & {r.pid for r in before}, "not replaced"
        assert not any(alive(r.pid) for r in before), "an old replica still runs"
        assert tagged_pids(tag) == {r.pid for r in replicas}, "a replica outside its slot"
        assert [(r["index"], r["rollout"]) for r in state(settings, spec.agent_id)] == [
            (0, "r1"),
            (1, "r1"),
        ]
        async with httpx.AsyncClient(timeout=5) as http:
            for r in replicas:
                answer = (await http.get(f"{r.endpoint}/config")).json()
                assert answer == {
                    "config": {"greeting": "bonjour"},
                    "agent_id": spec.agent_id,
                    "version": "v1",
                    "replica": r.index,
                }
        # The same rollout again: nothing to do.
        again = await platform.rolling_restart(
            new, "blue", rollout_id="r1", requested_at=datetime.now(UTC), ready_timeout=30
        )
        assert again == replicas


async def _at_least(load: Load, n: int) -> None:
    assert load.ok >= n, f"{load.ok} requests"


async def test_a_replacement_that_never_turns_healthy_is_stopped(tmp_path: Path, tag: str) -> None:
    settings = settings_for(tmp_path)
    spec = sample_spec(tag)
    async with serving(settings, spec) as (platform, _):
        before = await platform.list_replicas(spec.agent_id)
        broken = spec.model_copy(
            update={"health": spec.health.model_copy(update={"path": "/no-such-path"})}
        )
        with pytest.raises(PlatformError, match="not healthy within"):
            await platform.rolling_restart(
                broken, "blue", rollout_id="bad", requested_at=datetime.now(UTC), ready_timeout=2
            )
        assert await platform.list_replicas(spec.agent_id) == before
        assert tagged_pids(tag) == {r.pid for r in before}


async def test_cancelled_restart_stops_its_replacement(tmp_path: Path, tag: str) -> None:
    settings = settings_for(tmp_path)
    spec = sample_spec(tag, slow_start=3)
    async with serving(settings, spec) as (platform, _):
        before = await platform.list_replicas(spec.agent_id)
        task = asyncio.ensure_future(
            platform.rolling_restart(
                spec, "blue", rollout_id="c1", requested_at=datetime.now(UTC), ready_timeout=60
            )
        )
        surge = await eventually(lambda: _surge(settings, spec.agent_id), "a replacement")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not alive(int(str(surge["pid"]))), "the replacement outlived the restart"
        assert await platform.list_replicas(spec.agent_id) == before
        assert tagged_pids(tag) == {r.pid for r in before}


CHILD = """
import asyncio, sys
from datetime import UTC, datetime
from activities.platform import LocalPlatform
from fleetops.models import AgentSpec
from fleetops.settings import Settings
settings = Settings.model_validate_json(sys.argv[1])
spec = AgentSpec.model_validate_json(sys.argv[2])
platform = LocalPlatform(settings.platform.local, settings.state_dir, settings.platform.gateway)
asyncio.run(platform.rolling_restart(
    spec, "blue", rollout_id="d1", requested_at=datetime.now(UTC), ready_timeout=60
))
"""


async def test_a_restart_killed_mid_way_resumes_and_adopts_the_replacement(
    tmp_path: Path, tag: str
) -> None:
    settings = settings_for(tmp_path)
    spec = sample_spec(tag, slow_start=2)
    async with serving(settings, spec) as (platform, url):
        load = Load(url).start()
        before = await platform.list_replicas(spec.agent_id)
        # "Worker A": a process running the restart, SIGKILLed once its first replacement is
        # recorded (no clean-up runs, as when a worker dies).
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-c", CHILD, settings.model_dump_json(), spec.model_dump_json()
        )
        try:
            surge = await eventually(lambda: _surge(settings, spec.agent_id), "A's replacement")
        finally:
            child.kill()
            await child.wait()
        assert alive(int(str(surge["pid"])))
        # The retry (same rollout id) on "worker B".
        replicas = await platform.rolling_restart(
            spec, "blue", rollout_id="d1", requested_at=datetime.now(UTC), ready_timeout=60
        )
        await load.stop()
        assert replicas[0].pid == surge["pid"], "B started another replacement instead of adopting"
        assert not any(alive(r.pid) for r in before)
        assert tagged_pids(tag) == {r.pid for r in replicas}
        assert [int(str(r["index"])) for r in state(settings, spec.agent_id)] == [0, 1]
        assert load.failures == [], load.failures[:5]


async def _surge(settings: Settings, agent: str) -> dict[str, object]:
    found = [r for r in state(settings, agent) if int(str(r["index"])) >= SURGE_BASE]
    assert found, "no replacement recorded yet"
    return found[0]
