"""Running the ``fleetops`` command line against a test's dev server, and the worker it needs.

The CLI runs as a subprocess (the installed console script next to this interpreter), with the
server's address and the test's task queue in its environment and no metrics endpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx
from temporalio.client import Client
from temporalio.worker import Worker

from activities.deployments import DeploymentActivities
from activities.notify import NotifyActivities
from fleetops.settings import ApprovalSettings
from tests.conftest import new_worker
from tests.standins import ColorPlatform
from workflows.agent_lifecycle import AgentLifecycle
from workflows.blue_green import BlueGreenDeployment

FLEETOPS = Path(sys.executable).parent / "fleetops"
"""The installed ``fleetops`` console script."""


@dataclass
class Run:
    """One finished ``fleetops`` run: exit code, stdout and stderr (text)."""

    code: int
    stdout: str
    stderr: str


def cli_env(client: Client, task_queue: str | None = None, **extra: str) -> dict[str, str]:
    """This process's environment plus what points ``fleetops`` at ``client``'s server (and
    ``task_queue``), without a metrics endpoint, with 200-column rich tables (no truncated
    cells); ``extra`` is added last."""
    env = {
        **os.environ,
        "FLEETOPS_TEMPORAL__ADDRESS": client.service_client.config.target_host,
        "FLEETOPS_TELEMETRY__METRICS_BIND_ADDRESS": "",
        "COLUMNS": "200",
        **extra,
    }
    if task_queue is not None:
        env["FLEETOPS_TEMPORAL__TASK_QUEUE"] = task_queue
    return env


async def run_fleetops(
    *args: str,
    env: Mapping[str, str],
    cwd: Path,
    timeout: float = 120,
    merge_stderr: bool = False,
) -> Run:
    """Run ``fleetops <args>`` in ``cwd`` (a test's tmp dir: no stray ``.env``) with ``env``.

    Args:
        merge_stderr: stderr goes to stdout (``Run.stderr`` is empty), in the order written.

    Raises:
        TimeoutError: it did not exit within ``timeout`` seconds.
    """
    proc = await asyncio.create_subprocess_exec(
        str(FLEETOPS),
        *args,
        cwd=cwd,
        env=dict(env),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT if merge_stderr else asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=timeout)
    assert proc.returncode is not None
    return Run(proc.returncode, out.decode(), (err or b"").decode())


@contextlib.asynccontextmanager
async def deployment_worker(client: Client, platform: ColorPlatform) -> AsyncIterator[Worker]:
    """A worker on a fresh task queue for agents and blue-green deployments on ``platform``,
    with the deployment's notification and approval-policy activities (default settings)."""
    async with httpx.AsyncClient() as http:
        notify = NotifyActivities(http, ApprovalSettings())
        w = new_worker(
            client,
            workflows=[AgentLifecycle, BlueGreenDeployment],
            activities=[
                *platform.activities(),
                DeploymentActivities(client).describe_deployment,
                notify.send_notification,
                notify.approval_policy,
                notify.approver_roles,
            ],
        )
        async with w:
            yield w
