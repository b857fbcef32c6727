"""Prometheus metrics of one sample-agent app, kept in the app's own registry.

A per-app :class:`~prometheus_client.CollectorRegistry` (never the process-global one) lets tests
build many apps in one process and lets each replica expose only its own numbers.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

KNOWN_ENDPOINTS = frozenset({"/health", "/ready", "/metrics", "/execute", "/faults"})
"""Paths used as the ``endpoint`` label; any other path is counted as ``other`` (bounded)."""

EXECUTE_PATH = "/execute"


class AgentMetrics:
    """The metric families one sample agent exposes on ``GET /metrics``.

    Args:
        agent_id: Value of the ``agent_id`` label of ``agent_info``.
        version: Value of the ``version`` label of ``agent_info``.
        replica: Value of the ``replica`` label of ``agent_info``.
    """

    def __init__(self, *, agent_id: str, version: str, replica: int) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "agent_requests",
            "HTTP requests handled, by endpoint path and status code.",
            ["endpoint", "status"],
            registry=self.registry,
        )
        self.errors = Counter(
            "agent_errors",
            "/execute requests that failed with a 5xx status (injected or unexpected).",
            registry=self.registry,
        )
        self.duration = Histogram(
            "agent_request_duration_seconds",
            "Wall-clock seconds spent handling /execute requests.",
            registry=self.registry,
        )
        self.tokens = Counter(
            "agent_tokens",
            "Simulated LLM tokens of successful /execute requests, by direction.",
            ["direction"],
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "agent_in_flight_requests",
            "/execute requests being handled right now.",
            registry=self.registry,
        )
        self.info = Gauge(
            "agent_info",
            "Identity of this replica; always 1.",
            ["agent_id", "version", "replica"],
            registry=self.registry,
        )
        self.info.labels(agent_id=agent_id, version=version, replica=str(replica)).set(1)
        # Pre-create the label sets dashboards expect so they read 0 instead of "no data".
        for direction in ("input", "output"):
            self.tokens.labels(direction=direction)


class InstrumentationMiddleware:
    """Pure ASGI middleware counting requests, and timing and tracking ``/execute`` calls.

    It sits inside Starlette's error middleware, so a handler that raises is seen here as an
    exception and recorded with status 500.

    Args:
        app: The wrapped ASGI application.
        metrics: Where to record.
        on_execute_change: Called with +1 when an ``/execute`` request starts and -1 when it
            ends (in-flight bookkeeping of the owner).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        metrics: AgentMetrics,
        on_execute_change: Callable[[int], None],
    ) -> None:
        self._app = app
        self._metrics = metrics
        self._on_execute_change = on_execute_change

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI call; non-HTTP scopes (lifespan) pass through untouched.

        Args:
            scope: ASGI connection scope.
            receive: ASGI receive channel.
            send: ASGI send channel.
        """
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        path = scope["path"]
        endpoint = path if path in KNOWN_ENDPOINTS else "other"
        is_execute = endpoint == EXECUTE_PATH
        status = 500

        async def send_recording_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        started = time.perf_counter()
        if is_execute:
            self._on_execute_change(+1)
        try:
            await self._app(scope, receive, send_recording_status)
        finally:
            if is_execute:
                self._on_execute_change(-1)
                self._metrics.duration.observe(time.perf_counter() - started)
                if status >= 500:
                    self._metrics.errors.inc()
            self._metrics.requests.labels(endpoint=endpoint, status=str(status)).inc()
