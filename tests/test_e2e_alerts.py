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
import os
import time
import uuid
from pathlib import Path

import pytest
from temporalio.testing import WorkflowEnvironment

from activities.platform.local.gateway import Gateway
from fleetops.incidents import incident_key
from fleetops.models import AgentLifecycleInput
from tests.alerts_e2e_support import (
    e2e_settings,
    firing_in_prometheus,
    load,
    monitoring_stack,
    receiver,
    set_faults,
)
from tests.conftest import new_worker
from tests.e2e_support import agent_spec, eventually, status, tag, wait_ready
from tests.incident_standin import StandInIncident
from worker import fleetops_worker
from workflows.agent_lifecycle import AgentLifecycle

pytestmark = [
    pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc"),
    pytest.mark.timeout(300),
]

__all__ = ["tag"]  # the fixture


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
