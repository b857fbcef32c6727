"""Join alerts to the one open incident of an agent (Temporal signal-with-start).

Used by the Alertmanager receiver (``starters/alertmanager.py``) and, through the
``open_incident`` activity, by ``AgentLifecycle`` when an agent enters ERROR. Signal-with-start
is atomic on the server: if ``incident/<agent>/<key>`` runs, the batch is signalled to it;
otherwise a new ``IncidentResponse`` starts with the batch as its first signal. A closed incident's
id is reused by the next firing (id reuse policy ALLOW_DUPLICATE, Temporal's default).
"""

from __future__ import annotations

from temporalio import activity
from temporalio.client import Client
from temporalio.common import WorkflowIDReusePolicy

from fleetops.incidents import (
    ALERTS_SIGNAL,
    INCIDENT_WORKFLOW,
    AlertBatch,
    IncidentStart,
    incident_workflow_id,
)
from fleetops.settings import get_settings


async def signal_incident(
    client: Client, start: IncidentStart, batch: AlertBatch, *, task_queue: str | None = None
) -> str:
    """Signal ``batch`` to the agent's open incident, starting it if none is open.

    Args:
        client: a connected client (FleetOps data converter).
        start: the incident's input, used only when a new incident starts.
        batch: the alerts to add as evidence.
        task_queue: task queue of the new workflow; default ``temporal.task_queue``.

    Returns:
        The incident's workflow id, ``incident/<agent_id>/<key>``.

    Raises:
        temporalio.service.RPCError: the Temporal server refused or could not be reached.
    """
    workflow_id = incident_workflow_id(start.agent_id, start.key)
    await client.start_workflow(
        INCIDENT_WORKFLOW,
        start,
        id=workflow_id,
        task_queue=task_queue or get_settings().temporal.task_queue,
        start_signal=ALERTS_SIGNAL,
        start_signal_args=[batch],
        id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
    )
    return workflow_id


class IncidentIntakeActivities:
    """Activities that open incidents from inside workflows (signal-with-start needs a client)."""

    def __init__(self, client: Client, task_queue: str | None = None) -> None:
        """Args: client: connected client; task_queue: queue of new incidents (default setting)."""
        self._client = client
        self._task_queue = task_queue

    @activity.defn
    async def open_incident(self, start: IncidentStart, batch: AlertBatch) -> str:
        """Join or open the agent's incident (idempotent: a repeat adds the same evidence again).

        Args:
            start: input of a new incident.
            batch: alerts or lifecycle facts to signal.

        Returns:
            The incident's workflow id.
        """
        return await signal_incident(self._client, start, batch, task_queue=self._task_queue)
