"""The composition root: read settings, build clients and activities, run the FleetOps worker.

Run it on its own against any Temporal cluster with ``python worker.py`` (or ``fleetops worker``);
``fleetops up`` runs the same worker next to an embedded dev server. SIGINT/SIGTERM stop it
cleanly: polling stops, running activities finish or are cancelled after the graceful timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Sequence
from datetime import timedelta

import httpx
from temporalio.client import Client
from temporalio.worker import Interceptor, Worker

from activities.containment import ContainmentActivities
from activities.deployments import DeploymentActivities
from activities.incident_evidence import EvidenceActivities
from activities.incident_intake import IncidentIntakeActivities
from activities.incident_review import IncidentActivities
from activities.llm import LlmActivities
from activities.metrics import MetricsActivities
from activities.notify import NotifyActivities
from activities.platform import Platform, PlatformActivities, build_platform
from activities.probes import ProbeActivities
from activities.quota import ReplicaQuota
from activities.recovery import RecoveryActivities
from fleetops.client import connect
from fleetops.settings import Settings, get_settings
from workflows.agent_lifecycle import AgentLifecycle
from workflows.blue_green import BlueGreenDeployment
from workflows.incident_response import IncidentResponse
from workflows.payload_guard import MessageGuard

log = logging.getLogger("fleetops.worker")

HEARTBEAT_THROTTLE = timedelta(seconds=0.5)
"""Longest interval between two heartbeats the worker sends for one activity (the SDK's default
is 0.8 x heartbeat_timeout, up to 60 s). A heartbeat's answer is how an activity learns that it
was cancelled or that its workflow ended (terminate): with 0.5 s, an activity that starts
replicas stops within about a second, whatever heartbeat timeout its workflow set."""

WORKFLOWS: Sequence[type] = (AgentLifecycle, BlueGreenDeployment, IncidentResponse)
"""Every workflow the FleetOps worker runs."""
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
    async with httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(retries=0)) as http:
        probes = ProbeActivities(http)
        platform_activities = PlatformActivities(platform)
        notify = NotifyActivities(http, settings.approval)
        metrics = MetricsActivities(http, settings.metrics)
        llm = LlmActivities(http, settings.llm)
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
                IncidentIntakeActivities(client).open_incident,
                EvidenceActivities(client, platform, http, settings.metrics).gather_evidence,
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
            max_concurrent_activities=settings.max_concurrent_activities,
            graceful_shutdown_timeout=timedelta(seconds=10),
            max_heartbeat_throttle_interval=HEARTBEAT_THROTTLE,
        )
        async with worker:
            yield worker


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
    client = client or await connect(settings, with_metrics=True)
    stop = stop or _stop_on_signals()
    async with fleetops_worker(client, settings) as worker:
        log.info(
            "worker polling task queue %r on %s (namespace %s)",
            worker.task_queue,
            settings.temporal.address,
            settings.temporal.namespace,
        )
        await stop.wait()
        log.info("stopping worker")
    log.info("worker stopped")


def _stop_on_signals() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


def main() -> None:
    """Entry point of ``python worker.py``: run the worker with settings from the environment."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    asyncio.run(run_worker(get_settings()))


if __name__ == "__main__":
    main()
