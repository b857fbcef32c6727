"""Fleet scale: N agents probed every 10 s by the data-plane prober, against a bare httpx loop.

Run ``uv run python bench/fleet_scale.py --agents N --seconds S``. One real Temporal dev server
(``bench/lifecycle.py``'s ``start_dev_server``) and the production worker
(``worker.fleetops_worker`` with ``bench/lifecycle.py``'s no-op platform) in this process; every
agent has one replica at ``health.interval_seconds: 10`` with ``health.probing: data-plane``.
The replicas' health endpoints are one keep-alive HTTP/1.1 server in a child process
(:func:`serve`, each path one replica, so one can be made unhealthy), so the CPU of this
process is the worker's (and the bare loop's) alone.

Measured over S seconds after all agents are READY (or ERROR, counted):

- probes achieved / demanded (hits at the endpoint server / N x S / 10) and rounds later than
  1 s (a gap between two probes of one replica longer than interval + 1 s);
- worker CPU (this process) and dev server CPU (its process), in cores; RSS of both;
- history events per agent-hour: events the agents' histories grew in the window, plus the
  prober's hourly lease report (6 events), per agent-hour;
- detection latency: 50 replicas made unhealthy (HTTP 503) -> their agent DEGRADED (the
  transition's time), p50/p95.

Before Temporal starts, the baseline: a plain asyncio loop probing the same N endpoints every
10 s over one keep-alive client (no Temporal), the same figures (detection: 3 consecutive
failures seen). ``vs_bare_cpu`` = (worker + server cores) / bare cores. The figures are printed
before the worker is stopped with its agents running (as an operator restarts a worker); how
long that took is printed after, or that it did not end within ``STOP_SECONDS``. The bare
loop's client is the prober's (aiohttp, :mod:`activities.http_probe`), the physical limit of
this design, and both loops probe with the prober host's collector threshold
(``worker.tune_gc``: the bare loop in this process, the prober host in its child process, this
process keeping Python's default for the worker as ``python worker.py`` does);
``--bare-client httpx`` runs it over httpx instead (on 2 cores it reaches about
325 probes/s at a full core, a third of what 10,000 agents demand).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import random
import sys
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from temporalio.service import RPCError  # noqa: E402

from activities.http_probe import http_probe  # noqa: E402
from activities.prober import Probe  # noqa: E402
from activities.probes import ProbeActivities  # noqa: E402
from bench.lifecycle import (  # noqa: E402
    NoopPlatform,
    bounded,
    count_in,
    dev_server_pid,
    rss_kib,
    start_dev_server,
    start_many,
    wait_settled,
)
from fleetops.models import (  # noqa: E402
    AgentLifecycleInput,
    AgentState,
    AgentStatus,
    Color,
    HealthCheck,
    Replica,
)
from fleetops.settings import Settings  # noqa: E402
from worker import fleetops_worker, tune_gc  # noqa: E402
from workflows.agent_lifecycle import AgentLifecycle  # noqa: E402
from workflows.lifecycle_prober import LEASE_SECONDS  # noqa: E402

INTERVAL = 10.0
THRESHOLD = 3
LEASE_EVENTS = 6
"""Events of one lease report: activity scheduled, started, completed; one workflow task."""
DETECT_SAMPLE = 50
STOP_SECONDS = 120.0
"""How long the worker's stop may take before the run abandons it."""


# --- the endpoint server (child process) ----------------------------------------------------


async def serve() -> None:
    """Answer ``GET /<agent>/health`` 200 (or 503 once ``POST /break/<agent>``); ``GET
    /stats`` gives hits and late gaps. Prints the port, then serves until killed."""
    last: dict[bytes, float] = {}
    broken: set[bytes] = set()
    stats = {"hits": 0, "gaps": 0, "late": 0}

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                method, path = head.split(b" ", 2)[:2]
                if path == b"/stats":
                    body = repr(stats).replace("'", '"').encode()
                    status = b"200 OK"
                elif method == b"POST":
                    broken.add(path.removeprefix(b"/break"))
                    body, status = b"{}", b"200 OK"
                else:
                    agent = path.rsplit(b"/", 1)[0]
                    now = time.monotonic()
                    stats["hits"] += 1
                    if agent in last:
                        stats["gaps"] += 1
                        stats["late"] += now - last[agent] > INTERVAL + 1.0
                    last[agent] = now
                    bad = agent in broken
                    status = b"503 Unavailable" if bad else b"200 OK"
                    body = b'{"status": "down"}' if bad else b'{"status": "ok", "in_flight": 0}'
                writer.write(
                    b"HTTP/1.1 " + status + b"\r\nContent-Type: application/json\r\n"
                    b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=4096)
    print(server.sockets[0].getsockname()[1], flush=True)
    await asyncio.Event().wait()


class FleetPlatform(NoopPlatform):
    """The no-op platform with one endpoint per agent: ``<base>/<agent_id>``."""

    def _replicas(self, agent_id: str, color: Color) -> list[Replica]:
        n = self._counts.get((agent_id, color), 0)
        return [
            Replica(index=i, endpoint=f"{self._endpoint}/{agent_id}", color=color) for i in range(n)
        ]


# --- measurement helpers -------------------------------------------------------------------


def cpu_seconds(pid: int | str = "self") -> float:
    """User + system CPU seconds of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def prober_children() -> list[int]:
    """Pids of this process's child prober hosts (``python -m worker prober-host``)."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmd = (d / "cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == os.getpid() and b"prober-host" in cmd:
            found.append(int(d.name))
    return found


def worker_cpu(probers: list[int]) -> float:
    """CPU seconds of the worker: this process and its prober host children."""
    return cpu_seconds() + sum(cpu_seconds(p) for p in probers)


async def stats(http: httpx.AsyncClient, base: str) -> dict[str, int]:
    r = await http.get(base + "/stats")
    return dict(r.json())


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


# --- the Temporal run -----------------------------------------------------------------------


async def run_temporal(
    args: argparse.Namespace, base: str, http: httpx.AsyncClient, bare: dict
) -> None:
    """Start the agents, measure them, print the report (:func:`report`, with ``bare``'s
    figures), then stop the worker (:func:`stop_worker`) and the dev server."""
    env = await start_dev_server()
    server = dev_server_pid()
    assert server is not None, "dev server process not found"
    settings = Settings(
        prober_heartbeat_seconds=args.heartbeat_seconds or 10.0,
        max_cached_workflows=args.cache if args.cache is not None else args.agents + 100,
        max_concurrent_workflow_tasks=args.workflow_tasks,
        prober_process=not args.in_process,
    )
    tq = "fleet-scale"
    ids = [f"fs-{i:05d}" for i in range(args.agents)]
    inputs = [
        AgentLifecycleInput(
            agent_id=a,
            health=HealthCheck(
                interval_seconds=INTERVAL,
                failure_threshold=THRESHOLD,
                probing="data-plane",
            ),
        )
        for a in ids
    ]
    out: dict[str, Any] = {}
    try:
        worker = contextlib.AsyncExitStack()
        await worker.enter_async_context(
            fleetops_worker(env.client, settings, platform=FleetPlatform(base), task_queue=tq)
        )
        try:
            t0 = time.monotonic()
            handles = await start_many(
                env.client, AgentLifecycle.run, inputs, [f"agent/{a}" for a in ids], tq
            )
            await wait_settled(
                env.client, tq, args.agents, deadline_s=args.settle_seconds, poll_s=2.0
            )
            out["ramp_s"] = time.monotonic() - t0
            out["error_at_start"] = await count_in(env.client, tq, AgentState.ERROR)
            print(f"all settled in {out['ramp_s']:.0f}s, {out['error_at_start']} ERROR", flush=True)
            await asyncio.sleep(INTERVAL * 2)  # steady state: every prober past its offset
            sample = handles[: min(len(handles), 200)]
            ev0 = await bounded(sample, history_length)
            probers = prober_children()
            s0, w0, d0 = await stats(http, base), worker_cpu(probers), cpu_seconds(server)
            t1 = time.monotonic()
            await asyncio.sleep(args.seconds)
            wall = time.monotonic() - t1
            s1, w1, d1 = await stats(http, base), worker_cpu(probers), cpu_seconds(server)
            ev1 = await bounded(sample, history_length)
            out.update(figures(args, s0, s1, wall))
            out["worker_cpu"] = (w1 - w0) / wall
            out["server_cpu"] = (d1 - d0) / wall
            out["prober_rss_mib"] = sum(rss_kib(p) or 0 for p in probers) / 1024
            out["worker_rss_mib"] = (rss_kib() or 0) / 1024 + out["prober_rss_mib"]
            out["server_rss_mib"] = (rss_kib(server) or 0) / 1024
            grown = sum(b - a for a, b in zip(ev0, ev1, strict=True)) / len(sample)
            out["events_window_per_agent_hour"] = grown * 3600 / wall
            out["events_per_agent_hour"] = grown * 3600 / wall + LEASE_EVENTS * 3600 / LEASE_SECONDS
            out["detect"] = await detect_temporal(handles[-DETECT_SAMPLE:], base, http)
            report(args, out, bare)  # before the shutdown: its figures are the run's
        finally:
            await stop_worker(worker)
    finally:
        await env.shutdown()  # the agents go with the in-memory dev server


async def stop_worker(worker: contextlib.AsyncExitStack) -> None:
    """Stop the worker with its agents running, as an operator restarts one; print how long the
    stop took, or that it did not end within :data:`STOP_SECONDS` (then it is abandoned)."""
    stopping = time.monotonic()
    try:
        await asyncio.wait_for(worker.aclose(), STOP_SECONDS)
        print(f"worker stopped in {time.monotonic() - stopping:.0f}s", flush=True)
    except TimeoutError:
        print(f"worker did not stop within {STOP_SECONDS:g}s (abandoned)", flush=True)


async def history_length(h: Any) -> int:
    return len((await h.fetch_history()).events)


def figures(args: argparse.Namespace, s0: dict, s1: dict, wall: float) -> dict[str, Any]:
    hits = s1["hits"] - s0["hits"]
    gaps = s1["gaps"] - s0["gaps"]
    demanded = args.agents * wall / INTERVAL
    return {
        "achieved": hits / wall,
        "demanded": demanded / wall,
        "achieved_ratio": hits / demanded,
        "late_ratio": (s1["late"] - s0["late"]) / gaps if gaps else 0.0,
    }


async def detect_temporal(handles: list[Any], base: str, http: httpx.AsyncClient) -> list[float]:
    """Break one replica of each agent; seconds from the break to its DEGRADED transition."""
    broken_at: dict[str, datetime] = {}
    for h in handles:
        agent = h.id.removeprefix("agent/")
        await http.post(f"{base}/break/{agent}")
        broken_at[h.id] = datetime.now(UTC)
    latencies: dict[str, float] = {}
    deadline = time.monotonic() + INTERVAL * THRESHOLD * 3 + 30
    while len(latencies) < len(handles) and time.monotonic() < deadline:
        for h in handles:
            if h.id in latencies:
                continue
            try:
                st: AgentStatus = await h.query(AgentLifecycle.status)
            except RPCError:
                continue  # a query that timed out under load: ask again next time
            for t in st.transitions:
                if t.to_state == AgentState.DEGRADED and t.at >= broken_at[h.id]:
                    latencies[h.id] = (t.at - broken_at[h.id]).total_seconds()
        await asyncio.sleep(0.5)
    return list(latencies.values())


# --- the bare baseline ----------------------------------------------------------------------


@contextlib.asynccontextmanager
async def bare_probe(kind: str, connections: int) -> AsyncIterator[Probe]:
    """The bare loop's probe: the prober host's own (``aiohttp``) or the activities' (``httpx``,
    one keep-alive client without retries)."""
    if kind == "aiohttp":
        async with http_probe(connections) as probe:
            yield probe
        return
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    transport = httpx.AsyncHTTPTransport(retries=0, limits=limits)
    async with httpx.AsyncClient(transport=transport) as client:
        yield ProbeActivities(client)


async def run_bare(args: argparse.Namespace, base: str, http: httpx.AsyncClient) -> dict:
    """N asyncio tasks, each probing its endpoint every 10 s over one keep-alive client
    (``--bare-client``: the prober's aiohttp probe by default, or httpx), at most
    ``max_concurrent_probes`` in flight (as the prober host; without a bound, httpcore's pool
    scans its queue for every request and the loop collapses past a few thousand endpoints)."""
    probes = Settings().max_concurrent_probes  # the prober's bound, so the loops compare fairly
    gate = asyncio.Semaphore(probes)
    urls = [f"{base}/bare-{i:05d}" for i in range(args.agents)]
    failures = [0] * args.agents
    detected: dict[int, float] = {}
    broken_at: dict[int, float] = {}
    stop = asyncio.Event()
    async with bare_probe(args.bare_client, probes) as client:

        async def loop(i: int) -> None:
            await asyncio.sleep(random.uniform(0, INTERVAL))
            while not stop.is_set():
                started = time.monotonic()
                async with gate:
                    ok = (await client.probe_one(urls[i], "/health", 2.0)).healthy
                failures[i] = 0 if ok else failures[i] + 1
                if failures[i] >= THRESHOLD and i in broken_at and i not in detected:
                    detected[i] = time.monotonic() - broken_at[i]
                await asyncio.sleep(max(0.0, INTERVAL - (time.monotonic() - started)))

        tasks = [asyncio.create_task(loop(i)) for i in range(args.agents)]
        await asyncio.sleep(INTERVAL * 2)
        s0, w0, t1 = await stats(http, base), cpu_seconds(), time.monotonic()
        await asyncio.sleep(args.seconds)
        wall = time.monotonic() - t1
        s1, w1 = await stats(http, base), cpu_seconds()
        out = figures(args, s0, s1, wall)
        out["cpu"] = (w1 - w0) / wall
        out["rss_mib"] = (rss_kib() or 0) / 1024
        for i in range(args.agents - DETECT_SAMPLE, args.agents):
            await http.post(f"{base}/break/bare-{i:05d}")
            broken_at[i] = time.monotonic()
        deadline = time.monotonic() + INTERVAL * THRESHOLD * 3
        while len(detected) < DETECT_SAMPLE and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
        out["detect"] = list(detected.values())
        stop.set()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return out


async def run(args: argparse.Namespace) -> None:
    default_gc = gc.get_threshold()
    tune_gc(Settings())  # the bare loop runs as the prober host does (worker.tune_gc)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--serve", stdout=asyncio.subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        base = f"http://127.0.0.1:{int(await proc.stdout.readline())}"
        async with httpx.AsyncClient() as http:
            bare = await run_bare(args, base, http)
            if not args.in_process:  # the worker keeps the default; its child prober host tunes
                gc.set_threshold(*default_gc)
            await run_temporal(args, base, http, bare)
    finally:
        proc.kill()
        await proc.wait()


def report(args: argparse.Namespace, t: dict, b: dict) -> None:
    cores = t["worker_cpu"] + t["server_cpu"]
    tp95, bp95 = pct(t["detect"], 0.95), pct(b["detect"], 0.95)
    hb = args.heartbeat_seconds or 10.0
    cache = args.cache if args.cache is not None else args.agents + 100
    print(
        f"agents={args.agents} seconds={args.seconds} interval={INTERVAL:g}s heartbeat={hb:g}s"
        f" workflow cache={cache} workflow tasks={args.workflow_tasks}"
        f" prober host {'in process' if args.in_process else 'in a child process'}"
    )
    print(f"ramp to settled: {t['ramp_s']:.0f}s, ERROR at start: {t['error_at_start']}")
    for name, d in (("prober", t), ("bare", b)):
        print(
            f"{name}: probes/s {d['achieved']:.1f} / {d['demanded']:.1f} "
            f"(ratio {d['achieved_ratio']:.3f}), rounds late >1s {d['late_ratio']:.2%}"
        )
    print(
        f"prober: worker CPU {t['worker_cpu']:.2f} cores, dev server CPU {t['server_cpu']:.2f}"
        f" cores, worker RSS {t['worker_rss_mib']:.0f} MiB (prober host"
        f" {t['prober_rss_mib']:.0f} MiB), server RSS"
        f" {t['server_rss_mib']:.0f} MiB"
    )
    print(f"bare ({args.bare_client}): CPU {b['cpu']:.2f} cores, RSS {b['rss_mib']:.0f} MiB")
    print(
        f"history events per agent-hour: {t['events_per_agent_hour']:.2f} (window"
        f" {t['events_window_per_agent_hour']:.2f} + hourly lease report)"
    )
    print(
        f"detection (replica unhealthy -> DEGRADED): p50 {pct(t['detect'], 0.5):.1f}s p95"
        f" {tp95:.1f}s over {len(t['detect'])}; bare (3 failures seen): p50"
        f" {pct(b['detect'], 0.5):.1f}s p95 {bp95:.1f}s over {len(b['detect'])}"
    )
    vs = cores / b["cpu"] if b["cpu"] > 0 else float("inf")
    print(
        f"fleet_scale agents={args.agents} achieved_ratio={t['achieved_ratio']:.3f}"
        f" cpu_cores={cores:.2f} worker_rss_mib={t['worker_rss_mib']:.0f}"
        f" server_rss_mib={t['server_rss_mib']:.0f}"
        f" events_per_agent_hour={t['events_per_agent_hour']:.2f} detect_p95_s={tp95:.1f}"
        f" vs_bare_cpu={vs:.2f}",
        flush=True,
    )


def main(argv: list[str] | None = None) -> None:
    """Command line: ``--agents N --seconds S`` (``--serve`` runs the endpoint server)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--agents", type=int, default=1000)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument(
        "--heartbeat-seconds",
        type=float,
        default=None,
        help="FLEETOPS_PROBER_HEARTBEAT_SECONDS: the prober host's lease (default 10)",
    )
    p.add_argument(
        "--cache",
        type=int,
        default=None,
        help="FLEETOPS_MAX_CACHED_WORKFLOWS of the worker (default: agents + 100)",
    )
    p.add_argument(
        "--workflow-tasks",
        type=int,
        default=2,
        help="FLEETOPS_MAX_CONCURRENT_WORKFLOW_TASKS of the worker (default 2)",
    )
    p.add_argument(
        "--in-process",
        action="store_true",
        help="the prober host in the worker's process (default: FLEETOPS_PROBER_PROCESS=true)",
    )
    p.add_argument(
        "--bare-client",
        choices=["aiohttp", "httpx"],
        default="aiohttp",
        help="the bare loop's HTTP client: the prober's (aiohttp, default) or httpx",
    )
    p.add_argument(
        "--settle-seconds",
        type=float,
        default=3600.0,
        help="how long all agents may take to settle (READY or ERROR) before the run fails"
        " (10,000 agents started at once take over 30 minutes on 2 cores)",
    )
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    asyncio.run(serve() if args.serve else run(args))


if __name__ == "__main__":
    main()
