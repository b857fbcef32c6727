"""``fleetops agent restart`` and ``fleetops agent configure``: the real CLI in a subprocess
against a dev server, with the real workflow and the stand-in platform of tests/standins.py."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from tests.cli_support import Run, cli_env, run_fleetops
from tests.conftest import assert_eventually, new_worker
from tests.standins import ColorPlatform
from tests.test_agent_cli import UNREACHABLE
from worker import INTERCEPTORS, WORKFLOWS


@pytest.fixture
def platform() -> ColorPlatform:
    return ColorPlatform()


@pytest.fixture
async def worker(dev_env: WorkflowEnvironment, platform: ColorPlatform) -> AsyncIterator[Worker]:
    w = new_worker(
        dev_env.client,
        workflows=WORKFLOWS,
        activities=platform.activities(),
        interceptors=list(INTERCEPTORS),
    )
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


async def test_restart_and_configure_commands(cli, dev_env, worker, tmp_path: Path) -> None:
    agent = f"opscli-{uuid.uuid4().hex[:8]}"
    schema = {"type": "object", "properties": {"t": {"type": "number", "maximum": 2}}}
    h = await dev_env.client.start_workflow(
        "AgentLifecycle",
        {"agent_id": agent, "command": ["a"], "replicas": 2, "config_schema": schema},
        id=f"agent/{agent}",
        task_queue=worker.task_queue,
    )

    async def ready() -> None:
        assert (await h.query("status"))["state"] == "READY"

    await assert_eventually(ready, timeout=30)
    r = await cli("restart", agent, "--reason", "test")
    assert r.code == 0 and "2 blue replicas restarted" in r.stdout, r

    good, bad = tmp_path / "good.yaml", tmp_path / "bad.json"
    good.write_text("t: 1.5\n")
    bad.write_text(json.dumps({"t": 7}))
    r = await cli("configure", agent, "--file", str(good))
    assert r.code == 0 and "config v2 applied (was v1)" in r.stdout, r
    r = await cli("configure", agent, "--file", str(bad))
    assert r.code == 1 and "config.t: 7 is greater than the maximum of 2" in r.stderr, r
    r = await cli("configure", agent, "--restore", "9")
    assert r.code == 1 and "not kept" in r.stderr, r
    r = await cli("configure", agent, "--restore", "1")
    assert r.code == 0 and "config v3 applied (was v2)" in r.stdout, r
    st = await h.query("status")
    assert st["config"] == {} and st["config_version"] == 3


async def test_bad_configure_input_exits_2_before_contacting_temporal(cli, tmp_path) -> None:
    nested = tmp_path / "nested.json"
    nested.write_text(json.dumps({"a": {"b": 1}}))
    for args, expected in (
        ((), "exactly one of --file or --restore"),
        (("--file", str(nested)), "invalid config"),
    ):
        r = await cli("configure", "some-agent", *args, address=UNREACHABLE)
        assert r.code == 2 and expected in r.stderr and "cannot reach" not in r.stderr, r
