"""Replica processes of the local platform: start, stop and place them on ports.

Callers hold the agent's lock (see :class:`~activities.platform.local.LocalPlatform`); the port
lock is taken here, around choosing a port, starting the process and recording it. Blocking work
(state files, ``/proc``, spawning) runs off the event loop; starting a process and recording it
are one step a cancellation cannot split (see :func:`~activities.platform.local.state.off_loop`),
so a cancelled activity never leaves a replica nobody knows about.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import logging
import os
from datetime import UTC, datetime

from activities.platform.base import PlatformError, PlatformInputError, url
from activities.platform.local import process
from activities.platform.local.gateway_client import GatewayClient
from activities.platform.local.state import Key, ReplicaRecord, StateStore, file_lock, off_loop
from fleetops.agent_config import config_env
from fleetops.models import AgentSpec, Color, Replica
from fleetops.settings import LocalPlatformSettings

logger = logging.getLogger("activities.platform.local")


def command_hash(spec: AgentSpec) -> str:
    """Hash of what a replica runs (command, env and config): a change restarts the replica.

    The config counts only when set, so replicas of agents without one keep their hash."""
    what: dict[str, object] = {"command": spec.command, "env": spec.env}
    if spec.config:
        what["config"] = spec.config
    payload = json.dumps(what, sort_keys=True)
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
    return [process.resolve_executable(spec.command[0]), *spec.command[1:]]


def to_replicas(records: dict[Key, ReplicaRecord], color: Color | None) -> list[Replica]:
    """Records (of ``color``, or all) as :class:`Replica`, by colour then index, liveness now."""
    return [
        Replica(
            index=r.index,
            endpoint=url(r.host, r.port),
            pid=r.pid,
            running=process.is_alive(r.pid, r.start_time),
            color=r.color,
            version=r.version,
        )
        for key, r in sorted(records.items())
        if color is None or key[0] == color
    ]


class ReplicaRunner:
    """Starts and stops replica processes and records them in the agent's ``state.json``.

    Args:
        settings: bind host, port range, stop grace and drain periods (seconds).
        store: the state files.
        gateway: tells a running gateway about replicas about to stop.
    """

    def __init__(
        self, settings: LocalPlatformSettings, store: StateStore, gateway: GatewayClient
    ) -> None:
        self._settings = settings
        self._store = store
        self._gateway = gateway

    def current(self, record: ReplicaRecord, spec: AgentSpec, digest: str) -> bool:
        """Whether ``record`` is alive, not draining (a stop that a crash interrupted), and runs
        ``spec`` (command hash ``digest``, version)."""
        return (
            not record.draining
            and record.command_hash == digest
            and record.version == spec.version
            and process.is_alive(record.pid, record.start_time)
        )

    async def stop(self, record: ReplicaRecord) -> bool:
        """SIGTERM the replica, SIGKILL after the grace period; whether it was running."""
        grace = self._settings.stop_grace_seconds
        was_running = await process.terminate(record.pid, record.start_time, grace)
        if was_running:
            logger.info("stopped %s replica %d (pid %d)", record.color, record.index, record.pid)
        return was_running

    async def drain(
        self, agent_id: str, records: dict[Key, ReplicaRecord], keys: list[Key]
    ) -> None:
        """Take the live replicas among ``keys`` out of the gateway's rotation before a stop.

        Marks them ``draining`` in ``state.json``, tells a running gateway, and waits, up to
        ``drain_seconds``, until it sends them nothing and has no request in flight to them
        (see :meth:`GatewayClient.drain`). Without a gateway it returns at once.
        """
        live = [
            k
            for k in keys
            if k in records and process.is_alive(records[k].pid, records[k].start_time)
        ]
        if not live:
            return
        for k in live:
            records[k] = dataclasses.replace(records[k], draining=True)
        await off_loop(self._store.save, agent_id, records)
        pids = {records[k].pid for k in live}
        await self._gateway.drain(agent_id, pids, self._settings.drain_seconds)

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
            running += await self.stop(records[key])
            del records[key]
            await off_loop(self._store.save, agent_id, records)
        return running

    async def check_capacity(
        self, agent_id: str, records: dict[Key, ReplicaRecord], color: Color, replicas: int
    ) -> None:
        """Refuse ``replicas`` replicas of ``color`` when the port range cannot hold them.

        Capacity: ports of the range not reserved by another agent, by the other colour or by
        anything listening, plus the ports the colour's live replicas hold now.

        Raises:
            PlatformInputError: ``replicas`` exceeds that capacity (nothing was started).
        """
        free = await off_loop(self._capacity, agent_id, records, color)
        if replicas > free:
            start, end = self._settings.port_range_start, self._settings.port_range_end
            raise PlatformInputError(
                f"replicas={replicas} of {agent_id!r} ({color}) exceeds the {free} free ports "
                f"of platform.local [{start}, {end}]; ask for fewer replicas, widen "
                "platform.local.port_range_start/port_range_end or stop unused agents"
            )

    def _capacity(self, agent_id: str, records: dict[Key, ReplicaRecord], color: Color) -> int:
        own = {
            r.port
            for k, r in records.items()
            if k[0] == color and process.is_alive(r.pid, r.start_time)
        }
        used = self._reserved(agent_id, records, None) - own
        start, end = self._settings.port_range_start, self._settings.port_range_end
        host = self._settings.host
        return sum(
            1
            for p in range(start, end + 1)
            if p not in used and (p in own or process.port_bindable(host, p))
        )

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
            preferred = old.port if old else None
            await off_loop(self._start_and_record, spec, argv, key, records, preferred)

    async def start_surge(
        self,
        spec: AgentSpec,
        argv: list[str],
        key: Key,
        surge_key: Key,
        records: dict[Key, ReplicaRecord],
        rollout: str,
    ) -> ReplicaRecord:
        """Start a replacement of slot ``key`` on a new port, recorded under ``surge_key``
        (marked with ``rollout``) and saved before anyone else can look at the ports.

        Returns:
            The replacement's record.

        Raises:
            PlatformError: no free port.
        """

        def start() -> ReplicaRecord:
            port = self._allocate_port(spec.agent_id, records, surge_key, None)
            started = self._start(spec, argv, key, port)
            records[surge_key] = dataclasses.replace(started, index=surge_key[1], rollout=rollout)
            self._store.save(spec.agent_id, records)
            return records[surge_key]

        async with file_lock(self._store.ports_lock()):
            return await off_loop(start)

    def _start_and_record(
        self,
        spec: AgentSpec,
        argv: list[str],
        key: Key,
        records: dict[Key, ReplicaRecord],
        preferred: int | None,
    ) -> None:
        """Choose a port, start the replica on it and save, in one blocking step (the caller
        holds the ports lock, so the port is recorded before anyone else can look)."""
        port = self._allocate_port(spec.agent_id, records, key, preferred)
        records[key] = self._start(spec, argv, key, port)
        self._store.save(spec.agent_id, records)

    def _start(self, spec: AgentSpec, argv: list[str], key: Key, port: int) -> ReplicaRecord:
        color, index = key
        host = self._settings.host
        env = {
            **os.environ,
            **spec.env,
            **config_env(spec.config),
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
        pid = process.spawn(argv, env, log_path, banner)
        logger.info(
            "started %s replica %d of %s (pid %d, port %d)", color, index, spec.agent_id, pid, port
        )
        return ReplicaRecord(
            index=index,
            pid=pid,
            host=host,
            port=port,
            start_time=process.start_time(pid),
            version=spec.version,
            command_hash=command_hash(spec),
            color=color,
            health_path=spec.health.path,
        )

    def _reserved(
        self, agent_id: str, records: dict[Key, ReplicaRecord], key: Key | None
    ) -> set[int]:
        """Ports held by live replicas of this agent (but ``key``) and by every other agent."""
        used = {
            r.port for k, r in records.items() if k != key and process.is_alive(r.pid, r.start_time)
        }
        return used | self._store.ports_of_other_agents(agent_id)

    def _allocate_port(
        self, agent_id: str, records: dict[Key, ReplicaRecord], key: Key, preferred: int | None
    ) -> int:
        """A port in the range no live replica holds and that is bindable now."""
        used = self._reserved(agent_id, records, key)
        start, end = self._settings.port_range_start, self._settings.port_range_end
        first = [preferred] if preferred is not None and start <= preferred <= end else []
        for port in itertools.chain(first, range(start, end + 1)):
            if port not in used and process.port_bindable(self._settings.host, port):
                return port
        raise PlatformError(
            f"no free port in [{start}, {end}] on {self._settings.host}; widen "
            "platform.local.port_range_start/port_range_end or stop unused agents"
        )
