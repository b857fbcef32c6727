"""Replica processes of the local platform: start, stop and place them on ports.

Callers hold the agent's lock (see :class:`~activities.platform.local.LocalPlatform`); the port
lock is taken here, around choosing a port and recording it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import logging
import os
from datetime import UTC, datetime

from activities.platform import _process, _routing
from activities.platform._state import Key, ReplicaRecord, StateStore, file_lock
from activities.platform.base import PlatformError, url
from fleetops.models import AgentSpec, Color, Replica
from fleetops.settings import LocalPlatformSettings

logger = logging.getLogger("activities.platform.local")


def command_hash(spec: AgentSpec) -> str:
    """Hash of what a replica runs (command and env): a change restarts the replica."""
    payload = json.dumps({"command": spec.command, "env": spec.env}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def argv_of(spec: AgentSpec) -> list[str]:
    """The replica's argv with the executable resolved.

    Raises:
        PlatformError: the spec has no ``command``, or its executable is not found.
    """
    if spec.command is None:
        raise PlatformError(
            f"agent {spec.agent_id!r}: the local platform needs `command` (argv of one "
            f"replica), but the spec only gives image {spec.image!r}"
        )
    return [_process.resolve_executable(spec.command[0]), *spec.command[1:]]


def to_replicas(records: dict[Key, ReplicaRecord], color: Color | None) -> list[Replica]:
    """Records (of ``color``, or all) as :class:`Replica`, by colour then index, liveness now."""
    return [
        Replica(
            index=r.index,
            endpoint=url(r.host, r.port),
            pid=r.pid,
            running=_process.is_alive(r.pid, r.start_time),
            color=r.color,
            version=r.version,
        )
        for key, r in sorted(records.items())
        if color is None or key[0] == color
    ]


class ReplicaRunner:
    """Starts and stops replica processes and records them in the agent's ``state.json``.

    Args:
        settings: bind host, port range, stop grace period (seconds).
        store: the state files.
    """

    def __init__(self, settings: LocalPlatformSettings, store: StateStore) -> None:
        self._settings = settings
        self._store = store

    def current(self, record: ReplicaRecord, spec: AgentSpec, digest: str) -> bool:
        """Whether ``record`` is alive, not draining (a stop that a crash interrupted), and runs
        ``spec`` (command hash ``digest``, version)."""
        return (
            not record.draining
            and record.command_hash == digest
            and record.version == spec.version
            and _process.is_alive(record.pid, record.start_time)
        )

    async def stop(self, record: ReplicaRecord) -> bool:
        """SIGTERM the replica, SIGKILL after the grace period; whether it was running."""
        grace = self._settings.stop_grace_seconds
        was_running = await _process.terminate(record.pid, record.start_time, grace)
        if was_running:
            logger.info("stopped %s replica %d (pid %d)", record.color, record.index, record.pid)
        return was_running

    async def drain(
        self, agent_id: str, records: dict[Key, ReplicaRecord], keys: list[Key]
    ) -> None:
        """Take the live replicas among ``keys`` out of the gateway's rotation before a stop.

        Marks them ``draining`` in ``state.json`` and waits, up to ``drain_seconds``, until a
        running gateway sends them nothing and has no request in flight to them (see
        :func:`~activities.platform._routing.wait_for_drain`). Without a gateway it returns at
        once.
        """
        live = [
            k
            for k in keys
            if k in records and _process.is_alive(records[k].pid, records[k].start_time)
        ]
        if not live:
            return
        for k in live:
            records[k] = dataclasses.replace(records[k], draining=True)
        self._store.save(agent_id, records)
        if self._settings.drain_seconds > 0:
            await _routing.wait_for_drain(
                self._store.agents_dir.parent,
                agent_id,
                {records[k].pid for k in live},
                self._settings.drain_seconds,
            )

    async def stop_and_forget(
        self, agent_id: str, records: dict[Key, ReplicaRecord], keys: list[Key]
    ) -> int:
        """Drain ``keys``, then stop them one by one, saving after each (a crash never forgets
        a live process).

        Returns:
            How many were running.
        """
        await self.drain(agent_id, records, keys)
        running = 0
        for key in keys:
            running += await self.stop(records.pop(key))
            self._store.save(agent_id, records)
        return running

    async def replace(
        self, spec: AgentSpec, argv: list[str], key: Key, records: dict[Key, ReplicaRecord]
    ) -> None:
        """Drain and stop replica ``key`` if recorded, start it again (on its old port if free),
        save."""
        old = records.get(key)
        if old is not None:
            await self.drain(spec.agent_id, records, [key])
            await self.stop(old)
        async with file_lock(self._store.ports_lock()):
            # No await from here to save(): the port is recorded before anyone else can look.
            port = self._allocate_port(spec.agent_id, records, key, old.port if old else None)
            records[key] = self._start(spec, argv, key, port)
            self._store.save(spec.agent_id, records)

    def _start(self, spec: AgentSpec, argv: list[str], key: Key, port: int) -> ReplicaRecord:
        color, index = key
        host = self._settings.host
        env = {
            **os.environ,
            **spec.env,
            "HOST": host,
            "PORT": str(port),
            "AGENT_ID": spec.agent_id,
            "AGENT_VERSION": spec.version,
            "AGENT_COLOR": color,
            "REPLICA_INDEX": str(index),
        }
        prefix = "" if color == "blue" else f"{color}-"  # blue keeps the pre-colour log names
        log_path = self._store.agent_dir(spec.agent_id) / f"{prefix}replica-{index}.log"
        banner = f"--- {datetime.now(UTC).isoformat()} fleetops: starting {argv} on {host}:{port}"
        pid = _process.spawn(argv, env, log_path, banner)
        logger.info(
            "started %s replica %d of %s (pid %d, port %d)", color, index, spec.agent_id, pid, port
        )
        return ReplicaRecord(
            index=index,
            pid=pid,
            host=host,
            port=port,
            start_time=_process.start_time(pid),
            version=spec.version,
            command_hash=command_hash(spec),
            color=color,
            health_path=spec.health.path,
        )

    def _allocate_port(
        self, agent_id: str, records: dict[Key, ReplicaRecord], key: Key, preferred: int | None
    ) -> int:
        """A port in the range no recorded replica uses and that is bindable now."""
        used = {r.port for k, r in records.items() if k != key}
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
