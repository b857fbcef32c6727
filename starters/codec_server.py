"""A Temporal codec server: lets the Web UI and the ``temporal`` CLI show encrypted payloads.

Protocol (Temporal docs "Codec Server", https://docs.temporal.io/production-deployment/data-encryption,
and the samples-go ``codec-server`` README): ``POST .../encode`` and ``POST .../decode`` take and
return ``{"payloads": [...]}``, a ``temporal.api.common.v1.Payloads`` message in proto3 JSON form
(``{"metadata": {k: base64}, "data": base64}`` per payload). Only the last path segment selects the
operation, so the server can be mounted at any depth, e.g. ``--codec-endpoint
http://localhost:8081/{namespace}``. Invalid JSON and codec errors are ``400 Bad Request``.

CORS follows the samples-python ``encryption/codec_server.py`` sample: requests whose ``Origin`` is
configured get ``Access-Control-Allow-Origin`` plus, on the ``OPTIONS`` preflight, the allowed
method (``POST``) and headers (``X-Namespace``, ``Content-Type``, ``Authorization``); other origins
get none, so browsers block them.

Authentication: with a token configured (``codec_server.token``), ``/encode`` and ``/decode``
answer ``401`` (``WWW-Authenticate: Bearer``) unless the request carries ``Authorization: Bearer
<token>`` (compared in constant time); the ``OPTIONS`` preflight needs none, as browsers send it
without credentials. The ``temporal`` CLI sends the header with ``--codec-auth 'Bearer <token>'``;
the Web UI sends its user's access token when "Pass the user access token" is on in its codec
settings.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Awaitable, Callable, Sequence

from google.protobuf import json_format
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from temporalio.api.common.v1 import Payload, Payloads
from temporalio.converter import PayloadCodec

from fleetops.codec import codec_from_settings
from fleetops.settings import Settings

logger = logging.getLogger(__name__)

ALLOW_METHODS = "POST"
"""``Access-Control-Allow-Methods`` sent to allowed origins."""

ALLOW_HEADERS = "X-Namespace, Content-Type, Authorization"
"""``Access-Control-Allow-Headers`` sent to allowed origins (what the Web UI sends)."""

_CodecFn = Callable[[Sequence[Payload]], Awaitable[list[Payload]]]


def create_codec_app(
    codec: PayloadCodec, cors_origins: list[str], *, token: str | None = None
) -> Starlette:
    """Build the codec server ASGI app.

    Args:
        codec: the codec applied by ``/encode`` and ``/decode``.
        cors_origins: browser origins allowed to call the server (the Web UI's URL, e.g.
            ``http://localhost:8233``). Exact match on scheme, host and port.
        token: bearer token every ``POST`` must carry; None: no authentication.

    Returns:
        A Starlette app serving ``POST``/``OPTIONS`` on any path ending in ``/encode`` or
        ``/decode``.
    """
    allowed = frozenset(origin.rstrip("/") for origin in cors_origins)
    operations: dict[str, _CodecFn] = {"encode": codec.encode, "decode": codec.decode}
    expected = f"Bearer {token}".encode() if token is not None else None

    def authorized(request: Request) -> bool:
        if expected is None:
            return True
        given = request.headers.get("authorization", "").strip().encode()
        return hmac.compare_digest(given, expected)

    def cors_headers(request: Request, *, preflight: bool) -> dict[str, str]:
        origin = request.headers.get("origin")
        if origin is None or origin.rstrip("/") not in allowed:
            return {}
        headers = {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}
        if preflight:
            headers["Access-Control-Allow-Methods"] = ALLOW_METHODS
            headers["Access-Control-Allow-Headers"] = ALLOW_HEADERS
            headers["Access-Control-Max-Age"] = "600"
        return headers

    async def handle(request: Request) -> Response:
        operation = operations.get(request.url.path.rstrip("/").rsplit("/", 1)[-1])
        if operation is None:
            return PlainTextResponse("not found: use .../encode or .../decode", status_code=404)
        if request.method == "OPTIONS":
            return Response(status_code=200, headers=cors_headers(request, preflight=True))
        headers = cors_headers(request, preflight=False)
        if not authorized(request):
            logger.warning("codec server: %s without a valid bearer token", request.url.path)
            return PlainTextResponse(
                "unauthorized: send Authorization: Bearer <FLEETOPS_CODEC_SERVER__TOKEN>",
                status_code=401,
                headers={**headers, "WWW-Authenticate": "Bearer"},
            )
        try:
            payloads = _parse_payloads(await request.body())
        except ValueError as err:
            return PlainTextResponse(str(err), status_code=400, headers=headers)
        try:
            result = await operation(payloads)
        except Exception as err:
            # Decoder errors are the client's problem (wrong key, tampered data): 400 per protocol.
            logger.warning("codec server %s failed: %s", request.url.path, err)
            return PlainTextResponse(f"codec error: {err}", status_code=400, headers=headers)
        body = json_format.MessageToDict(Payloads(payloads=result))
        return JSONResponse(body, headers=headers)

    return Starlette(routes=[Route("/{path:path}", handle, methods=["POST", "OPTIONS"])])


def _parse_payloads(body: bytes) -> list[Payload]:
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"request body is not JSON: {err}") from None
    if not isinstance(document, dict):
        raise ValueError('request body must be a JSON object {"payloads": [...]}')
    try:
        message = json_format.ParseDict(document, Payloads())
    except json_format.ParseError as err:
        raise ValueError(f"request body is not a Payloads message in proto3 JSON: {err}") from None
    return list(message.payloads)


def serve_codec_server(settings: Settings) -> None:
    """Run the codec server with uvicorn until interrupted (``fleetops codec-server``).

    Binds ``settings.codec_server.host``/``port``, allows ``settings.codec_server.cors_origins``,
    and requires ``settings.codec_server.token`` as a bearer token when set.
    Point the Web UI (``--ui-codec-endpoint`` / codec settings) or the CLI
    (``--codec-endpoint http://host:port``) at it.

    Args:
        settings: FleetOps settings; encryption must be enabled with keys configured.

    Raises:
        ValueError: encryption is disabled, or a key is invalid (the message names the key id).
    """
    codec = codec_from_settings(settings.encryption)
    if codec is None:
        raise ValueError(
            "the codec server needs encryption keys: set FLEETOPS_ENCRYPTION__ENABLED=true, "
            'FLEETOPS_ENCRYPTION__KEYS=\'{"<id>": "<base64 key>"}\' and '
            "FLEETOPS_ENCRYPTION__ACTIVE_KEY_ID=<id>"
        )
    import uvicorn  # Imported here: only the codec-server command needs it.

    cs = settings.codec_server
    token = cs.token.get_secret_value() if cs.token is not None else None
    if token is None and cs.host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning(
            "codec server on %s decrypts for anyone who can reach it; set "
            "FLEETOPS_CODEC_SERVER__TOKEN",
            cs.host,
        )
    app = create_codec_app(codec, cs.cors_origins, token=token)
    uvicorn.run(app, host=cs.host, port=cs.port)
