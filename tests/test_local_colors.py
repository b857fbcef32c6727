"""LocalPlatform colours and services: blue and green side by side, the routing entry, the
Prometheus targets and the migration of pre-colour state files (real processes)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from activities.platform import LocalPlatform, PlatformError
from fleetops.models import AgentSpec
from fleetops.settings import GatewaySettings, LocalPlatformSettings
from tests.e2e_support import TAG_VAR, alive, port_block, tag, tagged_pids

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc")

__all__ = ["tag"]  # the fixture

SLEEPER = [sys.executable, "-c", "import time; time.sleep(600)"]


@pytest.fixture
def gateway() -> GatewaySettings:
    start, end = port_block(10)
    return GatewaySettings(port_range_start=start, port_range_end=end)


@pytest.fixture
def platform(tmp_path: Path, gateway: GatewaySettings) -> LocalPlatform:
    start, end = port_block()
    local = LocalPlatformSettings(
        port_range_start=start, port_range_end=end, stop_grace_seconds=5.0
    )
    return LocalPlatform(local, tmp_path, gateway)


def spec(tag: str, suffix: str = "", **kwargs: object) -> AgentSpec:
    return AgentSpec.model_validate(
        {
            "agent_id": f"c-{tag[:10]}{suffix}",
            "command": SLEEPER,
            "env": {TAG_VAR: tag},
            "max_replicas": 5,
            **kwargs,
        }
    )


def service_file(tmp_path: Path, agent_id: str) -> dict[str, object]:
    return dict(json.loads((tmp_path / "agents" / agent_id / "service.json").read_text()))


async def test_colors_side_by_side_and_scale_down_keeps_the_service(
    platform: LocalPlatform, gateway: GatewaySettings, tmp_path: Path, tag: str
) -> None:
    s = spec(tag)
    blue = await platform.ensure(s, 2)
    green = await platform.ensure(s.model_copy(update={"version": "v2"}), 1, "green")

    assert [(r.color, r.index, r.version) for r in blue] == [("blue", 0, "v1"), ("blue", 1, "v1")]
    assert [(r.color, r.index, r.version) for r in green] == [("green", 0, "v2")]
    assert await platform.list_replicas(s.agent_id) == blue + green
    assert await platform.list_replicas(s.agent_id, "green") == green
    assert len({r.endpoint for r in blue + green}) == 3
    assert tagged_pids(tag) == {r.pid for r in blue + green}
    assert (tmp_path / "agents" / s.agent_id / "green-replica-0.log").is_file()
    service = service_file(tmp_path, s.agent_id)
    assert service["active_color"] == "blue"  # the first ensure made it; green's did not touch it
    assert service["preview_color"] is None
    ports = {int(str(service["active_port"])), int(str(service["preview_port"]))}
    assert len(ports) == 2
    assert all(gateway.port_range_start <= p <= gateway.port_range_end for p in ports)

    assert await platform.scale_down(s.agent_id, "green") == 1
    assert await platform.scale_down(s.agent_id, "green") == 0

    assert await platform.list_replicas(s.agent_id, "green") == []
    assert await platform.list_replicas(s.agent_id) == blue
    assert tagged_pids(tag) == {r.pid for r in blue}
    assert service_file(tmp_path, s.agent_id) == service
    # Another agent never gets this agent's service ports.
    await platform.ensure(spec(tag, "b"), 0)
    other = service_file(tmp_path, spec(tag, "b").agent_id)
    assert ports.isdisjoint({other["active_port"], other["preview_port"]})


async def test_switch_traffic_bumps_generation_once(
    platform: LocalPlatform, gateway: GatewaySettings, tmp_path: Path, tag: str
) -> None:
    s = spec(tag)
    with pytest.raises(PlatformError, match="no service"):
        await platform.switch_traffic(s.agent_id, "green")
    await platform.ensure(s, 1)
    before = await platform.describe_service(s.agent_id)
    assert before is not None
    assert (before.active_color, before.preview_color, before.generation) == ("blue", None, 0)
    assert before.preview_url is None
    # A gateway that died left its file behind: nobody to wait for.
    (tmp_path / "gateway.json").write_text(json.dumps({"admin_url": "http://x:1", "pid": 2**22}))

    switched = await platform.switch_traffic(s.agent_id, "green", "blue")
    again = await platform.switch_traffic(s.agent_id, "green", "blue")

    assert switched == again == await platform.describe_service(s.agent_id)
    assert (switched.active_color, switched.preview_color, switched.generation) == (
        "green",
        "blue",
        1,
    )
    service = service_file(tmp_path, s.agent_id)
    assert switched.active_url == f"http://{gateway.host}:{service['active_port']}"
    assert switched.preview_url == f"http://{gateway.host}:{service['preview_port']}"
    assert service["generation"] == 1
    no_preview = await platform.switch_traffic(s.agent_id, "blue", "blue")
    assert (no_preview.preview_color, no_preview.preview_url, no_preview.generation) == (
        None,
        None,
        2,
    )
    assert before.active_url == no_preview.active_url  # ports are stable


async def test_prometheus_targets_follow_replicas_and_stop_all_clears_everything(
    platform: LocalPlatform, tmp_path: Path, tag: str
) -> None:
    s, other = spec(tag), spec(tag, "b")
    targets_dir = tmp_path / "prometheus" / "targets"
    targets_path = targets_dir / f"{s.agent_id}.json"
    [bystander] = await platform.ensure(other, 1)
    other_path = targets_dir / f"{other.agent_id}.json"
    other_before = other_path.stat()
    blue = await platform.ensure(s, 2)
    [green] = await platform.ensure(s.model_copy(update={"version": "v2"}), 1, "green")

    targets = json.loads(targets_path.read_text())
    assert targets == [
        {
            "targets": [r.endpoint.removeprefix("http://")],
            "labels": {
                "fleetops_agent": s.agent_id,
                "fleetops_color": r.color,
                "fleetops_version": r.version,
                "fleetops_replica": str(r.index),
            },
        }
        for r in [*blue, green]
    ]
    # Changes to one agent rewrite only that agent's file.
    other_after = other_path.stat()
    assert (other_after.st_ino, other_after.st_mtime_ns) == (
        other_before.st_ino,
        other_before.st_mtime_ns,
    )
    assert json.loads(other_path.read_text())[0]["targets"] == [
        bystander.endpoint.removeprefix("http://")
    ]

    await platform.ensure(s, 1)
    assert len(json.loads(targets_path.read_text())) == 2
    assert await platform.stop_all(s.agent_id) == 2

    assert not targets_path.exists()
    agent_dir = tmp_path / "agents" / s.agent_id
    assert not (agent_dir / "service.json").exists()
    assert not (agent_dir / "state.json").exists()
    assert await platform.describe_service(s.agent_id) is None
    assert tagged_pids(tag) == {bystander.pid}
    await platform.stop_all(other.agent_id)


async def test_pre_colour_state_file_is_read_as_blue_and_migrated(
    platform: LocalPlatform, tmp_path: Path, tag: str
) -> None:
    s = spec(tag)
    [original] = await platform.ensure(s, 1)
    state_path = tmp_path / "agents" / s.agent_id / "state.json"
    state = json.loads(state_path.read_text())
    old = {
        "agent_id": s.agent_id,
        "replicas": [{k: v for k, v in r.items() if k != "color"} for r in state["replicas"]],
    }
    state_path.write_text(json.dumps(old))
    (tmp_path / "agents" / s.agent_id / "service.json").unlink()  # as before services existed

    [adopted] = await platform.ensure(s, 1)
    [green] = await platform.ensure(s, 1, "green")

    assert adopted == original
    assert alive(adopted.pid)
    migrated = json.loads(state_path.read_text())
    assert migrated["format"] == 2
    assert [(r["color"], r["index"]) for r in migrated["replicas"]] == [
        ("blue", 0),
        ("green", 0),
    ]
    assert migrated["replicas"][0]["pid"] == original.pid
    assert green.pid != original.pid
    service = await platform.describe_service(s.agent_id)
    assert service is not None and service.active_color == "blue"
