"""The whole incident story end to end, on real parts only.

Dev server; the real worker (every FleetOps workflow and activity, local platform, IncidentResponse
included) reading metrics from a real Prometheus; Debian's Prometheus and Alertmanager on the
configs ``fleetops up --with-prometheus`` renders (1 s scrape/evaluation, 2 s ``for``); the
receiver with a bearer token; the local gateway; real sample-agent replicas under load.

1. The agent runs v1; v2 is deployed (blue-green, auto promotion) with ``FAULT_ERROR_RATE=0.6``:
   the error rate goes up.
2. ``AgentHighErrorRate`` fires -> Alertmanager -> receiver -> ``incident/<agent>/<key>`` opens.
3. The incident (category errors, SEV2 from the ``severity: error`` label) proposes containment
   behind the approval gate; the approver answers with the ``temporal`` CLI: ``decide`` approving
   ``rollback_deployment``, rejecting anything else.
4. The rollback deploys v1 again; the error rate falls; the alert resolves (Alertmanager's
   resolved notification) or the recovery check stays healthy: the incident resolves.
5. The review is the workflow's result and a Markdown file under the state directory.

Run twice: ``[rules]`` (no LLM configured: the rules triage and propose) and ``[llm]``: the real
small model (SmolLM2-135M on llama-cpp-python's server, ``local_llm`` fixture; skipped without
``uv sync --group llm``, a failure under ``CI=true``) is asked too, and its calls and tokens
are in the review. Its proposals are screened like the rules' (catalogue, target); the
approver approves only ``rollback_deployment``, so what runs does not depend on the model.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from temporalio.testing import WorkflowEnvironment

from activities.platform.local.gateway import Gateway
from fleetops.incident_report import ReviewReport
from fleetops.models import AgentLifecycleInput
from fleetops.settings import LlmSettings
from starters.local_llm import LocalLlm
from tests.alerts_e2e_support import e2e_settings, load, monitoring_stack, receiver
from tests.conftest import BIN
from tests.e2e_support import TAG_VAR, agent_spec, eventually, status, tag, wait_ready
from worker import fleetops_worker
from workflows.agent_lifecycle import AgentLifecycle

pytestmark = [
    pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc"),
    pytest.mark.timeout(600),  # the small model answers slowly on a shared 2-core machine
]

__all__ = ["tag"]  # the fixture


async def temporal(env: WorkflowEnvironment, *args: str) -> str:
    """``temporal <args> --address <dev server>``; stdout+stderr; fails on a non-zero exit."""
    proc = await asyncio.create_subprocess_exec(
        str(BIN / "temporal"), *args, "--address",
        env.client.service_client.config.target_host,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 0, f"temporal {' '.join(args)} exited {proc.returncode}: {out!r}"
    return out.decode()


@pytest.fixture(params=["rules", "llm"])
def triage(request: pytest.FixtureRequest) -> LlmSettings | None:
    """Who triages: the rules alone, or the real small model too (``local_llm`` fixture)."""
    if request.param == "rules":
        return None
    llm: LocalLlm = request.getfixturevalue("local_llm")
    return llm.settings(max_output_tokens=256)


async def test_story(
    dev_env: WorkflowEnvironment, tmp_path: Path, tag: str, triage: LlmSettings | None
) -> None:
    client = dev_env.client
    state_dir = tmp_path / "state"
    base = e2e_settings(
        state_dir,
        incidents={
            "resolve_window_seconds": 5,
            "recovery_poll_seconds": 1,
            "evidence_window_seconds": 60,
            "approval_timeout_seconds": 600,
        },
    )
    if triage is not None:
        base = base.model_copy(update={"llm": triage})
    spec = agent_spec(tag, "story", replicas=2, version="v1")
    agent = spec.agent_id
    queue = f"story-{uuid.uuid4()}"

    async with monitoring_stack(base) as ports:
        metrics = base.metrics.model_copy(
            update={"prometheus_url": f"http://{ports.host}:{ports.prometheus}"}
        )
        settings = base.model_copy(update={"metrics": metrics})
        async with (
            Gateway(settings),
            fleetops_worker(client, settings, task_queue=queue),
            receiver(settings, client, queue),
        ):
            handle = await client.start_workflow(
                AgentLifecycle.run,
                AgentLifecycleInput(**spec.model_dump()),
                id=f"agent/{agent}",
                task_queue=queue,
            )
            await wait_ready(handle, 2)

            async def service_url() -> str:
                st = await status(handle)
                assert st.service is not None
                return st.service.active_url

            url = await eventually(service_url, "the agent's service")
            stop = asyncio.Event()
            traffic = asyncio.create_task(load(url, stop))
            try:
                report = await story(dev_env, agent, tag, spec.command, state_dir)
            finally:
                stop.set()
                codes = await traffic
            assert 500 in codes and codes[-1] == 200
            if triage is not None:  # the model was asked, and its cost is in the review
                assert report.llm.configured and report.llm.calls >= 1, report.llm
                assert report.llm.input_tokens > 0, report.llm
            await handle.signal(AgentLifecycle.shutdown)
            await asyncio.wait_for(handle.result(), timeout=60)
    print(
        f"story: opened -> closed in {(report.closed_at - report.opened_at).total_seconds():.0f}"
        f" s (MTTR {report.mttr_seconds} s), LLM {report.llm.calls} calls "
        f"{report.llm.input_tokens}+{report.llm.output_tokens} tokens"
    )


async def story(
    env: WorkflowEnvironment, agent: str, tag: str, command: list[str], state_dir: Path
) -> ReviewReport:
    client = env.client
    agent_handle = client.get_workflow_handle(f"agent/{agent}")
    bad = {
        "agent_id": agent, "version": "v2", "command": command,
        "env": {TAG_VAR: tag, "FAULT_ERROR_RATE": "0.6"},
        "promotion": {"mode": "auto"}, "scale_down_delay_seconds": 1, "ready_timeout_seconds": 60,
    }  # fmt: skip
    await temporal(env, "workflow", "update", "execute", "--workflow-id", f"agent/{agent}",
                   "--name", "deploy", "--input", json.dumps(bad))  # fmt: skip

    async def on_v2() -> None:
        st = await status(agent_handle)
        assert st.version == "v2" and st.deployment_id is None, (st.version, st.deployment_id)

    await eventually(on_v2, "v2 (the bad version) live", timeout=90)
    injected = time.monotonic()

    async def incident_open() -> str:
        ids = [w.id async for w in client.list_workflows(
            f'WorkflowId STARTS_WITH "incident/{agent}/" AND WorkflowType = "IncidentResponse"'
        )]  # fmt: skip
        ids = [i for i in ids if not i.endswith("/lifecycle")]
        assert len(ids) == 1, ids
        return ids[0]

    incident_id = await eventually(incident_open, "the incident opened by the alert", timeout=120)
    opened_after = time.monotonic() - injected
    incident = client.get_workflow_handle(incident_id, result_type=ReviewReport)

    # The approver's loop, with the temporal CLI: approve the rollback, reject anything else,
    # until the incident closes. The rules always propose the rollback; the model's proposals are
    # its own judgement (only their screening is checked here): when containment ends without a
    # rollback, the operator deploys v1 by hand and monitoring sees the recovery.
    decided: list[tuple[str, bool]] = []
    by_hand = False
    deadline = time.monotonic() + 360
    while time.monotonic() < deadline:
        desc = await incident.describe()
        if desc.status is not None and desc.status.name != "RUNNING":
            break
        out = await temporal(env, "workflow", "query", "--workflow-id", incident_id,
                             "--name", "pending_approval", "--output", "json")  # fmt: skip
        pending = _query_result(out)
        if pending:
            assert "context" in pending, out
            action = pending["context"]["action"]
            approve = action == "rollback_deployment"
            decision = {"approver": "alice", "comment": f"{'go' if approve else 'no'}: {action}",
                        "approved": approve}  # fmt: skip
            await temporal(env, "workflow", "update", "execute", "--workflow-id", incident_id,
                           "--name", "decide", "--input", json.dumps(decision))  # fmt: skip
            decided.append((action, approve))
            continue
        st = await incident.query("status")
        contained = st["phase"] not in ("DETECTED", "TRIAGE", "ASSESSMENT", "CONTAINMENT")
        if contained and not by_hand and ("rollback_deployment", True) not in decided:
            assert triage is not None, decided  # the rules' rollback was approved above
            good = {**bad, "version": "v1", "env": {TAG_VAR: tag}}
            redeploy = ["--workflow-id", f"agent/{agent}", "--name", "deploy"]
            await temporal(env, "workflow", "update", "execute", *redeploy,
                           "--input", json.dumps(good))  # fmt: skip
            by_hand = True
        await asyncio.sleep(0.5)
    rolled_back = ("rollback_deployment", True) in decided

    async def back_on_v1() -> None:
        st = await status(agent_handle)
        assert st.version == "v1" and st.deployment_id is None, (st.version, st.deployment_id)

    await eventually(back_on_v1, "the agent back on v1", timeout=120)
    report = await asyncio.wait_for(incident.result(), timeout=240)

    assert report.agent_id == agent and report.category == "errors"
    assert report.path is not None and Path(report.path).is_file()
    assert Path(report.path).resolve().is_relative_to((state_dir / "incidents").resolve())
    text = Path(report.path).read_text()
    assert report.resolved_by in ("alertmanager", "metrics"), report.resolved_by
    if rolled_back:
        [rollback] = [a for a in report.actions if a.action.value == "rollback_deployment"]
        assert (rollback.outcome, rollback.mode, rollback.approver) == ("ran", "approval", "alice")
        assert "rollback_deployment" in text and "alice" in text
    for action in report.actions:  # whatever was proposed ran only with a decision
        assert action.mode == "approval", action
    st = await incident.query("status")
    assert st["phase"] == "CLOSED" and st["status"] == "Closed"
    assert any(a["name"] == "AgentHighErrorRate" for a in st["alerts"])
    print(f"story: errors injected -> incident open in {opened_after:.1f} s; decisions {decided}")
    return report


def _query_result(out: str) -> Any:
    """The value printed by ``temporal workflow query --output json`` (null: nothing pending)."""
    data = json.loads(out)
    result = data.get("queryResult", data) if isinstance(data, dict) else data
    if isinstance(result, list):
        result = result[0] if result else None
    if isinstance(result, dict) and "metadata" in result:  # a payload the CLI left encoded
        encoding = base64.b64decode(result["metadata"].get("encoding", "")).decode()
        if encoding == "binary/null":
            return None
        return json.loads(base64.b64decode(result.get("data", "")))
    return result
