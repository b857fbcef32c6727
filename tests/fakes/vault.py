"""A small fake of Vault's HTTP API: exactly the subset ``VaultStore`` uses, over loopback.

Real HTTP + JSON, so hvac runs unmodified against it. KV v2 on one mount (``data``,
``metadata``, ``delete``, ``undelete``, ``destroy``) with Vault's semantics: versions from 1,
check-and-set (``options.cas``; 0 = must not exist), ``max_versions`` (default 10, the oldest
dropped), soft delete, custom metadata. Auth: ``token/lookup-self``, ``token/renew-self`` and a
Kubernetes auth ``login`` that accepts one JWT per role and issues a token. Errors carry Vault's
body ``{"errors": [...]}``: 400 (cas mismatch: "check-and-set parameter did not match the current
version"), 403 "permission denied" (unknown or expired token, or a path :meth:`deny` covers),
404 (``{"errors": []}``; a deleted version also carries its metadata), 503 "Vault is sealed"
while :attr:`sealed`. Sources: https://developer.hashicorp.com/vault/api-docs/secret/kv/kv-v2,
https://developer.hashicorp.com/vault/api-docs/auth/token,
https://developer.hashicorp.com/vault/api-docs/auth/kubernetes.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.fakes.loopback import LoopbackServer

DENIED = "1 error occurred:\n\t* permission denied\n\n"
CAS_MISMATCH = "check-and-set parameter did not match the current version"


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def errors(code: int, *messages: str, data: Any = None) -> JSONResponse:
    """Vault's error body ``{"errors": [...]}`` (plus ``data`` for a deleted version)."""
    body: dict[str, Any] = {"errors": list(messages)}
    if data is not None:
        body = {"data": data}
    return JSONResponse(body, status_code=code)


@dataclass
class Token:
    """A token the fake accepts."""

    ttl: int
    renewable: bool
    expires_at: float | None
    policies: list[str] = field(default_factory=lambda: ["default"])


@dataclass
class Secret:
    """One KV v2 secret: versions (``None`` data once destroyed) and metadata."""

    versions: dict[int, dict[str, Any]] = field(default_factory=dict)
    current: int = 0
    custom: dict[str, str] = field(default_factory=dict)
    max_versions: int = 0
    cas_required: bool = False
    delete_version_after: str = "0s"


class FakeVault:
    """The fake server; a context manager, or :meth:`start` / :meth:`stop`.

    Args:
        mount: the KV v2 mount point.
        root_token: a token that never expires.
        namespace: when set, every request must send ``X-Vault-Namespace`` with it.
    """

    def __init__(
        self, *, mount: str = "secret", root_token: str = "root", namespace: str | None = None
    ) -> None:
        self.mount, self.namespace = mount, namespace
        self.tokens: dict[str, Token] = {root_token: Token(0, False, None, ["root"])}
        self.k8s_roles: dict[str, str] = {}  # role -> the JWT it accepts
        self.secrets: dict[str, Secret] = {}
        self.sealed = False
        self.denied: list[str] = []
        self.requests: list[tuple[str, str, int]] = []  # method, path, status
        self.lock = threading.RLock()
        self._failures: list[tuple[int, str | None]] = []
        self._loopback = LoopbackServer("fake Vault")
        self.port = 0

    # --- test helpers ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """Base URL for ``hvac.Client(url=...)``."""
        return f"http://127.0.0.1:{self.port}"

    def add_token(self, token: str, *, ttl: int = 3600, renewable: bool = True) -> None:
        """Accept ``token`` for ``ttl`` seconds."""
        with self.lock:
            self.tokens[token] = Token(ttl, renewable, time.monotonic() + ttl if ttl else None)

    def deny(self, prefix: str) -> None:
        """Answer 403 permission denied to any KV request on a path starting with ``prefix``."""
        with self.lock:
            self.denied.append(prefix)

    def fail_next(self, code: int, *, path_contains: str | None = None) -> None:
        """Answer the next (matching) request with HTTP ``code`` and a Vault error body."""
        with self.lock:
            self._failures.append((code, path_contains))

    def count(self, method: str, contains: str) -> int:
        """How many ``method`` requests on a path containing ``contains`` succeeded."""
        return sum(1 for m, p, s in self.requests if m == method and contains in p and s < 400)

    def start(self) -> FakeVault:
        """Serve on a free loopback port in a background thread; returns self once listening."""
        app = Starlette(
            routes=[Route("/v1/{path:path}", self._handle, methods=["GET", "POST", "PUT"])]
        )
        self.port = self._loopback.serve(app)
        return self

    def stop(self) -> None:
        """Stop serving and join the server thread."""
        self._loopback.stop()

    def __enter__(self) -> FakeVault:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- dispatch -------------------------------------------------------------------------------

    async def _handle(self, request: Request) -> Response:
        raw = await request.body()
        body = json.loads(raw) if raw else {}
        path = request.path_params["path"]
        with self.lock:
            response = self._dispatch(request, path, body)
            self.requests.append((request.method, path, response.status_code))
        return response

    def _dispatch(self, request: Request, path: str, body: dict[str, Any]) -> Response:
        for i, (code, part) in enumerate(self._failures):
            if part is None or part in path:
                del self._failures[i]
                return errors(code, f"injected failure {code}")
        if self.sealed:
            return errors(503, "Vault is sealed")
        if self.namespace and request.headers.get("X-Vault-Namespace") != self.namespace:
            return errors(403, DENIED)  # the token lives in another namespace
        if path.startswith("auth/") and path.endswith("/login") and request.method != "GET":
            return self._k8s_login(body)
        token = self.tokens.get(request.headers.get("X-Vault-Token", ""))
        if token is None or (token.expires_at is not None and time.monotonic() > token.expires_at):
            return errors(403, DENIED)
        if path == "auth/token/lookup-self":
            return self._lookup(token)
        if path == "auth/token/renew-self":
            return self._renew(request.headers["X-Vault-Token"], token)
        mount, _, rest = path.partition("/")
        op, _, name = rest.partition("/")
        if mount != self.mount or not name:
            return errors(404, f"no handler for route {path!r}")
        if any(name.startswith(p) for p in self.denied):
            return errors(403, DENIED)
        handler = getattr(self, f"_{op}_{request.method.lower()}", None)
        if handler is None and request.method == "PUT":
            handler = getattr(self, f"_{op}_post", None)
        if handler is None:
            return errors(405, f"unsupported operation {request.method} {op}")
        return handler(name, body, request)  # type: ignore[no-any-return]

    # --- auth -----------------------------------------------------------------------------------

    def _k8s_login(self, body: dict[str, Any]) -> Response:
        role, jwt = body.get("role"), body.get("jwt")
        if role not in self.k8s_roles or self.k8s_roles[role] != jwt:
            return errors(403, DENIED)
        issued = f"s.{secrets.token_hex(8)}"
        self.add_token(issued, ttl=3600, renewable=True)
        return JSONResponse({"auth": self._auth(issued, self.tokens[issued])})

    @staticmethod
    def _auth(client_token: str, token: Token) -> dict[str, Any]:
        return {
            "client_token": client_token,
            "policies": token.policies,
            "lease_duration": token.ttl,
            "renewable": token.renewable,
        }

    def _lookup(self, token: Token) -> Response:
        left = 0 if token.expires_at is None else int(token.expires_at - time.monotonic())
        data = {"ttl": left, "renewable": token.renewable, "policies": token.policies}
        return JSONResponse({"data": data})

    def _renew(self, client_token: str, token: Token) -> Response:
        if not token.renewable:
            return errors(400, "lease is not renewable")
        token.expires_at = time.monotonic() + token.ttl
        return JSONResponse({"auth": self._auth(client_token, token)})

    # --- KV v2 ----------------------------------------------------------------------------------

    def _version_meta(self, secret: Secret, v: int) -> dict[str, Any]:
        item = secret.versions[v]
        return {
            "created_time": item["created_time"],
            "deletion_time": item["deletion_time"],
            "destroyed": item["destroyed"],
            "version": v,
            "custom_metadata": secret.custom or None,
        }

    def _data_get(self, name: str, body: Any, request: Request) -> Response:
        secret = self.secrets.get(name)
        wanted = request.query_params.get("version")
        if secret is None or not secret.current:
            return errors(404)
        v = int(wanted) if wanted and wanted != "0" else secret.current
        if v not in secret.versions:
            return errors(404)
        item = secret.versions[v]
        meta = self._version_meta(secret, v)
        if item["deletion_time"] or item["destroyed"]:
            return errors(404, data={"data": None, "metadata": meta})
        return JSONResponse({"data": {"data": item["data"], "metadata": meta}})

    def _data_post(self, name: str, body: dict[str, Any], request: Request) -> Response:
        secret = self.secrets.setdefault(name, Secret())
        cas = (body.get("options") or {}).get("cas")
        if secret.cas_required and cas is None:
            return errors(400, "check-and-set parameter required for this call")
        if cas is not None and int(cas) != secret.current:
            return errors(400, CAS_MISMATCH)
        if not isinstance(body.get("data"), dict):
            return errors(400, "no data provided")
        secret.current += 1
        secret.versions[secret.current] = {
            "data": body["data"],
            "created_time": _now(),
            "deletion_time": "",
            "destroyed": False,
        }
        keep = secret.max_versions or 10
        for old in sorted(secret.versions)[:-keep]:
            del secret.versions[old]
        meta = self._version_meta(secret, secret.current)
        return JSONResponse({"data": {k: v for k, v in meta.items() if k != "custom_metadata"}})

    def _metadata_get(self, name: str, body: Any, request: Request) -> Response:
        secret = self.secrets.get(name)
        if secret is None:
            return errors(404)
        versions = {
            str(v): {k: i[k] for k in ("created_time", "deletion_time", "destroyed")}
            for v, i in secret.versions.items()
        }
        data = {
            "current_version": secret.current,
            "oldest_version": min(secret.versions, default=0),
            "max_versions": secret.max_versions,
            "cas_required": secret.cas_required,
            "delete_version_after": secret.delete_version_after,
            "custom_metadata": secret.custom or None,
            "versions": versions,
        }
        return JSONResponse({"data": data})

    def _metadata_post(self, name: str, body: dict[str, Any], request: Request) -> Response:
        secret = self.secrets.setdefault(name, Secret())
        custom = body.get("custom_metadata")
        if custom is not None:
            if len(custom) > 64 or any(len(str(v)) > 512 for v in custom.values()):
                return errors(400, "custom_metadata: at most 64 keys, values <= 512 bytes")
            secret.custom = {str(k): str(v) for k, v in custom.items()}
        if "max_versions" in body:
            secret.max_versions = int(body["max_versions"])
        if "cas_required" in body:
            secret.cas_required = bool(body["cas_required"])
        if "delete_version_after" in body:
            secret.delete_version_after = str(body["delete_version_after"])
        return Response(status_code=204)

    def _mark(self, name: str, body: dict[str, Any], change: dict[str, Any]) -> Response:
        secret = self.secrets.get(name)
        for v in body.get("versions") or []:
            item = secret.versions.get(int(v)) if secret else None
            if item is not None and not item["destroyed"]:
                item.update(change)
        return Response(status_code=204)

    def _delete_post(self, name: str, body: dict[str, Any], request: Request) -> Response:
        return self._mark(name, body, {"deletion_time": _now()})

    def _undelete_post(self, name: str, body: dict[str, Any], request: Request) -> Response:
        return self._mark(name, body, {"deletion_time": ""})

    def _destroy_post(self, name: str, body: dict[str, Any], request: Request) -> Response:
        return self._mark(name, body, {"destroyed": True, "data": None})
