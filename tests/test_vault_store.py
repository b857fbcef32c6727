"""VaultStore through the real hvac client against the loopback Vault fake: errors mapped by
status code, token renewal, Kubernetes auth, namespaces; and the activities' ApplicationErrors.

``live_vault`` tests run the store contract against a real Vault when FLEETOPS_TEST_VAULT_ADDR
(and FLEETOPS_TEST_VAULT_TOKEN) are set, e.g. ``vault server -dev`` (KV v2 mounted at secret/).
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.secret_stores import ops
from activities.secret_stores.base import (
    SecretConflict,
    SecretForbidden,
    SecretInvalidInput,
    SecretNotFound,
    SecretStoreMisconfigured,
    SecretStoreUnavailable,
)
from activities.secret_stores.vault import VaultStore
from activities.secrets import SecretActivities
from fleetops import errors
from fleetops.secrets import SecretRestore, SecretRotation
from fleetops.settings import VaultSettings
from tests.fakes.vault import FakeVault


@pytest.fixture
def vault() -> Iterator[FakeVault]:
    with FakeVault() as fake:
        yield fake


def store_for(fake: FakeVault, **kw: object) -> VaultStore:
    settings = VaultSettings.model_validate({"address": fake.url, "token": "root", **kw})
    return VaultStore(settings)


@pytest.mark.parametrize(
    ("code", "error", "retryable"),
    [
        (400, SecretInvalidInput, False),
        (401, SecretForbidden, False),
        (403, SecretForbidden, False),
        (404, SecretNotFound, False),
        (429, SecretStoreUnavailable, True),
        (500, SecretStoreUnavailable, True),
        (502, SecretStoreUnavailable, True),
        (503, SecretStoreUnavailable, True),
        (405, SecretStoreMisconfigured, False),
    ],
)
def test_status_codes_map_to_error_types(
    vault: FakeVault, code: int, error: type[Exception], retryable: bool
) -> None:
    store = store_for(vault)
    store.write("agents/a", {"k": "v"}, cas=0)
    vault.fail_next(code, path_contains="agents/a")
    with pytest.raises(error) as raised:
        store.read("agents/a")
    assert raised.value.retryable is retryable  # type: ignore[attr-defined]


def test_cas_mismatch_is_a_conflict_and_other_400s_are_not(vault: FakeVault) -> None:
    store = store_for(vault)
    store.write("agents/a", {"k": "v"}, cas=0)
    with pytest.raises(SecretConflict):
        store.write("agents/a", {"k": "w"}, cas=0)
    vault.secrets["agents/a"].cas_required = True
    with pytest.raises(SecretInvalidInput, match="check-and-set parameter required"):
        store.write("agents/a", {"k": "w"}, cas=None)


def test_sealed_denied_and_unreachable(vault: FakeVault) -> None:
    store = store_for(vault)
    store.write("agents/a", {"k": "v"}, cas=0)
    vault.sealed = True
    with pytest.raises(SecretStoreUnavailable, match="sealed"):
        store.read("agents/a")
    vault.sealed = False
    vault.deny("agents/")
    with pytest.raises(SecretForbidden, match="permission denied"):
        store.read("agents/a")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    gone = VaultStore(VaultSettings(address=f"http://127.0.0.1:{closed}", token=SecretStr("x")))
    with pytest.raises(SecretStoreUnavailable, match="unreachable"):
        gone.read("agents/a")


def test_a_bad_token_is_forbidden_and_no_token_is_misconfigured(vault: FakeVault) -> None:
    with pytest.raises(SecretForbidden):
        store_for(vault, token="wrong").read("agents/a")
    with pytest.raises(SecretStoreMisconfigured, match="FLEETOPS_SECRETS__VAULT__TOKEN"):
        store_for(vault, token=None).read("agents/a")


def test_the_token_is_renewed_before_it_expires(vault: FakeVault) -> None:
    vault.add_token("t1", ttl=100, renewable=True)
    now = [0.0]
    settings = VaultSettings(address=vault.url, token=SecretStr("t1"), renew_before_seconds=60)
    store = VaultStore(settings, clock=lambda: now[0])
    store.write("agents/a", {"k": "v"}, cas=0)
    assert (store.logins, store.renewals) == (1, 0)
    now[0] = 30.0  # 70 s left: no renewal yet
    store.read("agents/a")
    assert store.renewals == 0
    now[0] = 45.0  # 55 s left
    store.read("agents/a")
    assert store.renewals == 1 and vault.count("POST", "auth/token/renew-self") == 1


def test_kubernetes_auth_logs_in_with_the_service_account_jwt(
    vault: FakeVault, tmp_path: Path
) -> None:
    jwt = tmp_path / "token"
    jwt.write_text("eyJ.jwt.sig\n")
    vault.k8s_roles["fleetops"] = "eyJ.jwt.sig"
    store = store_for(
        vault,
        token=None,
        auth_method="kubernetes",
        kubernetes_role="fleetops",
        kubernetes_jwt_path=str(jwt),
    )
    assert store.write("agents/a", {"k": "v"}, cas=0) == 1
    assert store.logins == 1 and vault.count("POST", "auth/kubernetes/login") == 1
    vault.k8s_roles["fleetops"] = "another"
    refused = store_for(
        vault,
        token=None,
        auth_method="kubernetes",
        kubernetes_role="fleetops",
        kubernetes_jwt_path=str(jwt),
    )
    with pytest.raises(SecretForbidden):
        refused.read("agents/a")
    missing = store_for(
        vault,
        auth_method="kubernetes",
        kubernetes_role="r",
        kubernetes_jwt_path=str(tmp_path / "none"),
    )
    with pytest.raises(SecretStoreMisconfigured, match="JWT"):
        missing.read("agents/a")


def test_the_namespace_header_is_sent() -> None:
    with FakeVault(namespace="team-a") as fake:
        with pytest.raises(SecretForbidden):
            store_for(fake).write("agents/a", {"k": "v"}, cas=0)
        assert store_for(fake, namespace="team-a").write("agents/a", {"k": "v"}, cas=0) == 1


@pytest.mark.parametrize(
    ("code", "kind", "non_retryable"),
    [
        (403, errors.SECRET_FORBIDDEN, True),
        (404, errors.SECRET_NOT_FOUND, True),
        (503, errors.SECRET_STORE_UNAVAILABLE, False),
    ],
)
async def test_activities_raise_typed_application_errors(
    vault: FakeVault, code: int, kind: str, non_retryable: bool
) -> None:
    store = store_for(vault)
    store.write("agents/a", {"api": "v"}, cas=0)
    vault.fail_next(code, path_contains="agents/a")
    with pytest.raises(ApplicationError) as raised:
        await ActivityEnvironment().run(
            SecretActivities(store).rotate_secret, SecretRotation(path="agents/a", key="api")
        )
    assert (raised.value.type, raised.value.non_retryable) == (kind, non_retryable)


async def test_rotate_activity_retry_uses_the_activity_identity(vault: FakeVault) -> None:
    store = store_for(vault)
    store.write("agents/a", {"api": "v"}, cas=0)
    acts, env = SecretActivities(store), ActivityEnvironment()
    req = SecretRotation(path="agents/a", key="api", expected_version=1)
    first = await env.run(acts.rotate_secret, req)
    assert await env.run(acts.rotate_secret, req) == first  # same workflow, run, activity id
    with pytest.raises(ApplicationError) as raised:
        await ActivityEnvironment().run(
            acts.rotate_secret, req.model_copy(update={"rotation_id": "another"})
        )
    assert raised.value.type == errors.SECRET_CONFLICT and raised.value.non_retryable
    assert await env.run(acts.confirm_secret, "agents/a", first.version) == [1]
    listed = await env.run(acts.secret_versions, "agents/a")
    assert listed.current_version == 2 and not any(v.pinned for v in listed.versions)


LIVE_ADDR = os.environ.get("FLEETOPS_TEST_VAULT_ADDR")


@pytest.mark.live_vault
@pytest.mark.skipif(not LIVE_ADDR, reason="set FLEETOPS_TEST_VAULT_ADDR (+ _TOKEN) for real Vault")
def test_live_vault_rotation_round_trip() -> None:
    token = os.environ.get("FLEETOPS_TEST_VAULT_TOKEN", "root")
    store = VaultStore(VaultSettings(address=str(LIVE_ADDR), token=SecretStr(token)))
    path = f"fleetops-test/{uuid.uuid4().hex[:8]}"
    store.write(path, {"api": "first"}, cas=0)
    with pytest.raises(SecretConflict):
        store.write(path, {"api": "x"}, cas=0)
    ref = ops.rotate(store, SecretRotation(path=path, key="api", expected_version=1), "live-1")
    assert ops.rotate(store, SecretRotation(path=path, key="api"), "live-1") == ref
    assert ops.confirm(store, path, ref.version) == [1]
    back = ops.restore(store, SecretRestore(path=path, version=1))
    assert store.read(path).data == {"api": "first"} and back.version == 3
    store.destroy(path, [1, 2, 3])
