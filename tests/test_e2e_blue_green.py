"""BlueGreenDeployment end to end: dev server, the real worker, local platform, real replicas.

A :class:`~activities.platform.local.gateway.Gateway` serves the agent's stable port over the state
directory, a real Prometheus (``/usr/bin/prometheus``, ``scrape_interval: 1s``) scrapes the
replicas through the platform's ``<state_dir>/prometheus/targets/*.json`` (file_sd), and the worker
reads analysis metrics from it. A load loop POSTs ``/execute`` through the gateway the whole time.

- v2, manual promotion, started and approved with the real ``temporal`` CLI (plain JSON): zero
  failed requests, responses move from blue to green, the agent runs v2 on green.
- v3, auto promotion, replicas injecting 50% errors: the post-promotion analysis on the
  ``error_rate`` built-in fails, traffic goes back to green by itself, v3 is scaled down.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from activities.platform import LocalPlatform
from activities.platform.local.gateway import Gateway
from fleetops.deploy import DeploymentReport
from fleetops.models import AgentLifecycleInput, AgentReport, AgentState
from fleetops.settings import Settings
from tests.conftest import BIN
from tests.e2e_support import (
    TAG_VAR,
    agent_spec,
    eventually,
    free_port,
    port_block,
    status,
    tag,
    tagged_pids,
    wait_ready,
)
from worker import fleetops_worker
from workflows.agent_lifecycle import AgentLifecycle
from workflows.blue_green import BlueGreenDeployment

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc")

__all__ = ["tag"]  # the fixture

PROMETHEUS = Path("/usr/bin/prometheus")


# --- Prometheus over the platform's file_sd targets ---------------------------------------------


@contextlib.asynccontextmanager
async def prometheus(state_dir: Path, tmp: Path) -> AsyncIterator[str]:
    """A real Prometheus scraping every replica listed in ``<state_dir>/prometheus/targets/*.json``
    once a second; yields its base URL."""
    binary = str(PROMETHEUS) if PROMETHEUS.exists() else shutil.which("prometheus")
    if binary is None:
        pytest.skip("Prometheus is not installed (apt-get install prometheus)")
    targets = state_dir / "prometheus" / "targets" / "*.json"
    targets.parent.mkdir(parents=True, exist_ok=True)
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s, scrape_timeout: 1s}\n"
        "scrape_configs:\n"
        "  - job_name: fleetops\n"
        f"    file_sd_configs: [{{files: [{json.dumps(str(targets))}], refresh_interval: 1s}}]\n"
    )
    address = f"127.0.0.1:{free_port()}"
    url = f"http://{address}"
    log_path = tmp / "prometheus.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={tmp / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp / 'data'}",
                f"--web.listen-address={address}",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=log,
        )
    try:
        async with httpx.AsyncClient(timeout=2) as http:

            async def ready() -> None:
                assert process.poll() is None, log_path.read_text()
                try:
                    response = await http.get(f"{url}/-/ready")
                except httpx.HTTPError as e:
                    raise AssertionError(f"not up: {e!r}") from None
                assert response.status_code == 200

            await eventually(ready, "prometheus ready", timeout=30)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# --- load through the gateway -------------------------------------------------------------------


@dataclass
class Sample:
    started: float
    ended: float
    status: int | None  # None: no HTTP answer at all
    color: str | None
    version: str | None
    error: str = ""


@dataclass
class Load:
    """Clients POSTing ``/execute`` to ``url`` until stopped, or max_seconds/max_requests."""

    url: str
    clients: int = 3
    max_seconds: float = 85.0
    max_requests: int = 20000
    samples: list[Sample] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Future[Any] | None = None

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        self._stop.set()
        assert self._task is not None
        await self._task

    async def _run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        async with httpx.AsyncClient(timeout=10) as http:

            async def client() -> None:
                while (
                    not self._stop.is_set()
                    and time.monotonic() < deadline
                    and len(self.samples) < self.max_requests
                ):
                    started = time.monotonic()
                    try:
                        r = await http.post(f"{self.url}/execute", json={"prompt": "hi"})
                        version = None
                        with contextlib.suppress(ValueError, AttributeError):
                            version = r.json().get("version")
                        sample = Sample(
                            started, time.monotonic(), r.status_code,
                            r.headers.get("x-fleetops-color"), version,
                            "" if r.is_success else r.text[:200],
                        )  # fmt: skip
                    except httpx.HTTPError as e:
                        sample = Sample(started, time.monotonic(), None, None, None, repr(e))
                    self.samples.append(sample)
                    await asyncio.sleep(0.01)

            await asyncio.gather(*(client() for _ in range(self.clients)))

    def between(self, t0: float, t1: float) -> list[Sample]:
        return [s for s in self.samples if t0 <= s.started and s.ended <= t1]


# --- the temporal CLI ---------------------------------------------------------------------------


async def temporal(env: WorkflowEnvironment, *args: str) -> str:
    """Run ``temporal <args> --address <dev server>``; returns stdout+stderr, fails on exit != 0."""
    proc = await asyncio.create_subprocess_exec(
        str(BIN / "temporal"),
        *args,
        "--address",
        env.client.service_client.config.target_host,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=30)
    assert proc.returncode == 0, f"temporal {' '.join(args)} exited {proc.returncode}: {out!r}"
    return out.decode()


def error_rate_analysis() -> dict[str, Any]:
    return {
        "metrics": [
            {
                "name": "errors",
                "builtin": "error_rate",
                "success_condition": "result < 0.05",
                "initial_delay_seconds": 3,
                "interval_seconds": 2,
                "count": 2,
                "window_seconds": 4,
            }
        ]
    }


# --- the test -----------------------------------------------------------------------------------


async def test_blue_green_end_to_end(
    dev_env: WorkflowEnvironment, tmp_path: Path, tag: str
) -> None:
    state_dir = tmp_path / "state"
    replica_ports, gateway_ports = port_block(), port_block()
    task_queue = f"bg-e2e-{uuid.uuid4()}"
    spec = agent_spec(tag, "bg", replicas=2, version="v1")
    agent = spec.agent_id
    test_started = time.monotonic()

    async with prometheus(state_dir, tmp_path / "prometheus") as prom_url:
        settings = Settings.model_validate(
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
                "metrics": {"prometheus_url": prom_url},
            }
        )
        async with (
            Gateway(settings),
            fleetops_worker(dev_env.client, settings, task_queue=task_queue),
        ):
            await run_scenario(dev_env, settings, spec, agent, tag, task_queue)
    assert tagged_pids(tag) == set()
    assert time.monotonic() - test_started < 120


async def run_scenario(
    dev_env: WorkflowEnvironment,
    settings: Settings,
    spec: Any,
    agent: str,
    tag: str,
    task_queue: str,
) -> None:
    client = dev_env.client
    platform = LocalPlatform(
        settings.platform.local, settings.state_dir, gateway=settings.platform.gateway
    )
    handle: WorkflowHandle[Any, AgentReport] = await client.start_workflow(
        AgentLifecycle.run,
        AgentLifecycleInput(**spec.model_dump()),
        id=f"agent/{agent}",
        task_queue=task_queue,
    )
    await wait_ready(handle, 2)

    async def with_service() -> Any:
        st = await status(handle)
        assert st.service is not None and st.service.active_color == "blue", st.service
        return st

    v1 = await eventually(with_service, "the agent's service")
    active_url = v1.service.active_url

    async def served() -> None:
        async with httpx.AsyncClient(timeout=5) as h:
            try:
                r = await h.post(f"{active_url}/execute", json={"prompt": "hi"})
            except httpx.HTTPError as e:
                raise AssertionError(repr(e)) from None
            assert r.status_code == 200 and r.headers["x-fleetops-color"] == "blue", r

    await eventually(served, "the gateway serving v1")

    load = Load(active_url)
    load.start()
    try:
        # --- v2: manual promotion through the temporal CLI ----------------------------------
        v2_id = f"deploy/{agent}/v2"
        v2_request = {
            "agent_id": agent,
            "version": "v2",
            "command": spec.command,
            "env": {TAG_VAR: tag},
            "post_promotion_analysis": error_rate_analysis(),
            "promotion": {"mode": "manual"},
            "scale_down_delay_seconds": 1,
            "abort_scale_down_delay_seconds": 2,
            "ready_timeout_seconds": 60,
        }
        v2_started = time.monotonic()
        out = await temporal(
            dev_env,
            "workflow", "update", "execute", "--workflow-id", f"agent/{agent}", "--name",
            "deploy", "--input", json.dumps(v2_request),
        )  # fmt: skip
        assert v2_id in out, out
        v2 = client.get_workflow_handle(v2_id, result_type=DeploymentReport)

        async def awaiting_promotion() -> None:
            st = await v2.query(BlueGreenDeployment.status)
            assert st.phase == "AWAITING_PROMOTION", st.phase
            assert st.service is not None and st.service.preview_color == "green"

        await eventually(awaiting_promotion, "v2 AWAITING_PROMOTION", timeout=45)
        # The preview port serves v2 on green while the active one still serves blue.
        preview = (await v2.query(BlueGreenDeployment.status)).service
        assert preview is not None and preview.preview_url is not None
        async with httpx.AsyncClient(timeout=5) as h:
            r = await h.post(f"{preview.preview_url}/execute", json={"prompt": "hi"})
        assert (r.status_code, r.headers["x-fleetops-color"], r.json()["version"]) == (
            200, "green", "v2",
        )  # fmt: skip
        assert {s.color for s in load.samples} == {"blue"}

        approved_at = time.monotonic()
        out = await temporal(
            dev_env,
            "workflow", "update", "execute", "--workflow-id", v2_id, "--name", "decide",
            "--input", json.dumps({"approver": "alice", "comment": "ok", "approved": True}),
        )  # fmt: skip
        assert "alice" in out or "approved" in out.lower(), out
        report2 = await asyncio.wait_for(v2.result(), timeout=45)
        v2_done = time.monotonic()
        assert report2.outcome == "promoted", report2.message
        assert (report2.active_version, report2.active_color) == ("v2", "green")
        assert report2.analyses["post_promotion"].phase == "Successful", report2.analyses
        assert [d.approver for d in report2.approvals] == ["alice"]
        assert report2.switched_at is not None and report2.promoted_at is not None
        assert report2.switched_at >= report2.promoted_at

        # No request failed; blue until the switch, green after it.
        window2 = load.between(v2_started, v2_done)
        failed2 = [s for s in window2 if s.status is None or not 200 <= s.status < 300]
        assert not failed2, f"{len(failed2)}/{len(window2)} requests failed: {failed2[:5]}"
        assert len(window2) >= 20, f"only {len(window2)} requests during the v2 deployment"
        first_green = next(s for s in window2 if s.color == "green")
        assert window2[0].color == "blue" and window2[-1].color == "green"
        assert approved_at <= first_green.ended
        late_blue = [s for s in window2 if s.color == "blue" and s.started > first_green.ended]
        assert not late_blue, f"blue after the first green response: {late_blue[:3]}"
        assert {(s.color, s.version) for s in window2} <= {("blue", "v1"), ("green", "v2")}

        async def v2_live() -> Any:
            st = await status(handle)
            assert (st.version, st.active_color, st.state) == ("v2", "green", AgentState.READY), st
            assert st.deployment_id is None
            assert len(st.replicas) == 2 and all(r.healthy for r in st.replicas)
            return st

        st2 = await eventually(v2_live, "the agent on v2/green")
        await assert_consistent(platform, handle, agent, "v2")
        green_pids = {r.pid for r in st2.replicas}
        assert tagged_pids(tag) == green_pids  # blue (v1) was scaled down
        assert await platform.list_replicas(agent, "blue") == []

        # --- v3: auto promotion, 50% errors -> automatic rollback -------------------------
        v3_id = f"deploy/{agent}/v3"
        v3_request = {
            **v2_request,
            "version": "v3",
            "env": {TAG_VAR: tag, "FAULT_ERROR_RATE": "0.5"},
            "promotion": {"mode": "auto"},
        }
        v3_started = time.monotonic()
        out = await temporal(
            dev_env,
            "workflow", "update", "execute", "--workflow-id", f"agent/{agent}", "--name",
            "deploy", "--input", json.dumps(v3_request),
        )  # fmt: skip
        assert v3_id in out, out
        v3 = client.get_workflow_handle(v3_id, result_type=DeploymentReport)
        report3 = await asyncio.wait_for(v3.result(), timeout=60)
        v3_done = time.monotonic()
        assert report3.outcome == "rolled_back", report3.message
        assert "post_promotion analysis failed" in report3.message, report3.message
        assert (report3.active_version, report3.active_color) == ("v2", "green")
        errors = report3.analyses["post_promotion"].metrics[0]
        assert errors.phase == "Failed" and errors.measurements[-1].value is not None
        assert errors.measurements[-1].value >= 0.05, errors
        assert report3.switched_at is not None
        assert report3.rollback_started_at is not None and report3.switched_back_at is not None
        assert report3.switched_at <= report3.rollback_started_at <= report3.switched_back_at
        phases = [p.phase for p in report3.phases]
        assert phases[-2:] == ["ROLLING_BACK", "ROLLED_BACK"] and "SCALING_DOWN_OLD" not in phases

        # Traffic went to v3 (blue) and came back to v2 (green); only v3's injected 500s failed.
        window3 = load.between(v3_started, v3_done)
        assert {(s.color, s.version) for s in window3 if s.status == 200} == {
            ("green", "v2"), ("blue", "v3"),
        }  # fmt: skip
        bad = [
            s for s in window3 if s.status != 200 and not (s.status == 500 and s.color == "blue")
        ]
        assert not bad, f"failures other than v3's injected errors: {bad[:5]}"
        assert window3[-1].color == "green"
        # v3's replicas were scaled down after abort_scale_down_delay_seconds.
        assert await platform.list_replicas(agent, "blue") == []

        async def still_v2() -> None:
            st = await status(handle)
            assert (st.version, st.active_color, st.state) == ("v2", "green", AgentState.READY), st
            assert st.deployment_id is None
            assert st.service is not None and st.service.active_color == "green"
            assert st.service.preview_color is None
            assert {r.pid for r in st.replicas} == green_pids

        await eventually(still_v2, "the agent back on v2/green")
        await assert_consistent(platform, handle, agent, "v2")
        assert tagged_pids(tag) == green_pids

        async def more_traffic() -> None:  # after the rollback: all green, all fine
            assert len(load.between(v3_done, time.monotonic())) >= 10

        await eventually(more_traffic, "traffic after the rollback")
    finally:
        await load.stop()
    after = load.between(v3_done, time.monotonic())
    assert after and all(s.status == 200 and s.color == "green" for s in after), after[:5]

    await handle.signal(AgentLifecycle.shutdown)
    report = await asyncio.wait_for(handle.result(), timeout=30)
    assert report.final_state == AgentState.TERMINATED
    await eventually(lambda: _no_pids(tag), "every replica stopped", timeout=15)


async def assert_consistent(platform: Any, handle: Any, agent: str, version: str) -> None:
    """The cross-workflow invariant once no deployment runs: the Service's active colour is the
    agent's, only that colour runs, and its replicas carry the agent's version label."""
    st = await status(handle)
    svc = await platform.describe_service(agent)
    assert st.deployment is None and svc is not None and svc.active_color == st.active_color
    assert svc.preview_color is None
    active = await platform.list_replicas(agent, st.active_color)
    other = await platform.list_replicas(agent, "blue" if st.active_color == "green" else "green")
    assert active and not other, (active, other)
    assert {r.version for r in active} == {st.version} == {version}


async def _no_pids(tag: str) -> None:
    assert tagged_pids(tag) == set()
