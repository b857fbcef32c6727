"""Replica state files of the local platform, and the lock files that guard them.

Layout under ``<state_dir>/agents``::

    .ports.lock                  serialises port allocation across worker processes
    <agent_id>/state.json        the replicas: pid, start time, host, port, version, command hash
    <agent_id>/lock              held while one worker changes this agent's replicas
    <agent_id>/replica-<i>.log   stdout and stderr of replica i (appended across restarts)

``state.json`` is replaced atomically (temp file, fsync, ``os.replace``), so readers never need
a lock: they see the old or the new file, never half of one.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import re
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from pathlib import Path

from activities.platform.base import PlatformError
from fleetops.constants import AGENT_ID_PATTERN

_AGENT_ID_RE = re.compile(AGENT_ID_PATTERN)
_LOCK_POLL_SECONDS = 0.05


@dataclass(frozen=True)
class ReplicaRecord:
    """One replica as persisted in ``state.json``.

    Attributes:
        index: replica index within the agent.
        pid: process id, also its process-group id (replicas start in their own session).
        host: address the replica was told to bind.
        port: port the replica was told to bind.
        start_time: ``/proc/<pid>/stat`` start time (clock ticks since boot); None without /proc.
        version: the spec version it runs.
        command_hash: hash of the spec's command and env it runs.
    """

    index: int
    pid: int
    host: str
    port: int
    start_time: int | None
    version: str
    command_hash: str


@contextlib.asynccontextmanager
async def file_lock(path: Path) -> AsyncIterator[None]:
    """Exclusive ``flock`` on ``path``, polled so the event loop never blocks on another process."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                await asyncio.sleep(_LOCK_POLL_SECONDS)
        yield
    finally:
        os.close(fd)  # releases the lock


class StateStore:
    """Reads and writes ``<agents_dir>/<agent_id>/state.json``.

    Args:
        agents_dir: ``<state_dir>/agents``.
    """

    def __init__(self, agents_dir: Path) -> None:
        self.agents_dir = agents_dir

    def agent_dir(self, agent_id: str) -> Path:
        """The agent's directory (not created).

        Raises:
            PlatformError: ``agent_id`` is not a DNS label (it would escape the state directory).
        """
        if not _AGENT_ID_RE.match(agent_id):
            raise PlatformError(f"invalid agent id {agent_id!r}: it must be a DNS label")
        return self.agents_dir / agent_id

    def ports_lock(self) -> Path:
        """Path of the lock file that serialises port allocation."""
        self.agents_dir.mkdir(parents=True, exist_ok=True)
        return self.agents_dir / ".ports.lock"

    def load(self, agent_id: str) -> dict[int, ReplicaRecord]:
        """The agent's replicas by index; empty if it has no state file.

        Raises:
            PlatformError: the state file is unreadable.
        """
        path = self.agent_dir(agent_id) / "state.json"
        try:
            data = json.loads(path.read_text())
            records = [ReplicaRecord(**r) for r in data["replicas"]]
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, TypeError, KeyError) as e:
            raise PlatformError(
                f"unreadable replica state {path}: {e}; stop its processes by hand and delete it"
            ) from e
        return {r.index: r for r in records}

    def save(self, agent_id: str, records: dict[int, ReplicaRecord]) -> None:
        """Replace the agent's state file atomically."""
        path = self.agent_dir(agent_id) / "state.json"
        data = {
            "agent_id": agent_id,
            "replicas": [asdict(r) for r in sorted(records.values(), key=lambda r: r.index)],
        }
        tmp = path.with_name(f".state.json.{os.getpid()}.tmp")
        with tmp.open("w") as f:
            json.dump(data, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def remove(self, agent_id: str) -> None:
        """Delete the agent's state file (logs and the lock file stay)."""
        (self.agent_dir(agent_id) / "state.json").unlink(missing_ok=True)

    def ports_of_other_agents(self, agent_id: str) -> set[int]:
        """Ports recorded by every agent but ``agent_id`` (unreadable state files are skipped)."""
        ports: set[int] = set()
        if not self.agents_dir.is_dir():
            return ports
        for other in self.agents_dir.iterdir():
            if other.name != agent_id and (other / "state.json").is_file():
                with contextlib.suppress(PlatformError):
                    ports.update(r.port for r in self.load(other.name).values())
        return ports
