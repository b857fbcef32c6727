"""``fleetops agent ...`` end to end: the real CLI in a subprocess against a dev server.

The worker (AgentLifecycle + stand-in platform activities) runs in the test's event loop, so the
CLI runs with ``asyncio.create_subprocess_exec`` rather than a blocking ``subprocess.run``.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from temporalio import activity
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from fleetops.models import AgentSpec, AgentState, AgentStatus, ProvisionRequest, Replica
from tests.cli_support import Run, cli_env, run_fleetops
from tests.conftest import assert_eventually, new_worker
from tests.test_agent_lifecycle import FakePlatform
from workflows.agent_lifecycle import AgentLifecycle

UNREACHABLE = "127.0.0.1:1"


class RecordingPlatform(FakePlatform):
    """The stand-in platform, remembering the specs it provisioned."""

    def __init__(self) -> None:
        super().__init__()
        self.specs: list[AgentSpec] = []

    @activity.defn(name="provision_replicas")
    async def provision(self, req: ProvisionRequest) -> list[Replica]:
        self.specs.append(req.spec)
        return await super().provision(req)


@pytest.fixture
def platform() -> RecordingPlatform:
    return RecordingPlatform()


@pytest.fixture
async def worker(
    dev_env: WorkflowEnvironment, platform: RecordingPlatform
) -> AsyncIterator[Worker]:
    w = new_worker(dev_env.client, workflows=[AgentLifecycle], activities=platform.activities())
    async with w:
        yield w


@pytest.fixture
def cli(dev_env: WorkflowEnvironment, worker: Worker, tmp_path: Path):
    """Run ``fleetops agent <args>`` against the dev server and the test's task queue."""
    base = cli_env(dev_env.client, worker.task_queue)

    async def run(*args: str, address: str | None = None) -> Run:
        env = base | ({"FLEETOPS_TEMPORAL__ADDRESS": address} if address else {})
        return await run_fleetops("agent", *args, env=env, cwd=tmp_path)

    return run


async def first_spec(platform: RecordingPlatform) -> AgentSpec:
    """The first spec the worker provisioned (``agent start`` returns once the workflow started,
    before its first activity ran)."""

    async def provisioned() -> AgentSpec:
        assert platform.specs, "nothing provisioned yet"
        return platform.specs[0]

    return await assert_eventually(provisioned, timeout=30)


async def test_agent_commands_end_to_end(cli, platform: RecordingPlatform) -> None:
    agent_id = f"cli-{uuid.uuid4().hex[:8]}"
    r = await cli(
        "start",
        agent_id,
        "--max-replicas",
        "3",
        "--command",
        "fleetops-sample-agent --greeting 'hello there'",
        "--env",
        "MODEL=small",
        "--health-interval",
        "5",
    )
    assert r.code == 0, r.stderr
    assert f"agent/{agent_id}" in r.stdout
    assert f"fleetops agent status {agent_id}" in r.stdout
    spec = await first_spec(platform)
    assert spec.command == ["fleetops-sample-agent", "--greeting", "hello there"]
    assert (spec.env, spec.max_replicas, spec.health.interval_seconds) == ({"MODEL": "small"}, 3, 5)

    async def ready() -> AgentStatus:
        r = await cli("status", agent_id, "--json")
        assert r.code == 0, r.stderr
        st = AgentStatus.model_validate(json.loads(r.stdout))
        assert st.state == AgentState.READY
        return st

    await assert_eventually(ready, timeout=60)

    r = await cli("start", agent_id)
    assert r.code == 1 and "already running" in r.stderr

    r = await cli("scale", agent_id, "2", "--reason", "traffic")
    assert r.code == 0, r.stderr
    assert "READY, 2 desired replicas" in r.stdout
    r = await cli("scale", agent_id, "5")
    assert r.code == 1 and "max_replicas=3" in r.stderr

    r = await cli("status", agent_id)
    assert r.code == 0, r.stderr
    assert "READY" in r.stdout and f"http://{agent_id}.invalid:9001" in r.stdout

    r = await cli("pause", agent_id, "--reason", "maintenance", "--as", "alice")
    assert r.code == 0, r.stderr
    assert "PAUSED" in r.stdout and "pause by alice: maintenance" in r.stdout

    async def listed() -> None:
        r = await cli("list", "--state", "paused")
        assert r.code == 0, r.stderr
        assert agent_id in r.stdout

    await assert_eventually(listed, timeout=30)

    r = await cli("resume", agent_id)
    assert r.code == 0, r.stderr
    assert "INITIALIZING" in r.stdout
    await assert_eventually(ready, timeout=60)

    r = await cli("stop", agent_id, "--reason", "done")
    assert r.code == 0, r.stderr
    assert "TERMINATED" in r.stdout

    r = await cli("status", agent_id)
    assert r.code == 1
    assert f"agent {agent_id} is not running (no open AgentLifecycle agent/{agent_id})" in r.stderr


async def test_bad_spec_exits_2_before_contacting_temporal(cli, tmp_path: Path) -> None:
    # An unreachable address: a spec error must be reported without trying to connect.
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps({"replicas": 2, "health": {"interval_seconds": 0}}))
    cases = {
        ("--replicas", "50"): "replicas=50 is outside [min_replicas=1, max_replicas=10]",
        ("--spec", str(spec_file)): "health.interval_seconds",
        ("--env", "NOEQUALS"): "KEY=VALUE",
        ("--command", ""): "command",
        ("--command", "agent 'unclosed"): "No closing quotation",
    }
    runs = await asyncio.gather(
        *(cli("start", "bad-spec", *args, address=UNREACHABLE) for args in cases),
        cli("start", "Not_A_Label", address=UNREACHABLE),
    )
    for r, expected in zip(runs, [*cases.values(), "DNS label"], strict=True):
        assert r.code == 2, r
        assert expected in r.stderr and "cannot reach" not in r.stderr, r


async def test_spec_file_with_flag_overrides(cli, platform: RecordingPlatform, tmp_path) -> None:
    agent_id = f"cli-{uuid.uuid4().hex[:8]}"
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(
        json.dumps({"command": ["agent"], "version": "v7", "replicas": 2, "env": {"A": "1"}})
    )
    r = await cli("start", agent_id, "--spec", str(spec_file), "--replicas", "1", "--env", "B=2")
    assert r.code == 0, r.stderr
    spec = await first_spec(platform)
    assert (spec.agent_id, spec.version, spec.replicas) == (agent_id, "v7", 1)
    assert spec.env == {"A": "1", "B": "2"}
    r = await cli("stop", agent_id, "--no-wait")
    assert r.code == 0, r.stderr
    assert "TERMINATED" in r.stdout


async def test_unreachable_server_names_address(cli) -> None:
    r = await cli("status", "some-agent", address=UNREACHABLE)
    assert r.code == 1
    assert f"cannot reach Temporal at {UNREACHABLE}" in r.stderr
    assert "fleetops up" in r.stderr
