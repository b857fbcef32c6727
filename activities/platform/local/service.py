"""The local platform's services: the routing entry of each agent and its ports.

A service is a local routing entry (``agents/<agent>/service.json``, see
:class:`~activities.platform.local.state.ServiceRecord`) that the local gateway serves: the
active port routes to the active colour, the preview port to the preview colour, as Argo
Rollouts' active and preview Services do for a BlueGreen rollout. How a change reaches the
gateway: :mod:`activities.platform.local.gateway_client`.
"""

from __future__ import annotations

import dataclasses
import logging

from activities.platform.base import PlatformError, url
from activities.platform.local import process
from activities.platform.local.state import ServiceRecord, StateStore, file_lock, off_loop
from fleetops.models import Color, ServiceInfo
from fleetops.settings import GatewaySettings

logger = logging.getLogger("activities.platform.local")


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


def _create_service(
    store: StateStore, agent_id: str, color: Color, gateway: GatewaySettings
) -> ServiceRecord:
    """Choose two free gateway ports and record the service (blocking; the caller holds the
    ports lock).

    Raises:
        PlatformError: fewer than two free ports in the gateway range.
    """
    used = store.ports_of_other_agents(agent_id)
    start, end = gateway.port_range_start, gateway.port_range_end
    free = (
        p for p in range(start, end + 1) if p not in used and process.port_bindable(gateway.host, p)
    )
    active, preview = next(free, None), next(free, None)
    if active is None or preview is None:
        raise PlatformError(
            f"no two free gateway ports in [{start}, {end}] on {gateway.host}; widen "
            "platform.gateway.port_range_start/port_range_end or stop unused agents"
        )
    service = ServiceRecord(color, None, active, preview)
    store.save_service(agent_id, service)
    return service


async def ensure_service(
    store: StateStore, agent_id: str, color: Color, gateway: GatewaySettings
) -> bool:
    """Create the agent's ``service.json`` (``color`` active, no preview) unless it exists.

    Its two ports are gateway ports no other agent records and nothing listens on now; they are
    chosen and recorded under the ports lock, and stay the agent's until ``stop_all``. File I/O
    runs off the event loop.

    Returns:
        Whether the service was created now.

    Raises:
        PlatformError: fewer than two free ports in the gateway range.
    """
    if await off_loop(store.load_service, agent_id) is not None:
        return False
    async with file_lock(store.ports_lock()):
        service = await off_loop(_create_service, store, agent_id, color, gateway)
    logger.info(
        "%s: service on gateway ports %d (active), %d (preview)",
        agent_id,
        service.active_port,
        service.preview_port,
    )
    return True


def switch_service(
    store: StateStore, agent_id: str, active: Color, preview: Color | None
) -> tuple[ServiceRecord, bool]:
    """Route the agent's service to ``active`` (and ``preview``), bumping its generation, unless
    it routes so already. Blocking: one read and at most one atomic write, in one call so a
    switch costs the event loop one hop to a thread. The write is not fsynced yet: the caller
    tells the gateway and flushes the file (:func:`~activities.platform.local.state.fsync_file`)
    at the same time, and reports the switch done only when both are.

    Returns:
        The service now, and whether it changed.

    Raises:
        PlatformError: the agent has no service (never provisioned), or its file is unreadable.
    """
    service = store.load_service(agent_id)
    if service is None:
        raise PlatformError(f"agent {agent_id!r} has no service; run ensure first")
    if (service.active_color, service.preview_color) == (active, preview):
        return service, False
    service = dataclasses.replace(
        service, active_color=active, preview_color=preview, generation=service.generation + 1
    )
    store.save_service(agent_id, service, durable=False)
    return service, True
