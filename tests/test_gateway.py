"""The local gateway in front of real replicas started by LocalPlatform (sample agent, echo app).

Every test runs a :class:`Gateway` over the platform's state directory in this event loop, and
real replica processes tagged for cleanup.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from activities.platform import LocalPlatform
from activities.platform.local import process as _process
from activities.platform.local.admin import RoutesView, RouteView, SyncResult
from activities.platform.local.gateway import Gateway, GatewayError
from activities.platform.local.listeners import bind
from fleetops.models import AgentSpec, Color, Replica, ServiceInfo
from fleetops.settings import Settings
from tests.e2e_support import TAG_VAR, port_block, tag

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc")

__all__ = ["tag"]  # the fixture

ECHO_APP = r"""
import hashlib, json, os, uvicorn

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    if scope["path"] == "/blob":  # GET /blob?size=N: N bytes, streamed in 64 KiB chunks
        size = int(scope["query_string"].decode().split("=")[1])
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(size).encode())]})
        while size:
            n = min(size, 65536)
            await send({"type": "http.response.body", "body": b"x" * n, "more_body": True})
            size -= n
        await send({"type": "http.response.body", "body": b""})
        return
    digest, size, more = hashlib.sha256(), 0, True  # anything else: describe the request
    while more:
        message = await receive()
        digest.update(message.get("body", b""))
        size += len(message.get("body", b""))
        more = message.get("more_body", False)
    body = json.dumps({"size": size, "sha256": digest.hexdigest(),
                       "headers": {k.decode(): v.decode() for k, v in scope["headers"]}}).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})

uvicorn.run(app, host=os.environ["HOST"], port=int(os.environ["PORT"]), log_level="warning")
"""


async def eventually(
    check: Callable[[], Awaitable[bool]], what: str, timeout: float = 15.0
) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


def make_settings(tmp_path: Path, **gateway: Any) -> Settings:
    local, ports = port_block(), port_block(10)
    return Settings.model_validate(
        {
            "state_dir": tmp_path,
            "platform": {
                "local": {
                    "port_range_start": local[0],
                    "port_range_end": local[1],
                    "stop_grace_seconds": 5.0,
                },
                "gateway": {
                    "port_range_start": ports[0],
                    "port_range_end": ports[1],
                    "reload_seconds": 3600,  # no periodic work: every change is pushed
                    **gateway,
                },
            },
        }
    )


def platform_for(settings: Settings) -> LocalPlatform:
    p = settings.platform
    return LocalPlatform(p.local, settings.state_dir, p.gateway)


def agent(tag: str, **kwargs: Any) -> AgentSpec:
    return AgentSpec.model_validate(
        {"agent_id": f"g-{tag[:10]}", "env": {TAG_VAR: tag}, "max_replicas": 4, **kwargs}
    )


async def answers(url: str) -> bool:
    try:
        async with httpx.AsyncClient() as client:
            return (await client.get(url, timeout=1.0)).status_code == 200
    except httpx.HTTPError:
        return False


async def start(
    platform: LocalPlatform, spec: AgentSpec, n: int, color: Color = "blue"
) -> list[Replica]:
    replicas = await platform.ensure(spec, n, color)
    for r in replicas:
        await eventually(lambda r=r: answers(f"{r.endpoint}/health"), f"{r.endpoint} healthy")
    return replicas


async def service(platform: LocalPlatform, agent_id: str) -> ServiceInfo:
    info = await platform.describe_service(agent_id)
    assert info is not None
    return info


async def test_switch_under_load_fails_no_request(tmp_path: Path, tag: str) -> None:
    settings = make_settings(tmp_path)
    platform = platform_for(settings)
    spec = agent(tag)
    [blue] = await start(platform, spec, 1)
    await start(platform, spec.model_copy(update={"version": "v2"}), 1, "green")
    ports = json.loads((tmp_path / "agents" / spec.agent_id / "service.json").read_text())
    async with Gateway(settings) as gateway, httpx.AsyncClient(timeout=10) as client:
        info = await service(platform, spec.agent_id)
        assert info.preview_url is None
        no_preview = await client.get(f"http://127.0.0.1:{ports['preview_port']}/health")
        assert no_preview.status_code == 503
        assert (await client.get(f"{info.active_url}/health")).headers["x-fleetops-color"] == "blue"

        info = await platform.switch_traffic(spec.agent_id, "blue", "green")
        assert info.preview_url is not None
        preview = await client.get(f"{info.preview_url}/health")
        assert (preview.headers["x-fleetops-color"], preview.json()["version"]) == ("green", "v2")

        # Blue answers slowly, so requests are in flight on blue when traffic switches to green.
        await client.post(f"{blue.endpoint}/faults", json={"latency_seconds": 1.0})
        results: list[tuple[float, int | str, str | None, str | None]] = []
        deadline = time.monotonic() + 2.0

        async def load() -> None:
            async with httpx.AsyncClient(timeout=10) as c:
                while time.monotonic() < deadline and len(results) < 400:
                    began = time.monotonic()
                    try:
                        r = await c.post(f"{info.active_url}/execute", json={"prompt": "hello"})
                        outcome: int | str = r.status_code
                        color, version = r.headers.get("x-fleetops-color"), r.json()["version"]
                    except httpx.HTTPError as e:
                        outcome, color, version = repr(e), None, None
                    results.append((began, outcome, color, version))

        async def blue_in_flight() -> bool:
            routes = (await client.get(f"{gateway.admin_url}/routes")).json()
            return bool(routes[spec.agent_id]["upstreams"]["blue"][0]["in_flight"])

        loaders = [asyncio.create_task(load()) for _ in range(4)]
        await eventually(blue_in_flight, "requests in flight on blue")
        switched = await platform.switch_traffic(spec.agent_id, "green", "blue")
        switch_done = time.monotonic()
        await asyncio.gather(*loaders)

    assert [r for r in results if r[1] != 200] == []
    assert switched.generation == 2 and switched.active_url == info.active_url
    assert {(c, v) for *_, c, v in results} == {("blue", "v1"), ("green", "v2")}
    assert sum(c == "blue" for *_, c, _ in results) >= 4  # the in-flight ones finished on blue
    assert all(r[2] == "green" for r in results if r[0] > switch_done)
    assert switched.preview_url is not None


async def test_least_connections_prefers_the_idle_replica(tmp_path: Path, tag: str) -> None:
    settings = make_settings(tmp_path, balancing="least_connections")
    platform = platform_for(settings)
    spec = agent(tag)
    slow, _ = await start(platform, spec, 2)
    async with Gateway(settings) as gateway, httpx.AsyncClient(timeout=10) as client:
        await client.post(f"{slow.endpoint}/faults", json={"latency_seconds": 1.5})
        url = f"{(await service(platform, spec.agent_id)).active_url}/execute"
        calls: list[asyncio.Task[httpx.Response]] = []

        async def placed() -> bool:  # every request sent so far is in flight or answered
            upstreams = (await _upstreams(client, gateway, spec.agent_id)).values()
            busy = sum(u["in_flight"] for u in upstreams)
            return busy + sum(c.done() for c in calls) >= len(calls)

        for _ in range(10):
            calls.append(asyncio.create_task(client.post(url, json={"prompt": "hi"})))
            await eventually(placed, "the request reached a replica")
        replies = await asyncio.gather(*calls)

    served = [r.json()["replica"] for r in replies]
    assert all(r.status_code == 200 for r in replies)
    assert served.count(slow.index) <= 2, served  # round robin would send it 5


async def test_killed_replica_is_skipped_after_one_failure(tmp_path: Path, tag: str) -> None:
    settings = make_settings(tmp_path)
    platform = platform_for(settings)
    spec = agent(tag)
    victim, _ = await start(platform, spec, 2)
    async with Gateway(settings) as gateway, httpx.AsyncClient(timeout=10) as client:
        url = f"{(await service(platform, spec.agent_id)).active_url}/health"
        assert {(await client.get(url)).json()["replica"] for _ in range(4)} == {0, 1}

        os.kill(victim.pid or 0, signal.SIGKILL)
        await eventually(
            lambda: asyncio.sleep(0, not _process.is_alive(victim.pid or 0, None)), "victim dead"
        )
        replies = [await client.get(url) for _ in range(20)]

        assert [(r.status_code, r.json()["replica"]) for r in replies] == [(200, 1)] * 20
        routes = (await client.get(f"{gateway.admin_url}/routes")).json()
        by_replica = {u["replica"]: u for u in routes[spec.agent_id]["upstreams"]["blue"]}
        assert (by_replica[0]["down"], by_replica[0]["failures"]) == (True, 1)
        assert (by_replica[1]["down"], by_replica[1]["failures"]) == (False, 0)


async def test_ports_follow_agents_and_large_bodies_stream(tmp_path: Path, tag: str) -> None:
    settings = make_settings(tmp_path)
    platform = platform_for(settings)
    spec = agent(tag, command=[sys.executable, "-c", ECHO_APP])
    async with Gateway(settings) as gateway, httpx.AsyncClient(timeout=30) as client:
        # Another live process announced as the gateway of this state directory: refuse.
        gateway_file = tmp_path / "gateway.json"
        ours = gateway_file.read_text()
        gateway_file.write_text(json.dumps({"admin_url": "http://x:1", "pid": os.getppid()}))
        with pytest.raises(GatewayError, match="already serves"):
            await Gateway(settings).start()
        gateway_file.write_text(ours)
        await platform.ensure(spec, 1)  # the running gateway opens the new agent's ports
        info = await service(platform, spec.agent_id)
        await eventually(lambda: answers(f"{info.active_url}/echo"), "echo through the gateway")

        payload = os.urandom(5 * 1024 * 1024)
        reply = await client.post(
            f"{info.active_url}/echo?x=1",
            content=payload,
            headers={
                "Connection": "keep-alive, x-hop",
                "X-Hop": "1",
                "X-Forwarded-For": "10.1.2.3",
            },
        )
        echoed = reply.json()
        assert (echoed["size"], echoed["sha256"]) == (
            len(payload),
            hashlib.sha256(payload).hexdigest(),
        )
        assert echoed["headers"]["x-forwarded-for"] == "10.1.2.3, 127.0.0.1"
        assert "x-hop" not in echoed["headers"] and "connection" not in echoed["headers"]
        blob = await client.get(f"{info.active_url}/blob?size={4 * 1024 * 1024}")
        assert len(blob.content) == 4 * 1024 * 1024
        assert blob.headers["x-fleetops-color"] == "blue"

        await platform.stop_all(spec.agent_id)
        await eventually(lambda: _refused(info.active_url), "the agent's port closed")
        assert (await client.get(f"{gateway.admin_url}/routes")).json() == {}
    assert not (tmp_path / "gateway.json").exists()


async def _refused(url: str) -> bool:
    try:
        async with httpx.AsyncClient() as client:
            await client.get(url, timeout=1.0)
    except httpx.ConnectError:
        return True
    return False


SLOW_SECOND_REPLICA = r"""
import os, runpy, time
if os.environ["REPLICA_INDEX"] != "0":
    time.sleep(float(os.environ["START_DELAY_SECONDS"]))
runpy.run_module("infra.sample_agent", run_name="__main__")
"""


async def _upstreams(client: httpx.AsyncClient, gateway: Gateway, agent_id: str) -> dict[int, Any]:
    routes = (await client.get(f"{gateway.admin_url}/routes")).json()
    return {u["replica"]: u for u in routes[agent_id]["upstreams"]["blue"]}


async def test_a_starting_replica_gets_no_request_until_ready(tmp_path: Path, tag: str) -> None:
    settings = make_settings(tmp_path)
    platform = platform_for(settings)
    spec = agent(
        tag,
        command=[sys.executable, "-c", SLOW_SECOND_REPLICA],
        env={TAG_VAR: tag, "START_DELAY_SECONDS": "2"},
    )
    await start(platform, spec, 1)
    async with Gateway(settings) as gateway, httpx.AsyncClient(timeout=10) as client:
        url = f"{(await service(platform, spec.agent_id)).active_url}/execute"

        async def ready(replica: int) -> bool:
            upstream = (await _upstreams(client, gateway, spec.agent_id)).get(replica)
            return bool(upstream and upstream["ready"])

        await eventually(lambda: ready(0), "replica 0 ready")
        await platform.ensure(spec, 2)  # replica 1 starts listening only after 2 s
        served: list[tuple[int, int]] = []  # replies that ended while replica 1 was not ready
        deadline = time.monotonic() + 30
        while True:
            assert time.monotonic() < deadline, "replica 1 never became ready"
            r = await client.post(url, json={"prompt": "hi"})
            if await ready(1):
                break
            served.append((r.status_code, r.json()["replica"]))
        upstream = (await _upstreams(client, gateway, spec.agent_id))[1]
        after = [
            (await client.post(url, json={"prompt": "hi"})).json()["replica"] for _ in range(6)
        ]

    assert len(served) >= 5 and set(served) == {(200, 0)}
    assert upstream["failures"] == 0  # never tried before it listened
    assert sorted(set(after)) == [0, 1]


async def test_scale_in_drains_requests_in_flight(tmp_path: Path, tag: str) -> None:
    # The replica's stop grace (0.5 s) is shorter than a request (1.5 s): only draining before
    # SIGTERM lets the requests in flight to the removed replica finish.
    settings = make_settings(tmp_path)
    settings.platform.local.stop_grace_seconds = 0.5
    platform = platform_for(settings)
    spec = agent(tag, env={TAG_VAR: tag, "FAULT_LATENCY_SECONDS": "1.5"})
    _, doomed = await start(platform, spec, 2)
    async with Gateway(settings) as gateway, httpx.AsyncClient(timeout=30) as client:
        url = f"{(await service(platform, spec.agent_id)).active_url}/execute"
        results: list[tuple[int | str, int | None]] = []
        stop = asyncio.Event()

        async def load() -> None:
            while not stop.is_set():
                try:
                    r = await client.post(url, json={"prompt": "hi"})
                    results.append((r.status_code, r.json().get("replica")))
                except httpx.HTTPError as e:
                    results.append((repr(e), None))

        async def doomed_busy() -> bool:
            return bool((await _upstreams(client, gateway, spec.agent_id))[1]["in_flight"])

        loaders = [asyncio.create_task(load()) for _ in range(4)]
        await eventually(doomed_busy, "requests in flight to replica 1")
        await platform.ensure(spec, 1)
        stopped_at = len(results)
        assert not _process.is_alive(doomed.pid or 0, None)
        await eventually(lambda: asyncio.sleep(0, len(results) >= stopped_at + 4), "more replies")
        stop.set()
        await asyncio.gather(*loaders)

    assert [r for r in results if r[0] != 200] == []
    assert (200, 1) in results[:stopped_at]  # the in-flight ones finished on replica 1
    assert {replica for _, replica in results[stopped_at:]} == {0}


SLOW_WHEN_FLAGGED = r"""
import os, runpy, time
if os.path.exists(os.environ["SLOW_FLAG"]):
    time.sleep(2)
runpy.run_module("infra.sample_agent", run_name="__main__")
"""


async def test_a_restarting_single_replica_gives_503_not_502(tmp_path: Path, tag: str) -> None:
    # While the agent's only replica restarts (draining, then starting for 2 s), the gateway has
    # nothing to route to: it says so at once with 503 and Retry-After, and never forwards to a
    # replica that has not been ready yet (a refused connection, 502).
    settings = make_settings(tmp_path)
    platform = platform_for(settings)
    flag = tmp_path / "slow"
    spec = agent(
        tag,
        command=[sys.executable, "-c", SLOW_WHEN_FLAGGED],
        env={TAG_VAR: tag, "SLOW_FLAG": str(flag)},
    )
    [old] = await start(platform, spec, 1)
    async with Gateway(settings) as gateway, httpx.AsyncClient(timeout=10) as client:
        url = f"{(await service(platform, spec.agent_id)).active_url}/execute"
        assert (await client.post(url, json={"prompt": "hi"})).status_code == 200
        flag.touch()
        restart = asyncio.create_task(platform.restart(spec, [0]))
        replies: list[httpx.Response] = []
        deadline = time.monotonic() + 30
        while not restart.done() or replies[-1].status_code != 200:
            assert time.monotonic() < deadline, "the restarted replica never served"
            replies.append(await client.post(url, json={"prompt": "hi"}))
        [new] = await restart
        upstream = (await _upstreams(client, gateway, spec.agent_id))[0]

    statuses = [r.status_code for r in replies]
    assert new.pid != old.pid
    assert set(statuses) == {200, 503}, statuses
    unavailable = next(r for r in replies if r.status_code == 503)
    assert unavailable.headers["retry-after"] == "1"
    assert "no ready blue replicas" in unavailable.json()["error"]
    assert (upstream["pid"], upstream["failures"]) == (new.pid, 0)


async def test_listener_sockets_send_small_writes_at_once() -> None:
    # A response's headers and body are written separately; with Nagle's algorithm on, the body
    # of every response on a kept-alive connection waited ~40 ms for the client's delayed ACK.
    accepted: list[socket.socket] = []

    class Capture(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            accepted.append(transport.get_extra_info("socket"))

    sock = bind("127.0.0.1", 0)
    server = await asyncio.get_running_loop().create_server(Capture, sock=sock)
    async with server:
        _, writer = await asyncio.open_connection(*sock.getsockname()[:2])
        await eventually(lambda: asyncio.sleep(0, bool(accepted)), "the connection accepted")
        assert accepted[0].getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        writer.close()


HEALTH_FIELDS = {"ready", "starting", "draining", "in_flight", "down", "failures"}


def routes_shape(route: RouteView | None) -> dict[str, Any]:
    """``route`` as a dict without the upstreams' health, which changes as probes answer."""
    assert route is not None
    return route.model_dump(exclude={"upstreams": {"__all__": {"__all__": HEALTH_FIELDS}}})


async def test_admin_contract_refuses_bad_requests_and_reports_routes(
    tmp_path: Path, tag: str
) -> None:
    settings = make_settings(tmp_path)
    platform = platform_for(settings)
    spec = agent(tag)
    [blue] = await start(platform, spec, 1)
    async with Gateway(settings) as gateway, httpx.AsyncClient(timeout=10) as client:
        sync = f"{gateway.admin_url}/agents/{spec.agent_id}/sync"
        bad = await client.post(sync, json={"generation": -1, "unknown": 1})
        assert bad.status_code == 422
        assert {e["loc"][0] for e in bad.json()["error"]} == {"generation", "unknown"}
        nosuch = await client.post(f"{gateway.admin_url}/agents/Not_An_Id/sync", json={})
        assert nosuch.status_code == 404

        # A push makes the gateway read the agent's files now; the answer is the typed route.
        green = await start(platform, spec.model_copy(update={"version": "v2"}), 1, "green")
        result = SyncResult.model_validate_json(
            (await client.post(sync, json={"generation": 0, "timeout_seconds": 5})).content
        )
        routes = RoutesView.model_validate_json(
            (await client.get(f"{gateway.admin_url}/routes")).content
        )
        # A pushed switch older than the generation served changes nothing.
        ports = {"active_port": result.route.active_port, "preview_port": result.route.preview_port}
        stale = {"active_color": "green", "preview_color": None, "generation": 0, **ports}
        answer = SyncResult.model_validate_json(
            (await client.post(sync, json={"generation": 0, "service": stale})).content
        )
        assert answer.route is not None and answer.route.active_color == "blue"

    # The two reads agree on the route; health (a replica's readiness, its failures) may move
    # between them, as the green replica finishes starting.
    assert result.served and routes_shape(result.route) == routes_shape(routes.root[spec.agent_id])
    assert result.route.generation == 0 and result.route.active_color == "blue"
    assert [u.pid for u in result.route.upstreams["blue"]] == [blue.pid]
    assert [u.pid for u in result.route.upstreams["green"]] == [g.pid for g in green]


async def test_a_busy_agent_port_is_retried_until_free(tmp_path: Path, tag: str) -> None:
    settings = make_settings(tmp_path, reload_seconds=0.05)
    platform = platform_for(settings)
    spec = agent(tag)
    await start(platform, spec, 1)
    info = await service(platform, spec.agent_id)
    port = int(info.active_url.rsplit(":", 1)[1])
    squatter = bind("127.0.0.1", port)  # someone else holds the agent's port
    async with Gateway(settings), httpx.AsyncClient(timeout=10) as client:
        squatter.close()
        await eventually(lambda: answers(f"{info.active_url}/health"), "the freed port served")
        assert (await client.get(f"{info.active_url}/health")).headers["x-fleetops-color"] == "blue"
