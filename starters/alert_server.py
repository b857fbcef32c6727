"""Serving the alert receiver (``starters/alertmanager.py``) with uvicorn inside a process.

``fleetops alert-receiver`` runs :func:`serve_alert_receiver` alone; ``fleetops up`` runs it
next to the worker with :func:`running_receiver`. The socket is bound first (a busy port is a
plain :class:`OSError`, not uvicorn's ``sys.exit``), and uvicorn's own signal handlers are off:
the embedding process owns SIGINT/SIGTERM and sets the ``stop`` event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Iterator

import uvicorn
from temporalio.client import Client

from fleetops.settings import Settings
from starters.alertmanager import create_app

log = logging.getLogger("fleetops.alerts")


def warn_if_open(settings: Settings) -> None:
    """Log a warning when no token is set: anyone who reaches the port can open incidents."""
    if settings.alerts.token is None:
        log.warning(
            "FLEETOPS_ALERTS__TOKEN is not set: the alert receiver on %s:%d accepts "
            "notifications without authentication",
            settings.alerts.host,
            settings.alerts.port,
        )


class _EmbeddedServer(uvicorn.Server):
    """uvicorn's Server without its own signal handlers (the embedding process owns them)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: any free port).

    Raises:
        OSError: the address is in use or cannot be bound.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(1024)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


async def serve_alert_receiver(
    settings: Settings,
    stop: asyncio.Event,
    *,
    client: Client | None = None,
    sock: socket.socket | None = None,
) -> None:
    """Serve the receiver on ``alerts.host:alerts.port`` (or ``sock``) until ``stop`` is set.

    Signals are left to the caller (``fleetops up`` and ``fleetops alert-receiver`` set ``stop``).

    Args:
        settings: FleetOps settings.
        stop: set to shut the server down (requests in flight finish).
        client: a connected Temporal client to share; None: connect on first use.
        sock: an already bound socket (see :func:`bind`); None: bind ``alerts.host:port``.

    Raises:
        OSError: the port cannot be bound (e.g. another receiver runs).
    """
    warn_if_open(settings)
    sock = sock or bind(settings.alerts.host, settings.alerts.port)
    host, port = sock.getsockname()[:2]
    config = uvicorn.Config(create_app(settings, client=client), log_level="warning")
    server = _EmbeddedServer(config)
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    log.info("alert receiver on http://%s:%d/alerts", host, port)
    try:
        await asyncio.wait(
            {serving, asyncio.ensure_future(stop.wait())}, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        server.should_exit = True
        await serving
        sock.close()


@contextlib.asynccontextmanager
async def running_receiver(settings: Settings, client: Client | None = None) -> AsyncIterator[None]:
    """Serve the receiver while in the block (``fleetops up``); a busy port logs and goes on."""
    try:
        sock = bind(settings.alerts.host, settings.alerts.port)
    except OSError as err:
        log.warning(
            "not running the alert receiver on %s:%d: %s",
            settings.alerts.host,
            settings.alerts.port,
            err,
        )
        yield
        return
    stop = asyncio.Event()
    task = asyncio.create_task(serve_alert_receiver(settings, stop, client=client, sock=sock))
    try:
        yield
    finally:
        stop.set()
        await task
