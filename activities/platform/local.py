"""The ``local`` platform: agent replicas are OS subprocesses listening on loopback ports.

Replicas start in their own session, so they outlive the worker; their pids, ports and versions
are persisted under ``<state_dir>/agents`` (see :mod:`activities.platform._state`), and a new
worker over the same state directory adopts them instead of starting duplicates.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import logging
import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

from activities.platform import _process
from activities.platform._state import ReplicaRecord, StateStore, file_lock
from activities.platform.base import PlatformError
from fleetops.models import AgentSpec, Replica
from fleetops.settings import LocalPlatformSettings

logger = logging.getLogger(__name__)


def _command_hash(spec: AgentSpec) -> str:
    payload = json.dumps({"command": spec.command, "env": spec.env}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


class LocalPlatform:
    """Runs each replica of an agent as a subprocess on its own loopback port.

    Every method is idempotent and safe to call from several coroutines and several worker
    processes sharing ``state_dir``: changes to one agent are serialised by an ``asyncio.Lock``
    plus an ``fcntl`` lock file.

    Args:
        settings: bind host, port range and the SIGTERM-to-SIGKILL grace period (seconds).
        state_dir: FleetOps state directory; replica state and logs live in ``state_dir/agents``.

    Raises:
        PlatformError: the port range is empty.
    """

    def __init__(self, settings: LocalPlatformSettings, state_dir: Path) -> None:
        if settings.port_range_end < settings.port_range_start:
            raise PlatformError(
                f"platform.local port range [{settings.port_range_start}, "
                f"{settings.port_range_end}] is empty; set port_range_end >= port_range_start"
            )
        self._settings = settings
        self._store = StateStore(Path(state_dir) / "agents")
        self._locks: dict[str, asyncio.Lock] = {}

    # --- Platform protocol ---------------------------------------------------------------------

    async def ensure(self, spec: AgentSpec, replicas: int) -> list[Replica]:
        """Converge ``spec.agent_id`` to exactly ``replicas`` running replicas of ``spec``.

        Live replicas with index ``< replicas`` and the same command, env and version are kept
        (also when started by an earlier worker); changed or dead ones are restarted on their
        port; indices ``>= replicas`` are stopped.

        Args:
            spec: what to run; ``spec.command`` is required when ``replicas > 0``.
            replicas: desired count (>= 0).

        Returns:
            All replicas, ordered by index.

        Raises:
            PlatformError: no ``command``, executable not found, or no free port in the range.
        """
        if replicas < 0:
            raise PlatformError(f"replicas must be >= 0, got {replicas}")
        argv = self._argv(spec) if replicas else []
        async with self._locked(spec.agent_id):
            records = self._store.load(spec.agent_id)
            for index in sorted(i for i in records if i >= replicas):
                await self._stop(records.pop(index))
                self._store.save(spec.agent_id, records)
            digest = _command_hash(spec)
            for index in range(replicas):
                record = records.get(index)
                if record is not None and self._current(record, spec, digest):
                    continue
                await self._replace(spec, argv, index, records)
            return self._replicas(records)

    async def restart(self, spec: AgentSpec, indices: list[int]) -> list[Replica]:
        """Stop (if running) and start again the replicas at ``indices``, each on its old port.

        Args:
            spec: what to run; ``spec.command`` is required.
            indices: replica indices (>= 0); an unknown index is simply started.

        Returns:
            All replicas, ordered by index.

        Raises:
            PlatformError: negative index, no ``command``, executable not found, or no free port.
        """
        if any(i < 0 for i in indices):
            raise PlatformError(f"replica indices must be >= 0, got {indices}")
        argv = self._argv(spec)
        async with self._locked(spec.agent_id):
            records = self._store.load(spec.agent_id)
            for index in dict.fromkeys(indices):
                await self._replace(spec, argv, index, records)
            return self._replicas(records)

    async def stop_all(self, agent_id: str) -> int:
        """Stop every replica of ``agent_id`` and delete its ``state.json`` (logs are kept).

        Returns:
            How many replicas were running.

        Raises:
            PlatformError: ``agent_id`` is not a valid agent id, or its state file is unreadable.
            TimeoutError: a replica survived SIGKILL (retryable).
        """
        if not self._store.agent_dir(agent_id).is_dir():
            return 0
        async with self._locked(agent_id):
            records = self._store.load(agent_id)
            running = 0
            for index in sorted(records):
                running += await self._stop(records.pop(index))
                self._store.save(agent_id, records)
            self._store.remove(agent_id)
            return running

    async def list_replicas(self, agent_id: str) -> list[Replica]:
        """The agent's recorded replicas, ``running`` checked now; empty for an unknown agent.

        Raises:
            PlatformError: ``agent_id`` is not a valid agent id, or its state file is unreadable.
        """
        return self._replicas(self._store.load(agent_id))

    # --- replicas -----------------------------------------------------------------------------

    def _argv(self, spec: AgentSpec) -> list[str]:
        if spec.command is None:
            raise PlatformError(
                f"agent {spec.agent_id!r}: the local platform needs `command` (argv of one "
                f"replica), but the spec only gives image {spec.image!r}"
            )
        return [_process.resolve_executable(spec.command[0]), *spec.command[1:]]

    def _current(self, record: ReplicaRecord, spec: AgentSpec, digest: str) -> bool:
        return (
            record.command_hash == digest
            and record.version == spec.version
            and _process.is_alive(record.pid, record.start_time)
        )

    async def _stop(self, record: ReplicaRecord) -> bool:
        grace = self._settings.stop_grace_seconds
        was_running = await _process.terminate(record.pid, record.start_time, grace)
        if was_running:
            logger.info("stopped replica %d (pid %d)", record.index, record.pid)
        return was_running

    async def _replace(
        self, spec: AgentSpec, argv: list[str], index: int, records: dict[int, ReplicaRecord]
    ) -> None:
        """Stop replica ``index`` if recorded, start it again (same port if free), persist."""
        agent_id = spec.agent_id
        old = records.get(index)
        if old is not None:
            await self._stop(old)
        async with file_lock(self._store.ports_lock()):
            # No await from here to save(): the port is recorded before anyone else can look.
            port = self._allocate_port(agent_id, records, index, old.port if old else None)
            records[index] = self._start(spec, argv, index, port)
            self._store.save(agent_id, records)

    def _start(self, spec: AgentSpec, argv: list[str], index: int, port: int) -> ReplicaRecord:
        host = self._settings.host
        env = {
            **os.environ,
            **spec.env,
            "HOST": host,
            "PORT": str(port),
            "AGENT_ID": spec.agent_id,
            "AGENT_VERSION": spec.version,
            "REPLICA_INDEX": str(index),
        }
        log_path = self._store.agent_dir(spec.agent_id) / f"replica-{index}.log"
        banner = f"--- {datetime.now(UTC).isoformat()} fleetops: starting {argv} on {host}:{port}"
        pid = _process.spawn(argv, env, log_path, banner)
        logger.info("started replica %d of %s (pid %d, port %d)", index, spec.agent_id, pid, port)
        return ReplicaRecord(
            index=index,
            pid=pid,
            host=host,
            port=port,
            start_time=_process.start_time(pid),
            version=spec.version,
            command_hash=_command_hash(spec),
        )

    def _replicas(self, records: dict[int, ReplicaRecord]) -> list[Replica]:
        return [
            Replica(
                index=r.index,
                endpoint=f"http://{f'[{r.host}]' if ':' in r.host else r.host}:{r.port}",
                pid=r.pid,
                running=_process.is_alive(r.pid, r.start_time),
            )
            for r in sorted(records.values(), key=lambda r: r.index)
        ]

    # --- ports --------------------------------------------------------------------------------

    def _allocate_port(
        self, agent_id: str, records: dict[int, ReplicaRecord], index: int, preferred: int | None
    ) -> int:
        """A port in the range no recorded replica uses and that is bindable now."""
        used = {r.port for i, r in records.items() if i != index}
        used |= self._store.ports_of_other_agents(agent_id)
        start, end = self._settings.port_range_start, self._settings.port_range_end
        first = [preferred] if preferred is not None and start <= preferred <= end else []
        for port in itertools.chain(first, range(start, end + 1)):
            if port not in used and _process.port_bindable(self._settings.host, port):
                return port
        raise PlatformError(
            f"no free port in [{start}, {end}] on {self._settings.host}; widen "
            "platform.local.port_range_start/port_range_end or stop unused agents"
        )

    # --- locking ------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _locked(self, agent_id: str) -> AsyncIterator[None]:
        agent_dir = self._store.agent_dir(agent_id)
        agent_dir.mkdir(parents=True, exist_ok=True)
        async with (
            self._locks.setdefault(agent_id, asyncio.Lock()),
            file_lock(agent_dir / "lock"),
        ):
            yield
