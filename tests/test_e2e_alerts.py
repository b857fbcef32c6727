"""Alert to incident end to end: real Prometheus, real Alertmanager, real replicas, the receiver.

A dev server, the real worker (local platform) running an AgentLifecycle of two sample-agent
replicas behind the local gateway, Debian's Prometheus and Alertmanager started by the test on the
configs ``fleetops up --with-prometheus`` renders from ``infra/prometheus/`` (scrape and rule
intervals shortened to 1 s / 2 s), and the receiver with a bearer token (Alertmanager reads it
from its credentials file). A load loop POSTs ``/execute`` through the gateway; errors are
injected with ``POST /faults`` on every replica.

Error rate up -> ``AgentHighErrorRate`` fires in Prometheus -> Alertmanager notifies the receiver
-> the agent's incident ``incident/<agent>/<key>`` is opened with the alert as evidence; faults
off -> the alert resolves -> the resolved notification is signalled to that same incident (no
second incident). ``IncidentResponse`` is the recording stand-in of ``tests/incident_standin.py``
on its own task queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from activities.platform.local.gateway import Gateway
from fleetops.incidents import incident_key
from fleetops.models import AgentLifecycleInput
from fleetops.settings import Settings
from starters import monitoring
from starters.alert_server import bind, serve_alert_receiver
from tests.conftest import new_worker
from tests.e2e_support import agent_spec, eventually, free_port, port_block, status, tag, wait_ready
from tests.helpers import require_binary
from tests.incident_standin import StandInIncident
from worker import fleetops_worker
from workflows.agent_lifecycle import AgentLifecycle

pytestmark = [
    pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc"),
    pytest.mark.timeout(300),
]

__all__ = ["tag"]  # the fixture

TOKEN = "e2e-alert-token"


def e2e_settings(state_dir: Path) -> Settings:
    replicas, gateway = port_block(), port_block()
    return Settings.model_validate(
        {
            "state_dir": state_dir,
            "platform": {
                "local": {
                    "port_range_start": replicas[0],
                    "port_range_end": replicas[1],
                    "stop_grace_seconds": 5.0,
                },
                "gateway": {"port_range_start": gateway[0], "port_range_end": gateway[1]},
            },
            "telemetry": {"metrics_bind_address": ""},
            "alerts": {"port": free_port(), "token": TOKEN},
        }
    )


@contextlib.asynccontextmanager
async def monitoring_stack(settings: Settings) -> AsyncIterator[monitoring.MonitoringPorts]:
    """Prometheus + Alertmanager as ``fleetops up --with-prometheus`` runs them (fast intervals)."""
    require_binary("prometheus", hint="apt-get install prometheus")
    require_binary(
        "prometheus-alertmanager", "alertmanager", hint="apt-get install prometheus-alertmanager"
    )
    ports = monitoring.MonitoringPorts(prometheus=free_port(), alertmanager=free_port())
    out = monitoring.render(settings, ports, scrape_interval="1s", rule_for="2s")
    procs = await asyncio.to_thread(monitoring.start, out, ports)
    try:
        yield ports
    finally:
        await asyncio.to_thread(monitoring.stop, procs)


@contextlib.asynccontextmanager
async def receiver(settings: Settings, client: Client, task_queue: str) -> AsyncIterator[None]:
    s = settings.model_copy(
        update={"temporal": settings.temporal.model_copy(update={"task_queue": task_queue})}
    )
    stop = asyncio.Event()
    sock = bind(s.alerts.host, s.alerts.port)
    task = asyncio.create_task(serve_alert_receiver(s, stop, client=client, sock=sock))
    try:
        yield
    finally:
        stop.set()
        await task


async def load(url: str, stop: asyncio.Event) -> list[int]:
    """POST /execute through the gateway until ``stop``; the status codes seen."""
    codes: list[int] = []
    async with httpx.AsyncClient(timeout=5) as http:
        while not stop.is_set():
            with contextlib.suppress(httpx.HTTPError):
                codes.append((await http.post(f"{url}/execute", json={"prompt": "hi"})).status_code)
            await asyncio.sleep(0.02)
    return codes


async def set_faults(replica_urls: list[str], **faults: Any) -> None:
    async with httpx.AsyncClient(timeout=5) as http:
        for url in replica_urls:
            r = await http.post(f"{url}/faults", json=faults)
            assert r.status_code == 200, r.text


async def firing_in_prometheus(
    ports: monitoring.MonitoringPorts, agent: str
) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(timeout=5) as http:
        r = await http.get(f"http://{ports.host}:{ports.prometheus}/api/v1/alerts")
    return [a for a in r.json()["data"]["alerts"] if a["labels"].get("agent") == agent]


async def test_error_rate_alert_opens_one_incident_and_its_resolution_joins_it(
    dev_env: WorkflowEnvironment, tmp_path: Path, tag: str
) -> None:
    client = dev_env.client
    settings = e2e_settings(tmp_path / "state")
    spec = agent_spec(tag, "inc", replicas=2, version="v1")
    agent = spec.agent_id
    worker_queue, incident_queue = f"inc-e2e-{uuid.uuid4()}", f"inc-standin-{uuid.uuid4()}"
    standin = new_worker(client, workflows=[StandInIncident], task_queue=incident_queue)

    async with (
        monitoring_stack(settings) as ports,
        Gateway(settings),
        fleetops_worker(client, settings, task_queue=worker_queue),
        standin,
        receiver(settings, client, incident_queue),
    ):
        handle = await client.start_workflow(
            "AgentLifecycle",
            AgentLifecycleInput(**spec.model_dump()),
            id=f"agent/{agent}",
            task_queue=worker_queue,
        )
        st = await wait_ready(handle, 2)
        replica_urls = [r.endpoint for r in st.replicas]

        async def with_service() -> str:
            s = await status(handle)
            assert s.service is not None
            return s.service.active_url

        url = await eventually(with_service, "the agent's service")
        stop = asyncio.Event()
        traffic = asyncio.create_task(load(url, stop))
        try:
            await set_faults(replica_urls, error_rate=0.6)
            injected = time.monotonic()

            async def incident_open() -> str:
                ids = [w.id async for w in client.list_workflows(
                    f'WorkflowId STARTS_WITH "incident/{agent}/"')]  # fmt: skip
                assert len(ids) == 1, (ids, await firing_in_prometheus(ports, agent))
                return ids[0]

            workflow_id = await eventually(
                incident_open, "an incident opened by the alert", timeout=90
            )
            opened = time.monotonic() - injected
            # Alertmanager's groupKey for `group_by: [agent]`, hashed with the agent.
            group_key = "{}:{agent=" + f'"{agent}"' + "}"
            assert workflow_id == f"incident/{agent}/{incident_key(agent, group_key)}"
            incident = client.get_workflow_handle(workflow_id)
            seen = await incident.query(StandInIncident.seen)
            assert seen["start"]["severity"] == "SEV2"  # severity: error
            assert seen["start"]["title"].startswith(f"AgentHighErrorRate on {agent}")
            [first] = seen["batches"][0]["alerts"]
            assert (first["name"], first["status"], first["labels"]["agent"]) == (
                "AgentHighErrorRate", "firing", agent,
            )  # fmt: skip
            assert first["labels"]["severity"] == "error"
            assert first["generator_url"].startswith(f"http://{ports.host}:{ports.prometheus}/")
            assert seen["batches"][0]["receiver"] == "fleetops"

            await set_faults(replica_urls, error_rate=0.0)

            async def resolved_joined() -> None:
                s = await incident.query(StandInIncident.seen)
                statuses = [a["status"] for b in s["batches"] for a in b["alerts"]]
                assert "resolved" in statuses, statuses

            await eventually(resolved_joined, "the resolved notification", timeout=150, interval=1)
            ids = [
                w.id
                async for w in client.list_workflows(f'WorkflowId STARTS_WITH "incident/{agent}/"')
            ]
            assert ids == [workflow_id]
        finally:
            stop.set()
            codes = await traffic
        assert 500 in codes and codes[-1] == 200
        await incident.signal(StandInIncident.close)
        await handle.signal(AgentLifecycle.shutdown)
        await asyncio.wait_for(handle.result(), timeout=60)
    print(f"webhook path: errors injected -> incident open in {opened:.1f} s")
