"""Rolling restart of one colour of a local agent, surge first, with no failed request.

For each replica slot ``(color, i)`` in turn, as a Deployment with ``maxSurge: 1,
maxUnavailable: 0`` does it:

1. start a replacement on a free port, recorded under the surge slot ``(color,
   SURGE_BASE + i)`` (so a crash never forgets it), with ``REPLICA_INDEX=i``;
2. wait until it answers its health path and the local gateway routes it as ready;
3. drain the old replica (the gateway sends it nothing new and lets requests in flight finish,
   up to ``platform.local.drain_seconds``) and stop it;
4. move the replacement into slot ``(color, i)``, marked with the rollout id.

A retried restart with the same rollout id skips slots already marked and adopts a replacement
it had started (a worker that died mid-restart). A replacement that does not turn healthy in
time is stopped and the old replica keeps serving; so is one whose restart is cancelled (the
workflow was cancelled or terminated): no replica outlives its slot.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable

import httpx
from temporalio import activity

from activities.platform.base import PlatformError
from activities.platform.local import process
from activities.platform.local.gateway_client import GatewayClient
from activities.platform.local.replicas import ReplicaRunner, argv_of
from activities.platform.local.state import Key, ReplicaRecord, StateStore, off_loop
from fleetops.models import AgentSpec, Color

logger = logging.getLogger("activities.platform.local")

SURGE_BASE = 1_000_000
"""Index offset of a replacement's slot while it starts (``ensure`` stops such slots, as they
are above any replica count)."""
POLL_SECONDS = 0.1
"""Seconds between health probes of a replacement that is not healthy yet."""
GATEWAY_READY_SECONDS = 30.0
"""Seconds a healthy replacement may take to be routed as ready by the gateway."""


def _alive(r: ReplicaRecord | None) -> bool:
    return r is not None and process.is_alive(r.pid, r.start_time)


class RollingRestart:
    """One rolling restart of the replicas of ``color`` (callers hold the agent's lock).

    Args:
        runner: starts, drains and stops replicas.
        store: the agent's state files.
        gateway: the running gateway, if any.
        publish: rewrites Prometheus targets and tells the gateway about a change.
    """

    def __init__(
        self,
        runner: ReplicaRunner,
        store: StateStore,
        gateway: GatewayClient,
        publish: Callable[[str], Awaitable[None]],
    ) -> None:
        self._runner, self._store, self._gateway = runner, store, gateway
        self._publish = publish

    async def run(self, spec: AgentSpec, color: Color, rollout: str, ready_timeout: float) -> int:
        """Replace every replica of ``color``; returns how many were replaced now.

        Raises:
            PlatformError: a replacement did not turn healthy within ``ready_timeout`` seconds
                (it was stopped; the old replica and the ones after it were not touched).
        """
        argv = argv_of(spec)
        agent = spec.agent_id
        records = await off_loop(self._store.load, agent)
        stale = [
            k
            for k, r in records.items()
            if k[0] == color and k[1] >= SURGE_BASE and (r.rollout != rollout or not _alive(r))
        ]
        if stale:  # left by another restart, or dead: not ours to adopt
            await self._runner.stop_and_forget(agent, records, sorted(stale))
        slots = sorted(i for c, i in records if c == color and i < SURGE_BASE)
        replaced = 0
        for i in slots:
            old = records.get((color, i))
            if old is not None and old.rollout == rollout and _alive(old):
                continue  # replaced by an earlier attempt of this restart
            await self._roll(spec, argv, (color, i), records, rollout, ready_timeout)
            replaced += 1
            if activity.in_activity():
                activity.heartbeat(f"replaced {color} replica {i}")
        return replaced

    async def _roll(
        self,
        spec: AgentSpec,
        argv: list[str],
        key: Key,
        records: dict[Key, ReplicaRecord],
        rollout: str,
        ready_timeout: float,
    ) -> None:
        agent, (color, index) = spec.agent_id, key
        surge_key: Key = (color, SURGE_BASE + index)
        promoted = False
        try:
            surge = records.get(surge_key)
            if surge is None:
                surge = await self._runner.start_surge(spec, argv, key, surge_key, records, rollout)
                await self._publish_now(agent)
            await self._wait_healthy(spec, surge, ready_timeout)
            old = records.get(key)
            if old is not None:
                await self._runner.drain(agent, records, [key])
                await self._runner.stop(old)
            records[key] = dataclasses.replace(surge, index=index)
            del records[surge_key]
            await off_loop(self._store.save, agent, records)
            promoted = True
            await self._publish_now(agent)
            logger.info("%s: %s replica %d replaced (rollout %s)", agent, color, index, rollout)
        finally:
            if not promoted and surge_key in records:
                # Failed or cancelled: the old replica keeps serving; the replacement goes.
                await asyncio.shield(self._runner.stop_and_forget(agent, records, [surge_key]))

    async def _publish_now(self, agent: str) -> None:
        await self._publish(agent)

    async def _wait_healthy(self, spec: AgentSpec, surge: ReplicaRecord, timeout: float) -> None:
        """Until the replacement answers its health path (a status in [200, 400)) and the
        gateway routes it as ready; heartbeating.

        Raises:
            PlatformError: not healthy within ``timeout`` seconds, or its process died.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        endpoint = f"http://{surge.host}:{surge.port}{spec.health.path}"
        probe_timeout = min(spec.health.timeout_seconds, 5.0)
        transport = httpx.AsyncHTTPTransport(retries=0)
        last = "no answer yet"
        async with httpx.AsyncClient(transport=transport, timeout=probe_timeout) as http:
            while True:
                if not _alive(surge):
                    raise PlatformError(
                        f"{spec.agent_id}: replacement of {surge.color} replica "
                        f"{surge.index - SURGE_BASE} exited while starting; see its log"
                    )
                try:
                    answer = await http.get(endpoint)
                    if 200 <= answer.status_code < 400:
                        break
                    last = f"HTTP {answer.status_code}"
                except httpx.HTTPError as e:
                    last = f"{type(e).__name__}"
                if loop.time() >= deadline:
                    raise PlatformError(
                        f"{spec.agent_id}: replacement of {surge.color} replica "
                        f"{surge.index - SURGE_BASE} not healthy within {timeout:.0f} s "
                        f"({last}); the old replica keeps serving"
                    )
                if activity.in_activity():
                    activity.heartbeat(f"waiting for replica {surge.index - SURGE_BASE}")
                await asyncio.sleep(POLL_SECONDS)
        left = max(deadline - loop.time(), GATEWAY_READY_SECONDS)
        if not await self._gateway.wait_ready(spec.agent_id, surge.pid, left):
            raise PlatformError(
                f"{spec.agent_id}: the gateway did not route the replacement of {surge.color} "
                f"replica {surge.index - SURGE_BASE} as ready within {left:.0f} s"
            )
