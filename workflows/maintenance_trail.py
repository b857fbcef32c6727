"""What a ``Maintenance`` run records: each target's record and the audit trail (workflow code)."""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from fleetops.maintenance import MAX_AUDIT_ENTRIES, MaintenanceAudit, TargetRecord


class Trail:
    """Target records (in plan order) and the most recent :data:`MAX_AUDIT_ENTRIES` steps."""

    def __init__(self) -> None:
        """Start empty."""
        self.targets: dict[str, TargetRecord] = {}
        self.audit: list[MaintenanceAudit] = []

    def set(self, agent_id: str, **changes: object) -> None:
        """Update one target's record (e.g. ``state="done"``)."""
        self.targets[agent_id] = self.targets[agent_id].model_copy(update=changes)

    def record(self, step: str, target: str | None, detail: str, *, ok: bool = True) -> None:
        """Append one audit entry at workflow time (detail cut at 500 characters)."""
        self.audit.append(
            MaintenanceAudit(
                at=workflow.now(), step=step, target=target, ok=ok, detail=detail[:500]
            )
        )
        del self.audit[:-MAX_AUDIT_ENTRIES]
