"""The local platform's side of the gateway handshake: push a change, wait for it to be served.

A running gateway announces itself in ``<state_dir>/gateway.json``
(:class:`~activities.platform.local.admin.GatewayAnnouncement`). After every change to an
agent's files the platform calls the gateway's admin endpoint (see
:mod:`activities.platform.local.admin`): the gateway re-reads that agent and answers once it
serves the change; nobody polls. Without a gateway there is nobody to tell: a gateway that
starts later reads every agent's files first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path
from typing import TypeVar

import httpx
from pydantic import ValidationError

from activities.platform.local import process
from activities.platform.local.admin import (
    MAX_WAIT_SECONDS,
    DrainRequest,
    DrainResult,
    GatewayAnnouncement,
    ServiceView,
    SyncRequest,
    SyncResult,
)
from activities.platform.local.state import off_loop

logger = logging.getLogger("activities.platform.local")

GATEWAY_FILE = "gateway.json"
"""Name, under the state directory, of the file a running gateway writes."""
RETRY_SECONDS = 0.05
"""Seconds between attempts while the gateway cannot be reached (e.g. it is starting)."""
_SLACK_SECONDS = 2.0
"""Seconds an admin call may take beyond the wait it asks the gateway for."""
_NO_SYNC = SyncResult(served=True, route=None)
_NO_DRAIN = DrainResult(drained=True, busy={})
R = TypeVar("R", SyncResult, DrainResult)


def read_announcement(state_dir: Path) -> GatewayAnnouncement | None:
    """The running gateway's announcement, or None if no live gateway serves ``state_dir``
    (no file, an unreadable one, or one left by a dead process). Blocking."""
    try:
        info = GatewayAnnouncement.model_validate_json((state_dir / GATEWAY_FILE).read_bytes())
    except (OSError, ValidationError):
        return None
    return info if process.is_alive(info.pid, None) else None


class GatewayClient:
    """Calls the admin endpoint of whichever gateway serves ``state_dir`` now.

    Args:
        state_dir: FleetOps state directory.
    """

    def __init__(self, state_dir: Path) -> None:
        self._state_dir = state_dir
        self._http: httpx.AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._known: tuple[tuple[int, int, int], GatewayAnnouncement | None] | None = None

    async def _announcement(self) -> GatewayAnnouncement | None:
        """The live gateway's announcement; the file is re-read (off the event loop) only when
        its identity (inode, mtime, size) changed since the last call."""
        try:
            st = os.stat(self._state_dir / GATEWAY_FILE)
        except OSError:
            return None
        identity = (st.st_ino, st.st_mtime_ns, st.st_size)
        if self._known is None or self._known[0] != identity:
            self._known = (identity, await off_loop(read_announcement, self._state_dir))
        info = self._known[1]
        return info if info is not None and process.is_alive(info.pid, None) else None

    def _client(self) -> httpx.AsyncClient:
        """One pooled client per event loop (a platform object may outlive a loop in tests)."""
        loop = asyncio.get_running_loop()
        if self._http is None or self._loop is not loop:
            # Plain HTTP on loopback: no TLS context (loading the CA bundle costs ~80 ms).
            transport = httpx.AsyncHTTPTransport(retries=0, verify=False)
            self._http = httpx.AsyncClient(transport=transport, verify=False)
            self._loop = loop
        return self._http

    async def sync(
        self,
        agent_id: str,
        *,
        generation: int | None = None,
        service: ServiceView | None = None,
        timeout: float = 5.0,
    ) -> bool:
        """Tell the gateway that ``agent_id``'s files changed; with ``generation``, wait until it
        serves that generation (or a later one) with a ready replica of the active colour, if
        that colour has running replicas.

        Args:
            agent_id: the agent.
            generation: the ``service.json`` generation just written; None: do not wait.
            service: that file's content, for the gateway to apply without reading it.
            timeout: seconds to wait for the gateway (to be reachable and to serve), at most
                :data:`~activities.platform.local.admin.MAX_WAIT_SECONDS`.

        Returns:
            True once served, or when no gateway runs; False after ``timeout`` (logged).
        """
        timeout = min(timeout, MAX_WAIT_SECONDS)
        request = SyncRequest(generation=generation, service=service, timeout_seconds=timeout)
        answer = await self._call(f"/agents/{agent_id}/sync", request, _NO_SYNC, timeout)
        if answer is None or not answer.served:
            if generation is not None:
                logger.warning(
                    "gateway did not serve generation %d of %s within %.1fs; continuing",
                    generation,
                    agent_id,
                    timeout,
                )
            return answer is not None and answer.served
        return True

    async def drain(self, agent_id: str, pids: set[int], timeout: float) -> bool:
        """Tell the gateway that replicas ``pids`` of ``agent_id`` are marked draining, and wait
        until it routes nothing to them and has no request in flight to any of them.

        This is the local counterpart of Kubernetes removing a terminating Pod from the
        Service's endpoints before its containers get SIGTERM.

        Args:
            agent_id: the agent.
            pids: process ids of the replicas about to stop.
            timeout: seconds to wait, at most
                :data:`~activities.platform.local.admin.MAX_WAIT_SECONDS` (requests still in
                flight are then cut off by the replica's shutdown).

        Returns:
            True once drained, or when no gateway runs; False after ``timeout`` (logged).
        """
        timeout = min(timeout, MAX_WAIT_SECONDS)
        request = DrainRequest(pids=sorted(pids), timeout_seconds=timeout)
        answer = await self._call(f"/agents/{agent_id}/drain", request, _NO_DRAIN, timeout)
        if answer is None or not answer.drained:
            logger.warning(
                "%s: replicas %s not drained within %.1fs (in flight: %s); stopping anyway",
                agent_id,
                sorted(pids),
                timeout,
                answer.busy if answer else "unknown: gateway unreachable",
            )
            return False
        return True

    async def wait_ready(self, agent_id: str, pid: int, timeout: float) -> bool:
        """Wait until the gateway routes replica ``pid`` of ``agent_id`` as ready (its readiness
        probe passed), re-reading the agent's files first.

        Args:
            agent_id: the agent.
            pid: the replica's process id.
            timeout: seconds to wait, at most
                :data:`~activities.platform.local.admin.MAX_WAIT_SECONDS`.

        Returns:
            True once ready, or when no gateway runs; False after ``timeout``.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(timeout, MAX_WAIT_SECONDS)
        request = SyncRequest(generation=None, timeout_seconds=0)
        while True:
            left = max(deadline - loop.time(), 0.0)
            answer = await self._call(f"/agents/{agent_id}/sync", request, _NO_SYNC, left)
            if answer is _NO_SYNC:
                return True
            route = answer.route if answer is not None else None
            if route is not None and any(
                u.pid == pid and u.ready for ups in route.upstreams.values() for u in ups
            ):
                return True
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(RETRY_SECONDS)

    async def _call(
        self, path: str, request: SyncRequest | DrainRequest, absent: R, timeout: float
    ) -> R | None:
        """POST ``request`` to the gateway, retrying while it is unreachable, for ``timeout``
        seconds.

        Returns:
            The answer, parsed as the type of ``absent``; ``absent`` when no gateway runs; None
            when the gateway could not be reached in time or answered an error.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            info = await self._announcement()
            if info is None:
                return absent
            with contextlib.suppress(httpx.HTTPError, ValidationError):
                response = await self._client().post(
                    info.admin_url + path,
                    content=request.model_dump_json(),
                    headers={"content-type": "application/json"},
                    timeout=max(deadline - loop.time(), 0.0) + _SLACK_SECONDS,
                )
                if response.status_code == 200:
                    return type(absent).model_validate_json(response.content)
                logger.warning(
                    "gateway %s%s answered %d", info.admin_url, path, response.status_code
                )
                return None
            if loop.time() >= deadline:
                return None
            await asyncio.sleep(RETRY_SECONDS)
