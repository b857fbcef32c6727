"""Every ``ApplicationError.type`` FleetOps raises, named once; clients match on these names.

Activities and workflows raise ``ApplicationError(message, type=<one of these>)``; the CLI, the
typed starters and tests compare ``err.type`` with the constant, never with a literal. Whether an
error is retried is set where it is raised (``non_retryable``), following DESIGN.md: connection
errors, timeouts, 5xx and 429 are retryable, other 4xx and validation errors are not.
"""

from __future__ import annotations

INVALID_INPUT = "InvalidInput"
"""A payload or request that does not validate (non-retryable); the message names the field."""
INVALID_TRANSITION = "InvalidTransition"
"""An operator action the agent's state does not allow (update ``transition``)."""
DEPLOYMENT_REFUSED = "DeploymentRefused"
"""A deployment that cannot start: one in progress, the agent not serving, the version already
running, or a ``BlueGreenDeployment`` not started by its agent."""
APPROVAL_REFUSED = "ApprovalRefused"
"""A decision the approval gate refuses (nothing pending, not allowed, badly signed)."""
QUOTA_EXCEEDED = "QuotaExceeded"
"""More replicas than ``max_replicas_per_agent`` (non-retryable)."""
ANALYSIS_CONFIG_ERROR = "AnalysisConfigError"
"""An analysis that cannot be measured as configured (bad query, 4xx from Prometheus)."""
PLATFORM_ERROR = "PlatformError"
"""The platform refused a request for good (e.g. no free port)."""
KUBERNETES_UNAVAILABLE = "KubernetesUnavailable"
"""The Kubernetes API is unreachable or answered 429/5xx (retryable)."""
ROLLOUT_TIMEOUT = "RolloutTimeout"
"""A Deployment exceeded its progress deadline."""
REPLICAS_NOT_READY = "ReplicasNotReady"
"""Replicas did not become healthy in time (``wait_healthy``)."""
WEBHOOK_MISCONFIGURED = "WebhookMisconfigured"
"""The notification webhook URL is invalid (non-retryable)."""
WEBHOOK_UNAVAILABLE = "WebhookUnavailable"
"""The webhook timed out, was unreachable or answered 5xx (retryable)."""
WEBHOOK_RATE_LIMITED = "WebhookRateLimited"
"""The webhook answered 429 (retryable after Retry-After)."""
WEBHOOK_REJECTED = "WebhookRejected"
"""The webhook answered another 4xx (non-retryable)."""
AGENT_NOT_FOUND = "AgentNotFound"
"""No open ``AgentLifecycle`` for the agent an activity steers (non-retryable)."""
MAINTENANCE_REFUSED = "MaintenanceRefused"
"""A maintenance plan that cannot run as given: its id does not match its name, a window that
opens too far ahead (non-retryable)."""
SECRET_NOT_FOUND = "SecretNotFound"
"""A secret path, version or key does not exist (Vault 404; non-retryable). The message names
the path (and the key and env variable when resolving an agent's ``secrets``)."""
SECRET_FORBIDDEN = "SecretForbidden"
"""The secret store refused the credentials or the policy (Vault 401/403; non-retryable)."""
SECRET_CONFLICT = "SecretConflict"
"""A check-and-set write lost: the secret's current version is not the expected one (Vault 400
"check-and-set parameter did not match"; non-retryable: re-read and decide again)."""
SECRET_PINNED = "SecretPinned"
"""Destroying a version kept undeletable until a rotation is confirmed (non-retryable)."""
SECRET_STORE_UNAVAILABLE = "SecretStoreUnavailable"
"""The secret store is unreachable, sealed (Vault 503), rate limiting (429) or failing (5xx);
retryable."""
SECRET_STORE_MISCONFIGURED = "SecretStoreMisconfigured"
"""The secret store cannot be used as configured: bad local key, unreadable store file, missing
Vault token or Kubernetes JWT, another 4xx (non-retryable)."""
DRAIN_TIMEOUT = "DrainTimeout"
"""A node drain did not finish before its deadline: evictions still refused by a
PodDisruptionBudget (HTTP 429) or evicted pods still terminating (non-retryable)."""
NOT_SUPPORTED = "NotSupported"
"""An operation this platform does not have (e.g. node drains on the local platform)."""
OPERATION_REFUSED = "OperationRefused"
"""An agent operation (``restart``, ``configure``) the agent's state does not allow now."""
OPERATION_FAILED = "OperationFailed"
"""An agent operation that was accepted but could not be completed (the agent was restored)."""
LLM_UNAVAILABLE = "LlmUnavailable"
"""The LLM endpoint timed out, was unreachable or answered 408/5xx (retryable)."""
LLM_RATE_LIMITED = "LlmRateLimited"
"""The LLM endpoint answered 429 (retryable after its Retry-After)."""
LLM_REJECTED = "LlmRejected"
"""The LLM endpoint answered another 4xx: bad key, unknown model, request too large
(non-retryable; the incident goes on with the rules)."""
INCIDENT_REFUSED = "IncidentRefused"
"""An ``ack``, ``resolve`` or ``set_severity`` the incident's state does not allow (already
acknowledged, already resolved, closing); refused by the update's validator."""
