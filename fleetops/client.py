"""The one place Temporal clients are made: data converter, encryption codec, TLS, tracing."""

from __future__ import annotations

from temporalio.client import Client, TLSConfig

from fleetops.codec import codec_from_settings
from fleetops.converter import data_converter
from fleetops.settings import Settings
from fleetops.telemetry import metrics_runtime, tracing_interceptors


def _tls(settings: Settings) -> TLSConfig | bool:
    t = settings.temporal
    if t.tls_cert_path is None and t.tls_ca_path is None:
        return t.api_key is not None
    return TLSConfig(
        server_root_ca_cert=t.tls_ca_path.read_bytes() if t.tls_ca_path else None,
        client_cert=t.tls_cert_path.read_bytes() if t.tls_cert_path else None,
        client_private_key=t.tls_key_path.read_bytes() if t.tls_key_path else None,
    )


async def connect(
    settings: Settings, *, address: str | None = None, with_metrics: bool = False
) -> Client:
    """Connect to Temporal the FleetOps way.

    Every client gets the FleetOps pydantic data converter, the encryption codec when
    ``encryption.enabled``, the tracing interceptor per ``telemetry.tracing_exporter``, and TLS or
    an API key from ``temporal.*``.

    Args:
        settings: FleetOps settings.
        address: ``host:port`` overriding ``temporal.address``.
        with_metrics: serve SDK metrics on ``telemetry.metrics_bind_address`` (workers only).

    Returns:
        A connected client.

    Raises:
        RuntimeError: the server cannot be reached (message from the SDK).
        ValueError: the encryption settings are unusable (bad key).
    """
    t = settings.temporal
    return await Client.connect(
        address or t.address,
        namespace=t.namespace,
        data_converter=data_converter(codec_from_settings(settings.encryption)),
        interceptors=tracing_interceptors(settings.telemetry),
        tls=_tls(settings),
        api_key=t.api_key.get_secret_value() if t.api_key else None,
        runtime=metrics_runtime(settings.telemetry.metrics_bind_address) if with_metrics else None,
    )
