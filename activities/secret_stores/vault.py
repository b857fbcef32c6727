"""HashiCorp Vault's KV secrets engine version 2 through hvac, as a :class:`SecretStore`.

Calls: ``secrets.kv.v2.read_secret_version`` / ``create_or_update_secret`` (with ``cas``) /
``read_secret_metadata`` / ``update_metadata`` / ``delete_secret_versions`` /
``undelete_secret_versions`` / ``destroy_secret_versions`` on ``vault.mount_point``
(https://developer.hashicorp.com/vault/api-docs/secret/kv/kv-v2). Authentication is a token or
the Kubernetes auth method (``auth.kubernetes.login`` with the pod's service-account JWT,
https://developer.hashicorp.com/vault/docs/auth/kubernetes). The token's TTL is learnt at login
(``lookup-self`` or the login's lease) and, before each call, a token with fewer than
``renew_before_seconds`` left is renewed (``auth.token.renew_self``) when renewable, else logged
in again (Kubernetes auth).

Errors, by the status code hvac turns into an exception class: 400 "check-and-set parameter did not
match" -> :class:`SecretConflict`, other 400 -> ``InvalidInput``; 401/403 ->
:class:`SecretForbidden`; 404 -> :class:`SecretNotFound`; 429, 5xx (503 is also "sealed"),
connection errors and timeouts -> :class:`SecretStoreUnavailable` (retryable); all non-retryable
ones otherwise. Library retries are off (requests' default): Temporal owns retries.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import hvac
import requests
from hvac import exceptions as hv

from activities.secret_stores.base import (
    SecretConflict,
    SecretData,
    SecretForbidden,
    SecretInvalidInput,
    SecretMetadata,
    SecretNotFound,
    SecretStoreError,
    SecretStoreMisconfigured,
    SecretStoreUnavailable,
    VersionMeta,
    check_path,
)
from fleetops.settings import VaultSettings

T = TypeVar("T")


def map_vault_error(what: str, err: Exception) -> SecretStoreError:
    """The :class:`SecretStoreError` for an hvac or transport error (see the module docstring)."""
    detail = str(err.args[0] if err.args else err)[:300]
    message = f"{what}: {detail}"
    if isinstance(err, hv.InvalidRequest):
        if "check-and-set parameter did not match" in detail:
            return SecretConflict(f"{message}; read the secret again and retry")
        return SecretInvalidInput(message)
    if isinstance(err, hv.Unauthorized | hv.Forbidden):
        return SecretForbidden(f"{message}; check the Vault token/role and its policy")
    if isinstance(err, hv.InvalidPath):
        return SecretNotFound(f"{what}: not found (Vault 404)")
    if isinstance(err, hv.RateLimitExceeded | hv.InternalServerError | hv.BadGateway):
        return SecretStoreUnavailable(message)
    if isinstance(err, hv.VaultDown | hv.VaultNotInitialized):
        return SecretStoreUnavailable(f"{message} (sealed, standby or not initialized)")
    if isinstance(err, requests.ConnectionError | requests.Timeout):
        return SecretStoreUnavailable(f"{what}: Vault unreachable: {type(err).__name__}")
    return SecretStoreMisconfigured(message)


class VaultStore:
    """KV v2 secrets in Vault (see the module docstring).

    Args:
        settings: address, namespace, mount point, auth, timeout (seconds), renewal margin.
        clock: monotonic seconds (tests pass a fake one to exercise renewal).
    """

    name = "vault"

    def __init__(self, settings: VaultSettings, *, clock: Callable[[], float] = time.monotonic):
        self._settings = settings
        self._clock = clock
        self._client = hvac.Client(
            url=settings.address,
            namespace=settings.namespace,
            timeout=settings.timeout_seconds,  # type: ignore[arg-type]
            verify=str(settings.ca_cert) if settings.ca_cert else True,
        )
        self._kv = self._client.secrets.kv.v2
        self._auth_lock = threading.Lock()
        self._logged_in = False
        self._renewable = False
        self._expires_at: float | None = None
        self.renewals = 0
        self.logins = 0

    # --- SecretStore ----------------------------------------------------------------------------

    def read(self, path: str, version: int | None = None) -> SecretData:
        """The data of ``version`` (None: current); see :class:`SecretStore`."""
        answer = self._call(
            f"read {path}" + (f" version {version}" if version else ""),
            self._kv.read_secret_version,
            path=check_path(path),
            version=version,
            raise_on_deleted_version=True,
        )
        body = answer["data"]
        data = {str(k): str(v) for k, v in (body.get("data") or {}).items()}
        return SecretData(path, int(body["metadata"]["version"]), data)

    def write(self, path: str, data: dict[str, str], cas: int | None) -> int:
        """Write a new version with check-and-set; see :class:`SecretStore`."""
        answer = self._call(
            f"write {path}",
            self._kv.create_or_update_secret,
            path=check_path(path),
            secret=dict(data),
            cas=cas,
        )
        return int(answer["data"]["version"])

    def metadata(self, path: str) -> SecretMetadata:
        """Versions and custom metadata; see :class:`SecretStore`."""
        body = self._raw_metadata(path)
        versions = {
            int(v): VersionMeta(
                int(v),
                str(i.get("created_time", "")),
                str(i.get("deletion_time") or ""),
                bool(i.get("destroyed")),
            )
            for v, i in (body.get("versions") or {}).items()
        }
        custom = {str(k): str(v) for k, v in (body.get("custom_metadata") or {}).items()}
        return SecretMetadata(
            path, int(body.get("current_version") or 0), dict(sorted(versions.items())), custom
        )

    def set_custom_metadata(self, path: str, custom: dict[str, str]) -> None:
        """Replace the custom metadata, keeping ``delete_version_after`` (hvac would reset it)."""
        keep = self._raw_metadata(path).get("delete_version_after") or "0s"
        self._call(
            f"update metadata of {path}",
            self._kv.update_metadata,
            path=path,
            custom_metadata=dict(custom),
            delete_version_after=keep,
            mount_point=self._settings.mount_point,
        )

    def delete(self, path: str, versions: list[int]) -> None:
        """Soft-delete versions; see :class:`SecretStore`."""
        self._call(f"delete {path}", self._kv.delete_secret_versions, path=path, versions=versions)

    def undelete(self, path: str, versions: list[int]) -> None:
        """Undelete versions; see :class:`SecretStore`."""
        fn = self._kv.undelete_secret_versions
        self._call(f"undelete {path}", fn, path=path, versions=versions)

    def destroy(self, path: str, versions: list[int]) -> None:
        """Destroy versions; see :class:`SecretStore`."""
        fn = self._kv.destroy_secret_versions
        self._call(f"destroy {path}", fn, path=path, versions=versions)

    # --- helpers --------------------------------------------------------------------------------

    def _raw_metadata(self, path: str) -> dict[str, Any]:
        answer = self._call(
            f"read metadata of {path}", self._kv.read_secret_metadata, path=check_path(path)
        )
        return answer["data"]  # type: ignore[no-any-return]

    def _call(self, what: str, fn: Callable[..., T], **kwargs: Any) -> T:
        """Authenticate (or renew) if needed, then call ``fn`` on our mount; map errors."""
        kwargs.setdefault("mount_point", self._settings.mount_point)
        self._ensure_token()
        try:
            return fn(**kwargs)
        except (hv.VaultError, requests.RequestException) as e:
            raise map_vault_error(what, e) from e

    def _ensure_token(self) -> None:
        """Log in on first use; renew or log in again when the token is about to expire."""
        with self._auth_lock:
            try:
                if not self._logged_in:
                    self._login()
                elif self._expiring():
                    self._renew()
            except (hv.VaultError, requests.RequestException) as e:
                raise map_vault_error("Vault login", e) from e

    def _expiring(self) -> bool:
        left = None if self._expires_at is None else self._expires_at - self._clock()
        return left is not None and left <= self._settings.renew_before_seconds

    def _set_lease(self, ttl: int, renewable: bool) -> None:
        self._logged_in, self._renewable = True, renewable
        self._expires_at = self._clock() + ttl if ttl > 0 else None  # 0: never expires (root)

    def _login(self) -> None:
        s = self._settings
        if s.auth_method == "token":
            if s.token is None or not s.token.get_secret_value():
                raise SecretStoreMisconfigured(
                    "secrets.backend=vault with auth_method=token needs "
                    "FLEETOPS_SECRETS__VAULT__TOKEN"
                )
            self._client.token = s.token.get_secret_value()
            info = self._client.auth.token.lookup_self()["data"]
            self._set_lease(int(info.get("ttl") or 0), bool(info.get("renewable")))
        else:
            try:
                jwt = s.kubernetes_jwt_path.read_text().strip()
            except OSError as e:
                raise SecretStoreMisconfigured(
                    f"cannot read the service-account JWT {s.kubernetes_jwt_path}: {e.strerror}; "
                    "set FLEETOPS_SECRETS__VAULT__KUBERNETES_JWT_PATH"
                ) from e
            answer = self._client.auth.kubernetes.login(
                s.kubernetes_role, jwt, mount_point=s.kubernetes_mount_point
            )
            auth = answer["auth"]
            self._set_lease(int(auth.get("lease_duration") or 0), bool(auth.get("renewable")))
        self.logins += 1

    def _renew(self) -> None:
        if self._renewable:
            auth = self._client.auth.token.renew_self()["auth"]
            self._set_lease(int(auth.get("lease_duration") or 0), bool(auth.get("renewable")))
            self.renewals += 1
            if not self._expiring():
                return  # else: at its max TTL; log in again if we can
        if self._settings.auth_method == "kubernetes":
            self._login()
