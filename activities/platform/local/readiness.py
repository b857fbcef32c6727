"""Active readiness probing of the local gateway's replicas, after Kubernetes' readinessProbe.

A replica joins its colour's rotation only once it has answered its health path, as a Pod joins
a Service's endpoints only once its readiness probe passes; so a replica that has just been
started (or restarted on the same port) is not sent requests before it listens. The semantics
follow the Kubernetes probe defaults (``timeoutSeconds: 1``, ``failureThreshold: 3``,
``successThreshold: 1``, success is a status in [200, 400)), with shorter periods because the
gateway is local: :data:`STARTUP_PERIOD_SECONDS` until the first success, then
:data:`READY_PERIOD_SECONDS`.

See https://kubernetes.io/docs/tasks/configure-pod-container/configure-liveness-readiness-startup-probes/
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable

import httpx

from activities.platform.local.balancer import Balancer, Upstream

STARTUP_PERIOD_SECONDS = 0.1
"""Seconds between probes of a replica that is not ready (yet)."""
READY_PERIOD_SECONDS = 5.0
"""Seconds between probes of a ready replica (Kubernetes' default is 10). The gateway runs in
the worker's process under ``fleetops up``: with hundreds of replicas a 1 s period would cost
hundreds of probes a second. A replica that crashes is caught sooner by passive health (its
first refused connection)."""
PROBE_TIMEOUT_SECONDS = 1.0
"""Seconds a probe may take; longer is a failure (Kubernetes' default ``timeoutSeconds``)."""
FAILURE_THRESHOLD = 3
"""Consecutive failed probes that take a ready replica out of rotation (Kubernetes' default)."""

_Key = tuple[str, int | None]


class ReadinessProber:
    """Probes ``GET <url><health_path>`` of every replica and records readiness in ``balancer``.

    Args:
        client: the gateway's pooled client.
        balancer: where readiness is recorded (:meth:`Balancer.set_ready`).
        upstreams: returns the replicas in the route table now; draining ones are not probed.
        on_change: called (no arguments) whenever a replica's readiness changes, so waiters
            for readiness need not poll.
    """

    def __init__(
        self,
        client: httpx.AsyncClient,
        balancer: Balancer,
        upstreams: Callable[[], Iterable[Upstream]],
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self._client = client
        self._balancer = balancer
        self._upstreams = upstreams
        self._on_change = on_change
        self._due: dict[_Key, float] = {}
        self._failures: dict[_Key, int] = {}
        self._probing: set[_Key] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        """Probe every due replica, forever (cancel the task to stop); one probe per replica at
        a time."""
        try:
            while True:
                now = time.monotonic()
                current = {(u.url, u.pid): u for u in self._upstreams() if not u.draining}
                for key in [k for k in self._due if k not in current]:
                    del self._due[key]
                    self._failures.pop(key, None)
                for key, upstream in current.items():
                    if key in self._probing or self._due.get(key, 0.0) > now:
                        continue
                    self._probing.add(key)
                    task = asyncio.create_task(self._probe(key, upstream))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
                await asyncio.sleep(STARTUP_PERIOD_SECONDS)
        finally:
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _probe(self, key: _Key, upstream: Upstream) -> None:
        try:
            passed = False
            with contextlib.suppress(httpx.HTTPError):
                response = await self._client.get(
                    upstream.url + upstream.health_path, timeout=PROBE_TIMEOUT_SECONDS
                )
                passed = 200 <= response.status_code < 400
            was_ready = self._balancer.is_ready(upstream)
            if passed:
                self._failures[key] = 0
                self._balancer.set_ready(upstream, True)
            else:
                self._failures[key] = self._failures.get(key, 0) + 1
                if self._failures[key] >= FAILURE_THRESHOLD:
                    self._balancer.set_ready(upstream, False)
            ready = self._balancer.is_ready(upstream)
            if ready != was_ready:
                self._on_change()
            period = READY_PERIOD_SECONDS if ready else STARTUP_PERIOD_SECONDS
            self._due[key] = time.monotonic() + period
        finally:
            self._probing.discard(key)
