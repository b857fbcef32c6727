"""The composition root: read settings, build clients and activities, run the FleetOps worker.

Run it on its own against any Temporal cluster with ``python worker.py`` (or ``fleetops worker``);
``fleetops up`` runs the same worker next to an embedded dev server. SIGINT/SIGTERM stop it
cleanly: polling stops, running activities finish or are cancelled after the graceful timeout;
a shutdown that has not ended after ``STOP_SECONDS`` is given up (logged), so the process exits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from datetime import timedelta

import httpx
import prometheus_client
from temporalio.client import Client
from temporalio.worker import Interceptor, Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from activities.agent_control import AgentControlActivities
from activities.agent_secrets import AgentSecretValues
from activities.containment import ContainmentActivities
from activities.deployments import DeploymentActivities
from activities.http_probe import http_probe
from activities.incident_evidence import EvidenceActivities
from activities.incident_intake import IncidentIntakeActivities
from activities.incident_review import IncidentActivities
from activities.llm import LlmActivities
from activities.metrics import MetricsActivities
from activities.notify import NotifyActivities
from activities.platform import Platform, PlatformActivities, build_platform
from activities.platform.k8s_drain import NodeDrain
from activities.prober import ProberActivities
from activities.prober_host import ProberHost
from activities.probes import ProbeActivities
from activities.quota import ReplicaQuota
from activities.recovery import RecoveryActivities
from activities.secret_stores import SecretResolver, build_secret_store
from activities.secrets import SecretActivities
from fleetops.client import connect
from fleetops.settings import Settings, get_settings
from workflows.agent_lifecycle import AgentLifecycle
from workflows.blue_green import BlueGreenDeployment
from workflows.incident_response import IncidentResponse
from workflows.maintenance import Maintenance
from workflows.payload_guard import MessageGuard
from workflows.prober_lease import ProberLease

log = logging.getLogger("fleetops.worker")

HEARTBEAT_THROTTLE = timedelta(seconds=0.5)
"""Longest interval between two heartbeats the worker sends for one activity (the SDK's default
is 0.8 x heartbeat_timeout, up to 60 s). A heartbeat's answer is how an activity learns that it
was cancelled or that its workflow ended (terminate): with 0.5 s, an activity that starts
replicas stops within about a second, whatever heartbeat timeout its workflow set."""

WORKFLOWS: Sequence[type] = (
    AgentLifecycle,
    BlueGreenDeployment,
    IncidentResponse,
    Maintenance,
    ProberLease,
)
"""Every workflow the FleetOps worker runs."""
WORKFLOW_RUNNER = SandboxedWorkflowRunner(
    restrictions=SandboxRestrictions.default.with_passthrough_modules("workflows")
)
"""The sandbox of the FleetOps worker, with the ``workflows`` package passed through.

The sandbox re-imports every module that is not passed through once per workflow run, and the
``workflows`` modules define pydantic models. Measured bringing up 1,000 data-plane agents on
2 cores, all cached: 0.30 MiB of worker RSS and 82 ms of worker CPU per agent with them
sandboxed, 0.15 MiB and 51 ms passed through. Temporal's sandbox guide asks for exactly this:
pass through models and other modules "whose calls will be deterministic". The ``workflows``
modules hold no mutable module state (their module-level tables are constants). The
restriction checks (no ``datetime.now()``, no I/O) still run in the tests on the modules that
define workflows: the tests build their workers with the default, strict sandbox
(``tests/conftest.py`` ``new_worker``), and the replay tests replay the stored histories under
it. (Those modules import their helpers, the mixins and ``*_calls`` modules, passed through, so
the helpers are not checked by the sandbox in either case.)"""
INTERCEPTORS: Sequence[Interceptor] = (MessageGuard(),)
"""Worker interceptors: ``MessageGuard`` drops a signal whose payload count does not fit."""


@contextlib.asynccontextmanager
async def fleetops_worker(
    client: Client,
    settings: Settings,
    *,
    platform: Platform | None = None,
    task_queue: str | None = None,
) -> AsyncIterator[Worker]:
    """Build the worker with every FleetOps workflow and activity, and run it while in the block.

    Args:
        client: a connected client (see :func:`fleetops.client.connect`).
        settings: FleetOps settings (platform, concurrency).
        platform: platform to use instead of the one ``settings.platform.kind`` names.
        task_queue: task queue instead of ``settings.temporal.task_queue``.

    Yields:
        The running worker.

    Raises:
        activities.platform.PlatformError: the configured platform is unavailable.
    """
    platform = platform or build_platform(settings)
    # Temporal owns retries, so the HTTP client makes exactly one attempt per call.
    limits = httpx.Limits(
        max_connections=settings.max_concurrent_probes,
        max_keepalive_connections=settings.max_concurrent_probes,
    )
    transport = httpx.AsyncHTTPTransport(retries=0, limits=limits)
    async with httpx.AsyncClient(transport=transport) as http:
        probes = ProbeActivities(http)
        platform_activities = PlatformActivities(platform)
        notify = NotifyActivities(http, settings.approval)
        metrics = MetricsActivities(http, settings.metrics)
        store = build_secret_store(settings)
        secret_activities = SecretActivities(store)
        drain = NodeDrain(
            getattr(platform, "api_client", None)
            if settings.platform.kind == "kubernetes"
            else None,
            settings.platform.kubernetes.namespace,
        )
        secret_values = AgentSecretValues(client, SecretResolver(store))
        llm = LlmActivities(http, settings.llm, secret_values=secret_values)
        incident = IncidentActivities(settings.incidents, settings.llm, settings.state_dir)
        quota = ReplicaQuota(
            platform_activities.provision_replicas,
            max_replicas_per_agent=settings.max_replicas_per_agent,
        )
        worker = Worker(
            client,
            task_queue=task_queue or settings.temporal.task_queue,
            workflows=list(WORKFLOWS),
            activities=[
                quota.provision_replicas,  # the platform's, within max_replicas_per_agent
                platform_activities.restart_replicas,
                platform_activities.deprovision_agent,
                platform_activities.list_replicas,
                platform_activities.scale_down_color,
                platform_activities.switch_traffic,
                platform_activities.describe_service,
                probes.probe_replicas,
                probes.wait_healthy,
                probes.run_smoke_tests,
                DeploymentActivities(client).describe_deployment,
                notify.send_notification,
                notify.approval_policy,
                notify.approver_roles,
                metrics.measure_metric,
                *agent_control_activities(AgentControlActivities(client)),
                secret_activities.rotate_secret,
                secret_activities.restore_secret,
                secret_activities.confirm_secret,
                secret_activities.secret_versions,
                platform_activities.rolling_restart,
                drain.agent_nodes,
                drain.cordon_node,
                drain.drain_node,
                drain.uncordon_node,
                IncidentIntakeActivities(client).open_incident,
                EvidenceActivities(
                    client, platform, http, settings.metrics, secret_values=secret_values
                ).gather_evidence,
                ContainmentActivities(
                    client,
                    platform,
                    notify,
                    max_replicas_per_agent=settings.max_replicas_per_agent,
                ).run_containment,
                RecoveryActivities(client, http, settings.metrics).check_recovery,
                llm.llm_triage,
                llm.llm_policy,
                incident.incident_policy,
                incident.write_review,
            ],
            interceptors=list(INTERCEPTORS),
            workflow_runner=WORKFLOW_RUNNER,
            max_cached_workflows=settings.max_cached_workflows,
            max_concurrent_workflow_tasks=settings.max_concurrent_workflow_tasks,
            max_concurrent_activities=settings.max_concurrent_activities,
            graceful_shutdown_timeout=timedelta(seconds=10),
            max_heartbeat_throttle_interval=HEARTBEAT_THROTTLE,
        )
        async with worker, prober_host(client, settings, worker.task_queue):
            yield worker


@contextlib.asynccontextmanager
async def prober_workers(
    client: Client, settings: Settings, task_queue: str
) -> AsyncIterator[ProberHost]:
    """Run this process's prober host: its shared-queue and own-queue workers.

    The shared queue ``<task_queue>-probers`` carries assignments and releases; the host's own
    queue ``<task_queue>-probers-<host_id>`` its agents' watches and its lease heartbeat
    (:mod:`activities.prober_host`). Separate from the main worker, so long watches never take
    the activity slots provisioning needs. The watches probe over one keep-alive aiohttp
    session (:mod:`activities.http_probe`) of ``max_concurrent_probes`` connections.

    Args:
        client: a connected client.
        settings: ``max_concurrent_probers``, ``max_concurrent_probes``,
            ``prober_heartbeat_seconds``.
        task_queue: the workflows' task queue.

    Yields:
        The running host (``host_id``, ``task_queue``).
    """
    async with http_probe(settings.max_concurrent_probes) as probe:
        host = ProberHost(
            client,
            ProberActivities(probe, max_concurrent_probes=settings.max_concurrent_probes),
            task_queue,
            heartbeat_seconds=settings.prober_heartbeat_seconds,
        )
        shared = Worker(
            client,
            task_queue=host.shared_queue,
            activities=host.shared_activities(),
            graceful_shutdown_timeout=timedelta(seconds=2),
        )
        own = Worker(
            client,
            task_queue=host.task_queue,
            activities=host.host_activities(),
            max_concurrent_activities=settings.max_concurrent_probers + 1,  # + the lease
            graceful_shutdown_timeout=timedelta(seconds=2),
        )
        async with own, shared:
            yield host


@contextlib.asynccontextmanager
async def prober_host(client: Client, settings: Settings, task_queue: str) -> AsyncIterator[None]:
    """This worker's prober host: in this process, or in a supervised child process when
    ``prober_process`` is set (:func:`prober_process`)."""
    if settings.prober_process:
        async with prober_process(client, settings, task_queue):
            yield
    else:
        async with prober_workers(client, settings, task_queue):
            yield


PROBER_READY = "prober host polling"
"""The line a child prober host prints once its workers poll."""


@contextlib.asynccontextmanager
async def prober_process(
    client: Client, settings: Settings, task_queue: str
) -> AsyncIterator[asyncio.subprocess.Process]:
    """Run the prober host in a child process (``python -m worker prober-host``), restarted
    1 s after it exits, stopped (SIGTERM, then SIGKILL after 10 s) when the block ends.

    The child connects like the worker (settings from the environment: TLS, API key,
    encryption) to the address and namespace of ``client``; the prober settings go on its
    command line. A restarted child is a new host: its old lease expires and its agents move.

    Yields:
        The first child process (its ``pid``), once it polls.

    Raises:
        RuntimeError: the first child did not start polling within 60 s.
    """
    cmd = [
        sys.executable, "-m", "worker", "prober-host",
        "--address", client.service_client.config.target_host,
        "--namespace", client.namespace,
        "--task-queue", task_queue,
        "--heartbeat-seconds", str(settings.prober_heartbeat_seconds),
        "--max-concurrent-probes", str(settings.max_concurrent_probes),
        "--max-concurrent-probers", str(settings.max_concurrent_probers),
        "--gc-threshold", str(settings.gc_threshold),
        "--parent-pid", str(os.getpid()),
    ]  # fmt: skip
    stopping = False
    current: list[asyncio.subprocess.Process] = []

    async def spawn() -> asyncio.subprocess.Process:
        proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE)
        current[:] = [proc]
        assert proc.stdout is not None
        while True:
            line = await asyncio.wait_for(proc.stdout.readline(), 60)
            if not line:
                raise RuntimeError(f"prober host exited with {await proc.wait()} before polling")
            if line.decode().startswith(PROBER_READY):
                log.info("child %s: %s", proc.pid, line.decode().strip())
                return proc

    async def supervise() -> None:
        while not stopping:
            await current[0].wait()
            if stopping:
                return
            log.warning("prober host exited with %s; starting another", current[0].returncode)
            await asyncio.sleep(1.0)
            with contextlib.suppress(Exception):
                await spawn()

    first = await spawn()
    watcher = asyncio.create_task(supervise())
    try:
        yield first
    finally:
        stopping = True
        watcher.cancel()
        proc = current[0]
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def run_prober_host(argv: Sequence[str]) -> None:
    """Entry point of a child prober host (``python -m worker prober-host ...``): run
    :func:`prober_workers` until SIGTERM/SIGINT, or until its worker (``--parent-pid``) is
    gone; print :data:`PROBER_READY` once polling."""
    p = argparse.ArgumentParser(prog="worker prober-host")
    p.add_argument("--address", required=True)
    p.add_argument("--namespace", required=True)
    p.add_argument("--task-queue", required=True)
    p.add_argument("--heartbeat-seconds", type=float, required=True)
    p.add_argument("--max-concurrent-probes", type=int, required=True)
    p.add_argument("--max-concurrent-probers", type=int, required=True)
    p.add_argument("--gc-threshold", type=int, required=True)
    p.add_argument("--parent-pid", type=int, default=None)
    args = p.parse_args(argv)
    base = get_settings().model_dump()
    base["temporal"] |= {"address": args.address, "namespace": args.namespace}
    settings = Settings.model_validate(  # validated: the arguments are the parent's settings
        base
        | {
            "prober_heartbeat_seconds": args.heartbeat_seconds,
            "max_concurrent_probes": args.max_concurrent_probes,
            "max_concurrent_probers": args.max_concurrent_probers,
            "gc_threshold": args.gc_threshold,
        }
    )
    tune_gc(settings)
    client = await connect(settings)
    stop = _stop_on_signals()
    watching = contextlib.AsyncExitStack()
    if args.parent_pid is not None:  # stop if the worker dies
        orphaned = asyncio.create_task(_stop_when_orphaned(args.parent_pid, stop))
        watching.callback(orphaned.cancel)
    async with watching, prober_workers(client, settings, args.task_queue) as host:
        print(
            f"{PROBER_READY} {host.host_id} on {host.task_queue}"
            f" (gc threshold {gc.get_threshold()[0]})",
            flush=True,
        )
        await stop.wait()


def agent_control_activities(a: AgentControlActivities) -> list[object]:
    """The agent-control activities of the ``Maintenance`` workflow."""
    return [
        a.agent_health,
        a.agent_wait_healthy,
        a.find_agents,
        a.open_incidents,
        a.agent_transition,
        a.agent_restart,
        a.agent_configure,
        a.agent_deploy,
        a.agent_abort_deployment,
    ]


async def run_worker(
    settings: Settings, *, client: Client | None = None, stop: asyncio.Event | None = None
) -> None:
    """Run the worker until ``stop`` is set or the process gets SIGINT/SIGTERM.

    Args:
        settings: FleetOps settings (``temporal.*`` says where to connect).
        client: an existing client; by default one is made from settings, serving SDK metrics on
            ``telemetry.metrics_bind_address``.
        stop: an event that ends the worker; by default SIGINT/SIGTERM set it.

    Raises:
        RuntimeError: Temporal cannot be reached.
    """
    if not settings.prober_process:  # the prober host runs here
        tune_gc(settings)
    client = client or await connect(settings, with_metrics=True)
    serve_app_metrics(settings.telemetry.app_metrics_bind_address)
    stop = stop or _stop_on_signals()
    running = contextlib.AsyncExitStack()
    worker = await running.enter_async_context(fleetops_worker(client, settings))
    try:
        log.info(
            "worker polling task queue %r on %s (namespace %s)",
            worker.task_queue,
            settings.temporal.address,
            settings.temporal.namespace,
        )
        await stop.wait()
        log.info("stopping worker")
    finally:
        await stop_within(running, STOP_SECONDS)


def tune_gc(settings: Settings) -> None:
    """Set this process's garbage-collector threshold to ``settings.gc_threshold`` (the
    youngest generation's; the older two keep theirs). Called by the process that runs the
    prober host: its child process with ``prober_process`` (the worker keeps Python's default:
    at 50,000, the worker process of 10,000 agents grew from 566 to 1,048 MiB), else the worker.

    Why: the collector scans every tracked object of an old generation when it runs
    (https://docs.python.org/3/library/gc.html#gc.set_threshold). A worker holds many
    long-lived objects (cached runs, one watch per agent); at Python's 700, the in-flight
    objects of each probe are promoted and trigger a full pass every few seconds: measured on
    a prober host of 10,000 watches, 27 % of its time in the collector and event-loop stalls
    up to 0.9 s (late probe rounds). At 50,000, no collection ran in 10 s. Cyclic garbage
    is still collected, only in larger batches (young passes every ``gc_threshold`` net
    allocations); the bounds (700 to 1,000,000) keep the collector on.
    """
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(settings.gc_threshold, older, oldest)


STOP_SECONDS = 60.0
"""How long a stopping worker may take (seconds): the 10 s graceful timeout of its activities,
the prober host's 10 s, and the SDK's own shutdown, with room to spare."""


async def stop_within(running: contextlib.AsyncExitStack, seconds: float) -> bool:
    """Close ``running`` (the worker's context) within ``seconds``; past that, log an error and
    give up on it, so a stop request always ends the process.

    Nothing is lost by giving up: Temporal re-dispatches what this worker held (workflow tasks
    after their timeout, activities after their heartbeat timeout) to the next worker. A stuck
    SDK shutdown has been seen when many agents were terminated just before the stop.

    Returns:
        True when the worker stopped in time.
    """
    try:
        await asyncio.wait_for(running.aclose(), seconds)
    except TimeoutError:
        log.error(
            "worker did not stop within %g s; exiting without it (Temporal hands its tasks"
            " to the next worker)",
            seconds,
        )
        return False
    log.info("worker stopped")
    return True


def serve_app_metrics(bind_address: str | None) -> None:
    """Serve the process's prometheus_client registry (``fleetops_llm_*``) on ``host:port``.

    Args:
        bind_address: ``host:port``; None or empty serves nothing.

    Raises:
        ValueError: the address is not ``host:port``.
        OSError: the port cannot be bound.
    """
    if not bind_address:
        return
    host, _, port = bind_address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"telemetry.app_metrics_bind_address {bind_address!r} is not host:port")
    prometheus_client.start_http_server(int(port), addr=host)
    log.info("FleetOps metrics at http://%s/metrics", bind_address)


ORPHAN_CHECK_SECONDS = 1.0
"""How often a child prober host checks that its worker still runs."""


async def _stop_when_orphaned(parent_pid: int, stop: asyncio.Event) -> None:
    """Set ``stop`` once this process's parent is no longer ``parent_pid`` (the worker died,
    even by SIGKILL, which runs none of its clean-up): an orphaned host would keep its lease
    and its agents, so they would never move to the restarted worker's host."""
    while os.getppid() == parent_pid:
        await asyncio.sleep(ORPHAN_CHECK_SECONDS)
    log.warning("prober host: worker %s is gone; stopping", parent_pid)
    stop.set()


def _stop_on_signals() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


def main() -> None:
    """Entry point of ``python worker.py``: run the worker with settings from the environment
    (``python -m worker prober-host ...``: a child prober host, see :func:`prober_process`)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if sys.argv[1:2] == ["prober-host"]:
        asyncio.run(run_prober_host(sys.argv[2:]))
        return
    asyncio.run(run_worker(get_settings()))


if __name__ == "__main__":
    main()
