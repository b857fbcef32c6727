"""A scriptable loopback health server and a ColorPlatform whose replicas are served by it.

Each replica endpoint is ``http://127.0.0.1:<port>/<agent>-<colour>-<index>``; its health path
answers 200 ``{"in_flight": n}`` or, for an endpoint in ``broken``, 503. Real HTTP, so the
data-plane prober runs its production code (``HttpProbe.probe_one`` over aiohttp).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

from temporalio.client import Client

from activities.prober_host import ProberHost
from fleetops.settings import Settings
from tests.standins import ColorPlatform
from worker import prober_workers


class HealthFarm:
    """Many health endpoints on one asyncio HTTP server; ``broken``/``busy`` script them."""

    def __init__(self) -> None:
        self.base = ""
        self.broken: set[str] = set()  # endpoints answering 503
        self.busy: dict[str, int] = {}  # endpoint -> in_flight
        self.hits: dict[str, int] = {}
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.base = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                path = head.split(b" ", 2)[1].decode()
                endpoint = self.base + path.rsplit("/", 1)[0]
                self.hits[endpoint] = self.hits.get(endpoint, 0) + 1
                status = "503 Unavailable" if endpoint in self.broken else "200 OK"
                body = json.dumps({"in_flight": self.busy.get(endpoint, 0)}).encode()
                writer.write(
                    f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
                )
                await writer.drain()
        writer.close()


class FarmPlatform(ColorPlatform):
    """:class:`ColorPlatform` with replicas served by a :class:`HealthFarm`."""

    def __init__(self, farm: HealthFarm) -> None:
        super().__init__()
        self.farm = farm

    def endpoint(self, agent: str, color: str, index: int) -> str:  # type: ignore[override]
        return f"{self.farm.base}/{agent}-{color}-{index}"


HEARTBEAT_SECONDS = 3.0
"""The prober hosts' lease heartbeat timeout in these tests (production default 10 s)."""


@contextlib.asynccontextmanager
async def prober_worker(client: Client, task_queue: str) -> AsyncIterator[ProberHost]:
    """A prober host for the workflows of ``task_queue``, built as the production worker
    builds it (:func:`worker.prober_workers`), with a 3 s lease heartbeat timeout."""
    settings = Settings(prober_heartbeat_seconds=HEARTBEAT_SECONDS)
    async with prober_workers(client, settings, task_queue) as host:
        yield host
