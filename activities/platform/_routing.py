"""The local platform's routing side: service ports, the gateway handshake, Prometheus targets.

A service is a local routing entry (``agents/<agent>/service.json``, see
:class:`~activities.platform._state.ServiceRecord`) that the local gateway (``fleetops
gateway``) serves: the active port routes to the active colour, the preview port to the preview
colour, as Argo Rollouts' active and preview Services do for a BlueGreen rollout.

A running gateway announces itself in ``<state_dir>/gateway.json`` (``admin_url``, ``pid``);
:func:`wait_for_gateway` polls its ``GET /routes`` until it serves a given generation, and
:func:`wait_for_drain` until replicas marked draining have no request in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from activities.platform import _process
from activities.platform._state import ServiceRecord, StateStore, file_lock, write_json_atomic
from activities.platform.base import PlatformError, host_port, url
from fleetops.models import Color, ServiceInfo
from fleetops.settings import GatewaySettings

logger = logging.getLogger(__name__)

GATEWAY_FILE = "gateway.json"
"""Name, under the state directory, of the file a running gateway writes."""
TARGETS_FILE = Path("prometheus") / "targets.json"
"""Path, under the state directory, of the Prometheus file_sd targets."""
GATEWAY_WAIT_SECONDS = 5.0
"""How long ``switch_traffic`` waits for a running gateway to serve the new generation."""
_GATEWAY_POLL_SECONDS = 0.05


def service_info(agent_id: str, service: ServiceRecord, host: str) -> ServiceInfo:
    """``service`` as :class:`ServiceInfo`, URLs on the gateway's ``host``."""
    return ServiceInfo(
        agent_id=agent_id,
        active_color=service.active_color,
        preview_color=service.preview_color,
        active_url=url(host, service.active_port),
        preview_url=url(host, service.preview_port) if service.preview_color else None,
        generation=service.generation,
    )


async def ensure_service(
    store: StateStore, agent_id: str, color: Color, gateway: GatewaySettings
) -> None:
    """Create the agent's ``service.json`` (``color`` active, no preview) unless it exists.

    Its two ports are gateway ports no other agent records and nothing listens on now; they are
    chosen and recorded under the ports lock, and stay the agent's until ``stop_all``.

    Raises:
        PlatformError: fewer than two free ports in the gateway range.
    """
    if store.load_service(agent_id) is not None:
        return
    async with file_lock(store.ports_lock()):
        used = store.ports_of_other_agents(agent_id)
        start, end = gateway.port_range_start, gateway.port_range_end
        free = (
            p
            for p in range(start, end + 1)
            if p not in used and _process.port_bindable(gateway.host, p)
        )
        active, preview = next(free, None), next(free, None)
        if active is None or preview is None:
            raise PlatformError(
                f"no two free gateway ports in [{start}, {end}] on {gateway.host}; widen "
                "platform.gateway.port_range_start/port_range_end or stop unused agents"
            )
        store.save_service(agent_id, ServiceRecord(color, None, active, preview))
    logger.info("%s: service on gateway ports %d (active), %d (preview)", agent_id, active, preview)


def read_gateway_file(state_dir: Path) -> dict[str, Any] | None:
    """The running gateway's ``{"admin_url", "pid"}``, or None if none runs on ``state_dir``."""
    try:
        info = json.loads((state_dir / GATEWAY_FILE).read_text())
        pid, admin_url = int(info["pid"]), str(info["admin_url"])
    except (OSError, ValueError, TypeError, KeyError):
        return None
    if not _process.is_alive(pid, None):
        return None
    return {"pid": pid, "admin_url": admin_url}


async def _poll_route(
    admin_url: str, agent_id: str, done: Callable[[dict[str, Any]], bool], timeout: float
) -> bool:
    """Poll the gateway's ``GET /routes`` until ``done(<the agent's route>)`` (``{}`` when the
    agent is not listed); False after ``timeout`` seconds. Unreachable or malformed answers
    count as not done."""
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(
        transport=httpx.AsyncHTTPTransport(retries=0), timeout=1.0
    ) as client:
        while True:
            with contextlib.suppress(httpx.HTTPError, ValueError, KeyError, TypeError):
                response = await client.get(f"{admin_url}/routes")
                if done(response.json().get(agent_id) or {}):
                    return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(_GATEWAY_POLL_SECONDS)


async def wait_for_gateway(
    state_dir: Path,
    agent_id: str,
    want: tuple[Color, Color | None, int],
    timeout: float = GATEWAY_WAIT_SECONDS,
) -> bool:
    """Wait until the gateway on ``state_dir`` (if any) serves ``want`` for ``agent_id``, with
    at least one ready replica of the new active colour if it has any replicas.

    Args:
        state_dir: FleetOps state directory.
        agent_id: the agent.
        want: ``(active_color, preview_color, generation)`` just written to ``service.json``;
            a later generation counts too (someone switched again).
        timeout: seconds before giving up with a logged warning.

    Returns:
        True once served, or when no gateway runs (it reads the file when it starts); False
        after ``timeout``.
    """
    info = read_gateway_file(state_dir)
    if info is None:
        return True

    def served(route: dict[str, Any]) -> bool:
        got = (route["active_color"], route["preview_color"], route["generation"])
        if got[2] > want[2]:
            return True
        active = route["upstreams"].get(want[0]) or []
        return got == want and (not active or any(u["ready"] for u in active))

    if await _poll_route(info["admin_url"], agent_id, served, timeout):
        return True
    logger.warning(
        "gateway %s did not serve generation %d of %s within %.1fs; continuing",
        info["admin_url"],
        want[2],
        agent_id,
        timeout,
    )
    return False


async def wait_for_drain(state_dir: Path, agent_id: str, pids: set[int], timeout: float) -> bool:
    """Wait until the gateway on ``state_dir`` (if any) has drained replicas ``pids``.

    The caller has just saved them with ``draining`` set. Drained means the gateway has read
    that (it lists each of them as draining, or no longer lists it) and has no request in
    flight to any of them; it sends draining replicas no new requests. This is the local
    counterpart of Kubernetes removing a terminating Pod from the Service's endpoints before
    its containers get SIGTERM.

    Args:
        state_dir: FleetOps state directory.
        agent_id: the agent.
        pids: process ids of the replicas about to stop.
        timeout: seconds before giving up with a logged warning (requests still in flight are
            then cut off by the replica's shutdown).

    Returns:
        True once drained, or when no gateway runs or ``pids`` is empty; False after ``timeout``.
    """
    info = read_gateway_file(state_dir)
    if info is None or not pids:
        return True
    busy: dict[int, int] = {}

    def drained(route: dict[str, Any]) -> bool:
        listed = {u["pid"]: u for ups in route.get("upstreams", {}).values() for u in ups}
        busy.clear()
        busy.update(
            (pid, int(listed[pid]["in_flight"]))
            for pid in pids
            if pid in listed and (not listed[pid]["draining"] or listed[pid]["in_flight"])
        )
        return not busy

    if await _poll_route(info["admin_url"], agent_id, drained, timeout):
        return True
    logger.warning(
        "%s: replicas %s not drained within %.1fs (in flight: %s); stopping anyway",
        agent_id,
        sorted(pids),
        timeout,
        busy or "unknown: gateway unreachable",
    )
    return False


async def write_targets(store: StateStore, state_dir: Path) -> None:
    """Rewrite ``<state_dir>/prometheus/targets.json`` from every agent's running replicas.

    The file is Prometheus ``file_sd`` JSON: one group per replica with ``targets:
    ["host:port"]`` and labels ``fleetops_agent``, ``fleetops_color``, ``fleetops_version``,
    ``fleetops_replica``. Rebuilt from all state files under a lock, so concurrent writers
    (several workers) cannot leave an older view behind.
    """
    path = state_dir / TARGETS_FILE
    async with file_lock(path.with_name(".targets.lock")):
        groups: list[dict[str, Any]] = []
        for agent_id in store.agent_ids():
            try:
                records = store.load(agent_id)
            except PlatformError as e:
                logger.warning("skipping %s in Prometheus targets: %s", agent_id, e)
                continue
            for key in sorted(records):
                r = records[key]
                if not _process.is_alive(r.pid, r.start_time):
                    continue
                labels = {
                    "fleetops_agent": agent_id,
                    "fleetops_color": r.color,
                    "fleetops_version": r.version,
                    "fleetops_replica": str(r.index),
                }
                groups.append({"targets": [host_port(r.host, r.port)], "labels": labels})
        write_json_atomic(path, groups)
