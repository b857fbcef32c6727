"""The messages of ``IncidentResponse``: alerts, ack, resolve, set_severity, status (workflow code).

Every handler takes a ``RawValue`` and decodes it with :func:`workflows.payloads.decode_payload`,
so no payload fails a workflow task: a bad signal is audited as ``refused`` and changes nothing;
a bad update is refused by its validator before anything is written to history. ``ack``,
``resolve`` and ``set_severity`` exist as a signal (fire and forget, e.g. from Alertmanager
tooling or ``temporal workflow signal``) and as a validated update (``fleetops incident ack``)
with the same payload.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from temporalio import workflow
from temporalio.common import RawValue
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from fleetops import incident_rules as rules
    from fleetops.constants import SEVERITY_KEY
    from fleetops.incident_report import IncidentStatus
    from fleetops.incidents import (
        ACK,
        ALERTS_SIGNAL,
        RESOLVE,
        SET_SEVERITY,
        AlertBatch,
        IncidentPhase,
        OperatorRequest,
        SeverityOverride,
        stricter,
    )
    from workflows.approval import ApprovalGate, ApprovalHandlers
    from workflows.incident_book import IncidentBook
    from workflows.payloads import decode_payload

M = TypeVar("M", OperatorRequest, SeverityOverride)
_OPERATOR = '{"requested_by": "<you>", "reason": "..."}'
_OVERRIDE = '{"severity": "SEV2", "requested_by": "<you>", "reason": "..."}'
_BATCH = '{"alerts": [...], "received_at": "<RFC 3339>"}'
_DONE = (IncidentPhase.REVIEW, IncidentPhase.CLOSED)
INCIDENT_REFUSED = "IncidentRefused"
"""``ApplicationError.type`` of an ack/resolve/set_severity the incident's state does not allow."""


def _refused(message: str) -> ApplicationError:
    return ApplicationError(message, type=INCIDENT_REFUSED, non_retryable=True)


class IncidentHandlers(ApprovalHandlers):
    """Mixin of the incident's messages; the workflow sets ``_book``, ``_approval_gate``."""

    _book: IncidentBook
    _approval_gate: ApprovalGate
    _resolve_request: OperatorRequest | None

    # --- checks (shared by signals and validators; read-only) ------------------------------

    def _check_ack(self, req: OperatorRequest) -> None:
        b = self._book
        if b.phase in _DONE:
            raise _refused(f"{b.incident_id} is closing ({b.phase.value}); nothing to ack")
        if b.acked_by is not None:
            raise _refused(f"{b.incident_id} was acknowledged by {b.acked_by} at {b.acked_at}")

    def _check_resolve(self, req: OperatorRequest) -> None:
        b = self._book
        if b.phase in _DONE or b.resolved_by is not None or self._resolve_request is not None:
            raise _refused(f"{b.incident_id} is already resolved or closing ({b.phase.value})")

    def _check_override(self, req: SeverityOverride) -> None:
        b = self._book
        if b.phase in _DONE:
            raise _refused(f"{b.incident_id} is closing ({b.phase.value}); severity is final")

    # --- effects ------------------------------------------------------------------------------

    def _do_ack(self, req: OperatorRequest) -> str:
        b = self._book
        b.acked_by, b.acked_at = req.requested_by.strip(), workflow.now()
        mtta = b.seconds_since_open(b.acked_at) or 0.0
        b.record("ack", f"acknowledged after {mtta:.0f} s. {req.reason}".strip(), b.acked_by)
        return f"acknowledged by {b.acked_by} after {mtta:.0f} s"

    def _do_resolve(self, req: OperatorRequest) -> str:
        self._resolve_request = req
        who = req.requested_by.strip()
        self._book.record("resolve", f"resolve requested: {req.reason or 'no reason'}", who)
        self._approval_gate.cancel(f"incident resolved by {who}")
        return f"resolve requested by {who}; the incident writes its review and closes"

    def _do_override(self, req: SeverityOverride) -> str:
        b = self._book
        who, before = req.requested_by.strip(), b.severity
        b.severity, b.severity_source, b.overridden = req.severity, f"operator {who}", True
        workflow.upsert_search_attributes([SEVERITY_KEY.value_set(b.severity.value)])
        b.record("severity", f"{before.value} -> {req.severity.value} ({req.reason})", who)
        return f"severity {before.value} -> {req.severity.value}"

    def _refuse(self, signal: str, err: ApplicationError, actor: str | None = None) -> None:
        workflow.logger.warning("%s signal refused: %s", signal, err.message)
        self._book.record("refused", f"{signal} signal refused: {err.message}", actor)

    # --- alerts ---------------------------------------------------------------------------

    @workflow.signal(name=ALERTS_SIGNAL)
    def alerts(self, raw: RawValue = None) -> None:  # type: ignore[assignment]
        """Add a notification's alerts (:class:`~fleetops.incidents.AlertBatch`) as evidence.

        Repeats join their fingerprint's record (count, status); resolved alerts mark it
        resolved; newly firing alerts may raise the rules' severity (not below an override).
        """
        try:
            batch = decode_payload(raw, AlertBatch, example=_BATCH)
        except ApplicationError as err:
            self._refuse(ALERTS_SIGNAL, err)
            return
        b = self._book
        if b.phase in _DONE:
            b.record("alerts", f"{len(batch.alerts)} alert(s) after resolution, not added")
            return
        firing = b.add_batch(batch)
        resolved = sum(1 for a in batch.alerts if a.status == "resolved")
        b.record("alerts", f"{len(firing)} newly firing, {resolved} resolved ({batch.source})")
        if firing and b.phase != IncidentPhase.DETECTED and not b.overridden:
            found = rules.classify(firing, source=b.start.source)
            raised = stricter(b.severity, found.severity)
            if raised != b.severity:
                b.record("severity", f"{b.severity.value} -> {raised.value}: new alerts (rules)")
                b.severity, b.severity_source = raised, "rules"
                workflow.upsert_search_attributes([SEVERITY_KEY.value_set(raised.value)])

    # --- ack ------------------------------------------------------------------------------

    @workflow.signal(name=ACK)
    def ack_signal(self, raw: RawValue = None) -> None:  # type: ignore[assignment]
        """Acknowledge the page: ``{"requested_by": ..., "reason": ...}`` (refusals audited)."""
        self._on_signal(ACK, raw, OperatorRequest, self._check_ack, self._do_ack)

    @workflow.update(name=ACK)
    def ack(self, raw: RawValue = None) -> str:  # type: ignore[assignment]
        """Acknowledge the page; returns a sentence with the MTTA in seconds.

        Raises:
            ApplicationError: from the validator, before history: ``InvalidInput`` (not an
                OperatorRequest) or ``IncidentRefused`` (already acknowledged, closing).
        """
        req = decode_payload(raw, OperatorRequest, example=_OPERATOR)
        self._check_ack(req)
        return self._do_ack(req)

    @ack.validator
    def _validate_ack(self, raw: RawValue = None) -> None:  # type: ignore[assignment]
        self._check_ack(decode_payload(raw, OperatorRequest, example=_OPERATOR))

    # --- resolve --------------------------------------------------------------------------

    @workflow.signal(name=RESOLVE)
    def resolve_signal(self, raw: RawValue = None) -> None:  # type: ignore[assignment]
        """Resolve by hand: ``{"requested_by": ..., "reason": ...}`` (refusals audited)."""
        self._on_signal(RESOLVE, raw, OperatorRequest, self._check_resolve, self._do_resolve)

    @workflow.update(name=RESOLVE)
    def resolve(self, raw: RawValue = None) -> str:  # type: ignore[assignment]
        """Resolve by hand: a pending approval is cancelled, the review is written, it closes.

        Raises:
            ApplicationError: from the validator: ``InvalidInput`` or ``IncidentRefused``
                (already resolved or closing).
        """
        req = decode_payload(raw, OperatorRequest, example=_OPERATOR)
        self._check_resolve(req)
        return self._do_resolve(req)

    @resolve.validator
    def _validate_resolve(self, raw: RawValue = None) -> None:  # type: ignore[assignment]
        self._check_resolve(decode_payload(raw, OperatorRequest, example=_OPERATOR))

    # --- set_severity ---------------------------------------------------------------------

    @workflow.signal(name=SET_SEVERITY)
    def set_severity_signal(self, raw: RawValue = None) -> None:  # type: ignore[assignment]
        """Override the severity: ``{"severity", "requested_by", "reason"}`` (refusals audited)."""
        self._on_signal(
            SET_SEVERITY, raw, SeverityOverride, self._check_override, self._do_override
        )

    @workflow.update(name=SET_SEVERITY)
    def set_severity(self, raw: RawValue = None) -> str:  # type: ignore[assignment]
        """Override the severity for the rest of the incident (rules and LLM no longer change it).

        Raises:
            ApplicationError: from the validator: ``InvalidInput`` (e.g. ``"SEV5"``, no
                reason) or ``IncidentRefused`` (closing).
        """
        req = decode_payload(raw, SeverityOverride, example=_OVERRIDE)
        self._check_override(req)
        return self._do_override(req)

    @set_severity.validator
    def _validate_set_severity(self, raw: RawValue = None) -> None:  # type: ignore[assignment]
        self._check_override(decode_payload(raw, SeverityOverride, example=_OVERRIDE))

    # --- query ----------------------------------------------------------------------------

    @workflow.query(name="status")
    def status(self) -> IncidentStatus:
        """The incident now: phase, status, severity (and who set it), alerts, evidence refs,
        actions with approvers, pages, LLM spend, audit trail (approval entries merged)."""
        return self._book.status_now(self._approval_gate.audit)

    def _on_signal(
        self,
        name: str,
        raw: RawValue | None,
        model: type[M],
        check: Callable[[M], None],
        effect: Callable[[M], str],
    ) -> None:
        example = _OVERRIDE if model is SeverityOverride else _OPERATOR
        try:
            req = decode_payload(raw, model, example=example)
        except ApplicationError as err:
            self._refuse(name, err)
            return
        try:
            check(req)
        except ApplicationError as err:
            self._refuse(name, err, req.requested_by)
            return
        effect(req)
