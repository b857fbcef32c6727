"""Settings from FLEETOPS_* variables, and the telemetry the worker exposes (metrics, traces)."""

from __future__ import annotations

import socket
import uuid
from datetime import timedelta

from temporalio import activity, workflow

with workflow.unsafe.imports_passed_through():
    import httpx
    import pytest
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from prometheus_client.parser import text_string_to_metric_families
    from pydantic import ValidationError
    from temporalio.testing import WorkflowEnvironment

    from fleetops.client import connect
    from fleetops.settings import Settings
    from tests.conftest import new_worker
    from tests.helpers import result_within


def test_nested_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEETOPS_TEMPORAL__ADDRESS", "temporal.example:7233")
    monkeypatch.setenv("FLEETOPS_PLATFORM__LOCAL__PORT_RANGE_START", "20000")
    monkeypatch.setenv("FLEETOPS_ENCRYPTION__KEYS", '{"k1": "a2V5"}')
    s = Settings()
    assert s.temporal.address == "temporal.example:7233"
    assert s.platform.local.port_range_start == 20000
    assert s.encryption.keys["k1"].get_secret_value() == "a2V5"
    assert "a2V5" not in repr(s)  # secrets never printed


@pytest.mark.parametrize(
    ("var", "value", "field"),
    [
        ("FLEETOPS_DEV_SERVER__PORT", "0", "dev_server.port"),
        ("FLEETOPS_TEMPORAL__TLS_CERT_PATH", "/tmp/cert.pem", "tls_key_path"),
        ("FLEETOPS_ENCRYPTION__ENABLED", "true", "active_key_id"),
        ("FLEETOPS_TELEMETRY__TRACING_EXPORTER", "jaeger", "tracing_exporter"),
    ],
)
def test_bad_setting_names_the_field(
    monkeypatch: pytest.MonkeyPatch, var: str, value: str, field: str
) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ValidationError, match=field.replace(".", r"\.")):
        Settings()


@activity.defn(name="telemetry_ping")
async def ping(text: str) -> str:
    return text.upper()


@workflow.defn(name="TelemetryProbe")
class TelemetryProbe:
    @workflow.run
    async def run(self, text: str) -> str:
        return await workflow.execute_activity(
            ping, text, start_to_close_timeout=timedelta(seconds=10)
        )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_sdk_metrics_endpoint_and_traces(dev_env: WorkflowEnvironment) -> None:
    bind = f"127.0.0.1:{_free_port()}"
    address = dev_env.client.service_client.config.target_host
    settings = Settings(
        temporal={"address": address},
        telemetry={"metrics_bind_address": bind, "tracing_exporter": "console"},
    )
    client = await connect(settings, with_metrics=True)
    provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider)  # installed by the console exporter setting
    spans = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    worker = new_worker(client, workflows=[TelemetryProbe], activities=[ping])
    async with worker:
        handle = await client.start_workflow(
            TelemetryProbe.run, "hi", id=f"telemetry-{uuid.uuid4()}", task_queue=worker.task_queue
        )
        result = await result_within(handle.result())
    assert result == "HI"

    async with httpx.AsyncClient() as http:
        body = (await http.get(f"http://{bind}/metrics")).text
    names = {m.name for m in text_string_to_metric_families(body)}
    assert any(n.startswith("temporal_workflow_completed") for n in names), sorted(names)[:20]
    assert any(n.startswith("temporal_activity_execution") for n in names)

    names = {s.name for s in spans.get_finished_spans()}
    assert {"StartWorkflow:TelemetryProbe", "RunActivity:telemetry_ping"} <= names
