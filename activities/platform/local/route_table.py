"""The local gateway's route table entries: one agent's service and running replicas.

Built from the agent's ``service.json`` and ``state.json`` (:func:`load_route`, blocking: the
gateway calls it off its event loop) and shown through the admin contract (:func:`route_view`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from activities.platform.base import PlatformError, url
from activities.platform.local import process
from activities.platform.local.admin import RouteView
from activities.platform.local.balancer import Balancer, Target, Upstream
from activities.platform.local.rate_limit import RateLimitRecord, load_rate_limit
from activities.platform.local.state import ServiceRecord, StateStore
from fleetops.models import Color

logger = logging.getLogger("fleetops.gateway")


@dataclass(frozen=True)
class AgentRoute:
    """One agent in the route table: its service, each colour's running replicas, and its rate
    limit at the active port (None: unlimited)."""

    agent_id: str
    service: ServiceRecord
    upstreams: dict[Color, tuple[Upstream, ...]]
    rate_limit: RateLimitRecord | None = None

    def target(self, role: str) -> Target:
        """What the ``active`` or ``preview`` port routes to."""
        s = self.service
        color = s.active_color if role == "active" else s.preview_color
        return Target(self.agent_id, color, self.upstreams.get(color, ()) if color else ())


def load_route(store: StateStore, agent_id: str) -> AgentRoute | None:
    """The agent's service and running replicas per colour; None without a (readable) service.

    Blocking: reads three files (service, state, rate limit) and ``/proc``.
    """
    try:
        service = store.load_service(agent_id)
        records = store.load(agent_id) if service else {}
    except PlatformError as e:
        logger.warning("not routing %s: %s", agent_id, e)
        return None
    if service is None:
        return None
    upstreams: dict[Color, list[Upstream]] = {"blue": [], "green": []}
    for key in sorted(records):
        r = records[key]
        if process.is_alive(r.pid, r.start_time):
            upstream = Upstream(
                url(r.host, r.port), r.index, r.version, r.pid, r.health_path, r.draining
            )
            upstreams[r.color].append(upstream)
    limit = load_rate_limit(store.agent_dir(agent_id))
    return AgentRoute(agent_id, service, {c: tuple(u) for c, u in upstreams.items()}, limit)


def route_view(route: AgentRoute, balancer: Balancer) -> RouteView:
    """``route`` as the admin contract shows it, with each replica's state from ``balancer``."""
    s = route.service
    return RouteView(
        active_color=s.active_color,
        preview_color=s.preview_color,
        generation=s.generation,
        active_port=s.active_port,
        preview_port=s.preview_port,
        upstreams={c: [balancer.describe(u) for u in ups] for c, ups in route.upstreams.items()},
        rate_limit_rps=route.rate_limit.rps if route.rate_limit else None,
        rate_limit_burst=route.rate_limit.burst if route.rate_limit else None,
    )
