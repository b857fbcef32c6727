"""The local gateway's admin contract: one set of pydantic models used by the gateway (which
serves them) and the local platform (which calls them).

The admin endpoint listens on a free port of 127.0.0.1, announced in ``<state_dir>/gateway.json``
(:class:`GatewayAnnouncement`). Its routes:

- ``GET /healthz``: ``{"status": "ok"}``.
- ``GET /routes``: :class:`RoutesView`, the route table (every agent's colours, generation,
  ports and replicas).
- ``POST /agents/{agent_id}/sync`` with :class:`SyncRequest`: the gateway re-reads that agent's
  ``service.json``, ``state.json`` and ``rate_limit.json`` (its limit, see
  :mod:`activities.platform.local.rate_limit`) now (the platform calls it after every change:
  the change is pushed, not polled), then waits up to ``timeout_seconds`` until it serves what
  the request asks; answers :class:`SyncResult`.
- ``POST /agents/{agent_id}/drain`` with :class:`DrainRequest`: re-reads the agent (its replicas
  about to stop are marked draining there), then waits up to ``timeout_seconds`` until none of
  ``pids`` has a request in flight; answers :class:`DrainResult`.

A bad body is answered 422 with pydantic's errors; an invalid agent id 404.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, RootModel

from fleetops.models import Color

MAX_WAIT_SECONDS = 300.0
"""Upper bound of a sync or drain wait, in seconds (the platform clamps longer drain settings)."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GatewayAnnouncement(_Model):
    """``<state_dir>/gateway.json``: written by a running gateway, removed when it stops.

    Attributes:
        admin_url: base URL of the admin endpoint, e.g. ``http://127.0.0.1:41234``.
        pid: the gateway's process id (a file left by a dead gateway is ignored).
    """

    admin_url: str
    pid: int = Field(gt=0)


class UpstreamView(_Model):
    """One replica as the gateway sees it.

    Attributes:
        url: base URL of the replica.
        replica: replica index within its colour.
        version: the version it runs.
        pid: its process id.
        ready: its readiness probing passes.
        starting: never ready yet (gets no requests).
        draining: about to stop (gets no new requests).
        in_flight: requests in flight to it through this gateway.
        down: marked down by passive health (a connection failed in the last seconds).
        failures: failed connections since the gateway first saw it.
    """

    url: str
    replica: int
    version: str
    pid: int | None
    ready: bool
    starting: bool
    draining: bool
    in_flight: int = Field(ge=0)
    down: bool
    failures: int = Field(ge=0)


class RouteView(_Model):
    """One agent in the route table.

    Attributes:
        active_color: colour behind the active port.
        preview_color: colour behind the preview port; None: it answers 503.
        generation: the ``service.json`` generation served.
        active_port: gateway port of the active service.
        preview_port: gateway port of the preview service.
        upstreams: each colour's running replicas.
        rate_limit_rps: requests per second the active port admits (token bucket, 429 with
            ``Retry-After`` above it); None: unlimited. Set by the platform's
            ``set_rate_limit`` in ``rate_limit.json``, read on every sync.
        rate_limit_burst: the bucket's size, requests; None: unlimited.
    """

    active_color: Color
    preview_color: Color | None
    generation: int = Field(ge=0)
    active_port: int
    preview_port: int
    upstreams: dict[Color, list[UpstreamView]]
    rate_limit_rps: float | None = None
    rate_limit_burst: int | None = None

    def serves(self, request: SyncRequest) -> bool:
        """Whether this route satisfies ``request`` (see :class:`SyncRequest`)."""
        if request.generation is None:
            return True
        if self.generation != request.generation:
            return self.generation > request.generation  # switched again since: not ours to wait
        ups = self.upstreams.get(self.active_color) or []
        return not request.ready or not ups or any(u.ready for u in ups)

    def busy(self, pids: list[int]) -> dict[int, int]:
        """In-flight counts of the replicas among ``pids`` not drained yet: still listed and
        either not marked draining or with requests in flight."""
        listed = {u.pid: u for ups in self.upstreams.values() for u in ups}
        return {
            pid: listed[pid].in_flight
            for pid in pids
            if pid in listed and (not listed[pid].draining or listed[pid].in_flight)
        }


class RoutesView(RootModel[dict[str, RouteView]]):
    """``GET /routes``: the route table, by agent id."""


class ServiceView(_Model):
    """An agent's service as just written to its ``service.json`` (a colour switch).

    Attributes:
        active_color: colour behind the active port.
        preview_color: colour behind the preview port; None: it answers 503.
        active_port: gateway port of the active service.
        preview_port: gateway port of the preview service.
        generation: the file's generation.
    """

    active_color: Color
    preview_color: Color | None
    active_port: int = Field(ge=1, le=65535)
    preview_port: int = Field(ge=1, le=65535)
    generation: int = Field(ge=0)


class SyncRequest(_Model):
    """``POST /agents/{agent_id}/sync``.

    Attributes:
        generation: wait until the gateway serves this generation of the agent's service (a
            later one counts too); None: only re-read the agent, do not wait.
        ready: with ``generation``, also wait until the active colour has a ready replica (if
            it has running replicas at all).
        timeout_seconds: how long to wait, in seconds.
        service: the switch itself, so the gateway applies it without reading the file (only
            if it is newer than what it serves; the replicas it knows stay). None, or an agent
            the gateway does not route yet or with other ports: the gateway re-reads the files.
    """

    generation: int | None = Field(None, ge=0)
    ready: bool = True
    timeout_seconds: float = Field(5.0, ge=0, le=MAX_WAIT_SECONDS)
    service: ServiceView | None = None


class SyncResult(_Model):
    """Answer of a sync.

    Attributes:
        served: the request was satisfied within its timeout.
        route: the agent's route now; None when the agent has no service (or was removed).
    """

    served: bool
    route: RouteView | None


class DrainRequest(_Model):
    """``POST /agents/{agent_id}/drain``.

    Attributes:
        pids: process ids of replicas that ``state.json`` now marks draining.
        timeout_seconds: how long to wait for their requests in flight, in seconds.
    """

    pids: list[int] = Field(max_length=10_000)
    timeout_seconds: float = Field(10.0, ge=0, le=MAX_WAIT_SECONDS)


class DrainResult(_Model):
    """Answer of a drain.

    Attributes:
        drained: no replica among the request's ``pids`` has a request in flight or is routed.
        busy: the others: pid -> requests in flight.
    """

    drained: bool
    busy: dict[int, int]
