"""The sample agent: a small HTTP "AI agent" that FleetOps runs as replicas and injects faults into.

It simulates an LLM call deterministically (no network), exposes health, readiness and Prometheus
metrics, and accepts fault injection (errors, latency, unhealthy, crash) both from the environment
at start and from ``POST /faults`` at run time.

Endpoints (all JSON except ``/metrics``):

- ``GET /health``: 200 ``{"status": "ok", "agent_id", "version", "replica", "in_flight"}``;
  503 with ``"status": "unhealthy"`` while the unhealthy fault is on.
- ``GET /ready``: 200 ``{"status": "ready"}``; 503 ``{"status": "not_ready"}`` while unhealthy.
- ``GET /config``: ``{"config": {...}, "agent_id", "version", "replica"}``: the configuration
  FleetOps delivered in ``FLEETOPS_AGENT_CONFIG`` (``{}`` when none).
- ``GET /metrics``: Prometheus text exposition of this app's own registry.
- ``POST /execute``: ``{"prompt": str, "max_tokens": int}`` ->
  ``{"output", "usage": {"input_tokens", "output_tokens"}, "version", "replica"}``.
- ``GET /faults`` / ``POST /faults``: read / partially update the fault state.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass, replace
from itertools import cycle, islice
from typing import Any, TypeVar

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from infra.sample_agent.metrics import AgentMetrics, InstrumentationMiddleware

logger = logging.getLogger(__name__)

CRASH_DELAY_SECONDS = 0.1
"""Seconds between answering ``POST /faults {"crash": true}`` and exiting, so the reply gets out."""

CHARS_PER_OUTPUT_TOKEN = 4
"""Output tokens are ``ceil(len(prompt) / 4)`` (capped by ``max_tokens``), the usual heuristic."""

ExitFn = Callable[[int], Any]
SleepFn = Callable[[float], Awaitable[Any]]
_M = TypeVar("_M", bound=BaseModel)


class AgentConfig(BaseSettings):
    """Configuration of one replica, read from environment variables (no prefix, any case).

    Raises:
        pydantic.ValidationError: On construction, naming each bad field, e.g. a
            ``FAULT_ERROR_RATE`` outside ``[0, 1]`` or a ``PORT`` that is not a port number.
    """

    model_config = SettingsConfigDict(frozen=True, env_ignore_empty=True, extra="ignore")

    host: str = Field(default="127.0.0.1", min_length=1, description="HOST: bind address.")
    port: int = Field(default=8080, ge=1, le=65535, description="PORT: bind port.")
    agent_id: str = Field(
        default="sample", min_length=1, description="AGENT_ID: agent this replica is."
    )
    agent_version: str = Field(
        default="v1", min_length=1, description="AGENT_VERSION: version label."
    )
    replica_index: int = Field(
        default=0, ge=0, description="REPLICA_INDEX: index within the agent."
    )
    simulated_work_seconds: float = Field(
        default=0.01,
        ge=0,
        description="SIMULATED_WORK_SECONDS: seconds one /execute call 'thinks'.",
    )
    fleetops_agent_config: str = Field(
        default="",
        description="FLEETOPS_AGENT_CONFIG: the agent config (a JSON object), see GET /config.",
    )
    fault_error_rate: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="FAULT_ERROR_RATE: fraction of /execute calls answering 500.",
    )
    fault_latency_seconds: float = Field(
        default=0.0,
        ge=0,
        description="FAULT_LATENCY_SECONDS: extra seconds added to each /execute call.",
    )
    fault_unhealthy: bool = Field(
        default=False, description="FAULT_UNHEALTHY: /health and /ready answer 503."
    )
    fault_crash_after_seconds: float | None = Field(
        default=None,
        gt=0,
        description="FAULT_CRASH_AFTER_SECONDS: exit with code 1 this long after start.",
    )


@dataclass
class FaultState:
    """Faults currently injected into one app (mutable: ``POST /faults`` changes it).

    Attributes:
        error_rate: Fraction (0..1) of ``/execute`` calls that answer 500.
        latency_seconds: Extra seconds added to every ``/execute`` call.
        unhealthy: Whether ``/health`` and ``/ready`` answer 503.
    """

    error_rate: float = 0.0
    latency_seconds: float = 0.0
    unhealthy: bool = False


class ExecuteRequest(BaseModel):
    """Body of ``POST /execute``."""

    model_config = ConfigDict(extra="forbid", strict=True)

    prompt: str = Field(min_length=1, max_length=100_000)
    max_tokens: int = Field(default=256, ge=1, le=8192)


class FaultUpdate(BaseModel):
    """Body of ``POST /faults``: every field is optional; absent or null means "unchanged"."""

    model_config = ConfigDict(extra="forbid", strict=True)

    error_rate: float | None = Field(default=None, ge=0, le=1)
    latency_seconds: float | None = Field(default=None, ge=0)
    unhealthy: bool | None = None
    crash: bool | None = None


def simulate_completion(prompt: str, max_tokens: int) -> tuple[str, int, int]:
    """Compute a deterministic fake LLM completion.

    Args:
        prompt: The prompt text.
        max_tokens: Upper bound on output tokens (>= 1).

    Returns:
        ``(output, input_tokens, output_tokens)``: input tokens are the whitespace-separated
        words of the prompt; output tokens are ``min(max_tokens, ceil(len(prompt) / 4))``; the
        output is that many words, cycling through the prompt's words.
    """
    words = prompt.split()
    output_tokens = min(max_tokens, max(1, math.ceil(len(prompt) / CHARS_PER_OUTPUT_TOKEN)))
    output = " ".join(islice(cycle(words or ["ok"]), output_tokens))
    return output, len(words), output_tokens


def _validation_error(exc: ValidationError) -> JSONResponse:
    detail = exc.errors(include_url=False, include_context=False, include_input=False)
    return JSONResponse({"detail": detail}, status_code=422)


async def _parse(request: Request, model: type[_M]) -> _M | JSONResponse:
    try:
        return model.model_validate_json(await request.body())
    except ValidationError as exc:
        return _validation_error(exc)


class _Agent:
    """State and handlers of one app; ``create_app`` wires its methods to routes."""

    def __init__(
        self, config: AgentConfig, *, rng: random.Random, sleep: SleepFn, exit_process: ExitFn
    ) -> None:
        self.config = config
        self.faults = FaultState(
            error_rate=config.fault_error_rate,
            latency_seconds=config.fault_latency_seconds,
            unhealthy=config.fault_unhealthy,
        )
        self.metrics = AgentMetrics(
            agent_id=config.agent_id, version=config.agent_version, replica=config.replica_index
        )
        self.in_flight = 0
        self._rng = rng
        self._sleep = sleep
        self._exit = exit_process

    def track_execute(self, delta: int) -> None:
        self.in_flight += delta
        self.metrics.in_flight.inc(delta)

    def _identity(self) -> dict[str, Any]:
        return {
            "agent_id": self.config.agent_id,
            "version": self.config.agent_version,
            "replica": self.config.replica_index,
        }

    async def health(self, request: Request) -> JSONResponse:
        status = "unhealthy" if self.faults.unhealthy else "ok"
        body = {"status": status, **self._identity(), "in_flight": self.in_flight}
        return JSONResponse(body, status_code=503 if self.faults.unhealthy else 200)

    async def config_endpoint(self, request: Request) -> JSONResponse:
        """``GET /config``: the configuration FleetOps delivered (``{}`` when none)."""
        raw = self.config.fleetops_agent_config
        try:
            config = json.loads(raw) if raw else {}
        except ValueError:
            return JSONResponse({"error": "FLEETOPS_AGENT_CONFIG is not JSON"}, status_code=500)
        return JSONResponse({"config": config, **self._identity()})

    async def ready(self, request: Request) -> JSONResponse:
        if self.faults.unhealthy:
            return JSONResponse({"status": "not_ready"}, status_code=503)
        return JSONResponse({"status": "ready"})

    async def metrics_endpoint(self, request: Request) -> Response:
        return Response(generate_latest(self.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def execute(self, request: Request) -> JSONResponse:
        body = await _parse(request, ExecuteRequest)
        if isinstance(body, JSONResponse):
            return body
        # Read the faults once, so a concurrent POST /faults cannot split one call's behaviour.
        faults = replace(self.faults)
        await self._sleep(self.config.simulated_work_seconds + faults.latency_seconds)
        if self._rng.random() < faults.error_rate:
            return JSONResponse(
                {"error": "injected fault: simulated LLM failure", **self._identity()},
                status_code=500,
            )
        output, input_tokens, output_tokens = simulate_completion(body.prompt, body.max_tokens)
        self.metrics.tokens.labels(direction="input").inc(input_tokens)
        self.metrics.tokens.labels(direction="output").inc(output_tokens)
        return JSONResponse(
            {
                "output": output,
                "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens},
                "version": self.config.agent_version,
                "replica": self.config.replica_index,
            }
        )

    async def get_faults(self, request: Request) -> JSONResponse:
        return JSONResponse(asdict(self.faults))

    async def post_faults(self, request: Request) -> JSONResponse:
        update = await _parse(request, FaultUpdate)
        if isinstance(update, JSONResponse):
            return update
        for name, value in update.model_dump(exclude_none=True, exclude={"crash"}).items():
            setattr(self.faults, name, value)
        logger.warning("faults set to %s (crash=%s)", asdict(self.faults), bool(update.crash))
        # A background task runs after the response has been sent.
        crash = BackgroundTask(self._crash_soon) if update.crash else None
        return JSONResponse(asdict(self.faults), background=crash)

    async def _crash_soon(self) -> None:
        await self._sleep(CRASH_DELAY_SECONDS)
        logger.warning("crashing on request (injected fault)")
        self._exit(1)

    async def _crash_after(self, seconds: float) -> None:
        await self._sleep(seconds)
        logger.warning("crashing after %.3f s (FAULT_CRASH_AFTER_SECONDS)", seconds)
        self._exit(1)

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        after = self.config.fault_crash_after_seconds
        timer = asyncio.create_task(self._crash_after(after)) if after is not None else None
        try:
            yield
        finally:
            if timer is not None:
                timer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await timer


def create_app(
    config: AgentConfig,
    *,
    rng: random.Random | None = None,
    sleep: SleepFn = asyncio.sleep,
    exit_process: ExitFn = os._exit,
) -> Starlette:
    """Build the sample agent's ASGI app.

    The ``FAULT_CRASH_AFTER_SECONDS`` timer starts with the app's lifespan (as uvicorn runs it),
    not at construction.

    Args:
        config: Identity, simulated work time and initial faults of this replica.
        rng: Source of the error-rate decisions; a fresh unseeded ``random.Random`` by default.
        sleep: Awaitable sleep taking seconds, used for simulated work, the latency fault and
            crash delays (tests pass a controllable one).
        exit_process: Called with exit code 1 to crash; ``os._exit`` by default, which skips
            cleanup on purpose so the crash looks like a real one.

    Returns:
        A Starlette app with its own Prometheus registry and fault state.
    """
    agent = _Agent(config, rng=rng or random.Random(), sleep=sleep, exit_process=exit_process)
    routes = [
        Route("/health", agent.health, methods=["GET"]),
        Route("/ready", agent.ready, methods=["GET"]),
        Route("/config", agent.config_endpoint, methods=["GET"]),
        Route("/metrics", agent.metrics_endpoint, methods=["GET"]),
        Route("/execute", agent.execute, methods=["POST"]),
        Route("/faults", agent.get_faults, methods=["GET"]),
        Route("/faults", agent.post_faults, methods=["POST"]),
    ]
    middleware = [
        Middleware(
            InstrumentationMiddleware,
            metrics=agent.metrics,
            on_execute_change=agent.track_execute,
        )
    ]
    return Starlette(routes=routes, middleware=middleware, lifespan=agent.lifespan)
