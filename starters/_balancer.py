"""Replica choice of the local gateway: balancing policies, in-flight counts, passive health.

Passive health follows nginx's ``max_fails=1 fail_timeout=5s``: a replica whose connection
failed is skipped for :data:`DOWN_SECONDS`; when every replica of a colour is marked down they
are all tried anyway, since failing without trying helps nobody.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

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
    """

    url: str
    replica: int
    version: str
    pid: int | None = None


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
        """A replica of ``target`` not in ``exclude`` (URLs), preferring ones not marked down.

        Returns:
            The replica, or None if every replica is excluded.
        """
        now = time.monotonic()
        candidates = [u for u in target.upstreams if u.url not in exclude]
        up = [u for u in candidates if self._state(u).down_until <= now]
        pool = up or candidates  # all down: try anyway rather than fail without trying
        if not pool:
            return None
        turn = next(self._turns.setdefault((target.agent_id, target.color), itertools.count()))
        rotated = pool[turn % len(pool) :] + pool[: turn % len(pool)]
        if self._policy == "least_connections":
            return min(rotated, key=lambda u: self._state(u).in_flight)
        return rotated[0]

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

    def describe(self, upstream: Upstream) -> dict[str, Any]:
        """``upstream`` with its in-flight count, down mark and failure count, as JSON."""
        state = self._state(upstream)
        return {
            "url": upstream.url,
            "replica": upstream.replica,
            "version": upstream.version,
            "pid": upstream.pid,
            "in_flight": state.in_flight,
            "down": state.down_until > time.monotonic(),
            "failures": state.failures,
        }

    def _state(self, upstream: Upstream) -> _Health:
        return self._health.setdefault((upstream.url, upstream.pid), _Health())
