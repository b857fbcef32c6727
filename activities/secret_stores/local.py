"""The embedded secret store: one AES-256-GCM encrypted file under the state directory.

``<state_dir>/secrets/store.enc`` holds every secret with its versions and metadata, the same
semantics as Vault's KV v2 (see :mod:`activities.secret_stores.base`), at most
:data:`MAX_VERSIONS` versions per secret (Vault's default ``max_versions``; the oldest goes
first). The file is ``MAGIC || nonce (12 bytes) || AES-GCM(JSON)`` with ``MAGIC`` as associated
data (NIST SP 800-38D; a fresh random nonce per write), so it holds no plaintext and a changed or
truncated file fails to decrypt instead of being read. Every change is a read-modify-write under
an exclusive ``fcntl`` lock (plus a thread lock), written to a temporary file, fsynced and renamed
over the old one, so concurrent activities and CLI calls never corrupt or lose a write.

The key is ``secrets.local_key`` (base64 of 32 bytes). Unset, one is generated on first use into
``<state_dir>/secrets/key`` (mode 0600) and a warning says so: keep that file, or the store
cannot be read again.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import json
import logging
import os
import tempfile
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pydantic import SecretStr

from activities.secret_stores.base import (
    SecretConflict,
    SecretData,
    SecretMetadata,
    SecretNotFound,
    SecretStoreMisconfigured,
    VersionMeta,
    check_path,
)

logger = logging.getLogger("activities.secret_stores.local")

MAGIC = b"FLEETOPS-SECRETS-1\n"
"""File header, also the AES-GCM associated data."""
MAX_VERSIONS = 10
"""Versions kept per secret (Vault KV v2's default ``max_versions``)."""
_NONCE_BYTES = 12


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def decode_key(text: str, where: str) -> bytes:
    """The 32 key bytes of base64 ``text``.

    Raises:
        SecretStoreMisconfigured: not base64 of exactly 32 bytes; names ``where``.
    """
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != 32:
        raise SecretStoreMisconfigured(
            f"{where} must be base64 of 32 random bytes (e.g. `fleetops gen-key`)"
        )
    return key


class LocalStore:
    """Secrets in one encrypted file under ``state_dir/secrets`` (see the module docstring).

    Args:
        state_dir: FleetOps state directory.
        key: ``secrets.local_key``; None: read or generate ``state_dir/secrets/key``.
    """

    name = "local"

    def __init__(self, state_dir: Path, key: SecretStr | None = None) -> None:
        self._dir = Path(state_dir) / "secrets"
        self.path = self._dir / "store.enc"
        self.key_path = self._dir / "key"
        self._key_setting = key
        self._aead: AESGCM | None = None
        self._mutex = threading.Lock()

    # --- SecretStore ----------------------------------------------------------------------------

    def read(self, path: str, version: int | None = None) -> SecretData:
        """The data of ``version`` (None: current); see :class:`SecretStore`."""
        with self._locked() as state:
            entry = self._entry(state, path)
            number = version or entry["current_version"]
            item = entry["versions"].get(str(number))
            if item is None or item["deletion_time"] or item["destroyed"]:
                what = "deleted" if item and item["deletion_time"] else "destroyed"
                raise SecretNotFound(
                    f"secret {path!r} has no version {number}"
                    if item is None
                    else f"version {number} of secret {path!r} is {what}"
                )
            return SecretData(path, number, dict(item["data"]))

    def write(self, path: str, data: dict[str, str], cas: int | None) -> int:
        """Write a new version; see :class:`SecretStore`."""
        check_path(path)
        with self._locked(write=True) as state:
            entry = state["secrets"].setdefault(
                path, {"current_version": 0, "versions": {}, "custom_metadata": {}}
            )
            current = entry["current_version"]
            if cas is not None and cas != current:
                raise SecretConflict(
                    f"check-and-set parameter did not match the current version: {path!r} is at "
                    f"version {current}, the write expected {cas}; read it again and retry"
                )
            number = current + 1
            entry["versions"][str(number)] = {
                "data": {str(k): str(v) for k, v in data.items()},
                "created_time": _now(),
                "deletion_time": "",
                "destroyed": False,
            }
            entry["current_version"] = number
            for old in sorted(int(v) for v in entry["versions"])[:-MAX_VERSIONS]:
                del entry["versions"][str(old)]
            return number

    def metadata(self, path: str) -> SecretMetadata:
        """Versions and custom metadata; see :class:`SecretStore`."""
        with self._locked() as state:
            entry = self._entry(state, path)
            versions = {
                int(v): VersionMeta(int(v), i["created_time"], i["deletion_time"], i["destroyed"])
                for v, i in entry["versions"].items()
            }
            return SecretMetadata(
                path,
                entry["current_version"],
                dict(sorted(versions.items())),
                dict(entry["custom_metadata"]),
            )

    def set_custom_metadata(self, path: str, custom: dict[str, str]) -> None:
        """Replace the custom metadata; see :class:`SecretStore`."""
        with self._locked(write=True) as state:
            entry = self._entry(state, path)
            entry["custom_metadata"] = {str(k): str(v) for k, v in custom.items()}

    def delete(self, path: str, versions: list[int]) -> None:
        """Soft-delete versions; see :class:`SecretStore`."""
        self._mark(path, versions, lambda item: item.update(deletion_time=_now()))

    def undelete(self, path: str, versions: list[int]) -> None:
        """Undelete versions; see :class:`SecretStore`."""
        self._mark(path, versions, lambda item: item.update(deletion_time=""))

    def destroy(self, path: str, versions: list[int]) -> None:
        """Destroy versions; see :class:`SecretStore`."""
        self._mark(path, versions, lambda item: item.update(destroyed=True, data={}))

    # --- helpers --------------------------------------------------------------------------------

    def _mark(self, path: str, versions: list[int], change: Any) -> None:
        with self._locked(write=True) as state:
            entry = self._entry(state, path)
            for v in versions:
                item = entry["versions"].get(str(v))
                if item is not None and not item["destroyed"]:
                    change(item)

    @staticmethod
    def _entry(state: dict[str, Any], path: str) -> dict[str, Any]:
        entry = state["secrets"].get(check_path(path))
        if entry is None:
            raise SecretNotFound(f"secret {path!r} not found; write it first")
        return entry  # type: ignore[no-any-return]

    @contextlib.contextmanager
    def _locked(self, write: bool = False) -> Iterator[dict[str, Any]]:
        """The decrypted store under the locks; saved atomically after the block if ``write``
        (not when it raised)."""
        aead = self._cipher()
        with self._mutex, open(self._dir / "lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            state = self._load(aead)
            yield state
            if write:
                self._save(aead, state)

    def _load(self, aead: AESGCM) -> dict[str, Any]:
        try:
            blob = self.path.read_bytes()
        except FileNotFoundError:
            return {"format": 1, "secrets": {}}
        except OSError as e:
            raise SecretStoreMisconfigured(f"cannot read {self.path}: {e.strerror}") from e
        nonce, sealed = blob[len(MAGIC) : len(MAGIC) + _NONCE_BYTES], blob[len(MAGIC) + 12 :]
        try:
            if not blob.startswith(MAGIC):
                raise ValueError("not a FleetOps secret store")
            state = json.loads(aead.decrypt(nonce, sealed, MAGIC))
        except (InvalidTag, ValueError) as e:
            raise SecretStoreMisconfigured(
                f"cannot decrypt {self.path}: wrong key (FLEETOPS_SECRETS__LOCAL_KEY or "
                f"{self.key_path}) or a damaged file"
            ) from e
        return state  # type: ignore[no-any-return]

    def _save(self, aead: AESGCM, state: dict[str, Any]) -> None:
        nonce = os.urandom(_NONCE_BYTES)
        blob = MAGIC + nonce + aead.encrypt(nonce, json.dumps(state).encode(), MAGIC)
        fd, tmp = tempfile.mkstemp(dir=self._dir, prefix=".store-", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(blob)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        dir_fd = os.open(self._dir, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def _cipher(self) -> AESGCM:
        if self._aead is None:
            self._dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            if self._key_setting is not None:
                text = self._key_setting.get_secret_value()
                key = decode_key(text, "FLEETOPS_SECRETS__LOCAL_KEY")
            else:
                key = self._key_from_file()
            self._aead = AESGCM(key)
        return self._aead

    def _key_from_file(self) -> bytes:
        """The key in ``key_path``; generated (0600, created atomically) when missing."""
        if not self.key_path.exists():
            fd, tmp = tempfile.mkstemp(dir=self._dir, prefix=".key-")  # mode 0600
            try:
                with os.fdopen(fd, "w") as f:
                    f.write(base64.b64encode(os.urandom(32)).decode() + "\n")
                    f.flush()
                    os.fsync(f.fileno())
                with contextlib.suppress(FileExistsError):  # another process won: use its key
                    os.link(tmp, self.key_path)
                    logger.warning(
                        "generated a key for the local secret store in %s (mode 0600); keep "
                        "it, or set FLEETOPS_SECRETS__LOCAL_KEY",
                        self.key_path,
                    )
            finally:
                os.unlink(tmp)
        try:
            text = self.key_path.read_text()
        except OSError as e:
            raise SecretStoreMisconfigured(f"cannot read {self.key_path}: {e.strerror}") from e
        return decode_key(text, str(self.key_path))
