"""AES-256-GCM payload encryption: a Temporal ``PayloadCodec`` with key ids for rotation.

Every payload a client or worker writes is serialised, encrypted with the *active* key and stored as
``binary/encrypted`` with the key id in its metadata; any configured key decrypts (rotation: add the
new key, make it active, keep the old one until no history references it). Payloads that are not
``binary/encrypted`` pass through ``decode`` unchanged, so plain JSON sent by the ``temporal`` CLI
(``temporal workflow start --input '{...}'``) is still accepted when encryption is on.

The wire format follows the samples-python ``encryption`` sample: data is ``nonce || ciphertext``
with a random 96-bit nonce, the size NIST SP 800-38D (section 8.2) recommends for GCM.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Mapping, Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from temporalio.api.common.v1 import Payload
from temporalio.converter import PayloadCodec

from fleetops.settings import EncryptionSettings

ENCRYPTED_ENCODING = b"binary/encrypted"
"""``encoding`` metadata of an encrypted payload."""

KEY_ID_METADATA = "encryption-key-id"
"""Metadata key naming the key that encrypted a payload."""

KEY_SIZE = 32
"""AES-256 key length in bytes."""

NONCE_SIZE = 12
"""GCM nonce length in bytes (96 bits, NIST SP 800-38D section 8.2)."""


class DecryptionError(ValueError):
    """A ``binary/encrypted`` payload cannot be decrypted (unknown key id or failed authentication).

    The message names the key id, never key material.
    """


class EncryptionCodec(PayloadCodec):
    """Encrypts every payload with AES-256-GCM; decrypts with any configured key.

    The key id is bound to the ciphertext as GCM associated data, so a payload whose
    ``encryption-key-id`` header was swapped fails authentication instead of decrypting.
    """

    def __init__(self, keys: Mapping[str, bytes], active_key_id: str) -> None:
        """Build the codec.

        Args:
            keys: key id -> raw 32-byte AES key. All are used for decryption.
            active_key_id: id of the key that encrypts new payloads; must be in ``keys``.

        Raises:
            ValueError: a key is not 32 bytes, or ``active_key_id`` is not in ``keys``.
        """
        for key_id, key in keys.items():
            if len(key) != KEY_SIZE:
                raise ValueError(
                    f"encryption key {key_id!r} is {len(key)} bytes; AES-256 needs {KEY_SIZE} "
                    "(generate one with fleetops.codec.generate_key())"
                )
        if active_key_id not in keys:
            raise ValueError(
                f"active encryption key id {active_key_id!r} is not among the configured keys "
                f"{sorted(keys)}"
            )
        self._ciphers = {key_id: AESGCM(bytes(key)) for key_id, key in keys.items()}
        self._active_key_id = active_key_id

    @property
    def active_key_id(self) -> str:
        """Id of the key that encrypts new payloads."""
        return self._active_key_id

    @property
    def key_ids(self) -> frozenset[str]:
        """Ids of every key this codec can decrypt with."""
        return frozenset(self._ciphers)

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        """Encrypt payloads with the active key.

        Args:
            payloads: payloads to encrypt (any encoding).

        Returns:
            One ``binary/encrypted`` payload per input, data ``nonce || ciphertext``.
        """
        key_id = self._active_key_id.encode()
        cipher = self._ciphers[self._active_key_id]
        out = []
        for payload in payloads:
            nonce = os.urandom(NONCE_SIZE)
            ciphertext = cipher.encrypt(nonce, payload.SerializeToString(), key_id)
            out.append(
                Payload(
                    metadata={"encoding": ENCRYPTED_ENCODING, KEY_ID_METADATA: key_id},
                    data=nonce + ciphertext,
                )
            )
        return out

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        """Decrypt ``binary/encrypted`` payloads; pass every other payload through unchanged.

        Args:
            payloads: payloads as stored in history or sent by a client.

        Returns:
            The original payloads.

        Raises:
            DecryptionError: the key id is missing or unknown, or authentication failed
                (tampered data, swapped key id, wrong key).
        """
        return [self._decrypt(p) if _is_encrypted(p) else p for p in payloads]

    def _decrypt(self, payload: Payload) -> Payload:
        raw_key_id = payload.metadata.get(KEY_ID_METADATA)
        if raw_key_id is None:
            raise DecryptionError(
                f"encrypted payload has no {KEY_ID_METADATA!r} metadata; it was not written "
                "by FleetOps' EncryptionCodec"
            )
        key_id = raw_key_id.decode(errors="replace")
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            raise DecryptionError(
                f"payload was encrypted with key id {key_id!r}, which is not configured "
                f"(known: {sorted(self._ciphers)}); add that key to encryption.keys"
            )
        data = payload.data
        if len(data) <= NONCE_SIZE:
            raise DecryptionError(f"encrypted payload (key id {key_id!r}) is truncated")
        try:
            plaintext = cipher.decrypt(data[:NONCE_SIZE], data[NONCE_SIZE:], raw_key_id)
        except InvalidTag:
            raise DecryptionError(
                f"payload encrypted with key id {key_id!r} failed authentication: the data or "
                "its key id was altered, or the configured key differs from the one used"
            ) from None
        decoded = Payload()
        decoded.ParseFromString(plaintext)
        return decoded


def _is_encrypted(payload: Payload) -> bool:
    return payload.metadata.get("encoding") == ENCRYPTED_ENCODING


def codec_from_settings(settings: EncryptionSettings) -> EncryptionCodec | None:
    """Build the codec the settings describe.

    Args:
        settings: ``encryption`` settings; keys are standard base64 of 32 bytes.

    Returns:
        An :class:`EncryptionCodec`, or ``None`` when encryption is disabled.

    Raises:
        ValueError: a key is not valid base64 or not 32 bytes (the message names the key id),
            or no active key id is set.
    """
    if not settings.enabled:
        return None
    if not settings.active_key_id:
        raise ValueError("encryption.active_key_id is required when encryption is enabled")
    keys = {
        key_id: _decode_key(key_id, secret.get_secret_value())
        for key_id, secret in settings.keys.items()
    }
    return EncryptionCodec(keys, settings.active_key_id)


def _decode_key(key_id: str, value: str) -> bytes:
    try:
        key = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(
            f"encryption key {key_id!r} is not valid base64; generate one with "
            "fleetops.codec.generate_key()"
        ) from None
    if len(key) != KEY_SIZE:
        raise ValueError(
            f"encryption key {key_id!r} decodes to {len(key)} bytes; AES-256 needs {KEY_SIZE}"
        )
    return key


def generate_key() -> str:
    """Generate a new random AES-256 key for ``encryption.keys``.

    Returns:
        Standard base64 of 32 random bytes.
    """
    return base64.b64encode(AESGCM.generate_key(bit_length=256)).decode("ascii")
