"""Kubernetes objects of an agent, as the ``kubernetes`` platform applies them (pure functions).

Names and labels follow the Kubernetes recommended labels
(https://kubernetes.io/docs/concepts/overview/working-with-objects/common-labels/) plus
``fleetops.io/*`` labels; object names are RFC 1123 DNS labels (at most 63 characters).
"""

from __future__ import annotations

import math
from typing import Any

from activities.platform.base import PlatformError, url
from fleetops.agent_config import config_env
from fleetops.constants import is_agent_id
from fleetops.models import AgentSpec, Color, Replica
from fleetops.settings import KubernetesSettings

FIELD_MANAGER = "fleetops"
"""Server-side apply field manager (and ``app.kubernetes.io/managed-by``)."""
AGENT_LABEL = "fleetops.io/agent"
COLOR_LABEL = "fleetops.io/color"
VERSION_LABEL = "fleetops.io/version"
GENERATION_ANNOTATION = "fleetops.io/generation"
"""On both Services: bumped by every traffic switch."""
COLORS: tuple[Color, Color] = ("blue", "green")


def check_agent_id(agent_id: str) -> str:
    """``agent_id`` if it can name every object of the agent (``<agent>-preview`` is longest).

    Raises:
        PlatformError: not a DNS label, or longer than 55 characters.
    """
    if not is_agent_id(agent_id) or len(f"{agent_id}-preview") > 63:
        raise PlatformError(
            f"agent id {agent_id!r} cannot name Kubernetes objects: use a DNS label of at most "
            "55 characters, so that '<agent>-preview' fits in 63"
        )
    return agent_id


def labels(agent: str, color: Color | None = None) -> dict[str, str]:
    """Labels of the agent's objects (with ``fleetops.io/color`` for a colour's objects)."""
    found = {"app.kubernetes.io/name": agent, "app.kubernetes.io/managed-by": FIELD_MANAGER}
    return found | {AGENT_LABEL: agent} | ({COLOR_LABEL: color} if color else {})


def deployment_manifest(
    spec: AgentSpec, replicas: int, color: Color, settings: KubernetesSettings
) -> dict[str, Any]:
    """The Deployment ``<agent>-<color>``: container ``agent`` running ``spec.image``.

    ``spec.command``, if also given, becomes the container args. ``spec.config`` is the env
    ``FLEETOPS_AGENT_CONFIG`` (JSON). The rollout strategy surges one pod and keeps every ready
    pod until its replacement is ready (``maxSurge: 1, maxUnavailable: 0``). Resources become
    requests and limits in millicores (``m``) and MiB (``Mi``); the health check becomes
    identical HTTP readiness and liveness probes (period and timeout rounded up to whole
    seconds).

    Raises:
        PlatformError: ``spec.image`` is missing, or the agent id cannot name the objects.
    """
    agent, port = check_agent_id(spec.agent_id), settings.container_port
    health, res = spec.health, spec.resources
    if not spec.image:
        raise PlatformError(
            f"agent {agent!r}: the kubernetes platform needs `image`; `command` alone runs only "
            "on the local platform (given both, command becomes the container args)"
        )
    pod_labels = labels(agent, color) | {VERSION_LABEL: spec.version}
    env = spec.env | config_env(spec.config) | {"AGENT_ID": agent, "AGENT_VERSION": spec.version}
    env |= {"HOST": "0.0.0.0", "PORT": str(port)}
    probe = {
        "httpGet": {"path": health.path, "port": port},
        "periodSeconds": max(1, math.ceil(health.interval_seconds)),
        "timeoutSeconds": max(1, math.ceil(health.timeout_seconds)),
        "failureThreshold": health.failure_threshold,
    }
    container: dict[str, Any] = {
        "name": "agent",
        "image": spec.image,
        "ports": [{"name": "http", "containerPort": port, "protocol": "TCP"}],
        "env": [{"name": k, "value": v} for k, v in env.items()],
        "resources": {
            "requests": {
                "cpu": f"{res.cpu_request_millicores}m",
                "memory": f"{res.memory_request_mib}Mi",
            },
            "limits": {
                "cpu": f"{res.cpu_limit_millicores}m",
                "memory": f"{res.memory_limit_mib}Mi",
            },
        },
        "readinessProbe": probe,
        "livenessProbe": probe,
    }
    if spec.command:
        container["args"] = list(spec.command)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": f"{agent}-{color}",
            "namespace": settings.namespace,
            "labels": pod_labels,
        },
        "spec": {
            "replicas": replicas,
            # Surge, never fewer ready pods: a rollout restart (or a config change) replaces
            # pods one by one without losing capacity.
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
            },
            "selector": {"matchLabels": {AGENT_LABEL: agent, COLOR_LABEL: color}},
            "template": {"metadata": {"labels": pod_labels}, "spec": {"containers": [container]}},
        },
    }


def service_manifest(
    agent: str, name: str, color: Color, generation: int, settings: KubernetesSettings
) -> dict[str, Any]:
    """The ClusterIP Service ``name`` (``<agent>`` or ``<agent>-preview``) selecting ``color``:
    ``service_port`` -> ``container_port``."""
    port = {"name": "http", "port": settings.service_port, "protocol": "TCP"}
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": name,
            "namespace": settings.namespace,
            "labels": labels(agent),
            "annotations": {GENERATION_ANNOTATION: str(generation)},
        },
        "spec": {
            "type": "ClusterIP",
            "selector": {AGENT_LABEL: agent, COLOR_LABEL: color},
            "ports": [port | {"targetPort": settings.container_port}],
        },
    }


def pod_replica(pod: Any, index: int, color: Color, port: int) -> Replica:
    """A ``V1Pod`` as a :class:`Replica`: ``http://<podIP>:<port>`` ("" before it has an IP),
    running when its phase is Running and its Ready condition True."""
    status = pod.status
    ip = status.pod_ip if status else None
    ready = any(
        c.type == "Ready" and c.status == "True" for c in (status and status.conditions) or []
    )
    return Replica(
        index=index,
        endpoint=url(ip, port) if ip else "",
        running=bool(status and status.phase == "Running" and ready),
        color=color,
        version=(pod.metadata.labels or {}).get(VERSION_LABEL),
    )
