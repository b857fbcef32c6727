"""Per-agent rate limits of the local gateway: a token bucket per agent, persisted per agent.

The limit of agent ``A`` lives in ``<state_dir>/agents/A/rate_limit.json``
(:class:`RateLimitRecord`), written by the local platform (``set_rate_limit``) and read by the
gateway with the agent's other files on every sync, so a gateway that starts later, or restarts,
enforces it too. No file: no limit.

The bucket is the classic token bucket (RFC 2697's committed-burst bucket without the colours;
also nginx ``limit_req`` with ``burst``): it holds at most ``burst`` tokens, refills at ``rps``
tokens per second, and each request takes one. A request that finds no token is answered 429
Too Many Requests (RFC 6585 section 4) with ``Retry-After`` in whole seconds until the next
token (RFC 9110 section 10.2.3). Only the active port is limited: the preview port carries a
deployment's smoke tests and analysis, which must not be starved by an incident's limit.

Written here rather than taken from a library: ``limits`` offers fixed and moving windows only
(no token bucket, integer rates), ``aiolimiter`` waits instead of refusing; the bucket is a
dozen lines.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from fleetops.incidents import MAX_RATE_LIMIT_RPS
from fleetops.limits import Count, Seconds

RATE_LIMIT_FILE = "rate_limit.json"
"""Name of an agent's rate-limit file in its state directory."""
MAX_BURST = 100_000
"""Largest bucket (requests admitted at once after a quiet period)."""


class RateLimitRecord(BaseModel):
    """``agents/<agent_id>/rate_limit.json``: the agent's limit at the gateway.

    Attributes:
        rps: sustained requests per second admitted (0 < rps <= 100,000).
        burst: bucket size, requests admitted at once after a quiet period (default: ``rps``
            rounded up, at least 1).
        set_by: who set it (the incident or operator), for the route view.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    rps: Seconds = Field(gt=0, le=MAX_RATE_LIMIT_RPS)
    burst: Count = Field(ge=1, le=MAX_BURST)
    set_by: str = Field("", max_length=200)

    @classmethod
    def of(cls, rps: float, burst: int | None = None, set_by: str = "") -> RateLimitRecord:
        """A record with ``burst`` defaulting to ``ceil(rps)`` (at least 1).

        Raises:
            pydantic.ValidationError: ``rps`` or ``burst`` out of bounds.
        """
        return cls(rps=rps, burst=burst or max(1, math.ceil(rps)), set_by=set_by)


def load_rate_limit(agent_dir: Path) -> RateLimitRecord | None:
    """The agent's limit, or None without a (readable) file. Blocking.

    An unreadable file is no limit (logged by the caller's route load): a broken file must not
    take an agent off the air.
    """
    try:
        return RateLimitRecord.model_validate_json((agent_dir / RATE_LIMIT_FILE).read_bytes())
    except (OSError, ValueError):
        return None


@dataclass
class TokenBucket:
    """A token bucket of ``burst`` tokens refilled at ``rps`` per second, full at the start.

    Attributes:
        rps: tokens per second.
        burst: capacity.
        clock: monotonic clock in seconds (injectable for tests).
    """

    rps: float
    burst: int
    clock: Callable[[], float] = time.monotonic
    _tokens: float = field(init=False)
    _at: float = field(init=False)

    def __post_init__(self) -> None:
        self._tokens = float(self.burst)
        self._at = self._now()

    def _now(self) -> float:
        return self.clock()

    def take(self) -> float | None:
        """Take one token if there is one.

        Returns:
            None when admitted; otherwise the seconds until a token is available.
        """
        now = self._now()
        self._tokens = min(float(self.burst), self._tokens + (now - self._at) * self.rps)
        self._at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return None
        return (1.0 - self._tokens) / self.rps


class RateLimits:
    """The gateway's buckets, one per limited agent; a limit that did not change keeps its
    bucket (and its tokens) across route reloads."""

    def __init__(self) -> None:
        self._buckets: dict[str, tuple[RateLimitRecord, TokenBucket]] = {}

    def update(self, agent_id: str, record: RateLimitRecord | None) -> None:
        """Set (or, with None, lift) ``agent_id``'s limit."""
        if record is None:
            self._buckets.pop(agent_id, None)
            return
        known = self._buckets.get(agent_id)
        if known is None or (known[0].rps, known[0].burst) != (record.rps, record.burst):
            self._buckets[agent_id] = (record, TokenBucket(record.rps, record.burst))
        else:
            self._buckets[agent_id] = (record, known[1])

    def limit(self, agent_id: str) -> RateLimitRecord | None:
        """The agent's limit now, or None."""
        known = self._buckets.get(agent_id)
        return None if known is None else known[0]

    def admit(self, agent_id: str) -> float | None:
        """None when a request of ``agent_id`` may pass; else seconds to wait (429)."""
        known = self._buckets.get(agent_id)
        return None if known is None else known[1].take()


def retry_after(seconds: float) -> str:
    """``Retry-After`` delay-seconds: a whole number, rounded up, at least 1."""
    return str(max(1, math.ceil(seconds)))
