"""The Alertmanager webhook receiver: alerts become durable incidents (``fleetops alert-receiver``).

An ASGI app (Starlette, served by uvicorn) for Prometheus Alertmanager's webhook, version 4
(https://prometheus.io/docs/alerting/latest/configuration/#webhook_config):

- ``POST /alerts``: ``Authorization: Bearer <alerts.token>`` (when a token is set), a JSON body of
  at most ``alerts.max_body_bytes`` bytes validated as
  :class:`~fleetops.incidents.AlertmanagerWebhook`. A wrong/missing token (401), an oversize body
  (413), malformed JSON (400) or a schema error (422) is answered with ``{"error", "detail"}`` and
  starts nothing. Otherwise the alerts are grouped by agent label; for each agent, firing alerts
  join (or open) the agent's incident with signal-with-start
  (:func:`~activities.incident_intake.signal_incident`), and a notification with only resolved
  alerts is signalled to the running incident, never starting one (no running incident: ignored).
  200 lists what was done per agent; 503 (``Retry-After``) when Temporal cannot be reached, so
  Alertmanager retries the notification.
- ``GET /healthz``: 200 ``{"status": "ok", "temporal": "connected" | "not connected"}``.

``starters/alert_server.py`` serves it (uvicorn) for ``fleetops alert-receiver`` and ``up``.

The Temporal client is made once (:func:`fleetops.client.connect`), on the first notification
(so the receiver can start before the server) and kept.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from activities.incident_intake import signal_incident
from fleetops.client import connect
from fleetops.incidents import ALERTS_SIGNAL, AlertmanagerWebhook, incident_workflow_id
from fleetops.settings import Settings
from starters.alert_batches import AgentAlerts, batch_for, group_by_agent, start_for

log = logging.getLogger("fleetops.alerts")

RETRY_AFTER_SECONDS = 5
"""``Retry-After`` of a 503 (Alertmanager retries on its own schedule; this is a hint)."""
MAX_CONCURRENT_SIGNALS = 16
"""Agents of one notification signalled at once."""
UNAVAILABLE = frozenset(
    {RPCStatusCode.UNAVAILABLE, RPCStatusCode.DEADLINE_EXCEEDED, RPCStatusCode.RESOURCE_EXHAUSTED}
)
"""Temporal answers that mean "try again later" (503), not a bad request."""


class TemporalUnavailable(Exception):
    """Temporal could not be reached (connect failed, or the server answered UNAVAILABLE)."""


def _error(status: int, error: str, detail: Any = None, **headers: str) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail}, status_code=status, headers=headers)


class AlertReceiver:
    """State of one receiver: settings, the one Temporal client, and the request handlers.

    Args:
        settings: FleetOps settings (``alerts.*``, ``temporal.*``).
        client: a connected client to use (tests); None: connect on the first notification.
        task_queue: task queue of new incidents; default ``temporal.task_queue``.
    """

    def __init__(
        self, settings: Settings, *, client: Client | None = None, task_queue: str | None = None
    ) -> None:
        self._settings = settings
        self._client = client
        self._task_queue = task_queue or settings.temporal.task_queue
        self._connect_lock = asyncio.Lock()
        token = settings.alerts.token
        self._token = token.get_secret_value().encode() if token is not None else None

    async def client(self) -> Client:
        """The receiver's Temporal client, connecting once.

        Raises:
            TemporalUnavailable: the server cannot be reached (the next call tries again).
        """
        async with self._connect_lock:
            if self._client is None:
                try:
                    self._client = await connect(self._settings)
                except RuntimeError as err:
                    raise TemporalUnavailable(str(err)) from err
            return self._client

    def _authorized(self, request: Request) -> bool:
        if self._token is None:
            return True
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(credentials.strip().encode(), self._token)

    async def _body(self, request: Request) -> bytes | None:
        """The body, or None once it exceeds ``alerts.max_body_bytes`` (read no further)."""
        limit = self._settings.alerts.max_body_bytes
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            return None
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                return None
            chunks.append(chunk)
        return b"".join(chunks)

    async def healthz(self, request: Request) -> JSONResponse:
        """``GET /healthz``: always 200 while serving; says whether Temporal is connected."""
        connected = "connected" if self._client is not None else "not connected"
        return JSONResponse({"status": "ok", "temporal": connected})

    async def alerts(self, request: Request) -> JSONResponse:
        """``POST /alerts``: one Alertmanager notification (see the module docstring)."""
        if not self._authorized(request):
            return _error(
                401,
                "unauthorized",
                "send Authorization: Bearer <FLEETOPS_ALERTS__TOKEN>",
                **{"WWW-Authenticate": "Bearer"},
            )
        body = await self._body(request)
        if body is None:
            limit = self._settings.alerts.max_body_bytes
            return _error(413, "body too large", f"at most {limit} bytes (alerts.max_body_bytes)")
        try:
            json.loads(body)
        except (ValueError, UnicodeDecodeError) as err:
            return _error(400, "malformed JSON", str(err)[:200])
        try:
            webhook = AlertmanagerWebhook.model_validate_json(body)
        except ValidationError as err:
            detail = err.errors(include_url=False, include_context=False, include_input=False)
            return _error(422, "not an Alertmanager webhook v4 notification", detail)
        try:
            return JSONResponse(await self.handle(webhook))
        except TemporalUnavailable as err:
            log.warning("Temporal unavailable, Alertmanager will retry: %s", err)
            return _error(
                503,
                "temporal unavailable",
                str(err)[:300],
                **{"Retry-After": str(RETRY_AFTER_SECONDS)},
            )
        except RPCError as err:  # a refusal that a retry would not change (bad namespace ...)
            log.error("Temporal refused the incident signal: %s", err)
            return _error(
                502, "temporal refused the signal", f"{err.status.name}: {err.message}"[:300]
            )

    async def handle(self, webhook: AlertmanagerWebhook) -> dict[str, Any]:
        """Turn a validated notification into incident signals.

        Returns:
            ``{"incidents": [{"agent_id", "workflow_id", "action", "alerts", "truncated"}],
            "ignored": {"without_agent_label": int, "invalid_agent": {value: count}}}``;
            ``action`` is ``"signal_with_start"``, ``"signal"`` or ``"ignored: no running
            incident"``.

        Raises:
            TemporalUnavailable: Temporal could not be reached for at least one agent.
        """
        grouped = group_by_agent(webhook, self._settings.alerts.agent_label)
        client = await self.client() if grouped.agents else None
        now = datetime.now(UTC)
        gate = asyncio.Semaphore(MAX_CONCURRENT_SIGNALS)

        async def one(share: AgentAlerts) -> dict[str, Any]:
            async with gate:
                assert client is not None
                return await self._signal(client, share, webhook, now)

        results = await asyncio.gather(
            *(one(s) for s in grouped.agents.values()), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result
        incidents = [r for r in results if not isinstance(r, BaseException)]
        if grouped.without_agent or grouped.invalid_agents:
            log.info(
                "ignored alerts: %d without label %r, invalid agent ids %s",
                grouped.without_agent,
                self._settings.alerts.agent_label,
                grouped.invalid_agents,
            )
        return {
            "incidents": incidents,
            "ignored": {
                "without_agent_label": grouped.without_agent,
                "invalid_agent": grouped.invalid_agents,
            },
        }

    async def _signal(
        self, client: Client, share: AgentAlerts, webhook: AlertmanagerWebhook, now: datetime
    ) -> dict[str, Any]:
        batch = batch_for(share, webhook, now)
        start = start_for(share, webhook)
        workflow_id = incident_workflow_id(share.agent_id, start.key)
        action = "signal_with_start" if share.firing else "signal"
        try:
            if share.firing:
                await signal_incident(client, start, batch, task_queue=self._task_queue)
            else:
                await client.get_workflow_handle(workflow_id).signal(ALERTS_SIGNAL, batch)
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND and not share.firing:
                action = "ignored: no running incident"
            elif err.status in UNAVAILABLE:
                raise TemporalUnavailable(err.message) from err
            else:
                raise
        except RuntimeError as err:  # the SDK's "Failed client connect"/transport errors
            raise TemporalUnavailable(str(err)) from err
        log.info("%s %s: %d alerts (%s)", action, workflow_id, len(batch.alerts), webhook.status)
        return {
            "agent_id": share.agent_id,
            "workflow_id": workflow_id,
            "action": action,
            "alerts": len(batch.alerts),
            "truncated": batch.truncated_alerts,
        }


def create_app(
    settings: Settings, *, client: Client | None = None, task_queue: str | None = None
) -> Starlette:
    """The receiver's ASGI app (see :class:`AlertReceiver` for the arguments)."""
    receiver = AlertReceiver(settings, client=client, task_queue=task_queue)
    return Starlette(
        routes=[
            Route("/alerts", receiver.alerts, methods=["POST"]),
            Route("/healthz", receiver.healthz, methods=["GET"]),
        ]
    )
