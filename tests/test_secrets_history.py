"""No secret value in any workflow history: an agent started with ``secrets`` on the real worker
(dev server, local platform, real replicas) and a rotation driven by a workflow, then every
payload of their recorded histories is decoded and searched for the values."""

from __future__ import annotations

import base64
import os
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.message import Message
from temporalio import workflow
from temporalio.client import Client, WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from activities.secret_stores import LocalStore
from fleetops.converter import data_converter
from fleetops.models import AgentLifecycleInput, TransitionRequest
from fleetops.secrets import SecretRotation, SecretVersionRef
from tests.conftest import new_worker
from tests.e2e_support import agent_spec, local_settings, tag, wait_ready
from worker import fleetops_worker
from workflows.agent_lifecycle import AgentLifecycle

with workflow.unsafe.imports_passed_through():
    from activities.secrets import SecretActivities

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc")
__all__ = ["tag"]

FIRST = "sk-history-canary-0123456789"


@workflow.defn(sandboxed=False)
class RotateOnce:
    """A stand-in for the maintenance workflow's rotation step."""

    @workflow.run
    async def run(self, req: SecretRotation) -> SecretVersionRef:
        ref = await workflow.execute_activity_method(
            SecretActivities.rotate_secret, req, start_to_close_timeout=timedelta(seconds=30)
        )
        await workflow.execute_activity_method(
            SecretActivities.confirm_secret,
            args=[ref.path, ref.version],
            start_to_close_timeout=timedelta(seconds=30),
        )
        return ref


def environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


async def history_text(client: Client, workflow_id: str) -> str:
    """Every payload of the workflow's history, decoded by the data converter, as one string
    (plus the raw JSON of the history)."""
    history = await client.get_workflow_handle(workflow_id).fetch_history()
    found: list[str] = [history.to_json()]
    decoded: list[Any] = []

    def walk(node: Any) -> None:
        if isinstance(node, Message):
            if node.DESCRIPTOR.full_name == "temporal.api.common.v1.Payload":
                found.append(node.data.decode(errors="replace"))
                found.append(str(data_converter().payload_converter.from_payloads([node])))
                decoded.append(node)
                return
            for _, value in node.ListFields():
                walk(value)
        elif isinstance(node, str | bytes | int | float | bool):
            return
        else:  # a repeated field or a map
            for item in node.values() if hasattr(node, "values") else node:
                walk(item)

    for event in history.events:
        walk(event)
    assert len(decoded) >= 3, "no payloads found: the walk is broken"
    return "\n".join(found)


async def test_no_secret_value_in_any_history(
    dev_env: WorkflowEnvironment, tmp_path: Path, tag: str
) -> None:
    settings = local_settings(tmp_path)
    store = LocalStore(settings.state_dir, settings.secrets.local_key)
    store.write("agents/hist", {"openai": FIRST}, cas=0)
    ref = {"env": "OPENAI_API_KEY", "path": "agents/hist", "key": "openai"}
    spec = agent_spec(tag, "sh", secrets=[ref])
    async with fleetops_worker(dev_env.client, settings, task_queue=str(uuid.uuid4())) as worker:
        handle: WorkflowHandle[Any, Any] = await dev_env.client.start_workflow(
            AgentLifecycle.run,
            AgentLifecycleInput(**spec.model_dump()),
            id=f"agent/{spec.agent_id}",
            task_queue=worker.task_queue,
        )
        ready = await wait_ready(handle, 1)
        assert environ(ready.replicas[0].pid or 0)["OPENAI_API_KEY"] == FIRST
        acts = SecretActivities(store)
        async with new_worker(
            dev_env.client,
            workflows=[RotateOnce],
            activities=[acts.rotate_secret, acts.confirm_secret],
        ) as rot_worker:
            rotated = await dev_env.client.execute_workflow(
                RotateOnce.run,
                SecretRotation(path="agents/hist", key="openai", expected_version=1),
                id=f"rotate/{spec.agent_id}",
                task_queue=rot_worker.task_queue,
            )
        second = store.read("agents/hist").data["openai"]
        assert rotated.version == 2 and second != FIRST
        # pause + resume re-provisions: the replica resolves the new version
        await handle.execute_update(AgentLifecycle.transition, TransitionRequest(action="pause"))
        await handle.execute_update(AgentLifecycle.transition, TransitionRequest(action="resume"))
        again = await wait_ready(handle, 1)
        assert environ(again.replicas[0].pid or 0)["OPENAI_API_KEY"] == second
        await handle.signal(AgentLifecycle.shutdown)
        await handle.result()
    for workflow_id in (handle.id, f"rotate/{spec.agent_id}"):
        text = await history_text(dev_env.client, workflow_id)
        assert "agents/hist" in text, "the decoding found the payloads"
        for value in (FIRST, second):
            for form in (value, base64.b64encode(value.encode()).decode()):
                assert form not in text, f"a secret value is in the history of {workflow_id}"
