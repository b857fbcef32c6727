"""The prober host's aiohttp health probe against real loopback servers: each kind of answer,
no answer, bad URLs, and keep-alive reuse (one connection for many rounds)."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
from collections.abc import AsyncIterator

import pytest

from activities.http_probe import MAX_BODY_BYTES, HttpProbe, http_probe
from tests.test_probes import (
    free_port,
    silent_endpoint,  # noqa: F401 (a fixture)
)


class Scripted:
    """A loopback HTTP/1.1 keep-alive server answering every request with ``answer``."""

    def __init__(self) -> None:
        self.status = "200 OK"
        self.body = b'{"status": "ok", "in_flight": 0}'
        self.headers = b""
        self.connections = 0
        self.paths: list[str] = []
        self.base = ""

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.paths.append(head.split(b" ", 2)[1].decode())
                writer.write(
                    f"HTTP/1.1 {self.status}\r\nContent-Length: {len(self.body)}\r\n".encode()
                    + self.headers
                    + b"\r\n"
                    + self.body
                )
                await writer.drain()
        writer.close()


@pytest.fixture
async def server() -> AsyncIterator[Scripted]:
    s = Scripted()
    srv = await asyncio.start_server(s.serve, "127.0.0.1", 0)
    s.base = f"http://127.0.0.1:{srv.sockets[0].getsockname()[1]}"
    try:
        yield s
    finally:
        srv.close()


@pytest.fixture
async def probe() -> AsyncIterator[HttpProbe]:
    async with http_probe(10) as p:
        yield p


async def test_healthy_with_in_flight(server: Scripted, probe: HttpProbe) -> None:
    server.body = json.dumps({"status": "ok", "in_flight": 4}).encode()

    r = await probe.probe_one(server.base + "/", "/health", 2.0)

    assert (r.healthy, r.status_code, r.in_flight, r.error) == (True, 200, 4, None)
    assert r.endpoint == server.base + "/"
    assert server.paths == ["/health"]
    assert r.latency_seconds is not None and 0 < r.latency_seconds < 2


@pytest.mark.parametrize(
    ("body", "in_flight"),
    [
        (b'{"in_flight": -1}', 0),
        (b'{"in_flight": true}', 0),
        (b"[1, 2]", 0),
        (b"ok", 0),
        (b"\xff\xfe", 0),
        (b"", 0),
        (b"[" * 5000, 0),  # nested past the decoder's recursion limit
        (b'{"a":' * 5000, 0),
    ],
)
async def test_odd_bodies_are_healthy_with_no_in_flight(
    server: Scripted, probe: HttpProbe, body: bytes, in_flight: int
) -> None:
    server.body = body

    r = await probe.probe_one(server.base, "/health", 2.0)

    assert r.healthy and r.in_flight == in_flight


async def test_a_deeply_nested_error_body_is_an_unhealthy_result(
    server: Scripted, probe: HttpProbe
) -> None:
    server.status = "503 Unavailable"
    server.body = b"[" * 5000

    r = await probe.probe_one(server.base, "/health", 2.0)

    assert not r.healthy and r.status_code == 503


async def test_gzip_body_is_read(server: Scripted, probe: HttpProbe) -> None:
    server.body = gzip.compress(b'{"in_flight": 2}')
    server.headers = b"Content-Encoding: gzip\r\n"

    r = await probe.probe_one(server.base, "/health", 2.0)

    assert r.healthy and r.in_flight == 2


@pytest.mark.parametrize("status", ["301 Moved Permanently", "404 Not Found", "503 Unavailable"])
async def test_non_2xx_is_unhealthy_and_redirects_are_not_followed(
    server: Scripted, probe: HttpProbe, status: str
) -> None:
    server.status = status
    server.headers = b"Location: /elsewhere\r\n"
    server.body = b"x" * 1000

    r = await probe.probe_one(server.base, "/health", 2.0)

    code = int(status.split()[0])
    assert not r.healthy and r.status_code == code
    assert r.error is not None and r.error.startswith(f"HTTP {code}: xxx") and len(r.error) == 200
    assert server.paths == ["/health"]


async def test_large_body_is_cut_and_the_probe_still_answers(
    server: Scripted, probe: HttpProbe
) -> None:
    server.body = b"y" * (MAX_BODY_BYTES * 4)

    r = await probe.probe_one(server.base, "/health", 2.0)

    assert r.healthy and r.in_flight == 0


async def test_closed_port(probe: HttpProbe) -> None:
    r = await probe.probe_one(f"http://127.0.0.1:{free_port()}", "/health", 2.0)

    assert not r.healthy and r.status_code is None
    assert r.error is not None and "ClientConnectorError" in r.error and len(r.error) <= 200


async def test_silent_replica_times_out(probe: HttpProbe, silent_endpoint: str) -> None:  # noqa: F811
    r = await probe.probe_one(silent_endpoint, "/health", 0.2)

    assert not r.healthy
    assert r.error == "timed out after 0.2s"
    assert r.latency_seconds is not None and r.latency_seconds < 1.5


@pytest.mark.parametrize("endpoint", ["not a url", "ftp://127.0.0.1:1", "http://[::1", ""])
async def test_bad_endpoints_are_results_not_errors(probe: HttpProbe, endpoint: str) -> None:
    r = await probe.probe_one(endpoint, "/health", 1.0)

    assert not r.healthy and r.status_code is None and r.error


async def test_keep_alive_one_connection_for_many_rounds(
    server: Scripted, probe: HttpProbe
) -> None:
    for _ in range(20):
        assert (await probe.probe_one(server.base, "/health", 2.0)).healthy

    assert server.connections == 1
    assert len(server.paths) == 20


async def test_connections_are_bounded() -> None:
    gate = asyncio.Event()
    s = Scripted()
    open_now = 0
    peak = 0

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal open_now, peak
        open_now += 1
        peak = max(peak, open_now)
        await gate.wait()
        await s.serve(reader, writer)
        open_now -= 1

    srv = await asyncio.start_server(slow, "127.0.0.1", 0)
    base = f"http://127.0.0.1:{srv.sockets[0].getsockname()[1]}"
    try:
        async with http_probe(3) as p:
            probes = [asyncio.create_task(p.probe_one(base, "/health", 5.0)) for _ in range(9)]
            async with asyncio.timeout(5):
                while open_now < 3:
                    await asyncio.sleep(0.01)
            gate.set()
            results = await asyncio.gather(*probes)
        assert all(r.healthy for r in results)
        assert peak == 3
    finally:
        srv.close()
