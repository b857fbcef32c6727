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
LLM_UNAVAILABLE = "LlmUnavailable"
"""The LLM endpoint timed out, was unreachable or answered 408/5xx (retryable)."""
LLM_RATE_LIMITED = "LlmRateLimited"
"""The LLM endpoint answered 429 (retryable after its Retry-After)."""
LLM_REJECTED = "LlmRejected"
"""The LLM endpoint answered another 4xx: bad key, unknown model, request too large
(non-retryable; the incident goes on with the rules)."""
