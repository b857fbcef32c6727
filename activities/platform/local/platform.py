"""The ``local`` platform: agent replicas are OS subprocesses listening on loopback ports.

Each agent has two colour slots (blue, green) of replicas and one service: a local routing entry
that the local gateway (``fleetops gateway``) serves on two stable ports, active and preview (see
:mod:`activities.platform.local.service`). Replicas start in their own session, so they outlive
the worker; their pids, ports and versions are persisted under ``<state_dir>/agents`` (see
:mod:`activities.platform.local.state`), and a new worker over the same state directory adopts
them instead of starting duplicates. ``<state_dir>/prometheus/targets/<agent>.json`` lists the
agent's running replicas for Prometheus ``file_sd`` (:mod:`activities.platform.local.targets`).

Every change is pushed to a running gateway (:mod:`activities.platform.local.gateway_client`):
the gateway re-reads only the changed agent, and a switch returns once it serves the new
generation. File I/O runs off the event loop and touches only the changed agent's files.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from activities.platform.base import LogTail, PlatformError
from activities.platform.local import logs, targets
from activities.platform.local import service as services
from activities.platform.local.admin import ServiceView
from activities.platform.local.gateway_client import GatewayClient
from activities.platform.local.rate_limit import RATE_LIMIT_FILE, RateLimitRecord
from activities.platform.local.replicas import ReplicaRunner, argv_of, command_hash, to_replicas
from activities.platform.local.state import (
    StateStore,
    file_lock,
    fsync_file,
    off_loop,
    write_json_atomic,
)
from fleetops.models import AgentSpec, Color, Replica, ServiceInfo
from fleetops.settings import GatewaySettings, LocalPlatformSettings

logger = logging.getLogger("activities.platform.local")
GATEWAY_WAIT_SECONDS = 5.0
"""How long ``switch_traffic`` waits for a running gateway to serve the new generation."""


async def _done() -> None:
    """Nothing to wait for."""


class LocalPlatform:
    """Runs each replica of an agent as a subprocess on its own loopback port.

    Every method is idempotent and safe to call from several coroutines and several worker
    processes sharing ``state_dir``: changes to one agent are serialised by an ``asyncio.Lock``
    plus an ``fcntl`` lock file.

    Args:
        settings: bind host, port range and the SIGTERM-to-SIGKILL grace period (seconds).
        state_dir: FleetOps state directory; replica state and logs live in ``state_dir/agents``.
        gateway: the local gateway's host and port range, for service ports and URLs
            (default: :class:`~fleetops.settings.GatewaySettings` defaults).

    Raises:
        PlatformError: the replica or gateway port range is empty.
    """

    def __init__(
        self,
        settings: LocalPlatformSettings,
        state_dir: Path,
        gateway: GatewaySettings | None = None,
    ) -> None:
        gateway = gateway or GatewaySettings()
        for name, first, last in (
            ("platform.local", settings.port_range_start, settings.port_range_end),
            ("platform.gateway", gateway.port_range_start, gateway.port_range_end),
        ):
            if last < first:
                raise PlatformError(
                    f"{name} port range [{first}, {last}] is empty; "
                    "set port_range_end >= port_range_start"
                )
        self._gateway = gateway
        self._state_dir = Path(state_dir)
        self._store = StateStore(self._state_dir / "agents")
        self._gateway_client = GatewayClient(self._state_dir)
        self._runner = ReplicaRunner(settings, self._store, self._gateway_client)
        self._locks: dict[str, asyncio.Lock] = {}

    # --- Platform protocol: replicas -----------------------------------------------------------

    async def ensure(self, spec: AgentSpec, replicas: int, color: Color = "blue") -> list[Replica]:
        """Converge colour ``color`` of ``spec.agent_id`` to exactly ``replicas`` replicas.

        Live replicas with index ``< replicas`` and the same command, env and version are kept
        (also when started by an earlier worker); changed or dead ones are restarted on their
        port; indices ``>= replicas`` are stopped. The other colour is untouched. The agent's
        first ``ensure`` also creates its service, with ``color`` active and no preview.

        Args:
            spec: what to run; ``spec.command`` is required when ``replicas > 0``.
            replicas: desired count (>= 0).
            color: the colour slot.

        Returns:
            The colour's replicas, ordered by index.

        Cancelling the calling task stops it between two replica starts (every start is
        recorded before the cancellation is raised).

        Raises:
            PlatformInputError: ``replicas`` exceeds the free ports of the replica range (checked
                before anything starts).
            PlatformError: no ``command``, executable not found, or no free (gateway) port.
        """
        if replicas < 0:
            raise PlatformError(f"replicas must be >= 0, got {replicas}")
        argv = argv_of(spec) if replicas else []
        async with self._changing(spec.agent_id):
            await services.ensure_service(self._store, spec.agent_id, color, self._gateway)
            records = await off_loop(self._store.load, spec.agent_id)
            doomed = sorted(k for k in records if k[0] == color and k[1] >= replicas)
            await self._runner.stop_and_forget(spec.agent_id, records, doomed)
            digest = command_hash(spec)
            stale = [
                i
                for i in range(replicas)
                if (r := records.get((color, i))) is None
                or not self._runner.current(r, spec, digest)
            ]
            if stale:
                await self._runner.check_capacity(spec.agent_id, records, color, replicas)
            for index in stale:
                await self._runner.replace(spec, argv, (color, index), records)
            return to_replicas(records, color)

    async def restart(
        self, spec: AgentSpec, indices: list[int], color: Color = "blue"
    ) -> list[Replica]:
        """Stop (if running) and start again replicas ``indices`` of ``color``, on their ports.

        Args:
            spec: what to run; ``spec.command`` is required.
            indices: replica indices (>= 0); an unknown index is simply started.
            color: the colour slot.

        Returns:
            The colour's replicas, ordered by index.

        Raises:
            PlatformError: negative index, no ``command``, executable not found, or no free port.
        """
        if any(i < 0 for i in indices):
            raise PlatformError(f"replica indices must be >= 0, got {indices}")
        argv = argv_of(spec)
        async with self._changing(spec.agent_id):
            records = await off_loop(self._store.load, spec.agent_id)
            for index in dict.fromkeys(indices):
                await self._runner.replace(spec, argv, (color, index), records)
            return to_replicas(records, color)

    async def scale_down(self, agent_id: str, color: Color) -> int:
        """Stop every replica of ``color``; the other colour and the service stay.

        Returns:
            How many of them were running.

        Raises:
            PlatformError: ``agent_id`` is not a valid agent id, or its state file is unreadable.
            TimeoutError: a replica survived SIGKILL (retryable).
        """
        if not await off_loop(self._store.agent_dir(agent_id).is_dir):
            return 0
        async with self._changing(agent_id):
            records = await off_loop(self._store.load, agent_id)
            doomed = sorted(k for k in records if k[0] == color)
            return await self._runner.stop_and_forget(agent_id, records, doomed)

    async def stop_all(self, agent_id: str) -> int:
        """Stop every replica of ``agent_id``, delete its state and service (logs are kept).

        Returns:
            How many replicas were running.

        Raises:
            PlatformError: ``agent_id`` is not a valid agent id, or its state file is unreadable.
            TimeoutError: a replica survived SIGKILL (retryable).
        """
        if not await off_loop(self._store.agent_dir(agent_id).is_dir):
            return 0
        async with self._changing(agent_id):
            records = await off_loop(self._store.load, agent_id)
            running = await self._runner.stop_and_forget(agent_id, records, sorted(records))
            await off_loop(self._store.remove, agent_id)
            return running

    async def list_replicas(self, agent_id: str, color: Color | None = None) -> list[Replica]:
        """The agent's recorded replicas (of ``color``, or all by colour then index), ``running``
        checked now; empty for an unknown agent.

        Raises:
            PlatformError: ``agent_id`` is not a valid agent id, or its state file is unreadable.
        """
        return await off_loop(lambda: to_replicas(self._store.load(agent_id), color))

    # --- Platform protocol: the service --------------------------------------------------------

    async def switch_traffic(
        self, agent_id: str, active_color: Color, preview_color: Color | None = None
    ) -> ServiceInfo:
        """Route the active port to ``active_color`` and the preview port to ``preview_color``.

        Rewrites ``service.json`` atomically with ``generation + 1``; a no-op when it already routes
        so (a retried activity converges). Then, while the file is flushed to disk, if a gateway
        runs on this state directory, tells it (an admin call) and waits (up to
        :data:`GATEWAY_WAIT_SECONDS`, then a logged warning) until it serves the new generation and
        has a ready replica of ``active_color`` (if that colour has replicas): from then on new
        requests go to the new colour, while in-flight ones finish where they started.

        Args:
            agent_id: the agent.
            active_color: colour behind the active port.
            preview_color: colour behind the preview port; None or ``active_color``: no preview
                (the preview port answers 503).

        Returns:
            The service after the switch.

        Raises:
            PlatformError: the agent has no service (never provisioned), or an invalid id.
        """
        preview = preview_color if preview_color != active_color else None
        async with self._locked(agent_id):
            service, changed = await off_loop(
                services.switch_service, self._store, agent_id, active_color, preview
            )
        if changed:
            logger.info("%s: active %s, preview %s", agent_id, active_color, preview)
        # The gateway switches while the file is flushed to disk; done when both are.
        await asyncio.gather(
            self._gateway_client.sync(
                agent_id,
                generation=service.generation,
                service=ServiceView.model_validate(dataclasses.asdict(service)),
                timeout=GATEWAY_WAIT_SECONDS,
            ),
            off_loop(fsync_file, self._store.service_path(agent_id)) if changed else _done(),
        )
        return services.service_info(agent_id, service, self._gateway.host)

    async def describe_service(self, agent_id: str) -> ServiceInfo | None:
        """The agent's service (colours, gateway URLs, generation), or None if it has none.

        Raises:
            PlatformError: an invalid agent id, or an unreadable ``service.json``.
        """
        service = await off_loop(self._store.load_service, agent_id)
        if service is None:
            return None
        return services.service_info(agent_id, service, self._gateway.host)

    # --- incident response: logs and the gateway's rate limit ---------------------------------

    async def replica_logs(self, agent_id: str, *, lines: int, max_bytes: int) -> list[LogTail]:
        """The last ``lines`` lines (at most ``max_bytes`` bytes each) of the agent's replica log
        files, newest first (stopped replicas' logs too: they are kept).

        Raises:
            PlatformError: ``agent_id`` is not a valid agent id.
        """
        agent_dir = self._store.agent_dir(agent_id)
        return await off_loop(logs.agent_logs, agent_dir, lines=lines, max_bytes=max_bytes)

    async def set_rate_limit(
        self, agent_id: str, rps: float | None, *, burst: int | None = None, set_by: str = ""
    ) -> float | None:
        """Limit requests to the agent's active gateway port to ``rps`` per second (token
        bucket of ``burst``, default ``ceil(rps)``); None lifts the limit.

        Writes (or removes) ``rate_limit.json`` atomically and pushes a sync to a running
        gateway, which re-reads it before answering; a gateway started later reads it too.

        Returns:
            The limit in force (None: unlimited).

        Raises:
            PlatformError: the agent has no service (never provisioned), or an invalid id.
            pydantic.ValidationError: ``rps`` or ``burst`` out of bounds.
        """
        record = None if rps is None else RateLimitRecord.of(rps, burst, set_by)
        path = self._store.agent_dir(agent_id) / RATE_LIMIT_FILE
        async with self._locked(agent_id):
            if await off_loop(self._store.load_service, agent_id) is None:
                raise PlatformError(f"agent {agent_id} has no service to rate-limit")
            if record is None:
                await off_loop(path.unlink, missing_ok=True)
            else:
                await off_loop(write_json_atomic, path, record.model_dump())
        await self._gateway_client.sync(agent_id)
        return None if record is None else record.rps

    # --- locking ------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _locked(self, agent_id: str) -> AsyncIterator[None]:
        agent_dir = self._store.agent_dir(agent_id)
        async with (
            self._locks.setdefault(agent_id, asyncio.Lock()),
            file_lock(agent_dir / "lock"),  # creates the directory
        ):
            yield

    @contextlib.asynccontextmanager
    async def _changing(self, agent_id: str) -> AsyncIterator[None]:
        """Hold the agent's lock; before releasing it (also on failure or cancellation) rewrite
        the agent's Prometheus targets and tell a running gateway about the change."""
        async with self._locked(agent_id):
            try:
                yield
            finally:
                await asyncio.shield(self._publish(agent_id))

    async def _publish(self, agent_id: str) -> None:
        """Rewrite the agent's target file and push the change to the gateway (no wait)."""
        try:
            records = await off_loop(self._store.load, agent_id)
            await off_loop(targets.write_targets, self._state_dir, agent_id, records)
        except (OSError, PlatformError) as e:  # monitoring must not fail a platform operation
            logger.warning("could not write Prometheus targets of %s: %s", agent_id, e)
        await self._gateway_client.sync(agent_id)
