"""Helpers of the alert end-to-end tests: settings, Prometheus + Alertmanager, receiver, load."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
from temporalio.client import Client

from fleetops.settings import Settings
from starters import monitoring
from starters.alert_server import bind, serve_alert_receiver
from tests.e2e_support import free_port, port_block
from tests.helpers import require_binary

TOKEN = "e2e-alert-token"


def e2e_settings(state_dir: Path, **extra: Any) -> Settings:
    replicas, gateway = port_block(), port_block()
    return Settings.model_validate(
        {
            "state_dir": state_dir,
            "platform": {
                "local": {
                    "port_range_start": replicas[0],
                    "port_range_end": replicas[1],
                    "stop_grace_seconds": 5.0,
                },
                "gateway": {"port_range_start": gateway[0], "port_range_end": gateway[1]},
            },
            "telemetry": {"metrics_bind_address": ""},
            "alerts": {"port": free_port(), "token": TOKEN},
            **extra,
        }
    )


@contextlib.asynccontextmanager
async def monitoring_stack(settings: Settings) -> AsyncIterator[monitoring.MonitoringPorts]:
    """Prometheus + Alertmanager as ``fleetops up --with-prometheus`` runs them (fast intervals)."""
    require_binary("prometheus", hint="apt-get install prometheus")
    require_binary(
        "prometheus-alertmanager", "alertmanager", hint="apt-get install prometheus-alertmanager"
    )
    ports = monitoring.MonitoringPorts(prometheus=free_port(), alertmanager=free_port())
    out = monitoring.render(settings, ports, scrape_interval="1s", rule_for="2s")
    procs = await asyncio.to_thread(monitoring.start, out, ports)
    try:
        yield ports
    finally:
        await asyncio.to_thread(monitoring.stop, procs)


@contextlib.asynccontextmanager
async def receiver(settings: Settings, client: Client, task_queue: str) -> AsyncIterator[None]:
    s = settings.model_copy(
        update={"temporal": settings.temporal.model_copy(update={"task_queue": task_queue})}
    )
    stop = asyncio.Event()
    sock = bind(s.alerts.host, s.alerts.port)
    task = asyncio.create_task(serve_alert_receiver(s, stop, client=client, sock=sock))
    try:
        yield
    finally:
        stop.set()
        await task


async def load(url: str, stop: asyncio.Event) -> list[int]:
    """POST /execute through the gateway until ``stop``; the status codes seen."""
    codes: list[int] = []
    async with httpx.AsyncClient(timeout=5) as http:
        while not stop.is_set():
            with contextlib.suppress(httpx.HTTPError):
                codes.append((await http.post(f"{url}/execute", json={"prompt": "hi"})).status_code)
            await asyncio.sleep(0.02)
    return codes


async def set_faults(replica_urls: list[str], **faults: Any) -> None:
    async with httpx.AsyncClient(timeout=5) as http:
        for url in replica_urls:
            r = await http.post(f"{url}/faults", json=faults)
            assert r.status_code == 200, r.text


async def firing_in_prometheus(
    ports: monitoring.MonitoringPorts, agent: str
) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(timeout=5) as http:
        r = await http.get(f"http://{ports.host}:{ports.prometheus}/api/v1/alerts")
    return [a for a in r.json()["data"]["alerts"] if a["labels"].get("agent") == agent]
