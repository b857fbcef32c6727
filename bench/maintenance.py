"""Maintenance benchmark: secret rotation time per agent and requests failed during rotation.

Run ``uv run python bench/maintenance.py [--agents 3] [--quick]`` (``--quick``: 1 agent). The
script starts ONE real Temporal dev server (as ``bench/lifecycle.py`` does) and runs, in this
process, the FleetOps worker (local platform and local encrypted secret store over a temporary
state directory, private port ranges), a :class:`~activities.platform.local.gateway.Gateway`,
and per agent a load loop of 3 clients POSTing ``/execute`` through the agent's gateway URL the
whole time. Each agent runs 2 real sample-agent replicas with ``OPENAI_API_KEY`` from the secret
reference ``agents/<agent>:openai``.

Measured:
- (rotation) one ``Maintenance`` plan of kind ``secret_rotation`` over every agent, batches of
  one: per agent, its target record's ``ended_at - started_at`` (workflow clock: rotate, rolling
  restart, post-check, confirm), and the plan's total wall time;
- (baseline, same run) per agent, one rolling ``restart`` update sent directly to the agent: the
  part of a rotation that is the restart itself;
- requests failed (non-2xx or no answer) through the gateways during the rotation.

Ratio: rotation / bare restart (p50): what the rotation adds on top of the restart (secret
writes, post-check, confirmation, the workflow and activity round trips).

Needs the ``restart`` update (agent-ops) and the secret store (secrets); it says so and exits 2
when either is missing. Figures are printed and written to ``bench/results/maintenance.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from blue_green import GATEWAY_PORTS, REPLICA_PORTS, Load
from lifecycle import BenchError, start_dev_server
from rich.console import Console
from rich.table import Table
from temporalio.client import Client, WorkflowHandle
from temporalio.workflow import _Definition

from activities.platform.local.gateway import Gateway
from fleetops.maintenance import MaintenancePlan, MaintenanceStatus
from fleetops.models import AgentLifecycleInput, AgentSpec, AgentState
from fleetops.settings import Settings
from starters import maintenance as m
from worker import fleetops_worker
from workflows.agent_lifecycle import AgentLifecycle

RESULTS = Path(__file__).parent / "results" / "maintenance.json"
console = Console(width=None if sys.stdout.isatty() else 120)


def missing_pieces() -> str | None:
    """Why the benchmark cannot run on this branch, or None."""
    if "restart" not in _Definition.from_class(AgentLifecycle).updates:
        return "AgentLifecycle has no `restart` update (merge agent-ops)"
    try:
        import activities.secret_stores  # noqa: F401
    except ImportError:
        return "no secret store (merge secrets)"
    if "secrets" not in AgentSpec.model_fields:
        return "AgentSpec.secrets is missing (merge secrets)"
    return None


def settings_for(state_dir: Path) -> Settings:
    return Settings.model_validate(
        {
            "state_dir": state_dir,
            "platform": {
                "local": {
                    "port_range_start": REPLICA_PORTS[0],
                    "port_range_end": REPLICA_PORTS[1],
                    "stop_grace_seconds": 5.0,
                },
                "gateway": {
                    "port_range_start": GATEWAY_PORTS[0],
                    "port_range_end": GATEWAY_PORTS[1],
                },
            },
            "secrets": {"local_key": base64.b64encode(os.urandom(32)).decode()},
            "telemetry": {"metrics_bind_address": ""},
        }
    )


async def start_agents(client: Client, settings: Settings, task_queue: str, n: int) -> list[Any]:
    from activities.secret_stores import build_secret_store

    store = build_secret_store(settings)
    handles = []
    for i in range(n):
        agent = f"rot{i}-{uuid.uuid4().hex[:6]}"
        await asyncio.to_thread(store.write, f"agents/{agent}", {"openai": f"first-{i}"}, 0)
        spec = AgentSpec.model_validate(
            {
                "agent_id": agent,
                "replicas": 2,
                "health": {"interval_seconds": 1, "failure_threshold": 2},
                "secrets": [{"env": "OPENAI_API_KEY", "path": f"agents/{agent}", "key": "openai"}],
            }
        )
        handles.append(
            await client.start_workflow(
                AgentLifecycle.run,
                AgentLifecycleInput(**spec.model_dump()),
                id=f"agent/{agent}",
                task_queue=task_queue,
            )
        )
    deadline = time.monotonic() + 90
    for h in handles:
        while (st := await h.query(AgentLifecycle.status)).state != AgentState.READY or not all(
            r.healthy for r in st.replicas
        ):
            if time.monotonic() > deadline:
                raise BenchError(f"{h.id} not READY after 90 s: {st.state}")
            await asyncio.sleep(0.2)
    return handles


async def run(n_agents: int) -> dict[str, Any]:
    env = await start_dev_server()
    try:
        with tempfile.TemporaryDirectory(prefix="fleetops-bench-") as tmp:
            settings = settings_for(Path(tmp))
            task_queue = f"bench-maint-{uuid.uuid4()}"
            async with (
                Gateway(settings),
                fleetops_worker(env.client, settings, task_queue=task_queue),
            ):
                agents = await start_agents(env.client, settings, task_queue, n_agents)
                return await measure(env.client, agents, task_queue)
    finally:
        await env.shutdown()


async def measure(
    client: Client, agents: list[WorkflowHandle[Any, Any]], task_queue: str
) -> dict[str, Any]:
    ids = [a.id.removeprefix("agent/") for a in agents]
    urls = [(await a.query(AgentLifecycle.status)).service.active_url for a in agents]

    # Baseline: a bare rolling restart of each agent.
    restart_s = []
    for a in agents:
        t0 = time.monotonic()
        await a.execute_update("restart", {"requested_by": "bench", "reason": "baseline"})
        restart_s.append(time.monotonic() - t0)

    loads = [Load(u).start() for u in urls]
    plan = MaintenancePlan.model_validate(
        {
            "name": "bench-rotate",
            "kind": "secret_rotation",
            "targets": {"agents": ids},
            "approval": {"required": "never"},
            "parameters": {"secrets": [{"path": "agents/{agent_id}", "key": "openai"}]},
        }
    )
    t0 = time.time()
    h = await m.run_plan(client, plan, task_queue=task_queue)
    st: MaintenanceStatus = await asyncio.wait_for(h.result(), timeout=600)
    total = time.time() - t0
    await asyncio.sleep(1)  # requests in flight when the last target finished
    for load in loads:
        await load.stop()
    if st.outcome != "completed":
        raise BenchError(f"rotation ended {st.outcome}: {st.message}")
    per_agent = [
        (t.ended_at - t.started_at).total_seconds()
        for t in st.targets
        if t.ended_at is not None and t.started_at is not None
    ]
    samples = [s for load in loads for s in load.since(t0)]
    failed = [s for s in samples if s.status is None or not 200 <= s.status < 300]
    p50_rot, p50_restart = statistics.median(per_agent), statistics.median(restart_s)
    return {
        "agents": len(agents),
        "rotation_seconds_per_agent": per_agent,
        "rotation_p50_seconds": p50_rot,
        "plan_wall_seconds": total,
        "restart_seconds_per_agent": restart_s,
        "restart_p50_seconds": p50_restart,
        "ratio_rotation_to_restart_p50": p50_rot / p50_restart if p50_restart else None,
        "requests_during_rotation": len(samples),
        "requests_failed_during_rotation": len(failed),
        "failed_examples": [f"{s.status} {s.error}" for s in failed[:5]],
    }


def table(r: dict[str, Any]) -> Table:
    t = Table(title=f"Maintenance benchmark: secret rotation of {r['agents']} agent(s)")
    t.add_column("figure")
    t.add_column("value", justify="right")
    t.add_row("rotation per agent, p50 (s)", f"{r['rotation_p50_seconds']:.2f}")
    t.add_row("rotation per agent, max (s)", f"{max(r['rotation_seconds_per_agent']):.2f}")
    t.add_row("bare rolling restart, p50 (s) [baseline]", f"{r['restart_p50_seconds']:.2f}")
    ratio = r["ratio_rotation_to_restart_p50"]
    t.add_row("ratio rotation / restart (p50)", f"{ratio:.2f}" if ratio else "-")
    t.add_row("whole plan, wall (s)", f"{r['plan_wall_seconds']:.2f}")
    t.add_row("requests during rotation", str(r["requests_during_rotation"]))
    t.add_row("requests failed during rotation", str(r["requests_failed_during_rotation"]))
    return t


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--agents", type=int, default=3, help="Agents to rotate (1-20).")
    parser.add_argument("--quick", action="store_true", help="One agent.")
    args = parser.parse_args(argv)
    why = missing_pieces()
    if why is not None:
        console.print(f"cannot run the maintenance benchmark yet: {why}")
        raise SystemExit(2)
    n = 1 if args.quick else max(1, min(args.agents, 20))
    results = asyncio.run(run(n))
    console.print(table(results))
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
