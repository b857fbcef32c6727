"""The local gateway (``fleetops gateway``): stable per-agent ports in front of local replicas.

For every agent with a ``service.json`` under ``<state_dir>/agents/*/`` (the local platform's
routing entry), the gateway listens on the agent's two ports, like Argo Rollouts' active and
preview Services of a BlueGreen rollout:

- the active port routes to the running replicas of the active colour;
- the preview port routes to those of the preview colour, and answers 503 when there is none.

Changes are pushed, not polled: the gateway reads every agent's files when it starts, and
afterwards one agent's files whenever the local platform calls ``POST /agents/{id}/sync`` or
``/drain`` on its admin endpoint (contract: :mod:`activities.platform.local.admin`), off the
event loop. It then builds a new route table and swaps it in one assignment: each request sees
the old or the new routes, never a mix, and requests in flight keep the replica they started
on. Ports open and close as agents appear and disappear, one ``uvicorn.Server`` per port in one
event loop (why: :mod:`activities.platform.local.listeners`); a port that was busy is retried
every ``platform.gateway.reload_seconds``. Proxying and passive health:
:mod:`activities.platform.local.proxy`; which replica gets a request (readiness, draining,
balancing): :mod:`activities.platform.local.balancer` and
:mod:`activities.platform.local.readiness`.

The admin endpoint listens on a free port of 127.0.0.1, announced with the gateway's pid in
``<state_dir>/gateway.json``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import http.cookiejar
import logging
import os
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

import httpx
import uvicorn

from activities.platform.base import url
from activities.platform.local.admin import (
    GatewayAnnouncement,
    RoutesView,
    RouteView,
    ServiceView,
)
from activities.platform.local.balancer import Balancer, Target, Upstream
from activities.platform.local.gateway_admin import admin_app
from activities.platform.local.gateway_client import GATEWAY_FILE, read_announcement
from activities.platform.local.listeners import PortListeners, bind, serve
from activities.platform.local.proxy import ProxyApp
from activities.platform.local.rate_limit import RateLimits
from activities.platform.local.readiness import ReadinessProber
from activities.platform.local.route_table import AgentRoute, load_route, route_view
from activities.platform.local.state import (
    ServiceRecord,
    StateStore,
    off_loop,
    write_json_atomic,
)
from fleetops.settings import Settings

logger = logging.getLogger("fleetops.gateway")

UPSTREAM_TIMEOUT = httpx.Timeout(connect=2.0, read=300.0, write=60.0, pool=10.0)
"""Seconds: connect fast (a dead replica is retried elsewhere), let agents think for minutes."""
UPSTREAM_LIMITS = httpx.Limits(max_connections=1000, keepalive_expiry=2.0)
"""Idle upstream connections close after 2 s, before uvicorn replicas close theirs (5 s), so a
request rarely goes out on a connection the replica is closing."""
RECHECK_SECONDS = 0.02
"""Longest pause, in seconds, between two checks of a wait for in-flight requests to end (the
other waits wake on each change)."""


class GatewayError(RuntimeError):
    """The gateway cannot start (another gateway serves the state directory)."""


class Gateway:
    """The local gateway over ``settings.state_dir``; use ``async with Gateway(settings)``.

    Args:
        settings: FleetOps settings: ``state_dir`` and ``platform.gateway`` (host, balancing,
            busy-port retry period in seconds).

    Raises:
        GatewayError: on start, when another live gateway already serves ``state_dir``.
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings.platform.gateway
        self._state_dir = Path(settings.state_dir)
        self._store = StateStore(self._state_dir / "agents")
        self._balancer = Balancer(self._settings.balancing)
        self._routes: dict[str, AgentRoute] = {}
        self._ports: dict[int, tuple[str, str]] = {}  # port -> (agent, "active" | "preview")
        self._targets: dict[int, Target] = {}  # port -> what it routes to, built by _install()
        self._listeners = PortListeners(self._settings.host, self._proxy_app)
        self._admin: tuple[uvicorn.Server, asyncio.Task[None]] | None = None
        self._client: httpx.AsyncClient | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._loaded = asyncio.Event()
        self._pulse = asyncio.Event()
        self._agent_locks: dict[str, asyncio.Lock] = {}
        self._limits = RateLimits()
        self.admin_url = ""

    async def __aenter__(self) -> Gateway:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Serve the admin endpoint, announce it in ``gateway.json``, open every agent's ports.

        The announcement comes before the files are read, so a change written meanwhile is
        either read now or pushed afterwards.

        Raises:
            GatewayError: another live gateway serves this state directory.
        """
        other = await off_loop(read_announcement, self._state_dir)
        if other is not None and other.pid != os.getpid():
            raise GatewayError(
                f"a gateway (pid {other.pid}, {other.admin_url}) already serves "
                f"{self._state_dir}; stop it first"
            )
        try:
            await self._open()
        except BaseException:
            await self.stop()
            raise
        logger.info("gateway over %s; admin %s", self._state_dir, self.admin_url)

    async def _open(self) -> None:
        # A jar that refuses every cookie: replicas' Set-Cookie headers are passed to clients,
        # never kept by the shared client.
        jar = http.cookiejar.CookieJar(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
        self._client = httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(retries=0, limits=UPSTREAM_LIMITS),
            timeout=UPSTREAM_TIMEOUT,
            cookies=jar,
        )
        sock = bind("127.0.0.1", 0)
        self._admin = serve(admin_app(self), sock)
        self.admin_url = url("127.0.0.1", sock.getsockname()[1])
        announcement = GatewayAnnouncement(admin_url=self.admin_url, pid=os.getpid())
        await off_loop(write_json_atomic, self._state_dir / GATEWAY_FILE, announcement.model_dump())
        routes = await off_loop(self._load_all)
        self._install(routes, replace=True)
        self._balancer.establish(self._all_upstreams())
        self._loaded.set()
        prober = ReadinessProber(self._client, self._balancer, self._all_upstreams, self._notify)
        retry = self._listeners.retry_busy(self._settings.reload_seconds)
        self._tasks = [asyncio.create_task(prober.run()), asyncio.create_task(retry)]

    async def stop(self) -> None:
        """Close every port (requests in flight finish, up to 10 s), remove ``gateway.json``."""
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        mine = GatewayAnnouncement(admin_url=self.admin_url, pid=os.getpid())
        if self.admin_url and await off_loop(read_announcement, self._state_dir) == mine:
            (self._state_dir / GATEWAY_FILE).unlink(missing_ok=True)
        await self._listeners.close_all(self._admin)
        if self._client is not None:
            await self._client.aclose()

    # --- the route table ----------------------------------------------------------------------

    def routes(self) -> RoutesView:
        """The route table as ``GET /routes`` shows it (see :class:`RoutesView`)."""
        return RoutesView(
            {a: route_view(r, self._balancer) for a, r in sorted(self._routes.items())}
        )

    def route(self, agent_id: str) -> RouteView | None:
        """The agent's route now, or None if the gateway does not route it."""
        route = self._routes.get(agent_id)
        return None if route is None else route_view(route, self._balancer)

    async def reload(self, agent_id: str) -> RouteView | None:
        """Re-read ``agent_id``'s ``service.json`` and ``state.json`` (off the event loop) and
        swap the result into the route table; other agents are untouched.

        Returns:
            The agent's route now; None if it has no (readable) service.

        Raises:
            PlatformError: ``agent_id`` is not a valid agent id.
        """
        self._store.agent_dir(agent_id)  # validates the id
        await self._loaded.wait()
        async with self._agent_locks.setdefault(agent_id, asyncio.Lock()):
            route = await off_loop(load_route, self._store, agent_id)
            self._install({agent_id: route})
        return self.route(agent_id)

    async def apply(self, agent_id: str, service: ServiceView) -> RouteView | None:
        """Serve ``service`` (a switch just written to the agent's ``service.json``) without
        reading the file, if it is newer than the generation served; the agent's replicas stay
        as they are. An agent not routed yet, or with other ports, is re-read from its files.

        Returns:
            The agent's route now; None if it has no (readable) service.

        Raises:
            PlatformError: ``agent_id`` is not a valid agent id.
        """
        await self._loaded.wait()
        async with self._agent_locks.setdefault(agent_id, asyncio.Lock()):
            route = self._routes.get(agent_id)
            ports = (service.active_port, service.preview_port)
            if (
                route is not None
                and (route.service.active_port, route.service.preview_port) == ports
            ):
                if service.generation > route.service.generation:
                    record = ServiceRecord(**service.model_dump())
                    self._install({agent_id: dataclasses.replace(route, service=record)})
                return self.route(agent_id)
        return await self.reload(agent_id)

    async def wait_until(self, done: Callable[[], bool], timeout: float) -> bool:
        """Wait until ``done()`` (checked on every route or readiness change, and at least every
        :data:`RECHECK_SECONDS`), for up to ``timeout`` seconds; whether it came true."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not done():
            left = deadline - loop.time()
            if left <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._pulse.wait(), min(left, RECHECK_SECONDS))
        return True

    def _notify(self) -> None:
        """Wake every :meth:`wait_until`."""
        self._pulse.set()
        self._pulse = asyncio.Event()

    def _install(self, changes: dict[str, AgentRoute | None], replace: bool = False) -> None:
        """Swap in a route table with ``changes`` (None: the agent is gone), or exactly
        ``changes`` when ``replace``; open and close ports to match."""
        routes = {} if replace else dict(self._routes)
        for agent_id, route in changes.items():
            if route is None:
                routes.pop(agent_id, None)
            else:
                routes[agent_id] = route
        for agent_id in set(self._routes) | set(routes):
            route = routes.get(agent_id)
            self._limits.update(agent_id, route.rate_limit if route else None)
        ports: dict[int, tuple[str, str]] = {}
        for agent_id, route in routes.items():
            ports[route.service.active_port] = (agent_id, "active")
            ports[route.service.preview_port] = (agent_id, "preview")
        targets = {port: routes[agent].target(role) for port, (agent, role) in ports.items()}
        # The switch: new requests see the new table.
        self._routes, self._ports, self._targets = routes, ports, targets
        self._balancer.forget({(u.url, u.pid) for u in self._all_upstreams()})
        self._listeners.sync(ports)
        self._notify()

    def _all_upstreams(self) -> list[Upstream]:
        return [u for r in self._routes.values() for ups in r.upstreams.values() for u in ups]

    def _load_all(self) -> dict[str, AgentRoute | None]:
        """Every agent's route (blocking)."""
        return {a: load_route(self._store, a) for a in self._store.agent_ids()}

    # --- listeners ----------------------------------------------------------------------------

    def _target(self, port: int) -> Target | None:
        return self._targets.get(port)

    def _admit(self, port: int, agent_id: str) -> float | None:
        """The agent's rate limit, on its active port only (see
        :mod:`~activities.platform.local.rate_limit`): None to pass, else seconds to wait."""
        if self._ports.get(port) != (agent_id, "active"):
            return None
        return self._limits.admit(agent_id)

    def _proxy_app(self, port: int) -> ProxyApp:
        """The proxy of one gateway port: it routes to what the port's entry says now."""
        assert self._client is not None
        return ProxyApp(
            self._client,
            self._balancer,
            functools.partial(self._target, port),
            functools.partial(self._admit, port),
        )


async def run_gateway(settings: Settings, stop: asyncio.Event) -> None:
    """Run the gateway over ``settings.state_dir`` until ``stop`` is set.

    Args:
        settings: FleetOps settings (``state_dir``, ``platform.gateway``).
        stop: set it to close every port (in-flight requests finish) and return.

    Raises:
        GatewayError: another live gateway serves the state directory.
    """
    async with Gateway(settings) as gateway:
        logger.info("gateway running; routes at %s/routes", gateway.admin_url)
        await stop.wait()
