"""Record ``incident/full.json``: an IncidentResponse history that tests/test_replay.py replays.

Run ``uv run python tests/histories/record_incident.py`` (a few seconds, time-skipping server).
The scenario covers every message and phase: signal-with-start with a SEV2 alert, a repeat and
a malformed ``alerts`` signal, the LLM's answer (scripted ``llm_triage``), the page and one
escalation after the ack timeout, ``ack`` (update), ``set_severity`` (signal), an approved
``restart_replicas``, a rejected second proposal, root cause, ``resolve`` (update), the review
written. Record again only when a change is meant to break replay; otherwise use
``workflow.patched``.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from temporalio.client import Client  # noqa: E402
from temporalio.common import RawValue  # noqa: E402
from temporalio.testing import WorkflowEnvironment  # noqa: E402
from temporalio.worker import Replayer  # noqa: E402

import worker as fleetops_worker  # noqa: E402
from fleetops.converter import data_converter  # noqa: E402
from fleetops.incidents import Severity  # noqa: E402
from tests.conftest import BIN, register_search_attributes  # noqa: E402
from tests.incident_helpers import (  # noqa: E402
    LLM,
    decide,
    finish,
    new_agent,
    open_incident,
    pending,
    resolve,
    until,
    world,
)
from tests.incident_standins import Standins, alert, answer  # noqa: E402

OUT = Path(__file__).parent / "incident" / "full.json"


async def record(env: WorkflowEnvironment, state_dir: Path) -> None:
    s = Standins()
    async with world(env, state_dir, s, llm=LLM, ack_timeout_seconds=60) as w:
        agent = new_agent()
        s.triage_script[:] = [
            answer(Severity.SEV2, [("restart_replicas", agent), ("pause_agent", agent)]),
            answer(Severity.SEV2),
        ]
        h = await open_incident(
            env, w, alert("AgentHighErrorRate", severity="critical"), agent=agent
        )
        await h.signal("alerts", RawValue(data_converter().payload_converter.to_payload([1])))
        await pending(h)
        await env.sleep(61)
        await until(h, lambda st: len(st.pages) == 2)
        await h.execute_update("ack", {"requested_by": "dave", "reason": "on it"})
        await h.signal("set_severity", {"severity": "SEV1", "requested_by": "dave", "reason": "x"})
        await decide(h, "bob", True)
        await decide(h, "bob", False)
        await until(h, lambda st: st.phase == "RESOLUTION")
        await resolve(h)
        report = await finish(env, h)
        assert report.resolved_by == "operator carol" and report.severity == "SEV1"
        await write(env.client, h.id)


async def write(client: Client, wid: str) -> None:
    history = await client.get_workflow_handle(wid).fetch_history()
    replayer = Replayer(
        workflows=list(fleetops_worker.WORKFLOWS),
        interceptors=list(fleetops_worker.INTERCEPTORS),
        data_converter=data_converter(),
    )
    await replayer.replay_workflow(history)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(history.to_json() + "\n")
    print(f"{OUT.relative_to(ROOT)}: {len(history.events)} events")


async def main() -> None:
    env = await WorkflowEnvironment.start_time_skipping(
        data_converter=data_converter(),
        test_server_existing_path=str(BIN / "temporal-test-server"),
    )
    try:
        await register_search_attributes(env.client)
        with tempfile.TemporaryDirectory() as tmp:
            await record(env, Path(tmp))
    finally:
        await env.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
