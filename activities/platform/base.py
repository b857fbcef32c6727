"""The platform seam: where agent replicas run. Workflows never know which implementation runs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from fleetops.models import AgentSpec, Color, Replica, ServiceInfo


class PlatformError(Exception):
    """A platform operation failed in a way retrying will not fix (bad spec, missing binary)."""


class PlatformInputError(PlatformError):
    """The request itself cannot be met by this platform (e.g. more replicas than free ports):
    the message names the field. Activities report it as ``InvalidInput``."""


class Platform(Protocol):
    """What a platform must do. Every method is idempotent: a retry converges, never duplicates."""

    async def ensure(self, spec: AgentSpec, replicas: int, color: Color = "blue") -> list[Replica]:
        """Converge colour ``color`` of the agent to exactly ``replicas`` replicas of ``spec``.

        Running replicas with indices ``< replicas`` are kept (adopted after a worker restart),
        missing ones are started, higher indices are stopped. The other colour is untouched. The
        first ``ensure`` of an agent also creates its service with ``color`` active.

        Returns:
            The replicas, ordered by index.

        Raises:
            PlatformError: the spec cannot run on this platform.
        """
        ...

    async def restart(
        self, spec: AgentSpec, indices: list[int], color: Color = "blue"
    ) -> list[Replica]:
        """Stop (if running) and start again replicas ``indices`` of ``color``; returns them all."""
        ...

    async def scale_down(self, agent_id: str, color: Color) -> int:
        """Stop every replica of one colour, keeping the service; returns how many were running."""
        ...

    async def stop_all(self, agent_id: str) -> int:
        """Stop every replica of every colour, remove the service and forget the agent.

        Returns:
            How many replicas were running.
        """
        ...

    async def list_replicas(self, agent_id: str, color: Color | None = None) -> list[Replica]:
        """Known replicas (of ``color``, or all) with ``running`` checked now, by colour, index."""
        ...

    async def switch_traffic(
        self, agent_id: str, active_color: Color, preview_color: Color | None = None
    ) -> ServiceInfo:
        """Atomically route the active service to ``active_color`` (and preview to the other).

        Idempotent. In-flight requests to the previous colour complete; new ones go to the new
        colour. Returns once the switch is in effect.

        Raises:
            PlatformError: the agent has no service (never provisioned).
        """
        ...

    async def describe_service(self, agent_id: str) -> ServiceInfo | None:
        """The agent's service, or None if it has none."""
        ...


def host_port(host: str, port: int) -> str:
    """``host:port``, with brackets around an IPv6 host (RFC 3986 section 3.2.2)."""
    return f"{f'[{host}]' if ':' in host else host}:{port}"


def url(host: str, port: int) -> str:
    """``http://host:port``, with brackets around an IPv6 host."""
    return f"http://{host_port(host, port)}"


@dataclass(frozen=True)
class LogTail:
    """The end of one replica's log.

    Attributes:
        replica: which replica, e.g. ``blue-0`` (local) or the pod name (Kubernetes).
        source: where it was read (file path, ``pod/<name>``).
        text: the last lines, decoded as UTF-8 (undecodable bytes replaced).
        cut: earlier output was left out (more lines or bytes than asked for).
    """

    replica: str
    source: str
    text: str
    cut: bool


@runtime_checkable
class IncidentOps(Protocol):
    """What incident response needs of a platform beyond :class:`Platform`; a platform without
    it (a test stand-in) answers "not supported" in the incident activities."""

    async def replica_logs(self, agent_id: str, *, lines: int, max_bytes: int) -> list[LogTail]:
        """The last ``lines`` lines (at most ``max_bytes`` bytes) of each of the agent's replicas.

        Raises:
            PlatformError: an invalid agent id, or the logs cannot be read here.
        """
        ...

    async def set_rate_limit(
        self, agent_id: str, rps: float | None, *, burst: int | None = None, set_by: str = ""
    ) -> float | None:
        """Limit the agent's traffic to ``rps`` requests per second (None: lift the limit).

        Idempotent: setting the limit it has changes nothing. Over the limit, requests are
        answered 429 with ``Retry-After``.

        Returns:
            The limit in force now (None: unlimited).

        Raises:
            PlatformError: the agent has no service, or this platform cannot limit traffic.
        """
        ...
