"""uvicorn plumbing of the local gateway: many servers in one event loop, one per port.

uvicorn binds a server's sockets once, at startup, so one server cannot gain or drop ports as
agents come and go; one server per port lets the gateway open and drain ports independently.
The gateway binds and ``listen``s each socket itself, so a port queues connections as soon as
it is bound and a busy port is an ``OSError`` to handle, not uvicorn's ``sys.exit``. uvicorn's
signal handling is disabled: the host process (``fleetops gateway`` or ``fleetops up``) owns
SIGINT/SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable, Generator
from typing import Any

import uvicorn

logger = logging.getLogger("fleetops.gateway")

GRACEFUL_SHUTDOWN_SECONDS = 10.0
"""Seconds a closing port waits for its requests in flight before cancelling them."""


class _QuietServer(uvicorn.Server):
    """A uvicorn server that leaves signal handling to its host process (``serve()`` would
    install SIGINT/SIGTERM handlers of its own, replacing the event loop's)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def bind(host: str, port: int) -> socket.socket:
    """A non-blocking TCP socket bound to ``host:port`` (0: any free port) and listening.

    Raises:
        OSError: the port is in use or the address is not local.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP, not 0: asyncio turns Nagle's algorithm off (TCP_NODELAY) only on
    # sockets whose proto says TCP, and accepted sockets inherit it. With proto 0 every response
    # on a kept-alive connection waited ~40 ms for the client's delayed ACK (headers and body
    # are written separately).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def serve(app: Any, sock: socket.socket) -> tuple[uvicorn.Server, asyncio.Task[None]]:
    """Run ``app`` on the bound, listening ``sock`` with uvicorn, in a task."""
    config = uvicorn.Config(
        app,
        lifespan="off",
        ws="none",  # no websocket upgrade: the proxy forwards plain HTTP only
        proxy_headers=False,  # keep the real peer address for X-Forwarded-For
        server_header=False,  # pass the replica's Server and Date headers through
        date_header=False,
        access_log=False,
        log_config=None,
        log_level="warning",  # one server per port: their start/stop lines would drown ours
        timeout_graceful_shutdown=int(GRACEFUL_SHUTDOWN_SECONDS),
    )
    server = _QuietServer(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    task.add_done_callback(_log_crash)
    return server, task


def _log_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("a gateway listener failed", exc_info=task.exception())


class PortListeners:
    """The gateway's per-agent ports: one uvicorn server each, opened and drained to match the
    route table.

    Args:
        host: address the ports listen on.
        app_for: the ASGI app of a port.
    """

    def __init__(self, host: str, app_for: Callable[[int], Any]) -> None:
        self._host = host
        self._app_for = app_for
        self._servers: dict[int, tuple[uvicorn.Server, asyncio.Task[None]]] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self._failed: set[int] = set()
        self._wanted: dict[int, tuple[str, str]] = {}

    def sync(self, ports: dict[int, tuple[str, str]]) -> None:
        """Listen on exactly ``ports`` (port -> (agent, role)): open the new ones, drain the
        ones no longer wanted. A busy port is logged once and retried by :meth:`retry_busy`."""
        self._wanted = ports
        for port in [p for p in self._servers if p not in ports]:
            self._close(port)
        self._failed &= ports.keys()
        for port, (agent_id, role) in ports.items():
            if port in self._servers:
                continue
            try:
                sock = bind(self._host, port)
            except OSError as e:
                if port not in self._failed:
                    logger.error("cannot listen on %d for %s (%s): %s", port, agent_id, role, e)
                self._failed.add(port)
                continue
            self._failed.discard(port)
            self._servers[port] = serve(self._app_for(port), sock)
            logger.info("%s: %s port %d open", agent_id, role, port)

    async def retry_busy(self, period: float) -> None:
        """Retry binding ports that were busy, every ``period`` seconds, forever."""
        while True:
            await asyncio.sleep(period)
            if self._failed:
                self.sync(self._wanted)

    async def close_all(self, *others: tuple[uvicorn.Server, asyncio.Task[None]] | None) -> None:
        """Close every port and ``others`` (e.g. the admin server); requests in flight finish,
        up to :data:`GRACEFUL_SHUTDOWN_SECONDS`."""
        for port in list(self._servers):
            self._close(port)
        for other in others:
            if other is not None:
                other[0].should_exit = True
                self._closing.add(other[1])
        await asyncio.gather(*self._closing, return_exceptions=True)

    def _close(self, port: int) -> None:
        """Stop accepting on ``port`` and drain it in the background."""
        server, task = self._servers.pop(port)
        server.should_exit = True
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)
        logger.info("port %d closing", port)
