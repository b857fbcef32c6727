"""Secret stores: the embedded encrypted file (``local``) and Vault KV v2 (``vault``).

:func:`build_secret_store` picks one from ``settings.secrets.backend``; :class:`SecretResolver`
is what the platforms use to turn ``AgentSpec.secrets`` into values when they start replicas.
"""

from __future__ import annotations

import asyncio

from temporalio.exceptions import ApplicationError

from activities.secret_stores import ops
from activities.secret_stores.base import SecretStore, SecretStoreError, to_application_error
from activities.secret_stores.local import LocalStore
from fleetops.secrets import SecretRef
from fleetops.settings import Settings

__all__ = ["LocalStore", "SecretResolver", "SecretStore", "build_secret_store"]


def build_secret_store(settings: Settings) -> SecretStore:
    """The store ``settings.secrets.backend`` names (nothing is contacted until first use).

    Args:
        settings: ``secrets.*`` and ``state_dir`` (the local store's directory).
    """
    if settings.secrets.backend == "vault":
        from activities.secret_stores.vault import VaultStore

        return VaultStore(settings.secrets.vault)
    return LocalStore(settings.state_dir, settings.secrets.local_key)


class SecretResolver:
    """Resolves secret references into values, off the event loop, for the platforms.

    Args:
        store: the secret store.
    """

    def __init__(self, store: SecretStore) -> None:
        self.store = store

    async def resolve(self, refs: list[SecretRef]) -> dict[str, str]:
        """``env name -> value`` of the current versions of ``refs`` ({} without refs).

        Raises:
            ApplicationError: non-retryable ``SecretNotFound`` naming the env variable, path and
                key; ``SecretForbidden``; retryable ``SecretStoreUnavailable``; ... (see
                :mod:`fleetops.errors`).
        """
        if not refs:
            return {}
        try:
            return await asyncio.to_thread(ops.resolve, self.store, list(refs))
        except SecretStoreError as e:
            raise to_application_error(e) from None

    async def mask_values(self, refs: list[SecretRef]) -> list[str]:
        """The values ``refs`` may have had lately (recent and pinned versions), to mask in
        text about their agent; a path that is gone gives none ([] without refs).

        Raises:
            ApplicationError: ``SecretForbidden``, retryable ``SecretStoreUnavailable``, ...
        """
        if not refs:
            return []
        try:
            return await asyncio.to_thread(ops.mask_values, self.store, list(refs))
        except SecretStoreError as e:
            raise to_application_error(e) from None


def no_secrets_error(agent_id: str) -> ApplicationError:
    """The error a platform built without a resolver raises for a spec with ``secrets``."""
    return ApplicationError(
        f"agent {agent_id!r} has `secrets` but this platform has no secret store; build it "
        "with build_platform(settings) (secrets.backend)",
        type="SecretStoreMisconfigured",
        non_retryable=True,
    )
