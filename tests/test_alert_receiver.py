"""The Alertmanager receiver against a real Temporal dev server.

``IncidentResponse`` here is the recording stand-in of ``tests/incident_standin.py`` (the real
workflow is another module's); the receiver's side — auth, refusals, grouping, signal-with-start
versus plain signal, bounds, storms — is what these tests check.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import WorkflowEnvironment

from fleetops.converter import data_converter
from fleetops.incidents import MAX_ALERTS_PER_BATCH, MAX_LABEL_CHARS, incident_key
from fleetops.settings import Settings
from starters.alert_server import bind, serve_alert_receiver
from starters.alertmanager import create_app
from tests.conftest import assert_eventually, new_worker
from tests.e2e_support import free_port
from tests.incident_standin import StandInIncident

TOKEN = "s3cret-token"
GROUP = '{}:{agent=~".+"}'


def settings(**alerts: Any) -> Settings:
    return Settings.model_validate({"alerts": {"token": TOKEN, **alerts}})


def alert(
    agent: str | None, status: str = "firing", name: str = "AgentHighErrorRate", **labels: str
) -> dict[str, Any]:
    all_labels = {"alertname": name, "severity": "error", **labels}
    if agent is not None:
        all_labels["agent"] = agent
    return {
        "status": status,
        "labels": all_labels,
        "annotations": {"summary": "errors are up"},
        "startsAt": "2026-12-01T10:00:00Z",
        "endsAt": "0001-01-01T00:00:00Z" if status == "firing" else "2026-12-01T10:05:00Z",
        "generatorURL": "http://prometheus/graph",
        "fingerprint": uuid.uuid4().hex[:16],
    }


def webhook(
    alerts: list[dict[str, Any]], status: str = "firing", group: str = GROUP, **extra: Any
) -> dict[str, Any]:
    return {
        "version": "4",
        "groupKey": group,
        "truncatedAlerts": 0,
        "status": status,
        "receiver": "fleetops",
        "groupLabels": {},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "alerts": alerts,
        **extra,
    }


def agent_id() -> str:
    return f"a-{uuid.uuid4().hex[:10]}"


def wf_id(agent: str, group: str = GROUP) -> str:
    return f"incident/{agent}/{incident_key(agent, group)}"


class Rig:
    """The receiver app over an in-process ASGI transport, and a stand-in incident worker."""

    def __init__(self, client: Client, http: httpx.AsyncClient) -> None:
        self.client = client
        self.http = http

    async def post(
        self, body: Any, *, token: str | None = TOKEN, raw: bytes | None = None
    ) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        if raw is not None:
            return await self.http.post("/alerts", content=raw, headers=headers)
        return await self.http.post("/alerts", json=body, headers=headers)

    async def seen(self, workflow_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.client.get_workflow_handle(workflow_id).query(
            StandInIncident.seen
        )
        return result

    async def assert_not_started(self, workflow_id: str) -> None:
        with pytest.raises(RPCError) as err:
            await self.client.get_workflow_handle(workflow_id).describe()
        assert err.value.status == RPCStatusCode.NOT_FOUND


@pytest.fixture
async def rig(dev_env: WorkflowEnvironment) -> AsyncIterator[Rig]:
    worker = new_worker(dev_env.client, workflows=[StandInIncident])
    app = create_app(
        settings(max_body_bytes=2 << 20), client=dev_env.client, task_queue=worker.task_queue
    )
    transport = httpx.ASGITransport(app=app)
    async with worker, httpx.AsyncClient(transport=transport, base_url="http://receiver") as http:
        yield Rig(dev_env.client, http)


@pytest.mark.parametrize(
    ("token", "header"),
    [(None, None), ("wrong", None), (None, "Basic czNjcmV0LXRva2Vu"), (None, f"Bearer  {TOKEN}x")],
)
async def test_wrong_or_missing_token_is_refused_and_starts_nothing(
    rig: Rig, token: str | None, header: str | None
) -> None:
    agent = agent_id()
    headers = (
        {"Authorization": header}
        if header
        else ({"Authorization": f"Bearer {token}"} if token else {})
    )
    response = await rig.http.post("/alerts", json=webhook([alert(agent)]), headers=headers)
    assert response.status_code == 401
    assert response.json()["error"] == "unauthorized"
    assert response.headers["www-authenticate"] == "Bearer"
    await rig.assert_not_started(wf_id(agent))


MALFORMED: dict[str, tuple[int, Any]] = {
    "not json": (400, b"{not json"),
    "not utf-8": (400, b"\xff\xfe{}"),
    "json array": (422, b"[]"),
    "missing groupKey": (422, {"status": "firing", "alerts": []}),
    "empty groupKey": (422, {"groupKey": "", "status": "firing"}),
    "bad status": (422, {"groupKey": "g", "status": "burning"}),
    "version 3": (422, {"version": "3", "groupKey": "g", "status": "firing"}),
    "alert without startsAt": (
        422,
        {
            "groupKey": "g",
            "status": "firing",
            "alerts": [{"status": "firing", "labels": {"agent": "x"}}],
        },
    ),
    "label value not a string": (
        422,
        {
            "groupKey": "g",
            "status": "firing",
            "alerts": [
                {"status": "firing", "labels": {"agent": 5}, "startsAt": "2026-12-01T10:00:00Z"}
            ],
        },
    ),
    "negative truncatedAlerts": (422, {"groupKey": "g", "status": "firing", "truncatedAlerts": -1}),
}


@pytest.mark.parametrize("case", list(MALFORMED))
async def test_malformed_notifications_get_4xx_and_start_nothing(rig: Rig, case: str) -> None:
    agent = agent_id()
    code, body = MALFORMED[case]
    if isinstance(body, dict) and not body.get("alerts"):
        body = {**body, "alerts": [alert(agent)]}
    raw = body if isinstance(body, bytes) else None
    response = await rig.post(body, raw=raw)
    assert response.status_code == code, response.text
    assert response.json()["error"]
    await rig.assert_not_started(wf_id(agent))
    await rig.assert_not_started(wf_id(agent, "g"))


async def test_oversize_body_is_refused_before_parsing(rig: Rig) -> None:
    agent = agent_id()
    body = webhook([alert(agent, padding="x" * (2 * 1024 * 1024 + 1))])
    response = await rig.post(body)
    assert response.status_code == 413
    assert "max_body_bytes" in response.json()["detail"]
    await rig.assert_not_started(wf_id(agent))


async def test_alerts_are_grouped_by_agent_and_unlabelled_ones_reported(rig: Rig) -> None:
    a, b = agent_id(), agent_id()
    body = webhook(
        [
            alert(a),
            alert(b),
            alert(a, name="AgentDown", severity="critical"),
            alert(None),
            alert("Not_A_DNS_Label"),
        ]
    )
    response = await rig.post(body)
    assert response.status_code == 200, response.text
    result = response.json()
    assert {i["workflow_id"]: i["alerts"] for i in result["incidents"]} == {
        wf_id(a): 2,
        wf_id(b): 1,
    }
    assert {i["action"] for i in result["incidents"]} == {"signal_with_start"}
    assert result["ignored"] == {"without_agent_label": 1, "invalid_agent": {"Not_A_DNS_Label": 1}}

    seen_a = await rig.seen(wf_id(a))
    assert seen_a["start"]["agent_id"] == a
    assert seen_a["start"]["key"] == incident_key(a, GROUP)
    assert seen_a["start"]["severity"] == "SEV1"  # the strictest label: critical
    assert seen_a["start"]["title"].startswith(f"AgentHighErrorRate on {a}")
    [batch] = seen_a["batches"]
    assert [x["name"] for x in batch["alerts"]] == ["AgentHighErrorRate", "AgentDown"]
    assert all(x["ends_at"] is None for x in batch["alerts"])  # Alertmanager's zero time
    assert len((await rig.seen(wf_id(b)))["batches"][0]["alerts"]) == 1


async def test_resolved_never_starts_and_joins_only_a_running_incident(rig: Rig) -> None:
    agent = agent_id()
    resolved = webhook([alert(agent, status="resolved")], status="resolved")

    response = await rig.post(resolved)
    assert response.status_code == 200
    assert response.json()["incidents"][0]["action"] == "ignored: no running incident"
    await rig.assert_not_started(wf_id(agent))

    assert (await rig.post(webhook([alert(agent)]))).status_code == 200
    response = await rig.post(resolved)
    assert response.json()["incidents"][0]["action"] == "signal"
    seen = await rig.seen(wf_id(agent))
    assert [b["alerts"][0]["status"] for b in seen["batches"]] == ["firing", "resolved"]

    handle = rig.client.get_workflow_handle(wf_id(agent))
    await handle.signal(StandInIncident.close)
    assert await handle.result() == 2
    run_id = (await handle.describe()).run_id
    response = await rig.post(resolved)
    assert response.json()["incidents"][0]["action"] == "ignored: no running incident"
    described = await handle.describe()
    assert described.status == WorkflowExecutionStatus.COMPLETED and described.run_id == run_id

    # A firing alert after the close opens a new incident under the same id.
    assert (await rig.post(webhook([alert(agent)]))).json()["incidents"][0][
        "action"
    ] == "signal_with_start"
    assert (await handle.describe()).run_id != run_id


async def test_batches_and_values_are_bounded(rig: Rig) -> None:
    agent = agent_id()
    many = [alert(agent, note="n" * 5000) for _ in range(MAX_ALERTS_PER_BATCH + 50)]
    many.append(alert(agent, status="resolved"))
    response = await rig.post(webhook(many, truncatedAlerts=7))
    assert response.status_code == 200, response.text
    assert response.json()["incidents"][0]["truncated"] == 51 + 7
    [batch] = (await rig.seen(wf_id(agent)))["batches"]
    assert len(batch["alerts"]) == MAX_ALERTS_PER_BATCH
    assert all(x["status"] == "firing" for x in batch["alerts"])  # firing kept first
    note = batch["alerts"][0]["labels"]["note"]
    assert len(note) <= MAX_LABEL_CHARS and note.endswith("chars]")
    assert batch["truncated_alerts"] == 58


async def test_storm_of_1000_alerts_for_10_agents_opens_10_incidents(rig: Rig) -> None:
    agents = [agent_id() for _ in range(10)]
    notifications = [webhook([alert(a) for a in agents]) for _ in range(100)]
    responses = await asyncio.gather(*(rig.post(n) for n in notifications))
    assert [r.status_code for r in responses] == [200] * 100

    async def all_joined() -> None:
        for a in agents:
            seen = await rig.seen(wf_id(a))
            assert sum(len(b["alerts"]) for b in seen["batches"]) == 100

    await assert_eventually(all_joined, timeout=30)
    started = [wid async for wid in _incident_ids(rig.client, agents)]
    assert sorted(started) == sorted(wf_id(a) for a in agents)


async def _incident_ids(client: Client, agents: list[str]) -> AsyncIterator[str]:
    for a in agents:
        async for wf in client.list_workflows(f'WorkflowId STARTS_WITH "incident/{a}/"'):
            yield wf.id


async def test_temporal_unreachable_is_503_and_healthz_says_so() -> None:
    s = Settings.model_validate(
        {"alerts": {"token": TOKEN}, "temporal": {"address": f"127.0.0.1:{free_port()}"}}
    )
    transport = httpx.ASGITransport(app=create_app(s))
    async with httpx.AsyncClient(transport=transport, base_url="http://receiver") as http:
        response = await http.post(
            "/alerts", json=webhook([alert("demo")]), headers={"Authorization": f"Bearer {TOKEN}"}
        )
        assert response.status_code == 503
        assert response.json()["error"] == "temporal unavailable"
        assert response.headers["retry-after"]
        assert (await http.get("/healthz")).json() == {"status": "ok", "temporal": "not connected"}


async def test_served_over_http_with_healthz(dev_env: WorkflowEnvironment) -> None:
    worker = new_worker(dev_env.client, workflows=[StandInIncident])
    s = settings()
    sock = bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    stop = asyncio.Event()
    agent = agent_id()
    async with worker:
        s = s.model_copy(
            update={"temporal": s.temporal.model_copy(update={"task_queue": worker.task_queue})}
        )
        server = asyncio.create_task(
            serve_alert_receiver(s, stop, client=dev_env.client, sock=sock)
        )
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
                assert (await http.get("/healthz")).json() == {
                    "status": "ok",
                    "temporal": "connected",
                }
                response = await http.post(
                    "/alerts",
                    json=webhook([alert(agent)]),
                    headers={"Authorization": f"Bearer {TOKEN}"},
                )
                assert response.status_code == 200, response.text
            seen: dict[str, Any] = await dev_env.client.get_workflow_handle(wf_id(agent)).query(
                StandInIncident.seen
            )
            assert seen["batches"][0]["alerts"][0]["labels"]["agent"] == agent
            assert datetime.fromisoformat(seen["batches"][0]["received_at"]) <= datetime.now(UTC)
        finally:
            stop.set()
            await server


async def test_a_permanent_temporal_refusal_is_502_with_the_reason(
    dev_env: WorkflowEnvironment,
) -> None:
    target = dev_env.client.service_client.config.target_host
    client = await Client.connect(
        target, namespace=f"missing-{uuid.uuid4().hex[:8]}", data_converter=data_converter()
    )
    transport = httpx.ASGITransport(app=create_app(settings(), client=client))
    async with httpx.AsyncClient(transport=transport, base_url="http://receiver") as http:
        response = await http.post(
            "/alerts", json=webhook([alert("demo")]), headers={"Authorization": f"Bearer {TOKEN}"}
        )
    assert response.status_code == 502, response.text
    assert response.json()["error"] == "temporal refused the signal"
    assert "NOT_FOUND" in response.json()["detail"]
