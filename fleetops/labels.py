"""Agent labels: Kubernetes label syntax, bounded (``AgentSpec.labels``, plan selectors).

Source: https://kubernetes.io/docs/concepts/overview/working-with-objects/labels/#syntax-and-character-set
"""

from __future__ import annotations

MAX_LABELS = 20
"""Most labels on an agent, and most entries in a selector."""
LABEL_KEY_PATTERN = (
    r"^([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
"""A label key: an optional DNS-subdomain prefix and ``/``, then a name (at most 63 characters)."""
LABEL_VALUE_PATTERN = r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$"
"""A label value (at most 63 characters, may be empty)."""


def label_terms(labels: dict[str, str]) -> list[str]:
    """``k=v`` strings of ``labels``, sorted: the values of the ``FleetOpsLabels`` attribute."""
    return sorted(f"{k}={v}" for k, v in labels.items())
