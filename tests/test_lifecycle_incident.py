"""AgentLifecycle opens its incident when the agent enters ERROR (patch open-incident-on-error).

The real ``open_incident`` activity signal-with-starts ``incident/<agent>/lifecycle``. The real
``IncidentResponse`` is built on another branch; here a minimal stand-in registered under its
name keeps its input and the ``alerts`` batches it receives, which is all the intake promises.
"""

from __future__ import annotations

import base64
import json
import uuid
from pathlib import Path
from typing import Any

from temporalio import activity, workflow
from temporalio.client import WorkflowHandle
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

with workflow.unsafe.imports_passed_through():  # the sandbox re-imports this module
    from activities.incident_intake import IncidentIntakeActivities
    from fleetops.incidents import AlertBatch, IncidentStart, Severity
    from fleetops.models import (
        AgentLifecycleInput,
        AgentSpec,
        AgentState,
        AgentStatus,
        TransitionRequest,
    )
    from tests.conftest import assert_eventually, new_worker
    from tests.standins import ColorPlatform
    from workflows.agent_lifecycle import OPEN_INCIDENT_PATCH, AgentLifecycle

S = AgentState
HISTORY = Path(__file__).parent / "histories" / "lifecycle" / "error_incident.json"


@workflow.defn(name="IncidentResponse")
class IncidentStandIn:
    """Stand-in for IncidentResponse: its input and every ``alerts`` batch, until terminated."""

    @workflow.init
    def __init__(self, start: IncidentStart) -> None:
        self.start = start
        self.batches: list[AlertBatch] = []

    @workflow.run
    async def run(self, start: IncidentStart) -> None:
        await workflow.wait_condition(lambda: False)

    @workflow.signal(name="alerts")
    def alerts(self, batch: AlertBatch) -> None:
        self.batches.append(batch)

    @workflow.query
    def status(self) -> dict[str, Any]:
        return {
            "start": self.start.model_dump(mode="json"),
            "batches": [b.model_dump(mode="json") for b in self.batches],
        }


async def start_agent(env: WorkflowEnvironment, tq: str) -> WorkflowHandle[Any, Any]:
    agent = f"inc-{uuid.uuid4().hex[:6]}"
    spec = AgentSpec(agent_id=agent, command=["agent"], health={"interval_seconds": 5})
    return await env.client.start_workflow(
        AgentLifecycle.run,
        AgentLifecycleInput(**spec.model_dump()),
        id=f"agent/{agent}",
        task_queue=tq,
    )


async def agent_status(h: WorkflowHandle[Any, Any]) -> AgentStatus:
    st: AgentStatus = await h.query(AgentLifecycle.status)
    return st


async def test_entering_error_opens_and_then_joins_the_agents_incident(
    env: WorkflowEnvironment,
) -> None:
    platform = ColorPlatform()
    platform.fail.add("provision_replicas")
    tq = f"tq-{uuid.uuid4()}"
    intake = IncidentIntakeActivities(env.client, task_queue=tq)
    async with new_worker(
        env.client,
        workflows=[AgentLifecycle, IncidentStandIn],
        activities=[*platform.activities(), intake.open_incident],
        task_queue=tq,
    ):
        h = await start_agent(env, tq)
        agent = h.id.removeprefix("agent/")
        incident = env.client.get_workflow_handle(f"incident/{agent}/lifecycle")

        async def batches(n: int) -> dict[str, Any]:
            try:
                st = await incident.query("status")
            except RPCError as err:  # not started yet
                raise AssertionError(err) from None
            assert len(st["batches"]) == n, st
            return st

        st = await assert_eventually(lambda: batches(1))
        assert st["start"]["source"] == "lifecycle" and st["start"]["key"] == "lifecycle"
        assert st["start"]["agent_id"] == agent
        assert st["start"]["severity"] == Severity.SEV2
        alert = st["batches"][0]["alerts"][0]
        assert st["batches"][0]["source"] == "lifecycle"
        assert alert["status"] == "firing" and alert["labels"]["agent"] == agent
        assert "provisioning failed" in alert["annotations"]["summary"]

        async def noted() -> AgentStatus:
            s = await agent_status(h)
            assert s.state == S.ERROR
            assert f"incident incident/{agent}/lifecycle opened" in s.transitions[-1].reason
            return s

        await assert_eventually(noted)
        # Entering ERROR again joins the same open incident instead of opening another.
        await h.execute_update(AgentLifecycle.transition, TransitionRequest(action="resume"))
        await assert_eventually(lambda: batches(2))
        await h.terminate("test finished")
        await incident.terminate("test finished")


@activity.defn(name="open_incident")
async def unreachable_intake(start: IncidentStart, batch: AlertBatch) -> str:
    raise ApplicationError("temporal unreachable (on purpose)")


async def test_an_incident_that_cannot_be_opened_does_not_hold_the_agent(
    env: WorkflowEnvironment,
) -> None:
    platform = ColorPlatform()
    platform.fail.add("provision_replicas")
    async with new_worker(
        env.client,
        workflows=[AgentLifecycle],
        activities=[*platform.activities(), unreachable_intake],
    ) as w:
        h = await start_agent(env, w.task_queue)

        async def noted() -> None:
            s = await agent_status(h)
            assert s.state == S.ERROR
            assert "incident could not be opened" in s.transitions[-1].reason, s.transitions

        await assert_eventually(noted)
        platform.fail.clear()
        await h.execute_update(AgentLifecycle.transition, TransitionRequest(action="resume"))

        async def ready() -> None:
            assert (await agent_status(h)).state == S.READY

        await assert_eventually(ready)
        await h.terminate("test finished")


def test_the_recorded_history_covers_the_patch() -> None:
    """tests/test_replay.py replays error_incident.json; it must hold the patched path."""
    events = json.loads(HISTORY.read_text())["events"]
    patches = []
    for e in events:
        attrs = e.get("markerRecordedEventAttributes")
        if attrs and attrs["markerName"] == "core_patch":
            data = attrs["details"]["patch-data"]["payloads"][0]["data"]
            patches.append(json.loads(base64.b64decode(data))["id"])
    assert OPEN_INCIDENT_PATCH in patches, patches
    scheduled = [
        e["activityTaskScheduledEventAttributes"]["activityType"]["name"]
        for e in events
        if "activityTaskScheduledEventAttributes" in e
    ]
    assert "open_incident" in scheduled
