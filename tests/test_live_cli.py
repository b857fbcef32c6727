"""``--wait``, ``--watch`` and YAML files: the real ``fleetops`` CLI in a subprocess, dev server.

The worker runs the real ``AgentLifecycle`` and ``BlueGreenDeployment`` with the stand-in
platform of tests/standins.py, in the test's event loop (hence ``create_subprocess_exec``).
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from fleetops.models import AgentState
from starters import agents, deployments
from tests.cli_support import Run, cli_env, deployment_worker, run_fleetops
from tests.conftest import BIN, assert_eventually
from tests.standins import ColorPlatform

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@pytest.fixture
def platform() -> ColorPlatform:
    return ColorPlatform()


@pytest.fixture
async def worker(dev_env: WorkflowEnvironment, platform: ColorPlatform) -> AsyncIterator[Worker]:
    async with deployment_worker(dev_env.client, platform) as w:
        yield w


@pytest.fixture
def cli(dev_env: WorkflowEnvironment, worker: Worker, tmp_path: Path):
    """Run ``fleetops <args>`` against the dev server and the test's task queue."""
    base = cli_env(dev_env.client, worker.task_queue, FLEETOPS_TEST_CWD=str(tmp_path))

    async def run(*args: str, timeout: float = 120) -> Run:
        return await run_fleetops(*args, env=base, cwd=tmp_path, timeout=timeout)

    run.env = base  # type: ignore[attr-defined]
    return run


def _agent() -> str:
    return f"live-{uuid.uuid4().hex[:8]}"


async def _start(cli, tmp_path: Path, agent: str) -> None:
    """Start ``agent`` from a YAML spec and wait until READY (``agent start --wait``)."""
    spec = tmp_path / f"{agent}.yaml"
    spec.write_text(
        "# an AgentSpec in YAML\n"
        "version: v1\n"
        "replicas: 2\n"
        "command: [agent, --model, small]\n"
        "env:\n  MODEL: small\n  GREETING: not-for-the-ui\n"
        "health:\n  interval_seconds: 3600\n"
    )
    r = await cli("agent", "start", agent, "--file", str(spec), "--wait", "--timeout", "60")
    assert r.code == 0, r
    assert f"agent {agent}: READY" in r.stdout


async def test_agent_start_wait_from_yaml(
    cli, dev_env: WorkflowEnvironment, platform: ColorPlatform, tmp_path: Path
) -> None:
    agent = _agent()
    await _start(cli, tmp_path, agent)
    assert platform.running(agent, "blue") == 2
    st = await agents.status(dev_env.client, agent)
    assert st.state == AgentState.READY and st.desired_replicas == 2
    assert st.replicas and all(r.healthy for r in st.replicas)
    # What the Web UI shows from the start: summary and details, env values left out.
    desc = await dev_env.client.get_workflow_handle(f"agent/{agent}").describe()
    assert await desc.static_summary() == f"agent {agent} v1, 2 replicas"
    details = await desc.static_details() or ""
    assert "command `agent --model small`" in details and "`GREETING`, `MODEL`" in details
    assert "not-for-the-ui" not in details

    # A YAML error names the file and line, before anything is sent (exit 2).
    bad = tmp_path / "bad.yaml"
    bad.write_text("replicas: [2\n")
    r = await cli("agent", "start", _agent(), "-f", str(bad))
    assert r.code == 2 and "bad.yaml" in r.stderr and "line" in r.stderr, r
    bad.write_text("- just\n- a list\n")
    r = await cli("agent", "start", _agent(), "-f", str(bad))
    assert r.code == 2 and "YAML or JSON object of AgentSpec fields" in r.stderr, r


async def test_agent_start_wait_fails_on_error_and_timeout(cli, platform: ColorPlatform) -> None:
    platform.fail.add("provision_replicas")
    agent = _agent()
    r = await cli("agent", "start", agent, "--wait")
    assert r.code == 1, r
    assert f"agent {agent}: ERROR (provisioning failed" in r.stdout

    platform.fail.clear()
    platform.hang.add("provision_replicas")
    slow = _agent()
    r = await cli("agent", "start", slow, "--wait", "--timeout", "2")
    assert r.code == 1, r
    assert f"agent {slow} still INITIALIZING after 2 s" in r.stdout
    platform.release.set()


REQUEST = (
    "promotion:\n  mode: auto\n"
    "smoke_tests:\n  - name: root\n    path: /\n"
    "scale_down_delay_seconds: 0\n"
    "abort_scale_down_delay_seconds: 0\n"
)


async def _released(client, agent: str, version: str) -> None:
    """Wait until the agent has reconciled its last deployment and runs ``version``."""

    async def check() -> None:
        st = await agents.status(client, agent)
        assert st.deployment is None and st.version == version, (st.deployment, st.version)

    await assert_eventually(check, timeout=60)


async def test_deploy_wait_exit_codes(
    cli, dev_env: WorkflowEnvironment, platform: ColorPlatform, tmp_path: Path
) -> None:
    agent = _agent()
    await _start(cli, tmp_path, agent)
    request = tmp_path / "request.yaml"
    request.write_text(REQUEST)
    r = await cli("deploy", agent, "--version", "v2", "-f", str(request), "--wait")
    assert r.code == 0, r
    assert "SMOKE_TESTS" in r.stdout and "SUCCEEDED" in r.stdout
    assert f"deploy/{agent}/v2: promoted; {agent} serves v2 on green" in r.stdout
    await _released(dev_env.client, agent, "v2")

    platform.smoke_status = 500  # v3's smoke tests fail: it rolls back
    r = await cli("deploy", agent, "--version", "v3", "-f", str(request), "--wait")
    assert r.code == 1, r
    assert "ROLLING_BACK" in r.stdout and "ROLLED_BACK" in r.stdout
    assert f"deploy/{agent}/v3: rolled_back; {agent} serves v2 on green" in r.stdout


async def _spawn(cli_env: dict[str, str], *args: str) -> asyncio.subprocess.Process:
    """Start ``fleetops <args>`` (outside the working tree: no stray .env) to read as it runs."""
    return await asyncio.create_subprocess_exec(
        str(BIN / "fleetops"),
        *args,
        cwd=cli_env["FLEETOPS_TEST_CWD"],
        env=cli_env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def _read_until(proc: asyncio.subprocess.Process, seen: bytearray, text: str) -> None:
    """Read the process's stdout into ``seen`` until ``text`` (ANSI codes aside) is in it."""
    assert proc.stdout is not None
    while text not in ANSI.sub("", seen.decode(errors="replace")):
        chunk = await asyncio.wait_for(proc.stdout.read(4096), timeout=60)
        assert chunk, f"exited before showing {text!r}:\n{seen.decode()}"
        seen += chunk


async def test_deploy_status_watch_follows_until_closed(
    cli, dev_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    agent = _agent()
    await _start(cli, tmp_path, agent)
    request = tmp_path / "manual.json"  # JSON works too
    request.write_text(json.dumps({"abort_scale_down_delay_seconds": 0}))
    r = await cli("deploy", agent, "--version", "v2", "--file", str(request))
    assert r.code == 0, r  # manual promotion: it waits for approval
    wid = f"deploy/{agent}/v2"
    proc = await _spawn(cli.env, "deploy-status", wid, "--watch")
    seen = bytearray()
    await _read_until(proc, seen, "waiting for approval")
    await deployments.abort(dev_env.client, wid, reason="seen enough", requested_by="carol")
    rest, err = await asyncio.wait_for(proc.communicate(), timeout=90)
    assert proc.returncode == 0, err.decode()
    out = (seen + rest).decode()
    frames = re.findall(rf"^{re.escape(wid)}: (\S+) \(outcome: (\w+)\)$", out, re.M)
    assert ("AWAITING_PROMOTION", "running") in frames, out
    assert frames[-1] == ("ROLLED_BACK", "aborted"), out  # it ran until the workflow closed


async def test_agent_status_watch_redraws_live_until_stopped(
    cli, dev_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    agent = _agent()
    await _start(cli, tmp_path, agent)
    # A terminal as rich sees it: the view is redrawn in place (rich.live.Live).
    tty = {**cli.env, "TTY_COMPATIBLE": "1", "TTY_INTERACTIVE": "1"}
    proc = await _spawn(tty, "agent", "status", agent, "--watch")
    seen = bytearray()
    await _read_until(proc, seen, f"{agent} v1: READY on blue, 2/2 replicas healthy, 2 desired")
    await agents.scale(dev_env.client, agent, 3, reason="traffic", requested_by="dave")
    # The new replica is not probed yet (hourly rounds): 2 of 3 healthy.
    await _read_until(proc, seen, "2/3 replicas healthy, 3 desired")
    await agents.shutdown(dev_env.client, agent, reason="done", requested_by="dave")
    rest, err = await asyncio.wait_for(proc.communicate(), timeout=90)
    assert proc.returncode == 0, err.decode()
    out = (seen + rest).decode()
    assert "\x1b[" in out  # cursor movements: redrawn in place, not appended
    assert f"agent {agent}: workflow COMPLETED; watch ended" in ANSI.sub("", out)
