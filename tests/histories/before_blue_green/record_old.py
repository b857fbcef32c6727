"""Record ``partial_recovery.json`` with the AgentLifecycle of commit 85c1238^ (before blue-green).

The agent goes READY -> DEGRADED (replica 0 fails 2 = ``failure_threshold`` probes), is
restarted, and then the replicas fail one probe each in turn for 12 rounds (6 s), well past
``recovery_timeout_seconds`` (2 s). The code of that commit restarts the DEGRADED clock on every
such partial recovery and stays DEGRADED; 85c1238 keeps the clock and goes to ERROR, without
``workflow.patched``, so this history does not replay with it (tests/test_replay.py expects
that failure until the change is patched). Run it on the old code, with this checkout's
environment::

    git archive 85c1238^ | tar -x -C /tmp/fleetops-old
    uv run python tests/histories/before_blue_green/record_old.py /tmp/fleetops-old

The activities are stand-ins written against that commit's models (it has no tests/standins.py).
"""

import asyncio
import sys
import uuid
from pathlib import Path
from typing import Any

OUT = Path(__file__).with_name("partial_recovery.json")


async def main(old_tree: Path) -> None:
    sys.path.insert(0, str(old_tree))  # the old packages shadow this checkout's
    from temporalio import activity
    from temporalio.worker import Worker

    from fleetops.models import (  # type: ignore[attr-defined]
        AgentLifecycleInput,
        AgentSpec,
        DeprovisionRequest,
        ProbeRequest,
        ProbeResult,
        ProvisionRequest,
        Replica,
        RestartRequest,
    )
    from tests.conftest import start_dev_server
    from workflows.agent_lifecycle import AgentLifecycle

    agent = f"old-{uuid.uuid4().hex[:6]}"
    script = {  # endpoint -> outcomes of its next probes (then healthy)
        f"http://{agent}-0.invalid": [True, True, False, False] + [True, False] * 6,
        f"http://{agent}-1.invalid": [True, True, True, True] + [False, True] * 6,
    }

    def replicas(spec: Any, n: int) -> list[Any]:
        return [Replica(index=i, endpoint=f"http://{spec.agent_id}-{i}.invalid") for i in range(n)]

    @activity.defn(name="provision_replicas")
    async def provision(req: ProvisionRequest) -> list[Replica]:
        return replicas(req.spec, req.replicas)

    @activity.defn(name="restart_replicas")
    async def restart(req: RestartRequest) -> list[Replica]:
        return replicas(req.spec, req.spec.replicas)

    @activity.defn(name="deprovision_agent")
    async def deprovision(req: DeprovisionRequest) -> int:
        return 2

    @activity.defn(name="probe_replicas")
    async def probe(req: ProbeRequest) -> list[ProbeResult]:
        out = []
        for e in req.endpoints:
            ok = script[e].pop(0) if script.get(e) else True
            out.append(ProbeResult(endpoint=e, healthy=ok, error=None if ok else "scripted"))
        return out

    env = await start_dev_server()
    try:
        acts = [provision, restart, deprovision, probe]
        async with Worker(
            env.client, task_queue="old", workflows=[AgentLifecycle], activities=acts
        ):
            health = {
                "interval_seconds": 0.5,
                "failure_threshold": 2,
                "recovery_timeout_seconds": 2.0,
                "startup_timeout_seconds": 30,
            }
            spec = AgentSpec(agent_id=agent, command=["agent"], replicas=2, health=health)
            h = await env.client.start_workflow(
                AgentLifecycle.run,
                AgentLifecycleInput(**spec.model_dump()),
                id=f"agent/{agent}",
                task_queue="old",
            )
            for _ in range(300):  # until the script is used up (the agent runs on its own)
                if not any(script.values()):
                    break
                await asyncio.sleep(0.1)
            st = await h.query(AgentLifecycle.status)
            path = [(str(t.from_state), str(t.to_state)) for t in st.transitions]
            assert not any(script.values()), "the old code did not probe as scripted"
            assert path[-1] == ("READY", "DEGRADED") and str(st.state) == "DEGRADED", path
            await h.signal(AgentLifecycle.shutdown)
            await h.result()
            history = await h.fetch_history()
            OUT.write_text(history.to_json() + "\n")
            print(f"{OUT}: {len(history.events)} events, last state before shutdown {st.state}")
    finally:
        await env.shutdown()


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    asyncio.run(main(Path(sys.argv[1])))
