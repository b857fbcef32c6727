"""Secret rotation activities over the configured secret store (local file or Vault KV v2).

Workflows see paths and versions only: a rotation's value is generated inside
:meth:`SecretActivities.rotate_secret` and written straight to the store, so no value is ever in
a workflow history, an activity result or a log line. The store blocks (files, hvac), so every
call runs in a thread. Bookkeeping (idempotent retries, pinned previous versions) is described
in :mod:`activities.secret_stores.ops`.

The maintenance flow: ``ref = rotate_secret(SecretRotation(path, key, expected_version))`` ->
roll the replicas (they resolve the new version) -> verify -> ``confirm_secret(path,
ref.version)``; on failure ``restore_secret(SecretRestore(path, version=ref.previous_version,
expected_version=ref.version))`` and roll again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

from temporalio import activity

from activities.secret_stores import ops
from activities.secret_stores.base import SecretStore, SecretStoreError, to_application_error
from fleetops.secrets import SecretRestore, SecretRotation, SecretVersionRef, SecretVersions

T = TypeVar("T")


async def _off_loop(fn: Callable[..., T], *args: object) -> T:
    try:
        return await asyncio.to_thread(fn, *args)
    except SecretStoreError as e:
        raise to_application_error(e) from None


def _rotation_id(req: SecretRotation) -> str:
    """``req.rotation_id``, else ``<workflow id>/<run id>/<activity id>`` (stable over retries)."""
    if req.rotation_id:
        return req.rotation_id
    info = activity.info()
    return f"{info.workflow_id}/{info.workflow_run_id}/{info.activity_id}"


class SecretActivities:
    """Rotate, restore, confirm and list versions of secrets.

    Errors are non-retryable ``ApplicationError``s of type ``SecretNotFound`` (missing path,
    version or key), ``SecretForbidden`` (401/403), ``SecretConflict`` (check-and-set lost),
    ``SecretPinned``, ``InvalidInput`` (other 400), ``SecretStoreMisconfigured``; and retryable
    ``SecretStoreUnavailable`` (unreachable, sealed/503, 429, 5xx).

    Args:
        store: the secret store (see :func:`activities.secret_stores.build_secret_store`).
    """

    def __init__(self, store: SecretStore) -> None:
        self._store = store

    @activity.defn(name="rotate_secret")
    async def rotate_secret(self, req: SecretRotation) -> SecretVersionRef:
        """Write a new random value (``secrets.token_urlsafe(value_bytes)``) of ``req.key``.

        Check-and-set against ``req.expected_version`` (None: the version read first); other
        keys of the secret are kept. A retry of the same rotation (same ``rotation_id``, by
        default the same activity) returns the version it wrote instead of writing another. The
        replaced version is pinned (undeleted if it had been deleted) until
        :meth:`confirm_secret`.

        Returns:
            ``path``, the new ``version`` and the ``previous_version`` (pinned).

        Raises:
            ApplicationError: see the class docstring; nothing is written on a conflict.
        """
        ref = await _off_loop(ops.rotate, self._store, req, _rotation_id(req))
        activity.logger.info(
            "rotated %s key %s: version %s -> %s",
            req.path,
            req.key,
            ref.previous_version,
            ref.version,
        )
        return ref

    @activity.defn(name="restore_secret")
    async def restore_secret(self, req: SecretRestore) -> SecretVersionRef:
        """Make ``req.version``'s data current again as a new version (cas ``expected_version``).

        Idempotent: when the current data already equals it, nothing is written. Lifts the
        pins that waited for the replaced version.

        Returns:
            The version now current and the one it replaced (None if nothing was written).

        Raises:
            ApplicationError: see the class docstring.
        """
        ref = await _off_loop(ops.restore, self._store, req)
        activity.logger.info("restored %s version %d as %d", req.path, req.version, ref.version)
        return ref

    @activity.defn(name="confirm_secret")
    async def confirm_secret(self, path: str, version: int) -> list[int]:
        """End the protection of the version a rotation replaced, once ``version`` (the
        rotation's result, ``SecretVersionRef.version``) is verified.

        Returns:
            The versions no longer pinned ([] when none waited for ``version``).

        Raises:
            ApplicationError: ``SecretNotFound`` (no such path), ``InvalidInput``, ...
        """
        lifted = await _off_loop(ops.confirm, self._store, path, version)
        activity.logger.info("confirmed %s version %d; unpinned %s", path, version, lifted)
        return lifted

    @activity.defn(name="secret_versions")
    async def secret_versions(self, path: str) -> SecretVersions:
        """The versions of ``path`` (created, deleted, destroyed, pinned), without values.

        Raises:
            ApplicationError: ``SecretNotFound`` (no such path), ...
        """
        return await _off_loop(ops.versions, self._store, path)
