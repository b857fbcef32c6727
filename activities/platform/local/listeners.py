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
from collections.abc import Generator
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
