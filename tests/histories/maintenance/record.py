"""Record the Maintenance histories replayed by tests/test_replay.py.

Run ``uv run python tests/histories/maintenance/record.py``: on the time-skipping server with
the stand-ins of tests/maintenance_standins.py, a secret rotation whose second target fails its
post-check (rolled back, plan halted) and one cancelled while its first target restarts.
They are written under ``rotate/`` so their replay id, ``maintenance/rotate/<file>``, is one a
``Maintenance`` of plan ``rotate`` accepts.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from pathlib import Path

import httpx
from temporalio.client import WorkflowFailureError
from temporalio.testing import WorkflowEnvironment

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

from activities.notify import NotifyActivities  # noqa: E402
from fleetops.converter import data_converter  # noqa: E402
from fleetops.maintenance import MaintenancePlan  # noqa: E402
from fleetops.settings import ApprovalSettings  # noqa: E402
from tests.conftest import BIN, new_worker, register_search_attributes  # noqa: E402
from tests.maintenance_standins import Fleet  # noqa: E402
from workflows.maintenance import Maintenance  # noqa: E402

HERE = Path(__file__).parent


def plan(**kw: object) -> MaintenancePlan:
    return MaintenancePlan.model_validate(
        {
            "name": "rotate",
            "kind": "secret_rotation",
            "targets": {"agents": ["a1", "a2", "a3"]},
            "approval": {"required": "never"},
            "parameters": {"secrets": [{"path": "agents/{agent_id}", "key": "openai"}]},
            **kw,
        }
    )


async def main() -> None:
    env = await WorkflowEnvironment.start_time_skipping(
        data_converter=data_converter(), test_server_existing_path=str(BIN / "temporal-test-server")
    )
    await register_search_attributes(env.client)
    fleet = Fleet("a1", "a2", "a3")
    for a in fleet.agents:
        fleet.put_secret(f"agents/{a}")
    fleet.breaks.add("a2")
    async with httpx.AsyncClient() as http:
        notify = NotifyActivities(http, ApprovalSettings())
        acts = [*fleet.activities(), notify.send_notification, notify.approval_policy]
        async with new_worker(env.client, workflows=[Maintenance], activities=acts) as w:
            h = await env.client.start_workflow(
                Maintenance.run, plan(), id="maintenance/rotate/halted", task_queue=w.task_queue
            )
            await h.result()
            (HERE / "rotate" / "halted.json").write_text((await h.fetch_history()).to_json())

            fleet.hang.add("agent_restart")
            h = await env.client.start_workflow(
                Maintenance.run,
                plan(),
                id="maintenance/rotate/cancelled",
                task_queue=w.task_queue,
            )
            while ("agent_restart", ("a1", "secret rotation")) not in fleet.calls[-3:]:
                await asyncio.sleep(0.1)
            await h.cancel()
            fleet.release.set()
            with contextlib.suppress(WorkflowFailureError):  # it ends CANCELED
                await h.result()
            (HERE / "rotate" / "cancelled.json").write_text((await h.fetch_history()).to_json())
    await env.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
