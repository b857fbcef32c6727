"""The local gateway (``fleetops gateway``): stable per-agent ports in front of local replicas.

For every agent with a ``service.json`` under ``<state_dir>/agents/*/`` (the local platform's
routing entry), the gateway listens on the agent's two ports, like Argo Rollouts' active and
preview Services of a BlueGreen rollout:

- the active port routes to the running replicas of the active colour;
- the preview port routes to those of the preview colour, and answers 503 when there is none.

It polls the files' identity (inode, mtime, size) every ``platform.gateway.reload_seconds`` and,
on a change, builds a new route table and swaps it in one assignment: each request sees the old
or the new routes, never a mix, and requests in flight keep the replica they started on. Ports
open and close as agents appear and disappear, one ``uvicorn.Server`` per port in one event loop
(why: :mod:`starters._listeners`). Proxying and passive health: :mod:`starters._proxy`; which
replica gets a request (readiness, draining, balancing): :mod:`starters._balancer` and
:mod:`starters._readiness`.

The admin endpoint (``GET /routes``, ``GET /healthz``) listens on a free port of 127.0.0.1,
announced with the gateway's pid in ``<state_dir>/gateway.json``; ``LocalPlatform.switch_traffic``
polls it until the new generation is served.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import http.cookiejar
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from activities.platform import _process
from activities.platform._routing import GATEWAY_FILE, read_gateway_file
from activities.platform._state import ServiceRecord, StateStore, write_json_atomic
from activities.platform.base import PlatformError, url
from fleetops.settings import Settings
from starters._balancer import Balancer, Target, Upstream
from starters._listeners import bind, serve
from starters._proxy import ProxyApp
from starters._readiness import ReadinessProber

logger = logging.getLogger("fleetops.gateway")

UPSTREAM_TIMEOUT = httpx.Timeout(connect=2.0, read=300.0, write=60.0, pool=10.0)
"""Seconds: connect fast (a dead replica is retried elsewhere), let agents think for minutes."""
UPSTREAM_LIMITS = httpx.Limits(max_connections=1000, keepalive_expiry=2.0)
"""Idle upstream connections close after 2 s, before uvicorn replicas close theirs (5 s), so a
request rarely goes out on a connection the replica is closing."""


class GatewayError(RuntimeError):
    """The gateway cannot start (another gateway serves the state directory)."""


@dataclass(frozen=True)
class AgentRoute:
    """One agent in the route table: its service and each colour's running replicas."""

    agent_id: str
    service: ServiceRecord
    upstreams: dict[str, tuple[Upstream, ...]]

    def target(self, role: str) -> Target:
        """What the ``active`` or ``preview`` port routes to."""
        s = self.service
        color = s.active_color if role == "active" else s.preview_color
        return Target(self.agent_id, color, self.upstreams.get(color or "", ()))


class Gateway:
    """The local gateway over ``settings.state_dir``; use ``async with Gateway(settings)``.

    Args:
        settings: FleetOps settings: ``state_dir`` and ``platform.gateway`` (host, balancing,
            reload period in seconds).

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
        self._targets: dict[int, Target] = {}  # port -> what it routes to, built by reload()
        self._servers: dict[int, tuple[uvicorn.Server, asyncio.Task[None]]] = {}
        self._admin: tuple[uvicorn.Server, asyncio.Task[None]] | None = None
        self._closing: set[asyncio.Task[None]] = set()
        self._failed_ports: set[int] = set()
        self._signature: dict[Path, tuple[int, int, int] | None] | None = None
        self._client: httpx.AsyncClient | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._prober: asyncio.Task[None] | None = None
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

        Raises:
            GatewayError: another live gateway serves this state directory.
        """
        other = read_gateway_file(self._state_dir)
        if other is not None and other["pid"] != os.getpid():
            raise GatewayError(
                f"a gateway (pid {other['pid']}, {other['admin_url']}) already serves "
                f"{self._state_dir}; stop it first"
            )
        try:
            self._open()
        except BaseException:
            await self.stop()
            raise
        logger.info("gateway over %s; admin %s", self._state_dir, self.admin_url)

    def _open(self) -> None:
        # A jar that refuses every cookie: replicas' Set-Cookie headers are passed to clients,
        # never kept by the shared client.
        jar = http.cookiejar.CookieJar(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
        self._client = httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(retries=0, limits=UPSTREAM_LIMITS),
            timeout=UPSTREAM_TIMEOUT,
            cookies=jar,
        )

        async def routes(_: Request) -> JSONResponse:
            return JSONResponse(self.routes())

        async def healthz(_: Request) -> JSONResponse:
            return JSONResponse({"status": "ok"})

        admin = Starlette(routes=[Route("/routes", routes), Route("/healthz", healthz)])
        sock = bind("127.0.0.1", 0)
        self._admin = serve(admin, sock)
        self.admin_url = url("127.0.0.1", sock.getsockname()[1])
        write_json_atomic(
            self._state_dir / GATEWAY_FILE, {"admin_url": self.admin_url, "pid": os.getpid()}
        )
        self.reload()
        self._balancer.establish(self._all_upstreams())
        self._watcher = asyncio.create_task(self._watch())
        prober = ReadinessProber(self._client, self._balancer, self._all_upstreams)
        self._prober = asyncio.create_task(prober.run())

    async def stop(self) -> None:
        """Close every port (requests in flight finish, up to 10 s), remove ``gateway.json``."""
        for task in (self._watcher, self._prober):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        mine = {"admin_url": self.admin_url, "pid": os.getpid()}
        if self.admin_url and read_gateway_file(self._state_dir) == mine:
            (self._state_dir / GATEWAY_FILE).unlink(missing_ok=True)
        for port in list(self._servers):
            self._close(port)
        if self._admin is not None:
            self._admin[0].should_exit = True
            self._closing.add(self._admin[1])
        await asyncio.gather(*self._closing, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()

    def routes(self) -> dict[str, Any]:
        """The route table as ``GET /routes`` shows it: per agent, colours, generation, ports
        and every colour's replicas with their readiness, draining mark, in-flight count and
        down mark."""
        return {
            agent: {
                "active_color": r.service.active_color,
                "preview_color": r.service.preview_color,
                "generation": r.service.generation,
                "active_port": r.service.active_port,
                "preview_port": r.service.preview_port,
                "upstreams": {
                    color: [self._balancer.describe(u) for u in ups]
                    for color, ups in r.upstreams.items()
                },
            }
            for agent, r in sorted(self._routes.items())
        }

    def reload(self) -> bool:
        """Rebuild the route table if any ``service.json``/``state.json`` changed.

        Returns:
            Whether the table was rebuilt.
        """
        signature = self._files()
        if signature == self._signature:
            if self._failed_ports:
                self._sync_listeners()  # retry ports that were busy
            return False
        self._signature = signature
        routes = {a: r for a in self._store.agent_ids() if (r := self._load_route(a))}
        ports: dict[int, tuple[str, str]] = {}
        for agent_id, route in routes.items():
            ports[route.service.active_port] = (agent_id, "active")
            ports[route.service.preview_port] = (agent_id, "preview")
        targets = {port: routes[agent].target(role) for port, (agent, role) in ports.items()}
        # The switch: new requests see the new table.
        self._routes, self._ports, self._targets = routes, ports, targets
        self._balancer.forget({(u.url, u.pid) for u in self._all_upstreams()})
        self._sync_listeners()
        return True

    def _all_upstreams(self) -> list[Upstream]:
        return [u for r in self._routes.values() for ups in r.upstreams.values() for u in ups]

    # --- internals ----------------------------------------------------------------------------

    def _load_route(self, agent_id: str) -> AgentRoute | None:
        """The agent's service and running replicas per colour; None without a service."""
        try:
            service = self._store.load_service(agent_id)
            records = self._store.load(agent_id) if service else {}
        except PlatformError as e:
            logger.warning("not routing %s: %s", agent_id, e)
            return None
        if service is None:
            return None
        upstreams: dict[str, list[Upstream]] = {"blue": [], "green": []}
        for key in sorted(records):
            r = records[key]
            if _process.is_alive(r.pid, r.start_time):
                upstream = Upstream(
                    url(r.host, r.port), r.index, r.version, r.pid, r.health_path, r.draining
                )
                upstreams[r.color].append(upstream)
        return AgentRoute(agent_id, service, {c: tuple(u) for c, u in upstreams.items()})

    def _files(self) -> dict[Path, tuple[int, int, int] | None]:
        """Identity of every state and service file; atomic replaces change the inode."""
        files: dict[Path, tuple[int, int, int] | None] = {}
        for agent_id in self._store.agent_ids():
            for name in ("service.json", "state.json"):
                path = self._store.agents_dir / agent_id / name
                try:
                    st = path.stat()
                    files[path] = (st.st_ino, st.st_mtime_ns, st.st_size)
                except OSError:
                    files[path] = None
        return files

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._settings.reload_seconds)
            try:
                self.reload()
            except Exception:  # a bad file must not stop the gateway
                logger.exception("reloading routes failed; retrying")

    def _target(self, port: int) -> Target | None:
        return self._targets.get(port)

    def _sync_listeners(self) -> None:
        for port in [p for p in self._servers if p not in self._ports]:
            self._close(port)
        self._failed_ports &= self._ports.keys()
        for port, (agent_id, role) in self._ports.items():
            if port in self._servers:
                continue
            try:
                sock = bind(self._settings.host, port)
            except OSError as e:
                if port not in self._failed_ports:
                    logger.error("cannot listen on %d for %s (%s): %s", port, agent_id, role, e)
                self._failed_ports.add(port)
                continue
            self._failed_ports.discard(port)
            assert self._client is not None
            app = ProxyApp(self._client, self._balancer, functools.partial(self._target, port))
            self._servers[port] = serve(app, sock)
            logger.info("%s: %s port %d open", agent_id, role, port)

    def _close(self, port: int) -> None:
        """Stop accepting on ``port`` and drain it in the background (reloads go on meanwhile)."""
        server, task = self._servers.pop(port)
        server.should_exit = True
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)
        logger.info("port %d closing", port)


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
