"""Helpers of the IncidentResponse tests: a worker with stand-ins, opening, waiting, deciding."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.incident_intake import signal_incident
from fleetops.incident_report import IncidentStatus, ReviewReport
from fleetops.settings import IncidentSettings, LlmSettings
from tests.conftest import assert_eventually, new_worker
from tests.incident_standins import Standins, activities, start_and_batch
from workflows.incident_response import IncidentResponse
from workflows.payload_guard import MessageGuard

E = EventType
LLM = LlmSettings(base_url="http://llm.invalid/v1")


@contextlib.asynccontextmanager
async def world(
    env: WorkflowEnvironment, tmp_path: Path, s: Standins, **incidents: Any
) -> AsyncIterator[Worker]:
    llm = incidents.pop("llm", LlmSettings())
    settings = IncidentSettings(**incidents)
    async with activities(s, tmp_path, incidents=settings, llm=llm) as acts:
        w = new_worker(
            env.client, workflows=[IncidentResponse], activities=acts, interceptors=[MessageGuard()]
        )
        async with w:
            yield w


def new_agent() -> str:
    """A fresh agent id (choose it first to script the stand-ins for it)."""
    return f"ir-{uuid.uuid4().hex[:8]}"


async def open_incident(
    env: WorkflowEnvironment, w: Worker, *alerts: Any, agent: str | None = None
) -> WorkflowHandle:
    agent = agent or new_agent()
    start, batch = start_and_batch(agent, *alerts)
    wid = await signal_incident(env.client, start, batch, task_queue=w.task_queue)
    return env.client.get_workflow_handle(wid, result_type=ReviewReport)


async def status(h: WorkflowHandle) -> IncidentStatus:
    return await h.query(IncidentResponse.status)


async def until(h: WorkflowHandle, pred: Callable[[IncidentStatus], bool]) -> IncidentStatus:
    async def check() -> IncidentStatus:
        st = await status(h)
        assert pred(st), (st.phase, st.actions)
        return st

    return await assert_eventually(check)


async def pending(h: WorkflowHandle) -> dict[str, Any]:
    async def check() -> dict[str, Any]:
        p = await h.query("pending_approval")
        assert p, "no approval pending"
        return p

    return await assert_eventually(check)


async def decide(h: WorkflowHandle, approver: str, approved: bool) -> None:
    await pending(h)
    await h.execute_update("decide", {"approver": approver, "approved": approved, "comment": "ok"})


async def finish(env: WorkflowEnvironment, h: WorkflowHandle) -> ReviewReport:
    async with env.time_skipping_unlocked():
        return await asyncio.wait_for(h.result(), 60)


async def resolve(h: WorkflowHandle, who: str = "carol") -> None:
    await h.execute_update("resolve", {"requested_by": who, "reason": "fixed by hand"})


def kinds(st: IncidentStatus | ReviewReport) -> list[str]:
    audit = st.audit if isinstance(st, IncidentStatus) else st.timeline
    return [e.detail.split(":")[0] for e in audit if e.kind == "phase"]
