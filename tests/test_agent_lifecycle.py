"""AgentLifecycle logic on the time-skipping test server, with stand-in activities.

The stand-ins are registered under the real activity names and keep replicas in memory; tests
decide which endpoints answer health probes.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from temporalio import activity
from temporalio.client import (
    WorkflowFailureError,
    WorkflowHandle,
    WorkflowUpdateFailedError,
)
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from fleetops.constants import STATE_KEY
from fleetops.models import (
    AgentLifecycleInput,
    AgentReport,
    AgentSpec,
    AgentState,
    AgentStatus,
    DeprovisionRequest,
    ProbeRequest,
    ProbeResult,
    ProvisionRequest,
    Replica,
    RestartRequest,
    ScaleDownRequest,
    ScaleRequest,
    ServiceInfo,
    TransitionRequest,
)
from tests.conftest import assert_eventually, new_worker
from tests.helpers import result_within
from workflows.agent_lifecycle import AgentLifecycle

S = AgentState


class FakePlatform:
    """In-memory replicas; an endpoint in ``broken`` fails probes until restarted (or forever
    if also ``sticky``)."""

    def __init__(self) -> None:
        self.replicas: dict[str, dict[int, Replica]] = {}
        self.broken: set[str] = set()
        self.sticky: set[str] = set()
        self.busy: set[str] = set()
        self.starts = 0
        self.restarts: list[int] = []

    def _endpoint(self, agent_id: str, i: int) -> str:
        return f"http://{agent_id}.invalid:{9000 + i}"

    @activity.defn(name="provision_replicas")
    async def provision(self, req: ProvisionRequest) -> list[Replica]:
        current = self.replicas.setdefault(req.spec.agent_id, {})
        for i in range(req.replicas):
            if i not in current:
                self.starts += 1
                current[i] = Replica(index=i, endpoint=self._endpoint(req.spec.agent_id, i))
        for i in [i for i in current if i >= req.replicas]:
            del current[i]
        return [current[i] for i in sorted(current)]

    @activity.defn(name="restart_replicas")
    async def restart(self, req: RestartRequest) -> list[Replica]:
        current = self.replicas[req.spec.agent_id]
        for i in req.indices:
            self.restarts.append(i)
            endpoint = current[i].endpoint
            if endpoint not in self.sticky:
                self.broken.discard(endpoint)
        return [current[i] for i in sorted(current)]

    @activity.defn(name="deprovision_agent")
    async def deprovision(self, req: DeprovisionRequest) -> int:
        return len(self.replicas.pop(req.agent_id, {}))

    @activity.defn(name="scale_down_color")
    async def scale_down(self, req: ScaleDownRequest) -> int:
        stopped = self.replicas.pop(req.agent_id, {})
        return len(stopped)

    @activity.defn(name="describe_service")
    async def describe_service(self, agent_id: str) -> ServiceInfo | None:
        if agent_id not in self.replicas:
            return None
        return ServiceInfo(
            agent_id=agent_id, active_color="blue", active_url=f"http://{agent_id}.invalid:80"
        )

    @activity.defn(name="probe_replicas")
    async def probe(self, req: ProbeRequest) -> list[ProbeResult]:
        return [
            ProbeResult(
                endpoint=e,
                healthy=e not in self.broken,
                in_flight=1 if e in self.busy else 0,
                error="connection refused" if e in self.broken else None,
            )
            for e in req.endpoints
        ]

    def activities(self) -> list[Any]:
        return [
            self.provision,
            self.restart,
            self.deprovision,
            self.scale_down,
            self.describe_service,
            self.probe,
        ]


@pytest.fixture
def platform() -> FakePlatform:
    return FakePlatform()


@pytest.fixture
async def worker(env: WorkflowEnvironment, platform: FakePlatform) -> AsyncIterator[Worker]:
    w = new_worker(env.client, workflows=[AgentLifecycle], activities=platform.activities())
    async with w:
        yield w


def spec(**kw: Any) -> AgentSpec:
    base: dict[str, Any] = {
        "agent_id": f"a-{uuid.uuid4().hex[:8]}",
        "command": ["agent"],
        "health": {"interval_seconds": 10, "failure_threshold": 2},
    }
    base.update(kw)
    return AgentSpec.model_validate(base)


async def start(env: WorkflowEnvironment, worker: Worker, s: AgentSpec) -> WorkflowHandle:
    return await env.client.start_workflow(
        AgentLifecycle.run,
        AgentLifecycleInput(**s.model_dump()),
        id=f"agent/{s.agent_id}",
        task_queue=worker.task_queue,
    )


async def status(h: WorkflowHandle) -> AgentStatus:
    return await h.query(AgentLifecycle.status)


async def wait_state(h: WorkflowHandle, state: AgentState, timeout: float = 10) -> AgentStatus:
    async def check() -> AgentStatus:
        st = await status(h)
        assert st.state == state, f"state {st.state}, waiting for {state}"
        return st

    return await assert_eventually(check, timeout=timeout)


async def test_start_reaches_ready_and_shutdown_completes(env, worker, platform) -> None:
    s = spec(replicas=2)
    h = await start(env, worker, s)
    st = await wait_state(h, S.READY)
    assert [r.healthy for r in st.replicas] == [True, True]
    assert st.service is not None and st.service.active_url == f"http://{s.agent_id}.invalid:80"
    assert st.active_color == "blue"
    assert [(t.from_state, t.to_state) for t in st.transitions] == [(S.INITIALIZING, S.READY)]
    desc = await h.describe()
    assert desc.typed_search_attributes.get(STATE_KEY) == "READY"

    await h.signal(AgentLifecycle.shutdown)
    report = await result_within(h.result())
    assert isinstance(report, AgentReport)
    assert report.final_state == S.TERMINATED
    assert s.agent_id not in platform.replicas
    with pytest.raises(RPCError, match=r"(?i)completed"):
        await h.signal(AgentLifecycle.pause)


async def test_pause_and_resume_by_update(env, worker, platform) -> None:
    s = spec(replicas=2)
    h = await start(env, worker, s)
    await wait_state(h, S.READY)
    res = await h.execute_update(AgentLifecycle.transition, TransitionRequest(action="pause"))
    assert res.state == S.PAUSED
    assert s.agent_id not in platform.replicas
    st = await status(h)
    assert st.state == S.PAUSED and st.replicas == [] and st.desired_replicas == 2
    res = await h.execute_update(AgentLifecycle.transition, TransitionRequest(action="resume"))
    assert res.state == S.INITIALIZING
    await wait_state(h, S.READY)
    assert len(platform.replicas[s.agent_id]) == 2
    await h.signal(AgentLifecycle.shutdown)
    await result_within(h.result())


async def test_invalid_transition_rejected_before_history(env, worker) -> None:
    h = await start(env, worker, spec())
    await wait_state(h, S.READY)
    with pytest.raises(WorkflowUpdateFailedError, match="update failed") as exc:
        await h.execute_update(AgentLifecycle.transition, TransitionRequest(action="resume"))
    assert "cannot resume" in str(exc.value.cause)
    events = [e async for e in h.fetch_history_events()]
    assert not [
        e for e in events if e.HasField("workflow_execution_update_accepted_event_attributes")
    ]
    # A signal that is not allowed now is dropped and recorded, not applied.
    await h.signal(AgentLifecycle.resume)
    st = await assert_eventually(lambda: _rejections(h, 1))
    assert st.state == S.READY and "cannot resume" in (st.last_rejection or "")
    await h.signal(AgentLifecycle.shutdown)
    await result_within(h.result())


async def _rejections(h: WorkflowHandle, n: int) -> AgentStatus:
    st = await status(h)
    assert st.counters.rejected_requests == n
    return st


async def test_scale_within_bounds_only(env, worker, platform) -> None:
    s = spec(replicas=1, max_replicas=3)
    h = await start(env, worker, s)
    await wait_state(h, S.READY)
    with pytest.raises(WorkflowUpdateFailedError, match="update failed") as exc:
        await h.execute_update(
            AgentLifecycle.transition, TransitionRequest(action="scale", replicas=4)
        )
    assert "max_replicas=3" in str(exc.value.cause)
    res = await h.execute_update(
        AgentLifecycle.transition, TransitionRequest(action="scale", replicas=3)
    )
    assert res.replicas == 3
    assert len(platform.replicas[s.agent_id]) == 3
    await h.signal(AgentLifecycle.scale, ScaleRequest(replicas=2))
    await assert_eventually(lambda: _desired(h, 2))
    assert len(platform.replicas[s.agent_id]) == 2
    # Malformed and out-of-bounds signals are recorded as rejections, never applied.
    await h.signal("scale", {"replicas": "many"})
    st = await assert_eventually(lambda: _rejections(h, 1))
    assert "scale signal ignored" in (st.last_rejection or "")
    assert "replicas" in (st.last_rejection or "")
    await h.signal("scale", {"replicas": 7})
    st = await assert_eventually(lambda: _rejections(h, 2))
    assert "max_replicas=3" in (st.last_rejection or "") and st.desired_replicas == 2
    res = await h.execute_update(AgentLifecycle.transition, TransitionRequest(action="shutdown"))
    assert res.state == S.TERMINATED
    assert (await result_within(h.result())).final_state == S.TERMINATED


async def _desired(h: WorkflowHandle, n: int) -> None:
    st = await status(h)
    assert st.desired_replicas == n and len(st.replicas) == n


async def test_self_heal_restarts_failing_replica(env, worker, platform) -> None:
    s = spec(replicas=2)
    h = await start(env, worker, s)
    st = await wait_state(h, S.READY)
    platform.broken.add(st.replicas[1].endpoint)
    await env.sleep(25)  # two health rounds of 10 s: failure_threshold reached
    st = await wait_state(h, S.READY)
    assert platform.restarts == [1]
    assert st.counters.replica_restarts == 1
    path = [(t.from_state, t.to_state) for t in st.transitions]
    assert (S.READY, S.DEGRADED) in path and path[-1] == (S.DEGRADED, S.READY)
    await h.signal(AgentLifecycle.shutdown)
    await result_within(h.result())


async def test_unrecovered_replica_goes_to_error_then_recovers(env, worker, platform) -> None:
    s = spec(
        health={"interval_seconds": 10, "failure_threshold": 1, "recovery_timeout_seconds": 60}
    )
    h = await start(env, worker, s)
    st = await wait_state(h, S.READY)
    endpoint = st.replicas[0].endpoint
    platform.broken.add(endpoint)
    platform.sticky.add(endpoint)
    await env.sleep(120)
    st = await wait_state(h, S.ERROR)
    # The last change *of state* (a note about the agent's incident may follow it).
    entered = [t for t in st.transitions if t.from_state != t.to_state][-1]
    assert entered.to_state == S.ERROR and "did not recover" in entered.reason
    platform.broken.clear()
    await env.sleep(15)
    await wait_state(h, S.READY)
    await h.signal(AgentLifecycle.shutdown)
    await result_within(h.result())


async def test_processing_while_replicas_execute(env, worker, platform) -> None:
    h = await start(env, worker, spec())
    st = await wait_state(h, S.READY)
    platform.busy.add(st.replicas[0].endpoint)
    await env.sleep(15)
    await wait_state(h, S.PROCESSING)
    platform.busy.clear()
    await env.sleep(15)
    await wait_state(h, S.READY)
    await h.signal(AgentLifecycle.shutdown)
    await result_within(h.result())


async def test_continue_as_new_carries_state(env, worker, platform) -> None:
    s = spec(health_rounds_per_run=3)
    h = await start(env, worker, s)
    await wait_state(h, S.READY)
    await h.execute_update(AgentLifecycle.transition, TransitionRequest(action="scale", replicas=2))
    first_run = (await h.describe()).run_id
    await env.sleep(75)

    async def continued() -> AgentStatus:
        st = await status(h)
        assert st.counters.continued_as_new >= 2
        return st

    st = await assert_eventually(continued)
    assert (await h.describe()).run_id != first_run
    assert st.state == S.READY and st.desired_replicas == 2
    assert st.counters.health_rounds >= 6
    assert st.transitions[0].to_state == S.READY  # history of transitions survived
    assert platform.starts == 2  # no replica started twice across runs
    await h.signal(AgentLifecycle.shutdown)
    await result_within(h.result())


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        ({"replicas": 20}, "replicas=20"),
        ({"surprise": 1}, "surprise"),
        ({"command": []}, "command"),
        ({"health": {"interval_seconds": 0}}, "health.interval_seconds"),
        ({"agent_id": "Not_A_Label"}, "agent_id"),
    ],
)
async def test_bad_input_fails_workflow_at_once(env, worker, bad, field) -> None:
    payload = {"agent_id": f"bad-{uuid.uuid4().hex[:8]}", **bad}
    h = await env.client.start_workflow(
        "AgentLifecycle", payload, id=f"agent/{uuid.uuid4()}", task_queue=worker.task_queue
    )
    with pytest.raises(WorkflowFailureError, match="execution failed") as exc:
        await result_within(h.result())
    cause = exc.value.cause
    assert isinstance(cause, ApplicationError)
    assert cause.type == "InvalidInput" and cause.non_retryable
    assert field in cause.message
