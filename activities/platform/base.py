"""The platform seam: where agent replicas run. Workflows never know which implementation runs."""

from __future__ import annotations

from typing import Protocol

from fleetops.models import AgentSpec, Replica


class PlatformError(Exception):
    """A platform operation failed in a way retrying will not fix (bad spec, missing binary)."""


class Platform(Protocol):
    """What a platform must do. Every method is idempotent: a retry converges, never duplicates."""

    async def ensure(self, spec: AgentSpec, replicas: int) -> list[Replica]:
        """Converge to exactly ``replicas`` running replicas of ``spec``.

        Running replicas with indices ``< replicas`` are kept (adopted after a worker restart),
        missing ones are started, higher indices are stopped.

        Returns:
            The replicas, ordered by index.

        Raises:
            PlatformError: the spec cannot run on this platform.
        """
        ...

    async def restart(self, spec: AgentSpec, indices: list[int]) -> list[Replica]:
        """Stop (if running) and start again the replicas at ``indices``; returns all replicas."""
        ...

    async def stop_all(self, agent_id: str) -> int:
        """Stop every replica of ``agent_id`` and forget its state; returns how many ran."""
        ...

    async def list_replicas(self, agent_id: str) -> list[Replica]:
        """The agent's known replicas with ``running`` checked now, ordered by index."""
        ...
