"""Secret references and the secret-store activities' payloads: paths and versions, never values.

Agents get secrets as references (:class:`SecretRef`): the platform activity resolves them when it
starts replicas, so no value is ever in a workflow's history. Versions follow Vault's KV v2 secrets
engine (https://developer.hashicorp.com/vault/api-docs/secret/kv/kv-v2): every write makes a new
version, numbered from 1; check-and-set (``cas``) makes a write succeed only if the current
version is the one given (0: only if the secret does not exist yet).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

SECRET_PATH_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)*$"
"""A KV path: slash-separated segments of letters, digits, '_', '.', '-' (no '..', no leading /)."""
SECRET_KEY_PATTERN = r"^[A-Za-z0-9_.-]{1,128}$"
"""A key inside a secret."""
ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"
"""An environment variable name."""


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SecretRef(_Frozen):
    """One entry of ``AgentSpec.secrets``: put ``path``'s ``key`` into the replica's ``env``."""

    env: str = Field(pattern=ENV_NAME_PATTERN, description="Environment variable to set.")
    path: str = Field(pattern=SECRET_PATH_PATTERN, max_length=512, description="Secret path.")
    key: str = Field(pattern=SECRET_KEY_PATTERN, description="Key inside the secret.")


class SecretRotation(_Frozen):
    """Input of ``rotate_secret``: write a new random value of ``key`` at ``path``.

    The activity generates the value itself (never in history) and writes with
    ``cas=expected_version`` so a concurrent writer makes it fail instead of being overwritten.
    """

    path: str = Field(pattern=SECRET_PATH_PATTERN, max_length=512)
    key: str = Field(pattern=SECRET_KEY_PATTERN)
    expected_version: int | None = Field(
        None, ge=0, description="Current version the write must replace; None: read it first."
    )
    value_bytes: int = Field(32, ge=16, le=256, description="Random bytes in the new value.")


class SecretRestore(_Frozen):
    """Input of ``restore_secret``: make ``version``'s data current again (a new version)."""

    path: str = Field(pattern=SECRET_PATH_PATTERN, max_length=512)
    version: int = Field(ge=1)
    expected_version: int | None = Field(None, ge=1, description="cas for the restoring write.")


class SecretVersionRef(_Frozen):
    """Result of a write: the path, the version now current and the one it replaced."""

    path: str
    version: int = Field(ge=1)
    previous_version: int | None = Field(None, ge=1)
