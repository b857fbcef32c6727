"""The local gateway's admin endpoint: the routes of :mod:`activities.platform.local.admin`.

Every body is parsed with the contract's pydantic models; a bad one is answered 422 with
pydantic's error list, an invalid agent id 404.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from activities.platform.local.admin import DrainRequest, DrainResult, SyncRequest, SyncResult
from fleetops.constants import is_agent_id

if TYPE_CHECKING:
    from activities.platform.local.gateway import Gateway


def _json(model: BaseModel) -> Response:
    return Response(model.model_dump_json(), media_type="application/json")


def admin_app(gateway: Gateway) -> Starlette:
    """The admin ASGI app of ``gateway``: ``GET /routes``, ``GET /healthz``,
    ``POST /agents/{agent_id}/sync`` and ``POST /agents/{agent_id}/drain``."""

    async def routes(_: Request) -> Response:
        return _json(gateway.routes())

    async def healthz(_: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def sync(request: Request) -> Response:
        agent_id = request.path_params["agent_id"]
        if not is_agent_id(agent_id):
            return JSONResponse({"error": f"invalid agent id {agent_id!r}"}, status_code=404)
        try:
            req = SyncRequest.model_validate_json(await request.body())
        except ValidationError as e:
            return JSONResponse({"error": e.errors(include_url=False)}, status_code=422)
        if req.service is not None:
            route = await gateway.apply(agent_id, req.service)
        else:
            route = await gateway.reload(agent_id)
        if route is None:  # no service (any more): nothing to serve, nothing will change it
            return _json(SyncResult(served=req.generation is None, route=None))

        def served() -> bool:
            now = gateway.route(agent_id)
            return now is None or now.serves(req)

        done = await gateway.wait_until(served, req.timeout_seconds)
        return _json(SyncResult(served=done, route=gateway.route(agent_id)))

    async def drain(request: Request) -> Response:
        agent_id = request.path_params["agent_id"]
        if not is_agent_id(agent_id):
            return JSONResponse({"error": f"invalid agent id {agent_id!r}"}, status_code=404)
        try:
            req = DrainRequest.model_validate_json(await request.body())
        except ValidationError as e:
            return JSONResponse({"error": e.errors(include_url=False)}, status_code=422)
        await gateway.reload(agent_id)
        busy: dict[int, int] = {}

        def drained() -> bool:
            route = gateway.route(agent_id)
            busy.clear()
            busy.update(route.busy(req.pids) if route else {})
            return not busy

        done = await gateway.wait_until(drained, req.timeout_seconds)
        return _json(DrainResult(drained=done, busy=busy))

    return Starlette(
        routes=[
            Route("/routes", routes),
            Route("/healthz", healthz),
            Route("/agents/{agent_id}/sync", sync, methods=["POST"]),
            Route("/agents/{agent_id}/drain", drain, methods=["POST"]),
        ]
    )
