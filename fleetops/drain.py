"""Payloads of the Kubernetes node drain activities (cordon, drain, uncordon, agent_nodes).

The drain follows ``kubectl drain``: cordon the node, evict every pod through the Eviction API
(``policy/v1``), skip DaemonSet-owned and mirror (static) pods, retry evictions a
PodDisruptionBudget refuses (HTTP 429) with backoff until a deadline, then wait until the
evicted pods are gone. See https://kubernetes.io/docs/tasks/administer-cluster/safely-drain-node/.
"""

from __future__ import annotations

from pydantic import Field

from fleetops.limits import MAX_DURATION_SECONDS, Seconds
from fleetops.models import FrozenModel

NODE_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$"
"""A Kubernetes node name (a DNS subdomain, at most 253 characters)."""


class DrainRequest(FrozenModel):
    """Evict every evictable pod from ``node`` (the node should be cordoned first)."""

    node: str = Field(pattern=NODE_NAME_PATTERN, description="Node name.")
    timeout_seconds: Seconds = Field(
        600.0,
        gt=0,
        le=MAX_DURATION_SECONDS,
        description="Seconds to keep retrying refused evictions and waiting for pods to go.",
    )
    retry_interval_seconds: Seconds = Field(
        5.0, gt=0, le=300, description="First backoff after a 429 (doubles, at most 60 s)."
    )
    grace_period_seconds: int | None = Field(
        None, ge=0, le=3600, description="Pod termination grace; None = each pod's own."
    )


class DrainResult(FrozenModel):
    """What a drain did."""

    node: str
    evicted: list[str] = Field(default_factory=list, description="namespace/name of evicted pods.")
    skipped: list[str] = Field(
        default_factory=list, description="namespace/name of DaemonSet-owned and mirror pods."
    )
    retries: int = Field(0, ge=0, description="Evictions refused with 429 and retried.")
    seconds: float = Field(0.0, ge=0, description="Wall time of the drain, seconds.")
