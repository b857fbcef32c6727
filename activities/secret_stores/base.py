"""The secret-store seam: one synchronous interface, two implementations (local file, Vault).

Both follow the versioned semantics of Vault's KV secrets engine version 2
(https://developer.hashicorp.com/vault/api-docs/secret/kv/kv-v2): every write makes a new
version numbered from 1; ``cas`` makes a write succeed only if the current version is the one
given (0: only if the secret does not exist); versions can be soft-deleted, undeleted and
destroyed; each secret carries string ``custom_metadata``. Stores block (files, HTTP through
hvac): callers on an event loop run them in a thread.

Errors are :class:`SecretStoreError` subclasses carrying the ``ApplicationError`` type clients
match on (:mod:`fleetops.errors`) and whether a retry may help; messages name the path, never a
value.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import timedelta
from typing import ClassVar, Protocol

from temporalio.exceptions import ApplicationError

from fleetops.errors import (
    INVALID_INPUT,
    SECRET_CONFLICT,
    SECRET_FORBIDDEN,
    SECRET_NOT_FOUND,
    SECRET_PINNED,
    SECRET_STORE_MISCONFIGURED,
    SECRET_STORE_UNAVAILABLE,
)
from fleetops.secrets import SECRET_KEY_PATTERN, SECRET_PATH_PATTERN


class SecretStoreError(Exception):
    """A secret-store operation failed; ``type`` and ``retryable`` say how callers treat it.

    Args:
        message: what failed and what to do next (never a secret value).
        retry_after: seconds the store asked to wait (429), if it said.
    """

    type: ClassVar[str] = SECRET_STORE_MISCONFIGURED
    retryable: ClassVar[bool] = False

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class SecretNotFound(SecretStoreError):
    """The path, version or key does not exist (Vault 404)."""

    type = SECRET_NOT_FOUND


class SecretForbidden(SecretStoreError):
    """Credentials or policy refused (Vault 401/403)."""

    type = SECRET_FORBIDDEN


class SecretConflict(SecretStoreError):
    """A check-and-set write found another current version (Vault 400, cas mismatch)."""

    type = SECRET_CONFLICT


class SecretPinned(SecretStoreError):
    """A pinned version (kept until a rotation is confirmed) cannot be deleted or destroyed."""

    type = SECRET_PINNED


class SecretInvalidInput(SecretStoreError):
    """A bad path, key or version, or another request the store refuses (Vault 400)."""

    type = INVALID_INPUT


class SecretStoreUnavailable(SecretStoreError):
    """Unreachable, sealed (503), rate limited (429) or failing (5xx): retry later."""

    type = SECRET_STORE_UNAVAILABLE
    retryable = True


class SecretStoreMisconfigured(SecretStoreError):
    """The store cannot work as configured (bad key, missing token or JWT, unreadable file)."""

    type = SECRET_STORE_MISCONFIGURED


def to_application_error(err: SecretStoreError) -> ApplicationError:
    """The ``ApplicationError`` an activity raises for ``err``: its type, non-retryable unless
    the store may recover, with the store's ``Retry-After`` as ``next_retry_delay``."""
    delay = timedelta(seconds=err.retry_after) if err.retry_after else None
    return ApplicationError(
        str(err), type=err.type, non_retryable=not err.retryable, next_retry_delay=delay
    )


_PATH = re.compile(SECRET_PATH_PATTERN)
_KEY = re.compile(SECRET_KEY_PATTERN)


def check_path(path: str) -> str:
    """``path`` if it is a valid secret path (see ``SECRET_PATH_PATTERN``).

    Raises:
        SecretInvalidInput: it is not, or is longer than 512 characters.
    """
    if len(path) > 512 or not _PATH.match(path):
        raise SecretInvalidInput(
            f"invalid secret path {path[:80]!r}: use slash-separated segments of letters, "
            "digits, '_', '.', '-', e.g. agents/demo"
        )
    return path


def check_key(key: str) -> str:
    """``key`` if it is a valid key inside a secret.

    Raises:
        SecretInvalidInput: it is not (1-128 letters, digits, '_', '.', '-').
    """
    if not _KEY.match(key):
        raise SecretInvalidInput(f"invalid secret key {key[:80]!r}: use 1-128 of A-Z a-z 0-9 _ . -")
    return key


@dataclass(frozen=True, repr=False)
class SecretData:
    """One version's data. ``repr`` shows the keys only, so a logged object leaks no value."""

    path: str
    version: int
    data: dict[str, str]

    def __repr__(self) -> str:
        return f"SecretData(path={self.path!r}, version={self.version}, keys={sorted(self.data)})"


@dataclass(frozen=True)
class VersionMeta:
    """What the store knows of one version (KV v2 ``versions`` entry)."""

    version: int
    created_time: str
    deletion_time: str = ""
    destroyed: bool = False

    @property
    def readable(self) -> bool:
        """Neither soft-deleted nor destroyed."""
        return not self.deletion_time and not self.destroyed


@dataclass(frozen=True)
class SecretMetadata:
    """A secret's metadata (KV v2 ``metadata`` endpoint)."""

    path: str
    current_version: int
    versions: dict[int, VersionMeta] = field(default_factory=dict)
    custom: dict[str, str] = field(default_factory=dict)


class SecretStore(Protocol):
    """What a secret store does (every method blocks; all raise :class:`SecretStoreError`)."""

    name: str
    """``local`` or ``vault``."""

    def read(self, path: str, version: int | None = None) -> SecretData:
        """The data of ``version`` (None: the current one).

        Raises:
            SecretNotFound: no such path or version, or the version is deleted or destroyed.
        """
        ...

    def write(self, path: str, data: dict[str, str], cas: int | None) -> int:
        """Write ``data`` as a new version; returns its number.

        Args:
            path: the secret.
            data: key -> value (strings).
            cas: the current version the write must replace (0: the secret must not exist);
                None: write unconditionally.

        Raises:
            SecretConflict: ``cas`` is not the current version.
        """
        ...

    def metadata(self, path: str) -> SecretMetadata:
        """Versions and custom metadata of ``path``.

        Raises:
            SecretNotFound: no such path.
        """
        ...

    def set_custom_metadata(self, path: str, custom: dict[str, str]) -> None:
        """Replace the custom metadata of an existing secret (string keys and values).

        Raises:
            SecretNotFound: no such path.
        """
        ...

    def delete(self, path: str, versions: list[int]) -> None:
        """Soft-delete ``versions`` (they stop being readable; undelete brings them back)."""
        ...

    def undelete(self, path: str, versions: list[int]) -> None:
        """Undo a soft delete of ``versions`` (destroyed ones stay destroyed)."""
        ...

    def destroy(self, path: str, versions: list[int]) -> None:
        """Remove the data of ``versions`` for good."""
        ...
