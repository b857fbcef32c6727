"""Kubernetes node maintenance: cordon, drain through the Eviction API, uncordon.

The drain follows ``kubectl drain`` (https://kubernetes.io/docs/tasks/administer-cluster/safely-drain-node/
and https://kubernetes.io/docs/concepts/scheduling-eviction/api-eviction/):

- cordon: JSON merge patch ``spec.unschedulable=true`` on the Node (idempotent);
- list every pod on the node (all namespaces, ``fieldSelector=spec.nodeName=<node>``); skip
  mirror pods (annotation ``kubernetes.io/config.mirror``: the kubelet owns them) and pods owned
  by a DaemonSet (its controller ignores ``unschedulable`` and would recreate them at once);
- evict each through ``POST .../pods/<name>/eviction`` (``policy/v1`` Eviction). A 429 means a
  PodDisruptionBudget does not allow the disruption now: retry with backoff (doubling from
  ``retry_interval_seconds``, at most 60 s, or the server's ``Retry-After``) until the deadline,
  heartbeating; a 404 means the pod is already gone;
- wait until every evicted pod is gone (its controller recreates it elsewhere), heartbeating;
- uncordon: ``spec.unschedulable=false``.

Every step is idempotent, so Temporal may retry any of them. Errors are mapped like
:mod:`activities.platform.kubernetes` (transport, 409, 5xx retryable; other 4xx not).
RBAC: the ClusterRole in ``infra/k8s/worker-rbac.yaml`` (nodes patch, pods list, pods/eviction
create; checked by ``tests/test_k8s_rbac.py``).
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.platform._k8s_manifests import AGENT_LABEL, check_agent_id
from activities.platform.base import PlatformError
from activities.platform.kubernetes import MERGE_PATCH, REQUEST_TIMEOUT, _api_error
from fleetops.drain import NODE_NAME_PATTERN, DrainRequest, DrainResult
from fleetops.errors import (
    DRAIN_TIMEOUT,
    INVALID_INPUT,
    KUBERNETES_UNAVAILABLE,
    NOT_SUPPORTED,
    PLATFORM_ERROR,
)

MIRROR_ANNOTATION = "kubernetes.io/config.mirror"
"""Set on mirror pods (static pods the kubelet runs); they cannot be evicted."""
MAX_BACKOFF_SECONDS = 60.0
"""Longest wait between two attempts to evict a pod a PodDisruptionBudget protects."""
GONE_POLL_SECONDS = 1.0
"""Seconds between checks that evicted pods are gone."""


def _name(pod: Any) -> str:
    return f"{pod.metadata.namespace}/{pod.metadata.name}"


def _skipped(pod: Any) -> bool:
    """Mirror pods and DaemonSet-owned pods are left on the node (as ``kubectl drain
    --ignore-daemonsets`` does)."""
    meta = pod.metadata
    if MIRROR_ANNOTATION in (meta.annotations or {}):
        return True
    return any(ref.kind == "DaemonSet" for ref in meta.owner_references or [])


def _beat(detail: str) -> None:
    if activity.in_activity():
        activity.heartbeat(detail)


def _check_node(name: str) -> str:
    if not isinstance(name, str) or not re.match(NODE_NAME_PATTERN, name):
        raise ApplicationError(
            f"node: {name!r} is not a Kubernetes node name (a DNS subdomain)",
            {"field": "node"},
            type=INVALID_INPUT,
            non_retryable=True,
        )
    return name


def _mapped(what: str, e: ApiException) -> Exception:
    """As :func:`activities.platform.kubernetes._api_error`, with the non-retryable cases as a
    non-retryable ``ApplicationError`` of type ``PlatformError`` (these activities are called
    directly, not through the platform's activity wrapper)."""
    err = _api_error(what, e)
    if isinstance(err, PlatformError):
        return ApplicationError(str(err), type=PLATFORM_ERROR, non_retryable=True)
    return err


class NodeDrain:
    """Cordon, drain and uncordon nodes, and find the nodes an agent runs on.

    Args:
        api_client: a configured client (the one :class:`KubernetesPlatform` uses), or None on
            the local platform: then ``agent_nodes`` answers ``[]`` and the rest raise
            ``NotSupported``.
        namespace: the agents' namespace.
    """

    def __init__(self, api_client: client.ApiClient | None, namespace: str) -> None:
        self._core = client.CoreV1Api(api_client) if api_client is not None else None
        self._ns = namespace

    # --- activities ---------------------------------------------------------------------------

    @activity.defn(name="agent_nodes")
    async def agent_nodes(self, agent_id: str) -> list[str]:
        """Names of the nodes that host the agent's pods (both colours), sorted.

        Returns:
            Node names; ``[]`` on the local platform or when no pod is scheduled yet.

        Raises:
            ApplicationError: ``InvalidInput`` for a bad agent id; retryable
                ``KubernetesUnavailable``; non-retryable ``PlatformError`` for other 4xx.
        """
        if self._core is None:
            return []
        try:
            agent = check_agent_id(agent_id)
        except PlatformError as e:
            raise ApplicationError(str(e), type=INVALID_INPUT, non_retryable=True) from e
        pods = await self._api(
            f"list pods of {agent}",
            self._core.list_namespaced_pod,
            self._ns,
            label_selector=f"{AGENT_LABEL}={agent}",
        )
        return sorted({p.spec.node_name for p in pods.items if p.spec and p.spec.node_name})

    @activity.defn(name="cordon_node")
    async def cordon_node(self, name: str) -> None:
        """Mark node ``name`` unschedulable (idempotent).

        Raises:
            ApplicationError: ``InvalidInput`` (bad name), ``NotSupported`` (local platform),
                ``PlatformError`` (404: no such node; other 4xx), retryable
                ``KubernetesUnavailable``.
        """
        await self._set_unschedulable(name, True)

    @activity.defn(name="uncordon_node")
    async def uncordon_node(self, name: str) -> None:
        """Mark node ``name`` schedulable again (idempotent). Errors as :meth:`cordon_node`."""
        await self._set_unschedulable(name, False)

    @activity.defn(name="drain_node")
    async def drain_node(self, req: DrainRequest) -> DrainResult:
        """Evict every evictable pod from ``req.node`` and wait until they are gone.

        Cordon the node first (:meth:`cordon_node`), or the scheduler may place pods back.

        Returns:
            The evicted and skipped pods (``namespace/name``), how many 429s were retried, and
            the wall time in seconds.

        Raises:
            ApplicationError: non-retryable ``DrainTimeout`` when pods are still protected by a
                PodDisruptionBudget or still terminating at ``req.timeout_seconds``;
                ``NotSupported``, ``PlatformError`` and ``KubernetesUnavailable`` as above.
        """
        core = self._need_core()
        node = _check_node(req.node)
        started = time.monotonic()
        deadline = started + req.timeout_seconds
        pods = await self._pods_on(core, node)
        skipped = sorted(_name(p) for p in pods if _skipped(p))
        todo = {_name(p): p for p in pods if not _skipped(p)}
        evicted: list[str] = []
        retries = 0
        delay = req.retry_interval_seconds
        while todo:
            refused: dict[str, str] = {}
            for key, pod in sorted(todo.items()):
                if pod.metadata.deletion_timestamp:  # already terminating: only wait for it
                    evicted.append(key)
                    continue
                answer = await self._evict(core, pod, req.grace_period_seconds)
                if answer is None:
                    evicted.append(key)
                else:
                    refused[key] = answer
            todo = {k: v for k, v in todo.items() if k in refused}
            if not todo:
                break
            retries += len(todo)
            left = deadline - time.monotonic()
            if left <= 0:
                raise ApplicationError(
                    f"drain of {node}: evictions still refused after {req.timeout_seconds:.0f} s "
                    f"({'; '.join(f'{k}: {v}' for k, v in sorted(refused.items()))[:500]}); "
                    "check the PodDisruptionBudgets of these pods",
                    {"node": node, "blocked": sorted(refused)},
                    type=DRAIN_TIMEOUT,
                    non_retryable=True,
                )
            _beat(f"{len(todo)} evictions refused by a PodDisruptionBudget")
            await asyncio.sleep(min(delay, left))
            delay = min(delay * 2, MAX_BACKOFF_SECONDS)
        await self._wait_gone(core, node, set(evicted), deadline, req.timeout_seconds)
        return DrainResult(
            node=node,
            evicted=sorted(evicted),
            skipped=skipped,
            retries=retries,
            seconds=round(time.monotonic() - started, 3),
        )

    # --- helpers ------------------------------------------------------------------------------

    def _need_core(self) -> client.CoreV1Api:
        if self._core is None:
            raise ApplicationError(
                "nodes exist only on the kubernetes platform (FLEETOPS_PLATFORM__KIND=kubernetes);"
                " on the local platform use the agent's rolling restart",
                type=NOT_SUPPORTED,
                non_retryable=True,
            )
        return self._core

    async def _set_unschedulable(self, name: str, value: bool) -> None:
        core = self._need_core()
        node = _check_node(name)
        await self._api(
            f"patch node {node}",
            core.patch_node,
            node,
            {"spec": {"unschedulable": value}},
            _content_type=MERGE_PATCH,
        )

    async def _pods_on(self, core: client.CoreV1Api, node: str) -> list[Any]:
        found = await self._api(
            f"list pods on {node}",
            core.list_pod_for_all_namespaces,
            field_selector=f"spec.nodeName={node}",
        )
        return list(found.items)

    async def _evict(self, core: client.CoreV1Api, pod: Any, grace: int | None) -> str | None:
        """Evict ``pod``; None if evicted (or already gone), else why it was refused (429)."""
        meta = pod.metadata
        body = client.V1Eviction(
            metadata=client.V1ObjectMeta(name=meta.name, namespace=meta.namespace),
            delete_options=client.V1DeleteOptions(grace_period_seconds=grace)
            if grace is not None
            else None,
        )
        try:
            await asyncio.to_thread(
                core.create_namespaced_pod_eviction,
                meta.name,
                meta.namespace,
                body,
                _request_timeout=REQUEST_TIMEOUT,
            )
        except ApiException as e:
            if e.status == 404:
                return None
            if e.status == 429:
                after = str((e.headers or {}).get("Retry-After", ""))
                return (
                    "429 "
                    + str(e.reason or "Too Many Requests")
                    + (f" (retry after {after} s)" if after.isdigit() else "")
                )
            raise _mapped(f"evict pod {_name(pod)}", e) from e
        except (urllib3.exceptions.HTTPError, OSError) as e:
            raise ApplicationError(
                f"evict pod {_name(pod)}: Kubernetes API unreachable: {e}",
                type=KUBERNETES_UNAVAILABLE,
            ) from e
        return None

    async def _wait_gone(
        self, core: client.CoreV1Api, node: str, evicted: set[str], deadline: float, total: float
    ) -> None:
        while True:
            left = {_name(p) for p in await self._pods_on(core, node)} & evicted
            if not left:
                return
            if time.monotonic() >= deadline:
                raise ApplicationError(
                    f"drain of {node}: evicted pods still terminating after {total:.0f} s: "
                    f"{', '.join(sorted(left))[:400]}",
                    {"node": node, "terminating": sorted(left)},
                    type=DRAIN_TIMEOUT,
                    non_retryable=True,
                )
            _beat(f"{len(left)} evicted pods still terminating")
            await asyncio.sleep(GONE_POLL_SECONDS)

    async def _api(self, what: str, fn: Any, *args: Any, **kw: Any) -> Any:
        """Run the blocking call in a thread; a 404 (no such node) and other 4xx are
        non-retryable ``PlatformError``; transport errors, 409, 429 and 5xx retryable."""
        try:
            return await asyncio.to_thread(fn, *args, _request_timeout=REQUEST_TIMEOUT, **kw)
        except ApiException as e:
            if e.status == 404:
                raise ApplicationError(
                    f"{what}: HTTP 404: not found; check the node name (kubectl get nodes)",
                    type=PLATFORM_ERROR,
                    non_retryable=True,
                ) from e
            raise _mapped(what, e) from e
        except (urllib3.exceptions.HTTPError, OSError) as e:
            raise ApplicationError(
                f"{what}: Kubernetes API unreachable: {e}", type=KUBERNETES_UNAVAILABLE
            ) from e
