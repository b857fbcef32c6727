"""No payload fails a workflow task: every handler of every workflow, fed malformed payloads.

The handlers are read from the workflow definitions of the worker's ``WORKFLOWS``
(``temporalio.workflow._Definition``), so a new signal, update or query is covered without
editing this file. Each is sent every payload of :data:`MALFORMED` on the time-skipping server,
with the real workflows and interceptors as ``worker.py`` registers them and the stand-in
activities of ``tests/standins.py``. After each one: no ``WorkflowTaskFailed`` in history,
``status`` answers, and it is unchanged except for the record of the rejection; an update is
refused by its validator (no ``UpdateAccepted`` in history).
"""

from __future__ import annotations

import contextlib
import inspect
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from temporalio.api.common.v1 import Payload
from temporalio.api.enums.v1 import EventType
from temporalio.client import (
    WorkflowHandle,
    WorkflowQueryFailedError,
    WorkflowUpdateFailedError,
)
from temporalio.common import RawValue
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker
from temporalio.workflow import _Definition

from activities.deployments import DeploymentActivities
from activities.incident_intake import signal_incident
from activities.incident_review import IncidentActivities
from activities.notify import NotifyActivities
from activities.quota import ReplicaQuota
from fleetops.converter import data_converter
from fleetops.settings import ApprovalSettings, IncidentSettings, LlmSettings
from tests.conftest import assert_eventually, new_worker, start_time_skipping
from tests.incident_standins import Standins, alert, start_and_batch
from tests.maintenance_standins import Fleet
from tests.standins import ColorPlatform
from worker import INTERCEPTORS, WORKFLOWS

QUOTA = 50
"""``max_replicas_per_agent`` of the test worker (the default)."""
E = EventType
INCIDENT_STANDINS = Standins()
"""Stand-ins of the LLM, evidence, containment and recovery activities an incident calls."""


def _raw(encoding: bytes, data: bytes, **meta: bytes) -> RawValue:
    return RawValue(Payload(metadata={"encoding": encoding, **meta}, data=data))


PAYLOADS_MESSAGE = b"temporal.api.common.v1.Payloads"
"""A protobuf message type the SDK decodes a ``json/protobuf`` payload to, whatever the hint."""

MALFORMED: list[tuple[str, list[Any]]] = [
    ("binary/plain", [b"hello"]),
    ("binary/null", [None]),
    ("json null", [_raw(b"json/plain", b"null")]),
    ("no payload", []),  # only for handlers whose payload is required
    ("two payloads", [{}, {}]),
    ("array", [[1, 2]]),
    ("string", ["hello"]),
    ("number", [12]),
    ("invalid json", [_raw(b"json/plain", b"{not json")]),
    ("unknown encoding", [_raw(b"x-unknown/none", b"x")]),
    ("protobuf", [_raw(b"json/protobuf", b"{}")]),
    (
        "protobuf message",
        [_raw(b"json/protobuf", b'{"payloads": []}', messageType=PAYLOADS_MESSAGE)],
    ),
    ("unknown field", [{"no_such_field": 1}]),
    ("bool for a count", [{"replicas": True}]),
    ("bool for a count in an action", [{"action": "scale", "replicas": True}]),
    ("string for a count", [{"replicas": "3"}]),
    ("string for a bool", [{"approver": "mallory", "approved": "yes"}]),
    ("number for a string", [{"reason": 5}]),
    ("huge float", [_raw(b"json/plain", b'{"replicas": 1e400}')]),
    ("huge integer", [{"replicas": 10**30}]),
    ("wrong types", [{"deployment_id": 1, "promoted": "yes", "version": []}]),
]
"""(label, payloads) sent to every handler."""


@dataclass(frozen=True)
class Handler:
    workflow: str
    kind: str  # signal | update | query
    name: str
    payload_optional: bool  # no parameter, or one with a default: no payload is a valid call


def handlers() -> list[Any]:
    """Every named handler of every workflow the worker registers, as pytest params."""
    params = []
    for cls in WORKFLOWS:
        defn = _Definition.from_class(cls)
        assert defn.name is not None
        tables: list[tuple[str, dict[str | None, Any]]] = [
            ("signal", dict(defn.signals)),
            ("update", dict(defn.updates)),
            ("query", dict(defn.queries)),
        ]
        for kind, table in tables:
            for name, h in sorted((n, h) for n, h in table.items() if n is not None):
                args = list(inspect.signature(h.fn).parameters.values())[1:]
                optional = not args or args[0].default is not inspect.Parameter.empty
                params.append(
                    pytest.param(
                        Handler(defn.name, kind, name, optional),
                        id=f"{defn.name}.{kind}.{name}",
                    )
                )
    return params


# --- the world: one server and worker for the module, fresh workflows per test ---------------


@dataclass
class World:
    env: WorkflowEnvironment
    worker: Worker
    platform: ColorPlatform


@pytest.fixture(scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    env = await start_time_skipping()
    platform = ColorPlatform()
    quota = ReplicaQuota(platform.provision, max_replicas_per_agent=QUOTA)
    incident = IncidentActivities(IncidentSettings(), LlmSettings(), tmp_path_factory.mktemp("s"))
    async with httpx.AsyncClient() as http:
        notify = NotifyActivities(http, ApprovalSettings())
        worker = new_worker(
            env.client,
            workflows=WORKFLOWS,
            activities=[
                quota.provision_replicas,
                *[a for a in platform.activities() if a != platform.provision],
                DeploymentActivities(env.client).describe_deployment,
                notify.send_notification,
                notify.approval_policy,
                notify.approver_roles,
                *Fleet("mt-a1").activities(),
                incident.incident_policy,
                incident.write_review,
                *INCIDENT_STANDINS.stand_ins(),
            ],
            interceptors=list(INTERCEPTORS),  # as worker.py registers them
        )
        async with worker:
            yield World(env, worker, platform)
    await env.shutdown()


async def start_agent(w: World, **spec: Any) -> WorkflowHandle:
    agent = f"mp-{uuid.uuid4().hex[:8]}"
    body = {"agent_id": agent, "command": ["agent"], "replicas": 2, **spec}
    body.setdefault("health", {"interval_seconds": 3600})  # no health round during a test
    return await w.env.client.start_workflow(
        "AgentLifecycle", body, id=f"agent/{agent}", task_queue=w.worker.task_queue
    )


async def ready_agent(w: World) -> WorkflowHandle:
    h = await start_agent(w)

    async def ready() -> None:
        assert (await h.query("status"))["state"] == "READY"

    await assert_eventually(ready)
    return h


async def deploy(w: World, agent: WorkflowHandle, **request: Any) -> WorkflowHandle:
    """Ask the agent to deploy (update ``deploy``); the child it started."""
    body = {"agent_id": agent.id.removeprefix("agent/"), "version": "v2", **request}
    started = await agent.execute_update("deploy", body)
    return w.env.client.get_workflow_handle(started["deployment_id"], run_id=started["run_id"])


async def waiting_deployment(w: World) -> WorkflowHandle:
    h = await deploy(w, await ready_agent(w))

    async def waiting() -> None:
        st = await h.query("status")
        assert st["phase"] == "AWAITING_PROMOTION" and st["pending_approval"], st["phase"]

    await assert_eventually(waiting)
    return h


async def waiting_maintenance(w: World) -> WorkflowHandle:
    """A Maintenance run waiting for approval, with a custom step to confirm afterwards."""
    plan = {
        "name": "mp",
        "kind": "custom",
        "targets": {"agents": ["mt-a1"]},
        "approval": {"required": "always"},
        "parameters": {"description": "check", "steps": ["look"]},
    }
    h = await w.env.client.start_workflow(
        "Maintenance",
        plan,
        id=f"maintenance/mp/{uuid.uuid4().hex[:8]}",
        task_queue=w.worker.task_queue,
    )

    async def waiting() -> None:
        assert (await h.query("status"))["pending_approval"]

    await assert_eventually(waiting)
    return h


async def open_incident(w: World) -> WorkflowHandle:
    """An incident waiting for the approval of its first containment action."""
    start, batch = start_and_batch(f"mp-{uuid.uuid4().hex[:8]}", alert("AgentHighLatencyP95"))
    wid = await signal_incident(w.env.client, start, batch, task_queue=w.worker.task_queue)
    h = w.env.client.get_workflow_handle(wid)

    async def waiting() -> None:
        assert await h.query("pending_approval")

    await assert_eventually(waiting)
    return h


async def held_lease(w: World) -> WorkflowHandle:
    """A prober host's lease whose host queue nobody polls (its hold never starts)."""
    host = uuid.uuid4().hex[:12]
    lease = {"host_id": host, "task_queue": f"nobody-{host}", "release_queue": f"nobody-{host}",
             "heartbeat_seconds": 300}  # fmt: skip
    return await w.env.client.start_workflow(
        "ProberLease", lease, id=f"prober-host/{host}", task_queue=w.worker.task_queue
    )


STARTERS: dict[str, Callable[[World], Awaitable[WorkflowHandle]]] = {
    "AgentLifecycle": ready_agent,
    "ProberLease": held_lease,
    "BlueGreenDeployment": waiting_deployment,
    "Maintenance": waiting_maintenance,
    "IncidentResponse": open_incident,
}
"""How to bring each workflow to a state where its handlers are live."""


def test_every_workflow_has_a_starter() -> None:
    names = {_Definition.from_class(cls).name for cls in WORKFLOWS}
    assert names <= set(STARTERS), f"add a starter for {sorted(names - set(STARTERS))}"


# --- checks ---------------------------------------------------------------------------------


def comparable(status: dict[str, Any]) -> dict[str, Any]:
    """``status`` without the record of rejections (counters, last_rejection, refusals)."""
    st = dict(status)
    st.pop("last_rejection", None)
    if "counters" in st:
        st["counters"] = {k: v for k, v in st["counters"].items() if k != "rejected_requests"}
    for key in ("audit", "approval_audit"):
        if key in st:
            st[key] = [a for a in st[key] if not _refusal(a)]
    return st


def _refusal(entry: dict[str, Any]) -> bool:
    """An audit entry recording a refused message (approval gate, or a Maintenance step)."""
    return entry.get("kind") == "refused" or (
        entry.get("step") == "confirm_step" and not entry.get("ok")
    )


async def events(h: WorkflowHandle) -> list[Any]:
    return [e async for e in h.fetch_history_events()]


def assert_no_task_failure(history: list[Any], label: str) -> None:
    for e in history:
        if e.event_type == E.EVENT_TYPE_WORKFLOW_TASK_FAILED:
            failure = e.workflow_task_failed_event_attributes.failure
            pytest.fail(f"{label}: workflow task failed: {failure.message}")


def signals(history: list[Any]) -> list[int]:
    """Indexes in ``history`` of its signal events."""
    return [
        i for i, e in enumerate(history) if e.event_type == E.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED
    ]


async def signal_processed(h: WorkflowHandle, label: str, before: int) -> None:
    """Wait until history holds more than ``before`` signals and a workflow task completed after
    the last, failing on a task failure. (A signal that arrives during a workflow task is
    buffered: history shows it only once that task completes.)"""

    async def check() -> None:
        history = await events(h)
        assert_no_task_failure(history, label)
        signalled = signals(history)
        assert len(signalled) > before, f"{label}: signal not yet in history"
        kinds = [e.event_type for e in history[signalled[-1] :]]
        assert E.EVENT_TYPE_WORKFLOW_TASK_COMPLETED in kinds, f"{label}: not processed"

    await assert_eventually(check)


async def send(h: WorkflowHandle, handler: Handler, label: str, args: list[Any]) -> None:
    if handler.kind == "signal":
        before = len(signals(await events(h)))
        await h.signal(handler.name, args=args)
        await signal_processed(h, label, before)
    elif handler.kind == "update":
        with pytest.raises(WorkflowUpdateFailedError):
            await h.execute_update(handler.name, args=args)
    else:
        # A query may answer an error; it must not break the workflow.
        with contextlib.suppress(WorkflowQueryFailedError):
            await h.query(handler.name, args=args)


@pytest.mark.parametrize("handler", handlers())
async def test_malformed_payloads_change_nothing(world: World, handler: Handler) -> None:
    h = await STARTERS[handler.workflow](world)
    before = comparable(await h.query("status"))
    for label, args in MALFORMED:
        if not args and handler.payload_optional:
            continue  # no payload is a valid call of this handler
        await send(h, handler, f"{handler.name} <- {label}", args)
        history = await events(h)
        assert_no_task_failure(history, label)
        kinds = {e.event_type for e in history}
        assert E.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED not in kinds, f"{label}: accepted"
        after = comparable(await h.query("status"))
        assert after == before, f"{handler.name} <- {label} changed the workflow"
    await h.terminate("test finished")


# --- workflow inputs: a bad one fails the workflow at once -------------------------------


def _spec(**fields: Any) -> dict[str, Any]:
    return {"agent_id": f"in-{uuid.uuid4().hex[:8]}", "command": ["agent"], **fields}


def _deploy(**fields: Any) -> dict[str, Any]:
    return {"agent_id": f"in-{uuid.uuid4().hex[:8]}", "version": "v2", **fields}


_METRIC = {"name": "errors", "builtin": "error_rate", "success_condition": "result < 0.05"}

BAD_STARTS = [
    ("AgentLifecycle", "no input", [], "input"),
    ("AgentLifecycle", "two inputs", [_spec(), _spec()], "input"),
    ("AgentLifecycle", "binary/plain", [b"hello"], "<root>"),
    ("AgentLifecycle", "binary/null", [None], "<root>"),
    ("AgentLifecycle", "array", [[_spec()]], "<root>"),
    ("AgentLifecycle", "startup 1e12", [_spec(health={"startup_timeout_seconds": 1e12})],
     "health.startup_timeout_seconds"),
    ("AgentLifecycle", "interval 1e15", [_spec(health={"interval_seconds": 1e15})],
     "health.interval_seconds"),
    ("AgentLifecycle", "replicas true", [_spec(replicas=True)], "replicas"),
    ("AgentLifecycle", "replicas 1001", [_spec(replicas=1001, max_replicas=1001)], "replicas"),
    ("AgentLifecycle", "carry with a naive time",
     [_spec(carry={"state": "READY", "desired_replicas": 1, "started_at": "2026-12-01T00:00:00",
                   "replicas": [], "transitions": [], "counters": {}})],
     "carry.started_at"),
    ("AgentLifecycle", "carry with -1 replicas",
     [_spec(carry={"state": "READY", "desired_replicas": -1,
                   "started_at": "2026-12-01T00:00:00Z", "replicas": [], "transitions": [],
                   "counters": {}})],
     "carry.desired_replicas"),
    ("BlueGreenDeployment", "no input", [], "run"),
    ("BlueGreenDeployment", "binary/plain", [b"hello"], "<root>"),
    ("BlueGreenDeployment", "a bare request", [_deploy()], "request"),
    ("Maintenance", "no input", [], "plan"),
    ("Maintenance", "binary/plain", [b"hello"], "<root>"),
    ("Maintenance", "unknown kind", [{"name": "x", "kind": "reboot", "targets": {"agents": ["a"]}}],
     "kind"),
    ("Maintenance", "window 1e12 s",
     [{"name": "x", "kind": "custom", "targets": {"agents": ["a"]},
       "window": {"duration_seconds": 1e12}, "parameters": {"description": "d"}}],
     "window.duration_seconds"),
    ("Maintenance", "batch 0",
     [{"name": "x", "kind": "custom", "targets": {"agents": ["a"]}, "batch_size": 0,
       "parameters": {"description": "d"}}], "batch_size"),
    ("Maintenance", "secret without path",
     [{"name": "x", "kind": "secret_rotation", "targets": {"agents": ["a"]},
       "parameters": {"secrets": [{"key": "k"}]}}], "secrets.0.path"),
    ("IncidentResponse", "no input", [], "start"),
    ("IncidentResponse", "binary/plain", [b"hello"], "<root>"),
    ("IncidentResponse", "carry by hand",
     [{"agent_id": "a1", "key": "k", "title": "t", "carry": {"status": {}}}], "carry"),
    ("IncidentResponse", "bad agent id", [{"agent_id": "A!", "key": "k", "title": "t"}],
     "agent_id"),
    ("ProberLease", "no input", [], "lease"),
    ("ProberLease", "binary/plain", [b"hello"], "<root>"),
    ("ProberLease", "heartbeat 1e12 s",
     [{"host_id": "h1", "task_queue": "q", "release_queue": "r", "heartbeat_seconds": 1e12}],
     "heartbeat_seconds"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("workflow", "args", "field"),
    [pytest.param(w, a, f, id=f"{w}-{label}") for w, label, a, f in BAD_STARTS],
)
async def test_bad_input_fails_the_workflow_at_once(
    world: World, workflow: str, args: list[Any], field: str
) -> None:
    h = await world.env.client.start_workflow(
        workflow, args=args, id=f"bad-{uuid.uuid4()}", task_queue=world.worker.task_queue
    )

    # Not h.result(): waiting on a result lets the test server skip time for every workflow.
    async def closed() -> list[Any]:
        history = await events(h)
        assert_no_task_failure(history, field)
        assert history[-1].event_type == E.EVENT_TYPE_WORKFLOW_EXECUTION_FAILED
        return history

    history = await assert_eventually(closed)
    assert not [e for e in history if e.event_type == E.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED]
    converter = data_converter()
    err = converter.failure_converter.from_failure(
        history[-1].workflow_execution_failed_event_attributes.failure,
        converter.payload_converter,
    )
    assert isinstance(err, ApplicationError)
    assert err.type == "InvalidInput" and err.non_retryable
    if field != "<root>":
        assert field in err.message
    assert err.details[0]["field"] in (field, field.split(".")[0])


BAD_DEPLOYS = [
    ("approval timeout 1e12", {"promotion": {"approval_timeout_seconds": 1e12}},
     "promotion.approval_timeout_seconds"),
    ("empty approver", {"promotion": {"approvers": [""]}}, "promotion.approvers.0"),
    ("metric interval 1e15",
     {"post_promotion_analysis": {"metrics": [{**_METRIC, "interval_seconds": 1e15}]}},
     "post_promotion_analysis.metrics.0.interval_seconds"),
    ("replicas true", {"replicas": True}, "replicas"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("request_fields", "field"), [pytest.param(r, f, id=label) for label, r, f in BAD_DEPLOYS]
)
async def test_bad_deployment_request_is_refused_by_the_agent(
    world: World, request_fields: dict[str, Any], field: str
) -> None:
    agent = await ready_agent(world)
    with pytest.raises(WorkflowUpdateFailedError) as exc:
        await deploy(world, agent, **request_fields)
    cause = exc.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == "InvalidInput"
    assert field in cause.message
    history = await events(agent)
    kinds = {e.event_type for e in history}
    assert E.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED not in kinds
    assert (await agent.query("status"))["deployment"] is None
    await agent.terminate("test finished")


async def test_replicas_above_the_quota_are_refused_before_any_start(world: World) -> None:
    h = await start_agent(world, replicas=QUOTA + 10, max_replicas=QUOTA + 10)

    async def in_error() -> dict[str, Any]:
        st = await h.query("status")
        assert st["state"] == "ERROR", st["state"]
        return st

    st = await assert_eventually(in_error)
    changes = [t for t in st["transitions"] if t["from_state"] != t["to_state"]]
    assert f"quota of {QUOTA} replicas" in changes[-1]["reason"]  # notes may follow
    assert not [k for k in world.platform.replicas if k[0] == st["agent_id"]]
    await h.terminate("test finished")


async def test_replicas_within_the_quota_start(world: World) -> None:
    h = await start_agent(world, replicas=QUOTA, max_replicas=QUOTA)

    async def ready() -> None:
        assert (await h.query("status"))["state"] == "READY"

    await assert_eventually(ready)
    await h.terminate("test finished")


async def test_a_deployment_above_the_quota_rolls_back_before_starting_replicas(
    world: World,
) -> None:
    agent = await start_agent(world, max_replicas=QUOTA + 10)

    async def ready() -> None:
        assert (await agent.query("status"))["state"] == "READY"

    await assert_eventually(ready)
    h = await deploy(world, agent, replicas=QUOTA + 1, abort_scale_down_delay_seconds=0)

    async def rolled_back() -> dict[str, Any]:
        st = await h.query("status")
        assert st["phase"] == "ROLLED_BACK", st["phase"]
        return st

    st = await assert_eventually(rolled_back)
    assert f"quota of {QUOTA} replicas" in st["message"]
    assert st["active_color"] == "blue"
    assert ("provision_replicas", ("green", QUOTA + 1, "v2")) not in world.platform.calls
    await agent.terminate("test finished")
