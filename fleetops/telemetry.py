"""Observability: OpenTelemetry tracing (SDK contrib interceptor) and SDK Prometheus metrics."""

from __future__ import annotations

from functools import lru_cache

from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from temporalio.client import Interceptor
from temporalio.contrib.opentelemetry import TracingInterceptor
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig

from fleetops.settings import TelemetrySettings


def tracing_interceptors(settings: TelemetrySettings) -> list[Interceptor]:
    """Interceptors that trace workflow and activity calls, per ``telemetry.tracing_exporter``.

    ``console`` prints spans to stdout; ``otlp`` exports over OTLP/HTTP to
    ``telemetry.otlp_endpoint``; ``none`` returns no interceptor. The tracer provider is installed
    once per process as the global provider.

    Args:
        settings: telemetry settings.

    Returns:
        ``[TracingInterceptor]`` or ``[]``.
    """
    if settings.tracing_exporter == "none":
        return []
    _install_tracer_provider(
        settings.tracing_exporter, settings.otlp_endpoint, settings.service_name
    )
    return [TracingInterceptor()]


@lru_cache(maxsize=4)
def _install_tracer_provider(exporter_kind: str, endpoint: str, service_name: str) -> None:
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: service_name}))
    exporter: SpanExporter
    if exporter_kind == "console":
        exporter = ConsoleSpanExporter()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint=endpoint)
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)


@lru_cache(maxsize=4)
def metrics_runtime(bind_address: str | None) -> Runtime | None:
    """A Temporal runtime serving SDK metrics at ``http://<bind_address>/metrics``.

    Cached per address: a process binds the endpoint once, however many clients it makes.

    Args:
        bind_address: ``host:port``; ``None`` or empty disables metrics.

    Returns:
        The runtime, or ``None`` to use the SDK's default runtime.

    Raises:
        RuntimeError: the address cannot be bound (for example already in use).
    """
    if not bind_address:
        return None
    return Runtime(telemetry=TelemetryConfig(metrics=PrometheusConfig(bind_address=bind_address)))
