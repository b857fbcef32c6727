"""``fleetops incident list|show|ack|resolve|review``: the real CLI against a dev server.

The real ``IncidentResponse`` is built on another branch; a stand-in registered under its name
keeps the contract the CLI relies on: the search attributes ``FleetOpsAgentId``,
``FleetOpsState`` and ``FleetOpsSeverity``, a ``status`` query (a JSON document), ``ack`` and
``resolve`` updates taking ``{"requested_by", "reason"}`` (a second ack is refused by its
validator), and the review as the workflow's result (Markdown).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from temporalio import workflow
from temporalio.client import WorkflowHandle
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from fleetops.constants import AGENT_ID_KEY, SEVERITY_KEY, STATE_KEY
from starters.incidents import list_query
from tests.conftest import assert_eventually, new_worker
from tests.test_deploy_refusals_cli import fleetops


@workflow.defn(name="IncidentResponse")
class IncidentStandIn:
    """Stand-in: phase TRIAGE until ``resolve``; then the review is its result."""

    def __init__(self) -> None:
        self.acked_by: str | None = None
        self.resolved: dict[str, Any] | None = None
        self.audit: list[str] = ["opened by alertmanager"]

    @workflow.run
    async def run(self, start: dict[str, Any]) -> str:
        self.start = start
        workflow.upsert_search_attributes(
            [
                AGENT_ID_KEY.value_set(start["agent_id"]),
                STATE_KEY.value_set("TRIAGE"),
                SEVERITY_KEY.value_set(start["severity"]),
            ]
        )
        await workflow.wait_condition(lambda: self.resolved is not None)
        assert self.resolved is not None
        return f"# Review of {start['title']}\n\nresolved by {self.resolved['requested_by']}\n"

    @workflow.query
    def status(self) -> dict[str, Any]:
        return {"title": self.start["title"], "agent_id": self.start["agent_id"],
                "severity": self.start["severity"], "phase": "TRIAGE", "status": "Active",
                "acknowledged_by": self.acked_by, "audit": self.audit}  # fmt: skip

    @workflow.update
    def ack(self, req: dict[str, Any]) -> str:
        self.acked_by = req["requested_by"]
        self.audit.append(f"acknowledged by {req['requested_by']}: {req['reason']}")
        return "acknowledged"

    @ack.validator
    def _ack_once(self, req: dict[str, Any]) -> None:
        if self.acked_by is not None:
            raise ApplicationError(f"already acknowledged by {self.acked_by}")

    @workflow.update
    def resolve(self, req: dict[str, Any]) -> str:
        self.resolved = req
        return "resolving"


@pytest.fixture
async def worker(dev_env: WorkflowEnvironment) -> AsyncIterator[Worker]:
    async with new_worker(
        dev_env.client, workflows=[IncidentStandIn], workflow_runner=UnsandboxedWorkflowRunner()
    ) as w:
        yield w


async def open_incident(
    env: WorkflowEnvironment, w: Worker, agent: str, severity: str
) -> WorkflowHandle[Any, Any]:
    start = {"agent_id": agent, "title": f"{agent} errors", "severity": severity}
    return await env.client.start_workflow(
        "IncidentResponse", start, id=f"incident/{agent}/abc123", task_queue=w.task_queue
    )


def test_list_query_filters_and_refuses_quotes() -> None:
    assert list_query(agent_id="a") == (
        "WorkflowType = 'IncidentResponse' AND ExecutionStatus = 'Running' AND "
        "FleetOpsAgentId = 'a'"
    )
    assert "ExecutionStatus" not in list_query(include_closed=True)
    with pytest.raises(ValueError, match="invalid agent id"):
        list_query(agent_id="a' OR 'x'='x")


async def test_incident_commands(dev_env: WorkflowEnvironment, worker: Worker, tmp_path: Path):
    run = uuid.uuid4().hex[:6]
    a, b = f"cli-a-{run}", f"cli-b-{run}"
    ha = await open_incident(dev_env, worker, a, "SEV1")
    await open_incident(dev_env, worker, b, "SEV3")

    async def listed() -> str:
        code, out = await fleetops(dev_env, tmp_path, "incident", "list")
        assert code == 0 and f"incident/{a}/abc123" in out and f"incident/{b}/abc123" in out
        return out

    out = await assert_eventually(listed, timeout=20)
    assert "SEV1" in out and "TRIAGE" in out
    code, out = await fleetops(dev_env, tmp_path, "incident", "list", "--severity", "SEV3")
    assert code == 0 and f"incident/{b}/" in out and f"incident/{a}/" not in out
    code, out = await fleetops(dev_env, tmp_path, "incident", "list", "--agent", a)
    assert code == 0 and f"incident/{a}/" in out and f"incident/{b}/" not in out

    code, out = await fleetops(dev_env, tmp_path, "incident", "show", f"{a}/abc123")
    assert code == 0 and f"{a} errors" in out and "opened by alertmanager" in out, out
    code, out = await fleetops(
        dev_env, tmp_path, "incident", "ack", ha.id, "--as", "carol", "--comment", "on it"
    )
    assert code == 0 and f"acknowledged {ha.id}" in out, out
    assert (await ha.query("status"))["acknowledged_by"] == "carol"
    code, out = await fleetops(dev_env, tmp_path, "incident", "ack", ha.id, "--as", "dave")
    assert code == 1 and "already acknowledged by carol" in out, out

    code, out = await fleetops(dev_env, tmp_path, "incident", "review", ha.id)
    assert code == 1 and "still open" in out
    code, out = await fleetops(
        dev_env, tmp_path, "incident", "resolve", ha.id, "--as", "carol", "--reason", "fixed"
    )
    assert code == 0 and f"resolved {ha.id}" in out
    await ha.result()
    code, out = await fleetops(dev_env, tmp_path, "incident", "review", ha.id, "--raw")
    assert code == 0 and f"# Review of {a} errors" in out and "resolved by carol" in out, out
    code, out = await fleetops(dev_env, tmp_path, "incident", "ack", ha.id)
    assert code == 1 and "closed" in out, out
    code, out = await fleetops(dev_env, tmp_path, "incident", "list", "--agent", a)
    assert code == 0 and "no incidents open" in out
    code, out = await fleetops(dev_env, tmp_path, "incident", "list", "--agent", a, "--all")
    assert code == 0 and "closed" in out

    code, out = await fleetops(dev_env, tmp_path, "incident", "show", "incident/nosuch/x")
    assert code == 1 and "no incident incident/nosuch/x" in out, out
    code, out = await fleetops(dev_env, tmp_path, "incident", "show", "not-an-id")
    assert code == 2 and "not an incident id" in out
    kept = tmp_path / ".fleetops" / "incidents" / "gone" / "abc123-run1.md"
    kept.parent.mkdir(parents=True)
    kept.write_text("# Review of an incident whose history is gone\n")
    code, out = await fleetops(dev_env, tmp_path, "incident", "review", "incident/gone/abc123")
    assert code == 0 and "whose history is gone" in out, out
    review = tmp_path / "review.md"
    review.write_text("# Kept review\n")
    code, out = await fleetops(dev_env, tmp_path, "incident", "review", "--file", str(review))
    assert code == 0 and "Kept review" in out
