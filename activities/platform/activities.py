"""Temporal activities over the platform seam: provision, restart, deprovision, list replicas."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.platform.base import Platform, PlatformError, PlatformInputError
from fleetops.errors import INVALID_INPUT, PLATFORM_ERROR
from fleetops.models import (
    DeprovisionRequest,
    ProvisionRequest,
    Replica,
    RestartRequest,
    RollingRestartRequest,
    ScaleDownRequest,
    ServiceInfo,
    SwitchTrafficRequest,
)

T = TypeVar("T")

_HEARTBEAT_SECONDS = 0.25
"""Seconds between heartbeats while a platform call runs. The SDK sends at most one per
throttle interval (``min(0.8 * heartbeat_timeout, max_heartbeat_throttle_interval)``, the worker
sets the latter to 0.5 s); the answer to a heartbeat is how a cancellation, or the end of the
calling workflow (terminate), reaches the activity, so a call that starts processes stops
within about a second."""


@contextlib.asynccontextmanager
async def _heartbeating() -> AsyncIterator[None]:
    """Heartbeat every ``_HEARTBEAT_SECONDS`` while the body runs, when inside an activity."""
    if not activity.in_activity():
        yield
        return

    async def beat() -> None:
        # The first beat only after one period: a quick call (a switch takes milliseconds) sends
        # none, so its completion does not wait behind a heartbeat RPC.
        while True:
            await asyncio.sleep(_HEARTBEAT_SECONDS)
            activity.heartbeat()

    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


heartbeating = _heartbeating
"""Public name of the heartbeat context manager, for other activities that wait on something."""


async def _call(op: Awaitable[T]) -> T:
    """Await a platform call, heartbeating; PlatformError becomes a non-retryable failure
    (type ``InvalidInput`` for a :class:`PlatformInputError`, else ``PlatformError``)."""
    try:
        async with _heartbeating():
            return await op
    except PlatformError as e:
        kind = INVALID_INPUT if isinstance(e, PlatformInputError) else PLATFORM_ERROR
        raise ApplicationError(str(e), type=kind, non_retryable=True) from e


class PlatformActivities:
    """Activities that start, stop and list agent replicas on whichever platform runs them.

    Every activity is idempotent (the platform converges), so Temporal may retry any of them.
    They heartbeat every second while waiting on processes or rollouts; set ``heartbeat_timeout``.

    Args:
        platform: the platform implementation (see :func:`activities.platform.build_platform`).
    """

    def __init__(self, platform: Platform) -> None:
        self._platform = platform

    @activity.defn(name="provision_replicas")
    async def provision_replicas(self, req: ProvisionRequest) -> list[Replica]:
        """Converge the agent to ``req.replicas`` running replicas of ``req.spec``.

        Returns:
            The replicas, ordered by index.

        Cancellation (or the end of the calling workflow, seen in a heartbeat's answer) stops
        it between two replica starts; the replicas started so far stay recorded.

        Raises:
            ApplicationError: non-retryable, type ``InvalidInput``: more replicas than the
                platform can place (e.g. free local ports), nothing started; type
                ``PlatformError``: the spec cannot run here; type ``SecretNotFound``: a path or
                key of ``spec.secrets`` is missing (the message names env, path and key);
                retryable ``SecretStoreUnavailable``: the secret store is down or sealed.
        """
        return await _call(self._platform.ensure(req.spec, req.replicas, req.color))

    @activity.defn(name="restart_replicas")
    async def restart_replicas(self, req: RestartRequest) -> list[Replica]:
        """Restart the replicas at ``req.indices`` on their endpoints.

        Returns:
            All replicas, ordered by index.

        Raises:
            ApplicationError: type ``PlatformError``, non-retryable: the spec cannot run here.
        """
        return await _call(self._platform.restart(req.spec, req.indices, req.color))

    @activity.defn(name="rolling_restart")
    async def rolling_restart(self, req: RollingRestartRequest) -> list[Replica]:
        """Replace every replica of ``req.color`` one at a time, surge first: a replacement
        running ``req.spec`` turns healthy before the old replica is drained and stopped.

        Idempotent per ``req.rollout_id``: a retry (a worker died mid-restart) skips replicas
        already replaced and adopts a replacement that was starting. Cancellation (the agent's
        workflow cancelled or terminated, seen in a heartbeat's answer) stops the replacement
        being started; the old replica keeps serving.

        Returns:
            The colour's replicas, ordered by index.

        Raises:
            ApplicationError: non-retryable, type ``PlatformError``: a replacement did not turn
                healthy within ``req.ready_timeout_seconds`` (nothing else was changed), or the
                spec cannot run here.
        """
        return await _call(
            self._platform.rolling_restart(
                req.spec,
                req.color,
                rollout_id=req.rollout_id,
                requested_at=req.requested_at,
                ready_timeout=req.ready_timeout_seconds,
            )
        )

    @activity.defn(name="deprovision_agent")
    async def deprovision_agent(self, req: DeprovisionRequest) -> int:
        """Stop every replica of ``req.agent_id`` and forget it.

        Returns:
            How many replicas were running.

        Raises:
            ApplicationError: type ``PlatformError``, non-retryable: e.g. an invalid agent id.
        """
        return await _call(self._platform.stop_all(req.agent_id))

    @activity.defn(name="list_replicas")
    async def list_replicas(self, agent_id: str) -> list[Replica]:
        """The agent's replicas with ``running`` checked now, ordered by index.

        Raises:
            ApplicationError: type ``PlatformError``, non-retryable: e.g. an invalid agent id.
        """
        return await _call(self._platform.list_replicas(agent_id))

    @activity.defn(name="scale_down_color")
    async def scale_down_color(self, req: ScaleDownRequest) -> int:
        """Stop every replica of one colour of the agent (the other colour keeps serving).

        Returns:
            How many replicas were running.

        Raises:
            ApplicationError: type ``PlatformError``, non-retryable: e.g. an invalid agent id.
        """
        return await _call(self._platform.scale_down(req.agent_id, req.color))

    @activity.defn(name="switch_traffic")
    async def switch_traffic(self, req: SwitchTrafficRequest) -> ServiceInfo:
        """Point the agent's active service at ``req.active_color`` (preview at the other).

        Returns:
            The service after the switch.

        Raises:
            ApplicationError: type ``PlatformError``, non-retryable: the agent has no service.
        """
        return await _call(
            self._platform.switch_traffic(req.agent_id, req.active_color, req.preview_color)
        )

    @activity.defn(name="describe_service")
    async def describe_service(self, agent_id: str) -> ServiceInfo | None:
        """The agent's service (active/preview colours and URLs), or None if it has none."""
        return await _call(self._platform.describe_service(agent_id))
