"""A stand-in ``IncidentResponse`` for receiver tests: it only records what it is sent.

Registered under the real workflow type name and signal name, it lets the receiver tests run
signal-with-start against a real Temporal server without depending on the real incident
workflow. It keeps the start input and every ``alerts`` batch, and ends on signal ``close``.
"""

from __future__ import annotations

from typing import Any

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from fleetops.incidents import ALERTS_SIGNAL, INCIDENT_WORKFLOW, AlertBatch, IncidentStart


@workflow.defn(name=INCIDENT_WORKFLOW)
class StandInIncident:
    """Records the start input and the alert batches; ``close`` ends it."""

    def __init__(self) -> None:
        self.start: IncidentStart | None = None
        self.batches: list[AlertBatch] = []
        self.closed = False

    @workflow.run
    async def run(self, start: IncidentStart) -> int:
        """Wait for ``close``; return how many batches arrived."""
        self.start = start
        await workflow.wait_condition(lambda: self.closed)
        return len(self.batches)

    @workflow.signal(name=ALERTS_SIGNAL)
    def alerts(self, batch: AlertBatch) -> None:
        """Keep the batch."""
        self.batches.append(batch)

    @workflow.signal
    def close(self) -> None:
        """End the run."""
        self.closed = True

    @workflow.query
    def seen(self) -> dict[str, Any]:
        """The start input and batches, as JSON-ready dicts."""
        return {
            "start": self.start.model_dump(mode="json") if self.start else None,
            "batches": [b.model_dump(mode="json") for b in self.batches],
        }
