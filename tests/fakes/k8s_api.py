"""A small fake of the Kubernetes API server: exactly the subset ``KubernetesPlatform`` uses.

It speaks real HTTP + JSON on loopback, so the official ``kubernetes`` client runs unmodified
against it: ``apps/v1`` deployments and ``v1`` services (GET, list with ``labelSelector``, PATCH as
server-side apply or JSON merge / strategic merge patch, DELETE), ``v1`` secrets (the same) and
``v1`` pods (GET, list, DELETE); for node maintenance, ``v1`` nodes (GET, list, JSON merge PATCH),
pods of all namespaces (list with ``fieldSelector=spec.nodeName=<node>``) and the ``policy/v1``
eviction subresource (``POST .../pods/<name>/eviction``: 201, or 429 while a PodDisruptionBudget
added with :meth:`FakeKubernetes.add_pdb` still refuses; an evicted pod stays terminating for
``termination_delay`` seconds, and its Deployment replaces it on a schedulable node).
Errors are ``Status`` objects as the API conventions describe. A tiny controller stands
in for the Deployment and ReplicaSet controllers: ``controller_delay`` seconds after a write it
converges the pods (podIP 127.0.0.1) and ``observedGeneration``; each pod turns ready
``ready_delay`` seconds after it was created. State advances lazily on each request (no timers).

Every request is recorded (method, path, query, content type, parsed body, response status) so
tests can assert that server-side apply was used and derive the RBAC the platform needs.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import threading
import time
from dataclasses import dataclass
from typing import Any

import yaml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.fakes.loopback import LoopbackServer

_PATH = re.compile(
    r"^/(?:api/v1|apis/(?P<group>apps)/v1)/namespaces/(?P<ns>[^/]+)/"
    r"(?P<resource>deployments|services|pods|secrets)(?:/(?P<name>[^/]+))?$"
)
_EVICTION = re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/pods/(?P<name>[^/]+)/eviction$")
_LOG = re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/pods/(?P<name>[^/]+)/log$")
_CLUSTER = re.compile(r"^/api/v1/(?P<resource>nodes|pods)(?:/(?P<name>[^/]+))?$")
_KINDS = {
    "deployments": "Deployment",
    "services": "Service",
    "pods": "Pod",
    "nodes": "Node",
    "secrets": "Secret",
}
APPLY = "application/apply-patch+yaml"
MERGE_TYPES = ("application/merge-patch+json",)  # the platform never sends strategic merge

Key = tuple[str, str]  # (namespace, name)


@dataclass(frozen=True)
class RecordedRequest:
    """One request the fake served."""

    method: str
    path: str
    query: dict[str, str]
    content_type: str
    body: Any
    status: int
    group: str  # API group, "" for the core group
    resource: str  # "pods/eviction" for the eviction subresource
    name: str | None  # None for a collection
    namespace: str | None = None  # None for cluster-scoped or all-namespaces requests


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (``None`` deletes a key; lists are replaced)."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def status(code: int, reason: str, message: str) -> JSONResponse:
    """A ``Status`` object (Kubernetes API conventions) with HTTP status ``code``."""
    body: dict[str, Any] = {"kind": "Status", "apiVersion": "v1", "metadata": {}}
    body["status"] = "Failure"
    body |= {"message": message, "reason": reason, "code": code}
    return JSONResponse(body, status_code=code)


class FakeKubernetes:
    """The fake API server; use as a context manager or call :meth:`start` / :meth:`stop`.

    Args:
        controller_delay: seconds between a write and the simulated controllers acting on it.
        ready_delay: seconds between a pod's creation and its Ready condition.
    """

    def __init__(self, *, controller_delay: float = 0.05, ready_delay: float = 0.2) -> None:
        self.controller_delay = controller_delay
        self.ready_delay = ready_delay
        self.objects: dict[str, dict[Key, dict[str, Any]]] = {r: {} for r in _KINDS}
        # PodDisruptionBudgets: (namespace, label selector, evictions to refuse with 429 first)
        self.pdbs: list[tuple[str, dict[str, str], list[int]]] = []
        self.termination_delay = 0.0  # seconds an evicted pod stays terminating
        self.pod_logs: dict[str, str] = {}  # pod name -> its log (GET .../pods/<name>/log)
        self._gone_at: dict[Key, float] = {}  # terminating pods -> removal time
        self._placement = itertools.count()
        self.requests: list[RecordedRequest] = []
        self.lock = threading.RLock()
        self._failures: list[tuple[int, str | None, str | None]] = []
        self._due: dict[Key, float] = {}  # deployments awaiting the controller
        self._ready_at: dict[Key, float] = {}  # pods not ready yet
        self._owner: dict[Key, str] = {}  # pod -> deployment name
        self._seq = itertools.count(1)
        self._loopback = LoopbackServer("fake Kubernetes API")
        self.port = 0

    # --- test helpers ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """Base URL for ``kubernetes.client.Configuration(host=...)``."""
        return f"http://127.0.0.1:{self.port}"

    def fail_next(
        self, code: int, *, method: str | None = None, resource: str | None = None
    ) -> None:
        """Answer the next matching request with a ``Status`` of HTTP ``code``."""
        with self.lock:
            self._failures.append((code, method, resource))

    def get(self, resource: str, name: str, namespace: str) -> dict[str, Any] | None:
        """The stored object, after letting the controllers catch up."""
        with self.lock:
            self._tick()
            return self.objects[resource].get((namespace, name))

    def names(self, resource: str) -> list[str]:
        """Names of the stored objects of ``resource``, sorted."""
        with self.lock:
            self._tick()
            return sorted(name for _, name in self.objects[resource])

    def add_node(self, name: str) -> None:
        """Register a schedulable node; controller-made pods are placed on nodes round-robin."""
        with self.lock:
            meta = {"name": name, "uid": f"uid-{name}", "labels": {"kubernetes.io/hostname": name}}
            self.objects["nodes"][("", name)] = {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": meta | {"resourceVersion": str(next(self._seq))},
                "spec": {},
            }

    def add_pod(
        self,
        namespace: str,
        name: str,
        node: str,
        *,
        labels: dict[str, str] | None = None,
        owner_kind: str | None = None,
        mirror: bool = False,
    ) -> None:
        """Place a pod no Deployment owns (a DaemonSet's, a static mirror pod, a bare pod)."""
        meta: dict[str, Any] = {"name": name, "namespace": namespace, "uid": f"uid-{name}"}
        meta["labels"] = labels or {}
        if owner_kind:
            meta["ownerReferences"] = [
                {"apiVersion": "apps/v1", "kind": owner_kind, "name": f"{name}-owner"}
                | {"uid": f"uid-{name}-owner", "controller": True}
            ]
        if mirror:
            meta["annotations"] = {"kubernetes.io/config.mirror": "abc123"}
        with self.lock:
            self.objects["pods"][(namespace, name)] = {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": meta,
                "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}]},
                "status": {"phase": "Running", "podIP": "127.0.0.1"},
            }

    def add_pdb(self, namespace: str, selector: dict[str, str], *, refuse: int) -> None:
        """A PodDisruptionBudget over pods matching ``selector``: its next ``refuse`` evictions
        are answered 429 (the disruption is not allowed yet), then evictions are allowed."""
        with self.lock:
            self.pdbs.append((namespace, selector, [refuse]))

    def unschedulable(self, node: str) -> bool:
        """Whether ``node`` is cordoned."""
        with self.lock:
            return bool(self.objects["nodes"][("", node)]["spec"].get("unschedulable"))

    def pods_on(self, node: str) -> list[str]:
        """``namespace/name`` of the pods on ``node`` (terminating ones included), sorted."""
        with self.lock:
            self._tick()
            return sorted(
                f"{ns}/{n}"
                for (ns, n), p in self.objects["pods"].items()
                if p["spec"].get("nodeName") == node
            )

    # --- server ---------------------------------------------------------------------------------

    def start(self) -> FakeKubernetes:
        """Serve on a free loopback port in a background thread; returns self once listening."""
        app = Starlette(
            routes=[Route("/{path:path}", self._handle, methods=["GET", "PATCH", "DELETE", "POST"])]
        )
        self.port = self._loopback.serve(app)
        return self

    def stop(self) -> None:
        """Stop serving and join the server thread."""
        self._loopback.stop()

    def __enter__(self) -> FakeKubernetes:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def _handle(self, request: Request) -> Response:
        raw = await request.body()
        content_type = request.headers.get("content-type", "").split(";")[0].strip()
        # JSON is valid YAML, so one parser serves apply-patch+yaml and the JSON patch types.
        body = yaml.safe_load(raw) if raw else None
        query = dict(request.query_params)
        path = request.url.path
        match = _PATH.match(path)
        eviction, cluster, log = _EVICTION.match(path), _CLUSTER.match(path), _LOG.match(path)
        with self.lock:
            if log is not None:
                response = self._log(request.method, log["ns"], log["name"], query)
                group, resource, name, ns = "", "pods/log", log["name"], log["ns"]
            elif eviction is not None:
                response = self._evict(request.method, eviction["ns"], eviction["name"])
                group, resource, name, ns = "", "pods/eviction", eviction["name"], eviction["ns"]
            elif cluster is not None:
                response = self._cluster(request.method, cluster, query, content_type, body)
                group, resource, name, ns = "", cluster["resource"], cluster["name"], None
            else:
                response = self._dispatch(request.method, match, query, content_type, body)
                group = (match and match["group"]) or ""
                resource = match["resource"] if match else ""
                name = match["name"] if match else None
                ns = match["ns"] if match else None
            self.requests.append(
                RecordedRequest(
                    method=request.method,
                    path=path,
                    query=query,
                    content_type=content_type,
                    body=body,
                    status=response.status_code,
                    group=group,
                    resource=resource,
                    name=name,
                    namespace=ns,
                )
            )
        return response

    # --- nodes, pods across namespaces, evictions -------------------------------------------------

    def _injected(self, method: str, resource: str) -> JSONResponse | None:
        for i, (code, m, r) in enumerate(self._failures):
            if m in (None, method) and r in (None, resource):
                del self._failures[i]
                return status(code, "Injected", f"injected failure {code} for {method} {resource}")
        return None

    def _cluster(
        self, method: str, match: re.Match[str], query: dict[str, str], ctype: str, body: Any
    ) -> JSONResponse:
        resource, name = match["resource"], match["name"]
        if (failure := self._injected(method, resource)) is not None:
            return failure
        self._tick()
        if resource == "pods":
            if name is not None or method != "GET":
                return status(405, "MethodNotAllowed", "only listing pods of all namespaces")
            field_sel = dict(
                p.split("=", 1) for p in query.get("fieldSelector", "").split(",") if p
            )
            unknown = set(field_sel) - {"spec.nodeName"}
            if unknown:
                return status(400, "BadRequest", f"field label not supported: {sorted(unknown)}")
            node = field_sel.get("spec.nodeName")
            items = [
                p
                for _, p in sorted(self.objects["pods"].items())
                if node is None or p["spec"].get("nodeName") == node
            ]
            meta = {"resourceVersion": str(next(self._seq))}
            return JSONResponse(
                {"kind": "PodList", "apiVersion": "v1", "metadata": meta} | {"items": items}
            )
        nodes = self.objects["nodes"]
        if name is None:
            if method != "GET":
                return status(405, "MethodNotAllowed", f"{method} on nodes is not faked")
            items = [n for _, n in sorted(nodes.items())]
            return JSONResponse(
                {"kind": "NodeList", "apiVersion": "v1", "metadata": {}, "items": items}
            )
        node = nodes.get(("", name))
        if node is None:
            return status(404, "NotFound", f'nodes "{name}" not found')
        if method == "GET":
            return JSONResponse(node)
        if method == "PATCH" and ctype in MERGE_TYPES:
            node = merge_patch(node, body)
            node["metadata"]["resourceVersion"] = str(next(self._seq))
            nodes[("", name)] = node
            return JSONResponse(node)
        return status(415, "UnsupportedMediaType", f"{method} with {ctype!r} is not faked")

    def _log(self, method: str, ns: str, name: str, query: dict[str, str]) -> Response:
        """``GET .../pods/<name>/log``: ``pod_logs[name]`` as text/plain, its last ``tailLines``
        lines, then its first ``limitBytes`` bytes (the API server's order); 404 if no pod."""
        if method != "GET":
            return status(405, "MethodNotAllowed", "logs are read with GET")
        if (failure := self._injected(method, "pods/log")) is not None:
            return failure
        self._tick()
        if (ns, name) not in self.objects["pods"]:
            return status(404, "NotFound", f'pods "{name}" not found')
        lines = self.pod_logs.get(name, "").splitlines(keepends=True)
        if "tailLines" in query:
            lines = lines[-int(query["tailLines"]) :] if int(query["tailLines"]) else []
        data = "".join(lines).encode()
        if "limitBytes" in query:
            data = data[: int(query["limitBytes"])]
        return Response(data, media_type="text/plain")

    def _evict(self, method: str, ns: str, name: str) -> JSONResponse:
        """``POST .../pods/<name>/eviction``: 201 and the pod goes (terminating for
        ``termination_delay``); 429 while a matching PDB still refuses; 404 if no such pod."""
        if method != "POST":
            return status(405, "MethodNotAllowed", "evictions are created with POST")
        if (failure := self._injected(method, "pods/eviction")) is not None:
            return failure
        self._tick()
        pod = self.objects["pods"].get((ns, name))
        if pod is None:
            return status(404, "NotFound", f'pods "{name}" not found')
        labels = pod["metadata"].get("labels", {})
        for pdb_ns, selector, left in self.pdbs:
            if pdb_ns == ns and selector.items() <= labels.items() and left[0] > 0:
                left[0] -= 1
                return status(
                    429,
                    "TooManyRequests",
                    "Cannot evict pod as it would violate the pod's disruption budget.",
                )
        if not pod["metadata"].get("deletionTimestamp"):
            pod["metadata"]["deletionTimestamp"] = "2025-01-01T00:00:00Z"
            self._gone_at[(ns, name)] = time.monotonic() + self.termination_delay
            if owner := self._owner.get((ns, name)):
                self._due[(ns, owner)] = time.monotonic() + self.controller_delay
            self._tick()
        body = {"apiVersion": "policy/v1", "kind": "Eviction"}
        return JSONResponse(body | {"metadata": {"name": name, "namespace": ns}}, status_code=201)

    # --- API ------------------------------------------------------------------------------------

    def _dispatch(
        self, method: str, match: re.Match[str] | None, query: dict[str, str], ctype: str, body: Any
    ) -> JSONResponse:
        if match is None:
            return status(404, "NotFound", "the server could not find the requested resource")
        resource, ns, name = match["resource"], match["ns"], match["name"]
        for i, (code, m, r) in enumerate(self._failures):
            if m in (None, method) and r in (None, resource):
                del self._failures[i]
                return status(code, "Injected", f"injected failure {code} for {method} {resource}")
        self._tick()
        store, kind = self.objects[resource], _KINDS[resource]
        if name is None:
            if method != "GET":
                return status(405, "MethodNotAllowed", f"{method} on a collection is not faked")
            wanted = dict(p.split("=", 1) for p in query.get("labelSelector", "").split(",") if p)
            items = [
                o
                for (n, _), o in sorted(store.items())
                if n == ns and wanted.items() <= o["metadata"].get("labels", {}).items()
            ]
            meta = {"resourceVersion": str(next(self._seq))}
            return JSONResponse(
                {"kind": f"{kind}List", "apiVersion": "apps/v1" if match["group"] else "v1"}
                | {"metadata": meta, "items": items}
            )
        key, obj = (ns, name), store.get((ns, name))
        if method == "PATCH" and ctype == APPLY:
            if not query.get("fieldManager"):
                return status(
                    422, "Invalid", "PatchOptions.meta.k8s.io: fieldManager is required for apply"
                )
            merged = merge_patch(obj or {}, body)
            if resource == "secrets":
                # Server-side apply with one field manager: the keys it no longer sends are
                # removed (a merge patch would keep them).
                merged["data"] = dict(body.get("data") or {})
            new = self._write(resource, key, merged)
            return JSONResponse(new, status_code=200 if obj else 201)
        if obj is None:
            return status(404, "NotFound", f'{resource} "{name}" not found')
        if method == "GET":
            return JSONResponse(obj)
        if method == "PATCH" and ctype in MERGE_TYPES:
            return JSONResponse(self._write(resource, key, merge_patch(obj, body)))
        if method == "DELETE":
            del store[key]
            if resource == "pods" and (owner := self._owner.pop(key, None)):
                self._due[(ns, owner)] = time.monotonic() + self.controller_delay
            if resource == "deployments":
                self._due[key] = time.monotonic()  # the garbage collector removes its pods
                self._tick()
                ok = {"kind": "Status", "apiVersion": "v1", "status": "Success", "metadata": {}}
                return JSONResponse(ok | {"details": {"name": name, "kind": resource}})
            return JSONResponse(obj)
        return status(415, "UnsupportedMediaType", f"{method} with {ctype!r} is not faked")

    def _write(self, resource: str, key: Key, obj: dict[str, Any]) -> dict[str, Any]:
        """Store ``obj`` with server-set metadata; a Deployment spec change bumps generation."""
        old = self.objects[resource].get(key)
        meta = obj.setdefault("metadata", {})
        meta |= {"namespace": key[0], "name": key[1], "resourceVersion": str(next(self._seq))}
        meta.setdefault("uid", f"uid-{next(self._seq)}")
        meta.setdefault("creationTimestamp", "2025-01-01T00:00:00Z")
        if resource == "deployments":
            changed = old is None or old.get("spec") != obj.get("spec")
            meta["generation"] = meta.get("generation", 0) + (1 if changed else 0)
            obj.setdefault("status", {})
            self._due[key] = time.monotonic() + self.controller_delay
        if resource == "services":
            obj["spec"].setdefault("clusterIP", f"10.96.0.{len(self.objects['services']) + 10}")
        self.objects[resource][key] = obj
        return obj

    # --- controllers ----------------------------------------------------------------------------

    def _tick(self) -> None:
        now = time.monotonic()
        for key in [k for k, at in self._gone_at.items() if at <= now]:
            del self._gone_at[key]
            self.objects["pods"].pop(key, None)
            self._ready_at.pop(key, None)
            if owner := self._owner.pop(key, None):
                self._due[(key[0], owner)] = now + self.controller_delay
        for key in [k for k, due in self._due.items() if due <= now]:
            del self._due[key]
            self._reconcile(key)
        pods = self.objects["pods"]
        for key in [k for k, at in self._ready_at.items() if at <= now]:
            del self._ready_at[key]
            if key in pods:
                pods[key]["status"] = {
                    "phase": "Running",
                    "podIP": "127.0.0.1",
                    "conditions": [{"type": "Ready", "status": "True"}],
                }
        for key, dep in self.objects["deployments"].items():
            if "observedGeneration" in dep["status"]:
                owned = [pods[k] for k, o in self._owner.items() if (k[0], o) == key and k in pods]
                ready = sum(p["status"]["phase"] == "Running" for p in owned)
                counts = {"replicas": len(owned), "updatedReplicas": len(owned)}
                dep["status"] |= counts | {"readyReplicas": ready, "availableReplicas": ready}

    def _place(self) -> dict[str, str]:
        """``{"nodeName": ...}``: the next schedulable node, round-robin; ``{}`` without nodes."""
        schedulable = sorted(
            n
            for (_, n), node in self.objects["nodes"].items()
            if not node["spec"].get("unschedulable")
        )
        return (
            {"nodeName": schedulable[next(self._placement) % len(schedulable)]}
            if schedulable
            else {}
        )

    def _pod_hash(self, key: Key) -> str | None:
        pod = self.objects["pods"].get(key)
        return pod["metadata"]["labels"].get("pod-template-hash") if pod else None

    def _reconcile(self, key: Key) -> None:
        """Deployment + ReplicaSet controllers: pods of the current template, ``replicas`` many."""
        ns, name = key
        dep = self.objects["deployments"].get(key)
        spec = dep["spec"] if dep else {}
        template, want = spec.get("template", {}), spec.get("replicas", 1) if dep else 0
        digest = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]
        owned = sorted(
            k for k, o in self._owner.items() if (k[0], o) == key and k not in self._gone_at
        )  # a terminating pod is replaced at once (the ReplicaSet does not count it)
        current = [k for k in owned if self._pod_hash(k) == digest][:want]
        for k in owned:
            if k not in current:  # old template or surplus: delete (no surge, no grace period)
                self.objects["pods"].pop(k, None)
                self._owner.pop(k, None)
        for _ in range(want - len(current)):
            pod_name = f"{name}-{digest}-{next(self._seq):05d}"
            labels = {**template.get("metadata", {}).get("labels", {}), "pod-template-hash": digest}
            meta = {"name": pod_name, "namespace": ns, "labels": labels, "uid": f"uid-{pod_name}"}
            pod = {"apiVersion": "v1", "kind": "Pod", "metadata": meta}
            pod["spec"] = dict(template["spec"]) | self._place()
            pod["status"] = {"phase": "Pending", "podIP": "127.0.0.1"}
            self.objects["pods"][(ns, pod_name)] = pod
            self._owner[(ns, pod_name)] = name
            self._ready_at[(ns, pod_name)] = time.monotonic() + self.ready_delay
        if dep is not None:
            dep["status"]["observedGeneration"] = dep["metadata"]["generation"]
