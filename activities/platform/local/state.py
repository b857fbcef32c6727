"""State files of the local platform, and the lock files that guard them.

Layout under ``<state_dir>``::

    agents/.ports.lock                   serialises port allocation across worker processes
    agents/<agent_id>/state.json         the replicas of both colours: colour, index, pid, start
                                         time, host, port, version, command hash, health path,
                                         draining mark
    agents/<agent_id>/service.json       the agent's routing entry (see :class:`ServiceRecord`)
    agents/<agent_id>/lock               held while one worker changes this agent
    agents/<agent_id>/rate_limit.json    the agent's rate limit at the gateway, if it has one
    agents/<agent_id>/replica-<i>.log    stdout and stderr of blue replica i (appended)
    agents/<agent_id>/green-replica-<i>.log   likewise for green replica i
    gateway.json                         written by a running gateway: admin URL and pid
    prometheus/targets/<agent_id>.json   Prometheus file_sd targets: the agent's running replicas

Every JSON file is replaced atomically (temp file, fsync, ``os.replace``), so readers never need
a lock: they see the old or the new file, never half of one. A ``state.json`` written before
colours existed has no ``color`` fields: its replicas are blue, and the next save adds them.

The store's methods block (file I/O, fsync); async callers run them with :func:`off_loop`, so
the event loop the worker shares with its workflows never waits on a disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from activities.platform.base import PlatformError
from activities.platform.local import process
from fleetops.constants import is_agent_id
from fleetops.models import Color

P = ParamSpec("P")
T = TypeVar("T")

_LOCK_POLL_SECONDS = 0.05
STATE_FORMAT = 2
"""``format`` of ``state.json``: 1 (absent) had no colours, 2 records each replica's colour."""

Key = tuple[Color, int]
"""A replica slot: (colour, index)."""


@dataclass(frozen=True)
class ReplicaRecord:
    """One replica as persisted in ``state.json``.

    Attributes:
        index: replica index within its colour.
        pid: process id, also its process-group id (replicas start in their own session).
        host: address the replica was told to bind.
        port: port the replica was told to bind.
        start_time: ``/proc/<pid>/stat`` start time (clock ticks since boot); None without /proc.
        version: the spec version it runs.
        command_hash: hash of the spec's command and env it runs.
        color: its colour slot; ``blue`` for records written before colours existed.
        health_path: HTTP path the gateway probes for readiness (the spec's ``health.path``).
        draining: set just before the replica is stopped: the gateway sends it no new
            requests and lets those in flight finish.
    """

    index: int
    pid: int
    host: str
    port: int
    start_time: int | None
    version: str
    command_hash: str
    color: Color = "blue"
    health_path: str = "/health"
    draining: bool = False

    @property
    def key(self) -> Key:
        """``(color, index)``."""
        return (self.color, self.index)


@dataclass(frozen=True)
class ServiceRecord:
    """An agent's routing entry (``service.json``): what the local gateway serves.

    Attributes:
        active_color: colour the active port routes to.
        preview_color: colour the preview port routes to; None: the preview port answers 503.
        active_port: gateway port of the active service (stable while the agent exists).
        preview_port: gateway port of the preview service (stable while the agent exists).
        generation: bumped by every switch that changes the colours.
    """

    active_color: Color
    preview_color: Color | None
    active_port: int
    preview_port: int
    generation: int = 0


def write_json_atomic(path: Path, data: Any, *, durable: bool = True) -> None:
    """Replace ``path`` with ``data`` as JSON: temp file in the same directory, fsync, rename.

    Args:
        path: the file.
        data: JSON-serialisable content.
        durable: fsync before the rename; False: the caller calls :func:`fsync_file` later
            (readers see the new content at once; only a power loss in between can lose it).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with tmp.open("w") as f:
        json.dump(data, f, indent=2)
        f.flush()
        if durable:
            os.fsync(f.fileno())
    os.replace(tmp, path)


def fsync_file(path: Path) -> None:
    """Flush ``path`` (as it is now) to disk; a file that is gone needs nothing."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


async def off_loop(fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """Run the blocking ``fn(*args, **kwargs)`` in a worker thread (``asyncio.to_thread``).

    A cancellation of the caller waits for ``fn`` to finish before it is raised: a state file
    is never half-way through a change (or a process started but not yet recorded) when the
    caller releases its locks.

    Returns:
        What ``fn`` returns.

    Raises:
        Whatever ``fn`` raises; asyncio.CancelledError after ``fn`` finished, if cancelled.
    """
    task = asyncio.ensure_future(asyncio.to_thread(fn, *args, **kwargs))
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        with contextlib.suppress(BaseException):
            await task
        raise


@contextlib.asynccontextmanager
async def file_lock(path: Path) -> AsyncIterator[None]:
    """Exclusive ``flock`` on ``path``, polled so the event loop never blocks on another process."""
    path.parent.mkdir(parents=True, exist_ok=True)
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
    """Reads and writes ``<agents_dir>/<agent_id>/{state,service}.json``.

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
        if not is_agent_id(agent_id):
            raise PlatformError(f"invalid agent id {agent_id!r}: it must be a DNS label")
        return self.agents_dir / agent_id

    def agent_ids(self) -> list[str]:
        """Every agent with a directory, sorted (directories that are not agent ids are skipped)."""
        if not self.agents_dir.is_dir():
            return []
        return sorted(
            d.name for d in self.agents_dir.iterdir() if is_agent_id(d.name) and d.is_dir()
        )

    def ports_lock(self) -> Path:
        """Path of the lock file that serialises port allocation."""
        self.agents_dir.mkdir(parents=True, exist_ok=True)
        return self.agents_dir / ".ports.lock"

    def load(self, agent_id: str) -> dict[Key, ReplicaRecord]:
        """The agent's replicas by ``(color, index)``; empty if it has no state file.

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
        return {r.key: r for r in records}

    def save(self, agent_id: str, records: dict[Key, ReplicaRecord]) -> None:
        """Replace the agent's state file atomically (replicas ordered by colour, index)."""
        data = {
            "agent_id": agent_id,
            "format": STATE_FORMAT,
            "replicas": [asdict(records[k]) for k in sorted(records)],
        }
        write_json_atomic(self.agent_dir(agent_id) / "state.json", data)

    def remove(self, agent_id: str) -> None:
        """Delete the agent's state, service and rate-limit files (logs and the lock file stay)."""
        (self.agent_dir(agent_id) / "rate_limit.json").unlink(missing_ok=True)
        (self.agent_dir(agent_id) / "state.json").unlink(missing_ok=True)
        (self.agent_dir(agent_id) / "service.json").unlink(missing_ok=True)

    def load_service(self, agent_id: str) -> ServiceRecord | None:
        """The agent's routing entry, or None if it has none.

        Raises:
            PlatformError: the service file is unreadable.
        """
        path = self.agent_dir(agent_id) / "service.json"
        try:
            return ServiceRecord(**json.loads(path.read_text()))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError) as e:
            raise PlatformError(f"unreadable service {path}: {e}; delete it to recreate") from e

    def service_path(self, agent_id: str) -> Path:
        """The agent's ``service.json``.

        Raises:
            PlatformError: ``agent_id`` is not a valid agent id.
        """
        return self.agent_dir(agent_id) / "service.json"

    def save_service(self, agent_id: str, service: ServiceRecord, *, durable: bool = True) -> None:
        """Replace the agent's ``service.json`` atomically (``durable``: see
        :func:`write_json_atomic`)."""
        write_json_atomic(self.service_path(agent_id), asdict(service), durable=durable)

    def ports_of_other_agents(self, agent_id: str) -> set[int]:
        """Ports reserved by every agent but ``agent_id``: its service ports, and the ports of
        its replicas whose process is alive (a record of a dead process reserves nothing).

        Unreadable files are skipped: their agent needs repair by hand anyway.
        """
        ports: set[int] = set()
        for other in self.agent_ids():
            if other == agent_id:
                continue
            with contextlib.suppress(PlatformError):
                ports.update(
                    r.port
                    for r in self.load(other).values()
                    if process.is_alive(r.pid, r.start_time)
                )
            with contextlib.suppress(PlatformError):
                service = self.load_service(other)
                if service is not None:
                    ports.update((service.active_port, service.preview_port))
        return ports
