"""The local gateway's reverse proxy: balancing, passive health and streaming, as an ASGI app.

One :class:`ProxyApp` serves one gateway port. For every request it asks the gateway which
colour and replicas the port routes to *now*, picks a replica (:class:`Balancer`) and streams
the request and the response through a pooled ``httpx.AsyncClient``. A colour switch therefore
takes effect between two requests: requests already running finish on the replica they started
on, later ones go to the new colour.

Headers: the hop-by-hop fields of RFC 9110 section 7.6.1 (``Connection`` and the fields it
names, ``Keep-Alive``, ``Proxy-Connection``, ``TE``, ``Trailer``, ``Transfer-Encoding``,
``Upgrade``, ``Proxy-Authenticate``, ``Proxy-Authorization``) are dropped both ways;
``X-Forwarded-For`` gets the client address appended, ``X-Forwarded-Host``/``-Proto`` are set,
and every response carries ``X-FleetOps-Color``.

Passive health (nginx ``max_fails``/``fail_timeout`` style, see
:mod:`activities.platform.local.balancer`): a replica whose connection fails is marked down for
a few seconds and the request is retried once on another replica of the same colour, if that is
safe: always when the connection was never made (nothing was sent), and for idempotent methods
(RFC 9110 section 9.2.2) also after a broken connection, provided the request body can be
replayed (it fit in :data:`REPLAY_LIMIT` bytes).
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx

from activities.platform.local.balancer import Balancer, Target, Upstream
from activities.platform.local.rate_limit import retry_after

logger = logging.getLogger("fleetops.gateway")

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authenticate",
        b"proxy-authorization",
    }
)
"""Hop-by-hop header fields (RFC 9110 section 7.6.1), lower case."""
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
"""Idempotent methods (RFC 9110 section 9.2.2): retried after a broken connection."""
REPLAY_LIMIT = 64 * 1024
"""Bytes of request body kept so an idempotent request can be retried; larger ones are not."""

Scope = dict[str, Any]
Receive = Callable[[], Any]
Send = Callable[[dict[str, Any]], Any]


class _ClientGone(Exception):
    """The client disconnected while sending its request body."""


class _ResponseBroken(Exception):
    """The replica failed mid-response: too late to retry or answer 502; the server closes the
    client connection."""


class _Body:
    """The request body as a stream, remembered (up to ``REPLAY_LIMIT`` bytes) for one retry."""

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self._kept: list[bytes] | None = []
        self._size = 0
        self.started = False
        self.complete = False

    @property
    def replayable(self) -> bool:
        """Whether the whole body can be sent again."""
        return not self.started or (self.complete and self._kept is not None)

    async def stream(self) -> AsyncIterator[bytes]:
        """The body chunks: from the client the first time, from memory on a replay."""
        if self.started:
            for chunk in self._kept or []:
                yield chunk
            return
        self.started = True
        more = True
        while more:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                raise _ClientGone
            chunk, more = message.get("body", b""), message.get("more_body", False)
            if self._kept is not None:
                self._size += len(chunk)
                if self._size > REPLAY_LIMIT:
                    self._kept = None
                else:
                    self._kept.append(chunk)
            if chunk:
                yield chunk
        self.complete = True


def _filter(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """``headers`` without hop-by-hop fields, including those ``Connection`` names."""
    named = {
        token.strip().lower()
        for name, value in headers
        if name.lower() == b"connection"
        for token in value.split(b",")
    }
    return [(n, v) for n, v in headers if n.lower() not in HOP_BY_HOP and n.lower() not in named]


def _retryable(method: str, error: httpx.TransportError, body: _Body) -> bool:
    if isinstance(error, httpx.ConnectError | httpx.ConnectTimeout):
        return not body.started  # nothing reached the replica: safe for any method
    return method in IDEMPOTENT and body.replayable


class ProxyApp:
    """ASGI app of one gateway port: proxies each request to a replica of the routed colour.

    Args:
        client: pooled client with retries off (the proxy decides what to retry).
        balancer: shared by every port of the gateway.
        route: returns the port's current :class:`Target`, or None if the port serves nothing.
        admit: the port's rate limit: called with the agent id for each request, answers None to
            let it pass or the seconds until it would (then it is answered 429 with
            ``Retry-After``); None: no limit.
    """

    def __init__(
        self,
        client: httpx.AsyncClient,
        balancer: Balancer,
        route: Callable[[], Target | None],
        admit: Callable[[str], float | None] | None = None,
    ) -> None:
        self._client = client
        self._balancer = balancer
        self._route = route
        self._admit = admit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return  # lifespan is off and websockets are disabled on gateway listeners
        target = self._route()
        if target is None or target.color is None:
            await _error(send, 503, "this port routes to no colour now", None)
            return
        if self._admit is not None and (wait := self._admit(target.agent_id)) is not None:
            detail = f"{target.agent_id} is rate limited at the gateway; retry later"
            await _error(send, 429, detail, target.color, retry_after=retry_after(wait))
            return
        body, tried = _Body(receive), set[str]()
        error: httpx.TransportError | None = None
        while (upstream := self._balancer.pick(target, tried)) is not None:
            tried.add(upstream.url)
            try:
                await self._forward(scope, body, send, upstream, target.color)
                return
            except _ClientGone:
                return
            except httpx.TimeoutException as e:
                if not isinstance(e, httpx.ConnectTimeout):  # slow, not broken: no retry
                    await _error(send, 504, f"replica {upstream.url} timed out", target.color)
                    return
                error = e
            except httpx.TransportError as e:
                error = e
            self._balancer.mark_down(upstream)
            logger.warning("%s: %s failed: %r", target.agent_id, upstream.url, error)
            if len(tried) > 1 or not _retryable(scope["method"], error, body):
                break
            target = self._route() or target  # the retry sees routes changed meanwhile
        if error is None:
            starting = self._balancer.starting(target)
            detail = f"no ready {target.color} replicas of {target.agent_id}" + (
                f" ({starting} starting)" if starting else ""
            )
            await _error(send, 503, detail, target.color)
        else:
            await _error(send, 502, f"replica failed: {error!r}", target.color)

    async def _forward(
        self, scope: Scope, body: _Body, send: Send, upstream: Upstream, color: str
    ) -> None:
        """Send the request to ``upstream`` and stream its response back.

        Raises:
            httpx.TransportError: before any response byte was sent to the client (retrying is
                the caller's decision).
            _ResponseBroken: the replica failed after the response started.
            _ClientGone: the client went away while sending the body.
        """
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        has_body = any(
            n.lower() == b"transfer-encoding" or (n.lower() == b"content-length" and v != b"0")
            for n, v in headers
        )
        query = scope.get("query_string", b"")
        raw_path = scope.get("raw_path") or scope["path"].encode()
        request = httpx.Request(
            scope["method"],
            httpx.URL(upstream.url, raw_path=raw_path + (b"?" + query if query else b"")),
            headers=self._request_headers(scope, headers),
            content=body.stream() if has_body else None,
        )
        with self._balancer.track(upstream):
            response = await self._client.send(request, stream=True)
            try:
                out = _filter(response.headers.raw)
                out.append((b"x-fleetops-color", color.encode()))
                await send(
                    {"type": "http.response.start", "status": response.status_code, "headers": out}
                )
                try:
                    async for chunk in response.aiter_raw():
                        await send({"type": "http.response.body", "body": chunk, "more_body": True})
                except httpx.TransportError as e:
                    raise _ResponseBroken(f"{upstream.url} broke off its response: {e!r}") from e
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            finally:
                await response.aclose()

    @staticmethod
    def _request_headers(
        scope: Scope, headers: list[tuple[bytes, bytes]]
    ) -> list[tuple[bytes, bytes]]:
        client = (scope.get("client") or ("", 0))[0].encode()
        forwarded = [v for n, v in headers if n.lower() == b"x-forwarded-for"]
        host = [v for n, v in headers if n.lower() == b"host"]
        out = [
            (n, v)
            for n, v in _filter(headers)
            # Expect: 100-continue was answered by the gateway's own server, not the replica's.
            if n.lower() not in (b"host", b"expect", b"x-forwarded-for", b"x-forwarded-host")
        ]
        out.append((b"x-forwarded-for", b", ".join([*forwarded, client])))
        out.append((b"x-forwarded-proto", scope.get("scheme", "http").encode()))
        if host:
            out.append((b"x-forwarded-host", host[0]))
        return out


async def _error(
    send: Send, status: int, detail: str, color: str | None, *, retry_after: str | None = None
) -> None:
    body = json.dumps({"error": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if color is not None:
        headers.append((b"x-fleetops-color", color.encode()))
    if status == 503:  # RFC 9110 section 10.2.3: when to try again, in seconds
        headers.append((b"retry-after", b"1"))
    elif retry_after is not None:  # 429, RFC 6585 section 4
        headers.append((b"retry-after", retry_after.encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
