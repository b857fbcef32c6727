"""Maintenance end to end: dev server, the real worker, local platform, real replicas.

- A version update of two agents selected by label (``FleetOpsLabels``, a real visibility
  query), in batches of one, while clients POST ``/execute`` through the local gateway the whole
  time: both agents end on v2, the second deployment starts only after the first target was
  verified, and no request fails.
- A Temporal Schedule (overlap SKIP) triggered twice while its first run waits for approval:
  the second trigger is skipped; approved, the run completes. The ``fleetops maintenance`` CLI
  lists and deletes it.
- Secret rotation of a running agent with zero failed requests, and no secret value in any
  workflow history: needs the ``secrets`` and ``agent-ops`` work (the ``restart`` update, secret
  references resolved by the platform); skipped until both are in.
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment
from temporalio.workflow import _Definition

from activities.platform.local.gateway import Gateway
from fleetops.approvals import DecisionRequest
from fleetops.maintenance import MaintenancePlan, MaintenanceStatus
from fleetops.models import AgentLifecycleInput
from fleetops.settings import Settings
from starters import maintenance as m
from tests.conftest import BIN
from tests.e2e_support import agent_spec, eventually, port_block, tag, tagged_pids, wait_ready
from tests.test_e2e_blue_green import Load
from worker import fleetops_worker
from workflows.agent_lifecycle import AgentLifecycle
from workflows.maintenance import Maintenance

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc")
__all__ = ["tag"]  # the fixture


def e2e_settings(state_dir: Path) -> Settings:
    replica_ports, gateway_ports = port_block(), port_block()
    return Settings.model_validate(
        {
            "state_dir": state_dir,
            "platform": {
                "local": {
                    "port_range_start": replica_ports[0],
                    "port_range_end": replica_ports[1],
                    "stop_grace_seconds": 5.0,
                },
                "gateway": {
                    "port_range_start": gateway_ports[0],
                    "port_range_end": gateway_ports[1],
                },
            },
            "telemetry": {"metrics_bind_address": ""},
        }
    )


async def start_agents(
    env: WorkflowEnvironment, task_queue: str, tag: str, labels: dict[str, str], n: int
) -> list[WorkflowHandle[Any, Any]]:
    handles = []
    for i in range(n):
        spec = agent_spec(tag, f"mt{i}", replicas=2, version="v1", labels=labels)
        handles.append(
            await env.client.start_workflow(
                AgentLifecycle.run,
                AgentLifecycleInput(**spec.model_dump()),
                id=f"agent/{spec.agent_id}",
                task_queue=task_queue,
            )
        )
    for h in handles:
        await wait_ready(h, 2, timeout=60)
    return handles


async def test_version_update_of_two_agents_in_batches_of_one(
    dev_env: WorkflowEnvironment, tmp_path: Path, tag: str
) -> None:
    settings = e2e_settings(tmp_path / "state")
    task_queue = f"mt-e2e-{uuid.uuid4()}"
    labels = {"fleet": f"e2e-{tag[:8]}"}
    async with Gateway(settings), fleetops_worker(dev_env.client, settings, task_queue=task_queue):
        agents = await start_agents(dev_env, task_queue, tag, labels, 2)
        urls = [(await a.query(AgentLifecycle.status)).service.active_url for a in agents]  # type: ignore[union-attr]
        loads = [Load(url, clients=2, max_seconds=120) for url in urls]
        for load in loads:
            load.start()
        plan = MaintenancePlan.model_validate(
            {
                "name": f"upd-{tag[:8]}",
                "kind": "version_update",
                "targets": {"selector": labels},
                "parameters": {"version": "v2", "scale_down_delay_seconds": 1},
                "batch_size": 1,
                "max_unavailable": 1,
                "approval": {"required": "never"},
                "post_checks": {"health_timeout_seconds": 60},
            }
        )
        h = await m.run_plan(dev_env.client, plan, task_queue=task_queue)

        async def selector_matched() -> None:  # visibility is eventually consistent
            st = await h.query(Maintenance.status)
            assert st.phase not in ("STARTING", "PRE_CHECKS"), st.phase

        await eventually(selector_matched, "pre-checks", timeout=30)
        st: MaintenanceStatus = await asyncio.wait_for(h.result(), timeout=180)
        for load in loads:
            await load.stop()
        assert st.outcome == "completed", (st.message, st.audit)
        first, second = st.targets
        assert first.ended_at is not None and second.started_at is not None
        assert first.ended_at <= second.started_at  # batches of one: one after the other
        for a in agents:
            s = await a.query(AgentLifecycle.status)
            assert s.version == "v2" and s.deployment_id is None
        for load in loads:
            failed = [s for s in load.samples if s.status != 200]
            assert load.samples and not failed, failed[:3]
            assert {s.version for s in load.samples} >= {"v1", "v2"}
        for a in agents:
            await a.signal(AgentLifecycle.shutdown)
        for a in agents:
            await asyncio.wait_for(a.result(), timeout=60)
    assert tagged_pids(tag) == set()


async def fleetops_cli(env: WorkflowEnvironment, *args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        str(BIN / "fleetops"),
        *args,
        env={
            **os.environ,
            "COLUMNS": "250",
            "FLEETOPS_TEMPORAL__ADDRESS": env.client.service_client.config.target_host,
        },
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 0, f"fleetops {' '.join(args)}: {out.decode()}"
    return out.decode()


async def test_schedule_skips_an_overlapping_run(
    dev_env: WorkflowEnvironment, tmp_path: Path, tag: str
) -> None:
    settings = e2e_settings(tmp_path / "state")
    task_queue = f"mt-sched-{uuid.uuid4()}"
    async with Gateway(settings), fleetops_worker(dev_env.client, settings, task_queue=task_queue):
        (agent,) = await start_agents(dev_env, task_queue, tag, {}, 1)
        agent_id = agent.id.removeprefix("agent/")
        name = f"chk-{tag[:8]}"
        plan = MaintenancePlan.model_validate(
            {
                "name": name,
                "kind": "custom",
                "targets": {"agents": [agent_id]},
                "window": {"duration_seconds": 3600},
                "approval": {"required": "always", "approvers": ["alice"]},
                "parameters": {"description": "weekly look"},
            }
        )
        sid = await m.create_schedule(
            dev_env.client, plan, cron="0 3 * * 1", task_queue=task_queue, paused=False
        )
        try:
            await m.trigger_schedule(dev_env.client, name)

            async def one_run() -> str:
                d = await m.describe_schedule(dev_env.client, name)
                assert d.info.running_actions, "no run yet"
                return d.info.running_actions[0].workflow_id

            wid = await eventually(one_run, "the first run", timeout=30)
            assert wid.startswith(f"maintenance/{name}/scheduled-")
            run = dev_env.client.get_workflow_handle(wid, result_type=MaintenanceStatus)

            async def waiting() -> None:
                assert (await run.query(Maintenance.status)).pending_approval is not None

            await eventually(waiting, "approval pending", timeout=30)
            await m.trigger_schedule(dev_env.client, name)  # overlaps: skipped

            async def skipped() -> None:
                d = await m.describe_schedule(dev_env.client, name)
                assert d.info.num_actions_skipped_overlap == 1
                assert len(d.info.running_actions) == 1

            await eventually(skipped, "the overlapping trigger skipped", timeout=30)
            listed = await fleetops_cli(dev_env, "maintenance", "list")
            assert sid in listed and "0 3 * * 1" in listed
            await run.execute_update(
                Maintenance.decide, DecisionRequest(approver="alice", approved=True)
            )
            st = await asyncio.wait_for(run.result(), timeout=60)
            assert st.outcome == "completed", st.message
        finally:
            await fleetops_cli(dev_env, "maintenance", "delete", name)
        assert sid not in await fleetops_cli(dev_env, "maintenance", "list")
        await agent.signal(AgentLifecycle.shutdown)
        await asyncio.wait_for(agent.result(), timeout=60)


def _merged() -> str | None:
    """Why the secret-rotation end to end cannot run yet, or None."""
    if "restart" not in _Definition.from_class(AgentLifecycle).updates:
        return "AgentLifecycle has no restart update yet (agent-ops)"
    try:
        import activities.secrets  # noqa: F401
    except ImportError:
        return "activities.secrets is not merged yet (secrets)"
    return None


@pytest.mark.skipif(_merged() is not None, reason=str(_merged()))
async def test_weekly_rotation_triggered_approved_every_agent_rotated_no_failed_request(
    dev_env: WorkflowEnvironment, tmp_path: Path, tag: str
) -> None:
    """The README walkthrough: schedule a weekly rotation, trigger it now, approve it, see every
    agent rotated with no failed request through the gateway, and no secret value in any
    recorded history (every payload decoded)."""
    from activities.secret_stores import LocalStore
    from tests.test_secrets_history import environ, history_text

    settings = e2e_settings(tmp_path / "state")
    store = LocalStore(settings.state_dir, settings.secrets.local_key)
    task_queue = f"mt-rot-{uuid.uuid4()}"
    labels = {"tier": f"prod-{tag[:8]}"}
    first: dict[str, str] = {}
    async with Gateway(settings), fleetops_worker(dev_env.client, settings, task_queue=task_queue):
        agents = []
        for i in range(2):
            spec = agent_spec(tag, f"rot{i}", replicas=2, labels=labels)
            first[spec.agent_id] = f"sk-first-{i}-{tag}"
            store.write(f"agents/{spec.agent_id}", {"openai": first[spec.agent_id]}, cas=0)
            spec = spec.model_copy(
                update={
                    "secrets": [
                        {
                            "env": "OPENAI_API_KEY",
                            "path": f"agents/{spec.agent_id}",
                            "key": "openai",
                        }
                    ]
                }
            )
            spec = type(spec).model_validate(spec.model_dump())
            agents.append(
                await dev_env.client.start_workflow(
                    AgentLifecycle.run,
                    AgentLifecycleInput(**spec.model_dump()),
                    id=f"agent/{spec.agent_id}",
                    task_queue=task_queue,
                )
            )
        for a in agents:
            await wait_ready(a, 2, timeout=60)
        urls = [(await a.query(AgentLifecycle.status)).service.active_url for a in agents]  # type: ignore[union-attr]
        loads = [Load(url, clients=2, max_seconds=150) for url in urls]
        for load in loads:
            load.start()
        name = f"rot-{tag[:8]}"
        plan = MaintenancePlan.model_validate(
            {
                "name": name,
                "kind": "secret_rotation",
                "targets": {"selector": labels},
                "window": {"duration_seconds": 3600},
                "approval": {"required": "always", "approvers": ["alice"]},
                "parameters": {"secrets": [{"path": "agents/{agent_id}", "key": "openai"}]},
                "post_checks": {"health_timeout_seconds": 60},
            }
        )
        await m.create_schedule(dev_env.client, plan, cron="0 3 * * 1", task_queue=task_queue)
        try:
            await m.trigger_schedule(dev_env.client, name)

            async def pending() -> str:
                d = await m.describe_schedule(dev_env.client, name)
                assert d.info.running_actions, "no run yet"
                wid = d.info.running_actions[0].workflow_id
                st = await dev_env.client.get_workflow_handle(wid).query(Maintenance.status)
                assert st.pending_approval is not None, st.phase
                return wid

            wid = await eventually(pending, "the run waiting for approval", timeout=60)
            run = dev_env.client.get_workflow_handle(wid, result_type=MaintenanceStatus)
            await run.execute_update(
                Maintenance.decide, DecisionRequest(approver="alice", approved=True)
            )
            st = await asyncio.wait_for(run.result(), timeout=240)
        finally:
            await m.delete_schedule(dev_env.client, name)
        for load in loads:
            await load.stop()
        assert st.outcome == "completed", (st.message, st.audit)
        assert {t.agent_id for t in st.targets} == set(first)
        for a in agents:
            agent_id = a.id.removeprefix("agent/")
            now = store.read(f"agents/{agent_id}").data["openai"]
            assert now != first[agent_id]
            s = await a.query(AgentLifecycle.status)
            active = [r for r in s.replicas if r.color == s.active_color]
            assert active and all(environ(r.pid or 0)["OPENAI_API_KEY"] == now for r in active)
        for load in loads:
            failed = [s for s in load.samples if s.status != 200]
            assert load.samples and not failed, failed[:3]
        values = [*first.values()] + [
            store.read(f"agents/{a.id.removeprefix('agent/')}").data["openai"] for a in agents
        ]
        for a in agents:
            await a.signal(AgentLifecycle.shutdown)
        for a in agents:
            await asyncio.wait_for(a.result(), timeout=60)
        for workflow_id in [wid, *(a.id for a in agents)]:
            text = await history_text(dev_env.client, workflow_id)
            for value in values:
                assert value not in text, f"a secret value is in the history of {workflow_id}"
    assert tagged_pids(tag) == set()


@pytest.mark.skipif(_merged() is not None, reason=str(_merged()))
async def test_config_change_then_security_patch_on_the_local_platform(
    dev_env: WorkflowEnvironment, tmp_path: Path, tag: str
) -> None:
    """A config change reaches every replica (``FLEETOPS_AGENT_CONFIG``, versioned); a security
    patch on the local platform (no nodes) is a rolling restart; no failed request in either."""
    from tests.test_secrets_history import environ

    settings = e2e_settings(tmp_path / "state")
    task_queue = f"mt-cfg-{uuid.uuid4()}"
    async with Gateway(settings), fleetops_worker(dev_env.client, settings, task_queue=task_queue):
        (agent,) = await start_agents(dev_env, task_queue, tag, {}, 1)
        agent_id = agent.id.removeprefix("agent/")
        url = (await agent.query(AgentLifecycle.status)).service.active_url  # type: ignore[union-attr]
        load = Load(url, clients=2, max_seconds=120)
        load.start()
        outcomes = []
        for kind, params in (
            ("config_change", {"config": {"temperature": 0.2}}),
            ("security_patch", {}),
        ):
            plan = MaintenancePlan.model_validate(
                {
                    "name": kind.replace("_", "-"),
                    "kind": kind,
                    "targets": {"agents": [agent_id]},
                    "approval": {"required": "never"},
                    "parameters": params,
                }
            )
            h = await m.run_plan(dev_env.client, plan, task_queue=task_queue)
            outcomes.append(await asyncio.wait_for(h.result(), timeout=120))
        await load.stop()
        cfg, patch = outcomes
        assert cfg.outcome == "completed", cfg.message
        facts = cfg.targets[0].facts
        assert facts["config_version"] == (facts["previous_version"] or 0) + 1  # a new version
        assert patch.outcome == "completed", patch.message
        assert (
            patch.targets[0].facts["restarted"] == "2" and patch.targets[0].facts["nodes"] is None
        )
        st = await agent.query(AgentLifecycle.status)
        for r in st.replicas:
            assert json.loads(environ(r.pid or 0)["FLEETOPS_AGENT_CONFIG"]) == {"temperature": 0.2}
        failed = [s for s in load.samples if s.status != 200]
        assert load.samples and not failed, failed[:3]
        await agent.signal(AgentLifecycle.shutdown)
        await asyncio.wait_for(agent.result(), timeout=60)
    assert tagged_pids(tag) == set()
