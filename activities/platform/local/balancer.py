"""Replica choice of the local gateway: balancing policies, in-flight counts, readiness and
passive health.

A request goes to the first non-empty tier of the colour's replicas, never to a draining one:

1. ready (its readiness probing passes, see :mod:`activities.platform.local.readiness`) and
   not marked down;
2. established (ready at some time, or already running when the gateway started) and not marked
   down: when no replica is ready, the ones that served before are tried anyway, like Envoy's
   panic routing, since failing without trying helps nobody;
3. established, even if marked down.

A replica that has never been ready (it is starting) gets no request at all: with nothing else
to try, the gateway answers 503 at once rather than a connection refused as 502.

Passive health follows nginx's ``max_fails=1 fail_timeout=5s``: a replica whose connection
failed is marked down for :data:`DOWN_SECONDS`. Draining replicas are about to be stopped (the
local platform marks them so first); like a terminating Pod left out of a Service's endpoints,
they get no new requests while those in flight finish.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from activities.platform.local.admin import UpstreamView

DOWN_SECONDS = 5.0
"""Seconds a replica whose connection failed is skipped."""


@dataclass(frozen=True)
class Upstream:
    """One replica the gateway may send a request to.

    Attributes:
        url: base URL, e.g. ``http://127.0.0.1:18000``.
        replica: replica index within its colour.
        version: the version it runs.
        pid: its process id; a replica restarted on the same port is a new upstream, with
            a clean health record.
        health_path: HTTP path probed for readiness.
        draining: about to stop: sent no new requests.
    """

    url: str
    replica: int
    version: str
    pid: int | None = None
    health_path: str = "/health"
    draining: bool = False


@dataclass(frozen=True)
class Target:
    """Where one gateway port routes right now.

    Attributes:
        agent_id: the agent.
        color: the colour served; None: nothing (the preview port without a preview colour).
        upstreams: that colour's running replicas.
    """

    agent_id: str
    color: str | None
    upstreams: tuple[Upstream, ...]


@dataclass
class _Health:
    in_flight: int = 0
    down_until: float = 0.0
    failures: int = 0
    ready: bool = False
    established: bool = False


class Balancer:
    """Picks a replica per request and keeps per-replica in-flight counts and down marks.

    State is keyed by replica URL and pid, so it survives route reloads.

    Args:
        policy: ``round_robin`` (rotate) or ``least_connections`` (fewest requests in flight
            through this gateway; ties rotate).
    """

    def __init__(self, policy: Literal["round_robin", "least_connections"]) -> None:
        self._policy = policy
        self._health: dict[tuple[str, int | None], _Health] = {}
        self._turns: dict[tuple[str, str | None], itertools.count[int]] = {}

    def pick(self, target: Target, exclude: set[str]) -> Upstream | None:
        """A replica of ``target`` neither draining, starting nor in ``exclude`` (URLs), from the
        first non-empty tier: ready and up, established and up, established (see the module
        docstring).

        Returns:
            The replica, or None if every replica is draining, starting or excluded.
        """
        now = time.monotonic()
        candidates = [
            u
            for u in target.upstreams
            if u.url not in exclude and not u.draining and self._state(u).established
        ]
        up = [u for u in candidates if self._state(u).down_until <= now]
        ready = [u for u in up if self._state(u).ready]
        pool = ready or up or candidates
        if not pool:
            return None
        turn = next(self._turns.setdefault((target.agent_id, target.color), itertools.count()))
        rotated = pool[turn % len(pool) :] + pool[: turn % len(pool)]
        if self._policy == "least_connections":
            return min(rotated, key=lambda u: self._state(u).in_flight)
        return rotated[0]

    def set_ready(self, upstream: Upstream, ready: bool) -> None:
        """Record the outcome of ``upstream``'s readiness probing."""
        state = self._state(upstream)
        state.ready = ready
        state.established |= ready

    def establish(self, upstreams: list[Upstream]) -> None:
        """Treat ``upstreams`` as having served before: the replicas already running when the
        gateway starts, so a gateway restart does not refuse them until their first probe."""
        for upstream in upstreams:
            self._state(upstream).established = True

    def starting(self, target: Target) -> int:
        """How many of ``target``'s replicas are starting (not draining, never ready)."""
        return sum(1 for u in target.upstreams if not u.draining and not self._state(u).established)

    def is_ready(self, upstream: Upstream) -> bool:
        """Whether ``upstream`` is ready (False until its first probe passes)."""
        return self._state(upstream).ready

    def forget(self, keep: set[tuple[str, int | None]]) -> None:
        """Drop the records of replicas not in ``keep`` (``(url, pid)``) and not in use."""
        for key in [k for k, h in self._health.items() if k not in keep and not h.in_flight]:
            del self._health[key]

    def mark_down(self, upstream: Upstream) -> None:
        """Skip ``upstream`` for :data:`DOWN_SECONDS` seconds."""
        state = self._state(upstream)
        state.down_until = time.monotonic() + DOWN_SECONDS
        state.failures += 1

    @contextlib.contextmanager
    def track(self, upstream: Upstream) -> Iterator[None]:
        """Count a request in flight to ``upstream`` while in the block."""
        state = self._state(upstream)
        state.in_flight += 1
        try:
            yield
        finally:
            state.in_flight -= 1

    def describe(self, upstream: Upstream) -> UpstreamView:
        """``upstream`` with its readiness, in-flight count, down mark and failure count."""
        state = self._state(upstream)
        return UpstreamView(
            url=upstream.url,
            replica=upstream.replica,
            version=upstream.version,
            pid=upstream.pid,
            ready=state.ready,
            starting=not state.established and not upstream.draining,
            draining=upstream.draining,
            in_flight=state.in_flight,
            down=state.down_until > time.monotonic(),
            failures=state.failures,
        )

    def _state(self, upstream: Upstream) -> _Health:
        key = (upstream.url, upstream.pid)
        state = self._health.get(key)  # on every request: no new object unless the key is new
        if state is None:
            state = self._health[key] = _Health()
        return state
