"""Typed async helpers over ``IncidentResponse`` workflows (used by ``fleetops incident``).

An incident is named by its workflow id ``incident/<agent_id>/<key>``; ``<agent_id>/<key>`` is
accepted too. Listing goes through visibility (``WorkflowType='IncidentResponse'`` with the
``FleetOpsAgentId``, ``FleetOpsState`` and ``FleetOpsSeverity`` search attributes); everything
else through the workflow's ``status`` query, its ``ack`` / ``resolve`` updates, and its result
(the post-incident review).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from temporalio.client import Client, WorkflowExecutionStatus, WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from fleetops.constants import AGENT_ID_KEY, SEVERITY_KEY, STATE_KEY
from fleetops.incidents import INCIDENT_WORKFLOW, IncidentPhase, Severity
from starters.agents import FleetOpsClientError

MAX_LISTED = 1000
"""Most incidents one ``list`` returns."""
_QUOTABLE = re.compile(r"^[A-Za-z0-9._/-]+$")


class IncidentNotFoundError(FleetOpsClientError):
    """No incident with that id."""


class IncidentRefusedError(FleetOpsClientError):
    """The incident refused the update (its validator, or the update failed)."""


@dataclass(frozen=True)
class IncidentSummary:
    """One row of ``fleetops incident list``."""

    workflow_id: str
    agent_id: str | None
    severity: str | None
    phase: str | None
    running: bool
    started_at: datetime | None
    closed_at: datetime | None


def incident_id(name: str) -> str:
    """The workflow id for ``name``: ``incident/<agent>/<key>`` as is, ``<agent>/<key>`` prefixed.

    Raises:
        ValueError: ``name`` has neither form.
    """
    if name.startswith("incident/") and name.count("/") == 2:
        return name
    if name.count("/") == 1 and all(name.split("/")):
        return f"incident/{name}"
    raise ValueError(f"{name!r} is not an incident id: give incident/<agent_id>/<key>")


def list_query(
    *,
    agent_id: str | None = None,
    phase: IncidentPhase | None = None,
    severity: Severity | None = None,
    include_closed: bool = False,
) -> str:
    """The visibility query of ``fleetops incident list``.

    Raises:
        ValueError: ``agent_id`` holds characters a query cannot carry.
    """
    parts = [f"WorkflowType = '{INCIDENT_WORKFLOW}'"]
    if not include_closed:
        parts.append("ExecutionStatus = 'Running'")
    if agent_id is not None:
        if not _QUOTABLE.match(agent_id):
            raise ValueError(f"invalid agent id {agent_id!r}")
        parts.append(f"{AGENT_ID_KEY.name} = '{agent_id}'")
    if phase is not None:
        parts.append(f"{STATE_KEY.name} = '{phase.value}'")
    if severity is not None:
        parts.append(f"{SEVERITY_KEY.name} = '{severity.value}'")
    return " AND ".join(parts)


async def list_incidents(client: Client, query: str, limit: int = 100) -> list[IncidentSummary]:
    """Incidents matching ``query`` (see :func:`list_query`), newest first, at most ``limit``."""
    found = []
    async for wf in client.list_workflows(query, limit=min(limit, MAX_LISTED)):
        sa = wf.typed_search_attributes
        found.append(
            IncidentSummary(
                workflow_id=wf.id,
                agent_id=sa.get(AGENT_ID_KEY),
                severity=sa.get(SEVERITY_KEY),
                phase=sa.get(STATE_KEY),
                running=wf.status == WorkflowExecutionStatus.RUNNING,
                started_at=wf.start_time,
                closed_at=wf.close_time,
            )
        )
    return found


def _missing(wid: str, err: RPCError) -> Exception:
    if err.status == RPCStatusCode.NOT_FOUND:
        return IncidentNotFoundError(f"no incident {wid}; list them: fleetops incident list --all")
    return err


async def incident_status(client: Client, wid: str) -> dict[str, Any]:
    """The incident's ``status`` query (a JSON document), also after it closed.

    Raises:
        IncidentNotFoundError: no workflow ``wid``.
    """
    try:
        result = await client.get_workflow_handle(wid).query("status")
    except RPCError as err:
        raise _missing(wid, err) from None
    if not isinstance(result, dict):
        raise FleetOpsClientError(f"{wid} answered an unexpected status: {result!r}"[:300])
    return result


def operator_payload(requested_by: str, reason: str) -> dict[str, str]:
    """Payload of the ``ack`` and ``resolve`` updates: ``{"requested_by", "reason"}``."""
    return {"requested_by": requested_by, "reason": reason}


async def update(client: Client, wid: str, name: str, requested_by: str, reason: str) -> Any:
    """Run update ``name`` (``ack`` or ``resolve``) on the incident; its result.

    Raises:
        IncidentNotFoundError: no running workflow ``wid``.
        IncidentRefusedError: the incident refused (e.g. already acknowledged or closed).
    """
    try:
        return await client.get_workflow_handle(wid).execute_update(
            name, operator_payload(requested_by, reason)
        )
    except WorkflowUpdateFailedError as err:
        cause = err.cause
        message = cause.message if isinstance(cause, ApplicationError) else str(cause or err)
        raise IncidentRefusedError(f"{wid} refused {name}: {message}") from None
    except RPCError as err:
        if "completed" in err.message.lower():
            raise IncidentRefusedError(f"{wid} is closed; nothing to {name}") from None
        raise _missing(wid, err) from None


async def review(client: Client, wid: str) -> str | None:
    """The post-incident review of a closed incident, as Markdown; None while it runs.

    The workflow's result is the review: its Markdown is the result itself (a string) or its
    ``markdown`` field; any other result is shown as JSON.

    Raises:
        IncidentNotFoundError: no workflow ``wid``.
        FleetOpsClientError: the incident closed without a result (failed, terminated).
    """
    handle = client.get_workflow_handle(wid)
    try:
        desc = await handle.describe()
    except RPCError as err:
        raise _missing(wid, err) from None
    if desc.status == WorkflowExecutionStatus.RUNNING:
        return None
    if desc.status != WorkflowExecutionStatus.COMPLETED:
        status = desc.status.name if desc.status else "unknown"
        raise FleetOpsClientError(f"{wid} closed as {status}: it has no review")
    result = await handle.result()
    return review_markdown(result)


def review_markdown(result: Any) -> str:
    """Markdown of a review result (a string, a ``markdown`` field, or JSON)."""
    if isinstance(result, str):
        return result
    if isinstance(result, dict) and isinstance(result.get("markdown"), str):
        return str(result["markdown"])
    return "```json\n" + json.dumps(result, indent=2, default=str) + "\n```"
