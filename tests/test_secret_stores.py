"""The contract of both secret stores, through the same tests: the local encrypted file and
Vault KV v2 (hvac against the loopback fake in tests/fakes/vault.py).

Versions, check-and-set, rotation (idempotent retries, nothing half-done), pins and their
confirmation, restore, and resolving agents' references.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from activities.secret_stores import ops
from activities.secret_stores.base import (
    SecretConflict,
    SecretNotFound,
    SecretPinned,
    SecretStore,
    SecretStoreUnavailable,
)
from activities.secret_stores.local import LocalStore
from activities.secret_stores.vault import VaultStore
from fleetops.secrets import SecretRef, SecretRestore, SecretRotation
from fleetops.settings import VaultSettings
from tests.fakes.vault import FakeVault

KEY = SecretStr("MDEyMzQ1Njc4OTAxMjM0NTY3ODkwMTIzNDU2Nzg5MDE=")


@pytest.fixture(scope="module")
def vault() -> Iterator[FakeVault]:
    with FakeVault() as fake:
        yield fake


@pytest.fixture(params=["local", "vault"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> SecretStore:
    if request.param == "local":
        return LocalStore(tmp_path, KEY)
    fake: FakeVault = request.getfixturevalue("vault")
    return VaultStore(VaultSettings(address=fake.url, token=SecretStr("root")))


@pytest.fixture
def path() -> str:
    return f"agents/t-{uuid.uuid4().hex[:8]}"


def rotation(path: str, **kw: object) -> SecretRotation:
    return SecretRotation.model_validate({"path": path, "key": "api", **kw})


def test_versions_and_check_and_set(store: SecretStore, path: str) -> None:
    assert store.write(path, {"api": "one"}, cas=0) == 1
    with pytest.raises(SecretConflict):
        store.write(path, {"api": "x"}, cas=0)  # exists already
    assert store.write(path, {"api": "two"}, cas=1) == 2
    with pytest.raises(SecretConflict):
        store.write(path, {"api": "stale"}, cas=1)
    assert store.read(path).data == {"api": "two"}
    assert store.read(path, 1).data == {"api": "one"}
    meta = store.metadata(path)
    assert meta.current_version == 2 and sorted(meta.versions) == [1, 2]
    store.delete(path, [1])
    with pytest.raises(SecretNotFound):
        store.read(path, 1)
    store.undelete(path, [1])
    assert store.read(path, 1).data == {"api": "one"}
    store.destroy(path, [1])
    store.undelete(path, [1])  # destroyed stays destroyed
    with pytest.raises(SecretNotFound):
        store.read(path, 1)
    with pytest.raises(SecretNotFound):
        store.metadata(f"{path}-missing")


def test_rotate_writes_a_new_random_value_and_pins_the_previous(
    store: SecretStore, path: str
) -> None:
    store.write(path, {"api": "old", "other": "kept"}, cas=0)
    ref = ops.rotate(store, rotation(path, expected_version=1), "r1")
    assert (ref.version, ref.previous_version) == (2, 1)
    new = store.read(path).data
    assert new["other"] == "kept" and new["api"] != "old" and len(new["api"]) >= 40
    listed = ops.versions(store, path)
    assert [(v.version, v.pinned) for v in listed.versions] == [(1, True), (2, False)]
    with pytest.raises(SecretPinned):
        ops.destroy_versions(store, path, [1])
    with pytest.raises(SecretPinned):
        ops.delete_versions(store, path, [1])
    assert ops.confirm(store, path, 1) == []  # 1 is the pinned one, not the rotation's result
    assert ops.confirm(store, path, 2) == [1]
    assert ops.confirm(store, path, 2) == []  # idempotent
    ops.destroy_versions(store, path, [1])
    assert store.metadata(path).versions[1].destroyed


def test_rotate_with_a_stale_expected_version_writes_nothing(store: SecretStore, path: str) -> None:
    store.write(path, {"api": "a"}, cas=0)
    store.write(path, {"api": "b"}, cas=1)
    with pytest.raises(SecretConflict, match="expected 1"):
        ops.rotate(store, rotation(path, expected_version=1), "r1")
    assert store.metadata(path).current_version == 2
    assert store.read(path).data == {"api": "b"}


def test_rotate_refuses_a_missing_path_or_key(store: SecretStore, path: str) -> None:
    with pytest.raises(SecretNotFound):
        ops.rotate(store, rotation(path), "r1")
    store.write(path, {"other": "x"}, cas=0)
    with pytest.raises(SecretNotFound, match="no key 'api'"):
        ops.rotate(store, rotation(path), "r1")
    assert store.metadata(path).current_version == 1


def test_a_retried_rotation_writes_no_second_version(store: SecretStore, path: str) -> None:
    store.write(path, {"api": "old"}, cas=0)
    first = ops.rotate(store, rotation(path, expected_version=1), "run-1/act-1")
    value = store.read(path).data["api"]
    again = ops.rotate(store, rotation(path, expected_version=1), "run-1/act-1")
    assert again == first
    assert store.metadata(path).current_version == 2 and store.read(path).data["api"] == value
    other = ops.rotate(store, rotation(path, expected_version=2), "run-2/act-1")
    assert (other.version, other.previous_version) == (3, 2)


class CrashAfterWrite:
    """A store whose metadata update after the data write fails once (a worker died there)."""

    def __init__(self, inner: SecretStore) -> None:
        self.inner, self.name, self.wrote, self.crashed = inner, inner.name, False, False

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def write(self, path: str, data: dict[str, str], cas: int | None) -> int:
        self.wrote = True
        return self.inner.write(path, data, cas)

    def set_custom_metadata(self, path: str, custom: dict[str, str]) -> None:
        if self.wrote and not self.crashed:
            self.crashed = True
            raise SecretStoreUnavailable("connection reset")
        self.inner.set_custom_metadata(path, custom)


def test_a_rotation_interrupted_after_its_write_completes_on_retry(
    store: SecretStore, path: str
) -> None:
    store.write(path, {"api": "old"}, cas=0)
    flaky = CrashAfterWrite(store)
    with pytest.raises(SecretStoreUnavailable):
        ops.rotate(flaky, rotation(path, expected_version=1), "r1")  # type: ignore[arg-type]
    assert store.metadata(path).current_version == 2
    ref = ops.rotate(flaky, rotation(path, expected_version=1), "r1")  # type: ignore[arg-type]
    assert (ref.version, ref.previous_version) == (2, 1)
    assert store.metadata(path).current_version == 2, "the retry wrote again"
    assert ops.versions(store, path).versions[0].pinned


def test_rotate_undeletes_a_soft_deleted_current_version(store: SecretStore, path: str) -> None:
    store.write(path, {"api": "old", "b": "1"}, cas=0)
    store.delete(path, [1])
    ref = ops.rotate(store, rotation(path), "r1")
    assert store.read(path, ref.previous_version).data == {"api": "old", "b": "1"}
    assert store.read(path).data["b"] == "1"


def test_restore_makes_an_old_version_current_once(store: SecretStore, path: str) -> None:
    store.write(path, {"api": "old"}, cas=0)
    ref = ops.rotate(store, rotation(path), "r1")
    back = ops.restore(store, SecretRestore(path=path, version=1, expected_version=ref.version))
    assert (back.version, back.previous_version) == (3, 2)
    assert store.read(path).data == {"api": "old"}
    retry = ops.restore(store, SecretRestore(path=path, version=1, expected_version=ref.version))
    assert retry.version == 3 and store.metadata(path).current_version == 3
    assert not any(v.pinned for v in ops.versions(store, path).versions), "rolled back: no pin"
    with pytest.raises(SecretConflict):
        ops.restore(store, SecretRestore(path=path, version=2, expected_version=2))
    with pytest.raises(SecretNotFound):
        ops.restore(store, SecretRestore(path=path, version=9))


def test_resolve_names_env_path_and_key(store: SecretStore, path: str) -> None:
    store.write(path, {"api": "v-1", "db": "v-2"}, cas=0)
    refs = [
        SecretRef(env="API", path=path, key="api"),
        SecretRef(env="DB", path=path, key="db"),
    ]
    assert ops.resolve(store, refs) == {"API": "v-1", "DB": "v-2"}
    with pytest.raises(SecretNotFound) as missing_key:
        ops.resolve(store, [SecretRef(env="X_URL", path=path, key="nope")])
    assert all(s in str(missing_key.value) for s in ("X_URL", path, "'nope'"))
    with pytest.raises(SecretNotFound) as missing_path:
        ops.resolve(store, [SecretRef(env="Y_URL", path=f"{path}/none", key="k")])
    assert "Y_URL" in str(missing_path.value) and f"{path}/none" in str(missing_path.value)
