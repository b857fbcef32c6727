"""The codec's error messages and edge cases, as operators meet them (pure Python)."""

from __future__ import annotations

import base64
import re

import pytest
from pydantic import SecretStr
from temporalio.api.common.v1 import Payload

from fleetops.codec import (
    ENCRYPTED_ENCODING,
    KEY_ID_METADATA,
    NONCE_SIZE,
    DecryptionError,
    EncryptionCodec,
    codec_from_settings,
    generate_key,
)
from fleetops.settings import EncryptionSettings

KEY = b"k" * 32
GUIDE = "(generate one with fleetops.codec.generate_key())"


def codec() -> EncryptionCodec:
    return EncryptionCodec({"k": KEY}, active_key_id="k")


def encrypted(data: bytes, key_id: bytes | None = b"k") -> Payload:
    meta = {"encoding": ENCRYPTED_ENCODING}
    if key_id is not None:
        meta[KEY_ID_METADATA] = key_id
    return Payload(metadata=meta, data=data)


def test_short_key_message_says_how_to_make_one() -> None:
    with pytest.raises(ValueError, match=re.escape(f"AES-256 needs 32 {GUIDE}")):
        EncryptionCodec({"k": b"short"}, active_key_id="k")


def test_key_ids() -> None:
    c = EncryptionCodec({"a": KEY, "b": KEY}, active_key_id="b")
    assert c.key_ids == {"a", "b"} and c.active_key_id == "b"


async def test_payload_without_key_id() -> None:
    with pytest.raises(
        DecryptionError,
        match=re.escape(
            "encrypted payload has no 'encryption-key-id' metadata; it was not written by "
            "FleetOps' EncryptionCodec"
        ),
    ):
        await codec().decode([encrypted(b"x" * 40, key_id=None)])


async def test_undecodable_key_id_is_named_not_raised() -> None:
    with pytest.raises(DecryptionError, match=r"key id '\ufffd\ufffd', which is not configured"):
        await codec().decode([encrypted(b"x" * 40, key_id=b"\xff\xfe")])


@pytest.mark.parametrize("size", [0, 1, NONCE_SIZE])
async def test_truncated_payload(size: int) -> None:
    with pytest.raises(DecryptionError, match=r"^encrypted payload \(key id 'k'\) is truncated$"):
        await codec().decode([encrypted(b"x" * size)])


async def test_shortest_ciphertext_is_authenticated_not_truncated() -> None:
    # One byte past the nonce is not "truncated": it fails authentication instead.
    with pytest.raises(
        DecryptionError,
        match=re.escape(
            "payload encrypted with key id 'k' failed authentication: the data or its key id "
            "was altered, or the configured key differs from the one used"
        ),
    ):
        await codec().decode([encrypted(b"x" * (NONCE_SIZE + 1))])


def test_enabled_without_active_key_id() -> None:
    # The settings model refuses this already; the codec checks again for settings built
    # without validation.
    settings = EncryptionSettings.model_construct(
        enabled=True, keys={"k1": SecretStr(generate_key())}, active_key_id=None
    )
    with pytest.raises(
        ValueError,
        match=r"^encryption.active_key_id is required when encryption is enabled$",
    ):
        codec_from_settings(settings)


@pytest.mark.parametrize(
    "key",
    [
        base64.b64encode(KEY).decode() + "$",  # junk a lenient decoder would skip
        base64.b64encode(KEY).decode()[:-1] + "!",
        "not base64!!",
    ],
    ids=["trailing-junk", "bad-char", "words"],
)
def test_key_must_be_strict_base64(key: str) -> None:
    settings = EncryptionSettings(enabled=True, keys={"k1": SecretStr(key)}, active_key_id="k1")
    with pytest.raises(
        ValueError,
        match=re.escape(
            "encryption key 'k1' is not valid base64; generate one with "
            "fleetops.codec.generate_key()"
        ),
    ):
        codec_from_settings(settings)


def test_key_with_surrounding_whitespace_is_accepted() -> None:
    key = f"  {base64.b64encode(KEY).decode()}\n"
    settings = EncryptionSettings(enabled=True, keys={"k1": SecretStr(key)}, active_key_id="k1")
    c = codec_from_settings(settings)
    assert c is not None and c.key_ids == {"k1"}


def test_generated_keys_are_random_ascii_base64() -> None:
    a, b = generate_key(), generate_key()
    assert a != b and len(a) == 44 and a.isascii()
    assert len(base64.b64decode(a, validate=True)) == 32
