"""Secret references and the secret-store activities' payloads: paths and versions, never values.

Agents get secrets as references (:class:`SecretRef`): the platform activity resolves them when it
starts replicas, so no value is ever in a workflow's history. Versions follow Vault's KV v2 secrets
engine (https://developer.hashicorp.com/vault/api-docs/secret/kv/kv-v2): every write makes a new
version, numbered from 1; check-and-set (``cas``) makes a write succeed only if the current
version is the one given (0: only if the secret does not exist yet).
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field

SECRET_PATH_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)*$"
"""A KV path: slash-separated segments of letters, digits, '_', '.', '-' (no '..', no leading /)."""
SECRET_KEY_PATTERN = r"^[A-Za-z0-9_.-]{1,128}$"
"""A key inside a secret."""
ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"
"""An environment variable name."""


ROTATION_ID_PATTERN = r"^[A-Za-z0-9_.:/@-]{1,256}$"
"""A rotation id (a workflow id, run id and activity id fit)."""
MAX_SECRETS_PER_AGENT = 50
"""Entries of ``AgentSpec.secrets``."""

_SECRET_NAME = re.compile(r"(_KEY$|_TOKEN$|PASSWORD|SECRET)", re.IGNORECASE)


def looks_like_secret(env_name: str) -> bool:
    """Whether an environment variable name looks like it holds a secret.

    Names ending in ``_KEY`` or ``_TOKEN``, or containing ``PASSWORD`` or ``SECRET``, any case
    (e.g. ``OPENAI_API_KEY``, ``github_token``, ``DB_PASSWORD``, ``CLIENT_SECRET_FILE``).
    ``AgentSpec.env`` refuses them: their values would be in plain workflow history.
    """
    return _SECRET_NAME.search(env_name) is not None


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
    rotation_id: str | None = Field(
        None,
        pattern=ROTATION_ID_PATTERN,
        max_length=256,
        description="Identifies this rotation so a retry finds its write instead of writing "
        "again; None: the calling activity's workflow id, run id and activity id.",
    )


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


class SecretVersionInfo(_Frozen):
    """One version of a secret, without its data."""

    version: int = Field(ge=1)
    created_time: str = Field(description="RFC 3339 time the version was written.")
    deleted: bool = Field(False, description="Soft-deleted (can be undeleted).")
    destroyed: bool = Field(False, description="Destroyed for good.")
    pinned: bool = Field(False, description="Kept undeletable until a rotation is confirmed.")


class SecretVersions(_Frozen):
    """Answer of ``secret_versions``: the versions of a secret, oldest first; no values."""

    path: str
    current_version: int = Field(ge=0, description="0: the secret has no version.")
    versions: list[SecretVersionInfo] = Field(default_factory=list)
