"""Rotation, restore, confirmation and resolution over any :class:`SecretStore` (blocking).

Bookkeeping lives in the secret's custom metadata (string values, JSON encoded):

- ``fleetops.rotation``: the last rotation, ``{"id", "from"[, "version"]}``. It is written
  *before* the new version (with ``"from"``: the version being replaced) and completed after it
  (``"version"``), so a retry of the same rotation id finds its write: complete -> the same
  answer; only the marker -> the write happened iff the current version is ``from + 1``; neither
  -> write. A retry therefore never writes a second new version.
- ``fleetops.pins``: ``{"<pinned version>": "<version whose confirmation lifts it>"}``. A
  rotation pins the version it replaced (and undeletes it if it had been soft-deleted), so a
  rollback can restore it; :func:`delete_versions` and :func:`destroy_versions` refuse pinned
  versions; :func:`confirm` lifts the pin once the new version is verified.

Values are generated here (``secrets.token_urlsafe``) and never returned, logged or put in an
error message: results carry paths and versions only.
"""

from __future__ import annotations

import json
import secrets
from collections import defaultdict
from typing import Any

from activities.secret_stores.base import (
    SecretConflict,
    SecretInvalidInput,
    SecretMetadata,
    SecretNotFound,
    SecretPinned,
    SecretStore,
    check_key,
    check_path,
)
from fleetops.secrets import (
    SecretRef,
    SecretRestore,
    SecretRotation,
    SecretVersionInfo,
    SecretVersionRef,
    SecretVersions,
)

ROTATION_KEY = "fleetops.rotation"
PINS_KEY = "fleetops.pins"
MAX_PINS = 16
"""Unconfirmed rotations of one secret (bounds the metadata; Vault caps a value at 512 bytes)."""


def _json(custom: dict[str, str], key: str) -> dict[str, Any]:
    try:
        found = json.loads(custom.get(key, "{}"))
    except ValueError:
        return {}
    return found if isinstance(found, dict) else {}


def pins(meta: SecretMetadata) -> dict[int, int]:
    """Pinned version -> the version whose confirmation lifts the pin."""
    found = _json(meta.custom, PINS_KEY)
    return {int(k): int(v) for k, v in found.items() if str(k).isdigit() and str(v).isdigit()}


def _with_pins(custom: dict[str, str], pinned: dict[int, int]) -> dict[str, str]:
    out = dict(custom)
    out[PINS_KEY] = json.dumps({str(k): str(v) for k, v in sorted(pinned.items())})
    return out


def rotate(store: SecretStore, req: SecretRotation, rotation_id: str) -> SecretVersionRef:
    """Write a new random value of ``req.key`` at ``req.path`` (other keys kept), idempotently.

    Args:
        store: the secret store.
        req: path, key, expected current version (cas), bytes of randomness.
        rotation_id: identifies this rotation across retries (see the module docstring).

    Returns:
        The new version and the one it replaced (now pinned).

    Raises:
        SecretNotFound: the path does not exist, its current version is destroyed, or it has
            no ``req.key`` (a rotation never creates a secret: a typo would go unnoticed).
        SecretConflict: the current version is not ``req.expected_version``, or another
            writer won the check-and-set.
        SecretPinned: the secret already has :data:`MAX_PINS` unconfirmed rotations.
        SecretStoreError: any other store failure (see its ``retryable``).
    """
    path, key = check_path(req.path), check_key(req.key)
    meta = store.metadata(path)
    current, custom = meta.current_version, dict(meta.custom)
    marker = _json(custom, ROTATION_KEY)
    if marker.get("id") == rotation_id:
        start = int(marker.get("from", -1))
        if "version" in marker:
            return _finish(store, path, rotation_id, start, int(marker["version"]))
        if current == start + 1:
            return _finish(store, path, rotation_id, start, current)
        if current != start:
            raise SecretConflict(
                f"rotation {rotation_id} of {path!r} started at version {start} but the secret "
                f"is at {current}: another writer; read it again and decide"
            )
    expected = current if req.expected_version is None else req.expected_version
    if current != expected:
        raise SecretConflict(
            f"{path!r} is at version {current}, the rotation expected {expected}; "
            "read it again and decide"
        )
    if len(pins(meta)) >= MAX_PINS:
        raise SecretPinned(
            f"{path!r} has {MAX_PINS} unconfirmed rotations; confirm or restore them first"
        )
    old = _current_data(store, meta)
    if key not in old:
        raise SecretNotFound(f"secret {path!r} has no key {key!r}; put it first")
    custom[ROTATION_KEY] = json.dumps({"id": rotation_id, "from": current})
    store.set_custom_metadata(path, custom)
    new = store.write(path, old | {key: secrets.token_urlsafe(req.value_bytes)}, cas=current)
    return _finish(store, path, rotation_id, current, new)


def _current_data(store: SecretStore, meta: SecretMetadata) -> dict[str, str]:
    """The current version's data, undeleting it first if it was soft-deleted."""
    info = meta.versions.get(meta.current_version)
    if info is None or info.destroyed:
        raise SecretNotFound(
            f"the current version {meta.current_version} of {meta.path!r} is destroyed; "
            "restore an older version first"
        )
    if info.deletion_time:
        store.undelete(meta.path, [meta.current_version])
    return store.read(meta.path, meta.current_version).data


def _finish(
    store: SecretStore, path: str, rotation_id: str, previous: int, new: int
) -> SecretVersionRef:
    """Record the rotation as complete, pin ``previous`` until ``new`` is confirmed, and
    undelete ``previous`` if it was soft-deleted (all idempotent)."""
    meta = store.metadata(path)
    pinned = pins(meta)
    custom = dict(meta.custom)
    custom[ROTATION_KEY] = json.dumps({"id": rotation_id, "from": previous, "version": new})
    if previous >= 1:
        pinned[previous] = new
    wanted = _with_pins(custom, pinned)
    if wanted != meta.custom:
        store.set_custom_metadata(path, wanted)
    info = meta.versions.get(previous)
    if info is not None and info.deletion_time and not info.destroyed:
        store.undelete(path, [previous])
    return SecretVersionRef(path=path, version=new, previous_version=previous or None)


def restore(store: SecretStore, req: SecretRestore) -> SecretVersionRef:
    """Make ``req.version``'s data current again, as a new version (idempotent).

    A soft-deleted ``req.version`` is undeleted first. When the current data already equals
    it (a retry after a successful restore, or nothing to do), nothing is written. Pins that
    waited for the replaced version's confirmation are lifted (it is being rolled back).

    Returns:
        The version now current (new, or the existing one when nothing was written) and the
        one it replaced (None when nothing was written).

    Raises:
        SecretNotFound: no such path or version, or it is destroyed.
        SecretConflict: the current version is not ``req.expected_version`` (or another writer
            won the check-and-set).
        SecretStoreError: any other store failure.
    """
    path = check_path(req.path)
    meta = store.metadata(path)
    info = meta.versions.get(req.version)
    if info is None or info.destroyed:
        raise SecretNotFound(f"secret {path!r} has no version {req.version} to restore")
    if info.deletion_time:
        store.undelete(path, [req.version])
    target = store.read(path, req.version).data
    current = meta.current_version
    cur_info = meta.versions.get(current)
    if cur_info is not None and cur_info.readable and store.read(path, current).data == target:
        return SecretVersionRef(path=path, version=current, previous_version=None)
    expected = current if req.expected_version is None else req.expected_version
    if current != expected:
        raise SecretConflict(f"{path!r} is at version {current}, the restore expected {expected}")
    new = store.write(path, target, cas=current)
    meta = store.metadata(path)
    pinned = pins(meta)
    kept = {k: v for k, v in pinned.items() if v != current}
    if kept != pinned:
        store.set_custom_metadata(path, _with_pins(meta.custom, kept))
    return SecretVersionRef(path=path, version=new, previous_version=current)


def confirm(store: SecretStore, path: str, version: int) -> list[int]:
    """Lift the pins that wait for ``version`` (the version a rotation returned) to be verified.

    Returns:
        The versions no longer pinned (empty when none waited for it: idempotent).

    Raises:
        SecretInvalidInput: a bad path or a version below 1.
        SecretNotFound: no such path.
    """
    if version < 1:
        raise SecretInvalidInput(f"version must be >= 1, got {version}")
    meta = store.metadata(check_path(path))
    pinned = pins(meta)
    lifted = sorted(k for k, v in pinned.items() if v == version)
    if lifted:
        kept = {k: v for k, v in pinned.items() if v != version}
        store.set_custom_metadata(path, _with_pins(meta.custom, kept))
    return lifted


def _refuse_pinned(store: SecretStore, path: str, versions: list[int], what: str) -> None:
    held = sorted(set(versions) & set(pins(store.metadata(check_path(path)))))
    if held:
        raise SecretPinned(
            f"cannot {what} versions {held} of {path!r}: pinned until a rotation is confirmed "
            "(confirm_secret) or restored"
        )


def delete_versions(store: SecretStore, path: str, versions: list[int]) -> None:
    """Soft-delete ``versions``, refusing pinned ones (:class:`SecretPinned`)."""
    _refuse_pinned(store, path, versions, "delete")
    store.delete(path, versions)


def destroy_versions(store: SecretStore, path: str, versions: list[int]) -> None:
    """Destroy ``versions`` for good, refusing pinned ones (:class:`SecretPinned`)."""
    _refuse_pinned(store, path, versions, "destroy")
    store.destroy(path, versions)


def versions(store: SecretStore, path: str) -> SecretVersions:
    """The versions of ``path`` (no values), oldest first, with their pins.

    Raises:
        SecretNotFound: no such path.
    """
    meta = store.metadata(check_path(path))
    pinned = pins(meta)
    return SecretVersions(
        path=path,
        current_version=meta.current_version,
        versions=[
            SecretVersionInfo(
                version=v.version,
                created_time=v.created_time,
                deleted=bool(v.deletion_time),
                destroyed=v.destroyed,
                pinned=v.version in pinned,
            )
            for v in meta.versions.values()
        ],
    )


def resolve(store: SecretStore, refs: list[SecretRef]) -> dict[str, str]:
    """The values of ``refs`` (current versions) as ``env name -> value``; each path read once.

    Raises:
        SecretNotFound: a path or key is missing; the message names the env variable, the
            path and the key.
        SecretStoreError: any other store failure.
    """
    by_path: dict[str, list[SecretRef]] = defaultdict(list)
    for ref in refs:
        by_path[ref.path].append(ref)
    env: dict[str, str] = {}
    for path, wanted in by_path.items():
        try:
            data = store.read(path).data
        except SecretNotFound as e:
            names = ", ".join(r.env for r in wanted)
            raise SecretNotFound(
                f"secret for env {names}: path {path!r} not found in the {store.name} store "
                f"({e}); put it with `fleetops secrets put {path} <key>`"
            ) from e
        for ref in wanted:
            if ref.key not in data:
                raise SecretNotFound(
                    f"secret for env {ref.env}: path {path!r} has no key {ref.key!r} in the "
                    f"{store.name} store; put it with `fleetops secrets put {path} {ref.key}`"
                )
            env[ref.env] = data[ref.key]
    return env


MASKED_VERSIONS = 10
"""Versions of a secret whose values are masked: Vault KV v2's default ``max_versions``. Running
replicas may still use an older version than the current one (a rotation's pinned previous
version, or a plain write whose replicas were not restarted)."""


def mask_values(store: SecretStore, refs: list[SecretRef]) -> list[str]:
    """Every value ``refs`` may have had lately, to mask in text about the agent.

    For each path, its pinned and current versions, then its newest :data:`MASKED_VERSIONS`
    readable versions (newest first, each version read once), and of each the referenced
    keys' values, each also without surrounding whitespace (a value written with a newline is
    logged without it). A path or version that is gone (deleted, destroyed) gives nothing:
    there is no value to read.

    Raises:
        SecretStoreError: a store failure other than ``SecretNotFound`` (unavailable, forbidden).
    """
    by_path: dict[str, set[str]] = defaultdict(set)
    for ref in refs:
        by_path[ref.path].add(ref.key)
    out: dict[str, None] = {}  # ordered and unique
    for path, keys in by_path.items():
        try:
            meta = store.metadata(path)
        except SecretNotFound:
            continue
        kept = set(pins(meta)) | {meta.current_version}
        readable = sorted((v for v, m in meta.versions.items() if m.readable), reverse=True)
        versions = [v for v in readable if v in kept] + readable[:MASKED_VERSIONS]
        for version in dict.fromkeys(versions):
            try:
                data = store.read(path, version).data
            except SecretNotFound:
                continue
            for key in sorted(keys & data.keys()):
                out.update(dict.fromkeys(v for v in (data[key], data[key].strip()) if v))
    return list(out)
