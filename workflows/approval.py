"""The human-approval gate every FleetOps workflow uses (deterministic workflow code).

A workflow inherits :class:`ApprovalHandlers` (signals ``approve``/``reject``, update ``decide``,
query ``pending_approval``; the SDK collects handlers from base classes), creates an
:class:`ApprovalGate` as ``self._approval_gate`` in its ``__init__``, and awaits
``self._approval_gate.request(ApprovalRequest(...))``. The worker must register
``NotifyActivities.send_notification``, ``NotifyActivities.approval_policy`` and (for histories
recorded before the policy existed) ``NotifyActivities.approver_roles``.

Every message handler takes a ``RawValue`` and decodes it itself, so no payload (``binary/plain``,
``null``, an array, wrong types) can fail a workflow task: a bad signal is audited as a refusal,
a bad ``decide`` is refused by the validator before anything is written to history. When
``approval.public_keys`` is set, decisions must be signed (:mod:`fleetops.signing`).

Semantics follow Spinnaker's manual judgment stage and StackStorm inquiries: a question with
context, allowed approvers and roles, reminders, a timeout with an explicit outcome, escalation,
and an audit trail of who decided what, when, and why. While a request is pending the workflow
has ``FleetOpsAwaitingApproval=true``, so ``temporal workflow list --query
'FleetOpsAwaitingApproval=true'`` is the approvers' inbox.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import TypeVar

from temporalio import workflow
from temporalio.common import RawValue
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from fleetops import errors
    from fleetops.approvals import (
        ApprovalDecision,
        ApprovalOutcome,
        ApprovalPolicy,
        ApprovalRequest,
        ApprovalSignal,
        AuditEntry,
        AuditKind,
        DecisionRequest,
        Notification,
        NotificationKind,
        PendingApproval,
        decision_text,
        request_text,
    )
    from fleetops.constants import AWAITING_APPROVAL_KEY
    from fleetops.signing import signature_problem
    from workflows.approval_calls import read_policy, send_notification
    from workflows.payloads import decode_payload

APPROVAL_REFUSED = errors.APPROVAL_REFUSED
"""``ApplicationError.type`` of a refused decision (nothing pending, empty or unknown approver)."""
MAX_AUDIT_ENTRIES = 100
"""Audit entries kept (oldest dropped) so history and query answers stay bounded."""
MAX_DECISIONS = 100
"""Decisions kept (oldest dropped)."""
MAX_DETAIL_CHARS = 500
"""Audit details are cut to this many characters (a refusal quotes what was sent)."""
_MIN_WAIT = timedelta(milliseconds=1)
_AUDIT_KIND: dict[NotificationKind, AuditKind] = {
    "request": "requested",
    "reminder": "reminded",
    "escalation": "escalated",
    "decision": "decided",
}


class ApprovalGate:
    """Waits for one human decision at a time and keeps the audit trail.

    ``request`` runs in the workflow's main coroutine; the message handlers call ``check``,
    ``decide`` and ``cancel`` on the same gate, which wakes the pending ``request``.
    """

    def __init__(self) -> None:
        """Create an idle gate (nothing pending, empty audit trail)."""
        self._req: ApprovalRequest | None = None
        self._pending: PendingApproval | None = None
        self._request_id = ""
        self._slot = 0  # reminder schedule slots passed (sent, or skipped by an escalation)
        self._policy = ApprovalPolicy()
        self._resolved: ApprovalDecision | None = None
        self._count = 0
        self._audit: list[AuditEntry] = []
        self._decisions: list[ApprovalDecision] = []
        self._tasks: set[asyncio.Task[None]] = set()  # notifications in flight

    @property
    def pending(self) -> PendingApproval | None:
        """The open request as approvers see it, or None."""
        return self._pending

    @property
    def audit(self) -> list[AuditEntry]:
        """The most recent audit entries (at most ``MAX_AUDIT_ENTRIES``), oldest first."""
        return list(self._audit)

    @property
    def decisions(self) -> list[ApprovalDecision]:
        """How past requests ended (at most ``MAX_DECISIONS``), oldest first."""
        return list(self._decisions)

    async def request(self, req: ApprovalRequest) -> ApprovalDecision:
        """Ask a human and wait for the decision, the timeout, or :meth:`cancel`.

        Reads roles and approver keys (local activity ``approval_policy``) for this request, sets
        ``FleetOpsAwaitingApproval=true``, notifies, reminds every
        ``req.reminder_interval_seconds`` seconds, and applies ``req.timeout_outcome`` after
        ``req.timeout_seconds`` seconds. Notification failures are logged and audited; they never
        fail the gate.

        Args:
            req: the question, context, who may decide, and the timing (seconds).

        Returns:
            The decision; ``approved`` is its effect (a ``proceed`` timeout approves).

        Raises:
            RuntimeError: another request is already pending on this gate (a workflow bug).
        """
        if self._req is not None:
            raise RuntimeError("an approval is already pending on this gate; await it first")
        self._count += 1
        self._request_id = f"approval-{self._count}"
        self._policy, unavailable = await read_policy()
        if unavailable is not None:
            workflow.logger.warning(unavailable)
            self._record("requested", None, unavailable)
        now = workflow.now()
        self._req, self._resolved, self._slot = req, None, 0
        self._pending = PendingApproval(
            request_id=self._request_id,
            run_id=workflow.info().run_id,
            question=req.question,
            context=req.context,
            approvers=req.approvers,
            roles=req.roles,
            requested_at=now,
            deadline=now + timedelta(seconds=req.timeout_seconds),
            timeout_outcome=req.timeout_outcome,
            signatures_required=bool(self._policy.public_keys),
        )
        workflow.upsert_search_attributes([AWAITING_APPROVAL_KEY.value_set(True)])
        self._record("requested", None, req.question)
        self._spawn("request", "*Approval needed*")
        try:
            decision = await self._wait(req)
        except GeneratorExit:  # the worker dropped this run from its cache: nothing to record
            raise
        except BaseException:
            self._close("the workflow was cancelled")
            raise
        self._close("the workflow was cancelled")
        text = decision_text(decision, workflow.info().workflow_id)
        await self._send(self._notification("decision", text))
        return decision

    def _close(self, reason: str) -> None:
        self.cancel(reason)  # no-op unless cancelled while waiting
        workflow.upsert_search_attributes([AWAITING_APPROVAL_KEY.value_set(False)])

    def allowed(self, approver: str) -> bool:
        """Whether ``approver`` may decide the pending request (False if nothing is pending)."""
        req, name = self._req, approver.strip()
        if req is None or not name:
            return False
        if not req.approvers and not req.roles:
            return True
        roles = self._policy.roles.get(name, [])
        return name in req.approvers or bool(set(roles) & set(req.roles))

    def check(self, d: ApprovalSignal, *, approved: bool) -> None:
        """Refuse a decision that may not be taken now (the ``decide`` update validator).

        Deterministic and read-only: it uses the policy recorded when the request started and
        ``workflow.now()``.

        Args:
            d: the decision as received (approver, comment, optional signature fields).
            approved: whether it approves.

        Raises:
            ApplicationError: ``ApprovalRefused`` (non-retryable) when nothing is pending, the
                approver is empty, the approver is neither listed nor holds a listed role, the
                decision names another request, or (``approval.public_keys`` set) its signature
                is missing, stale, from the future, or not the approver's.
        """
        verb = "approve" if approved else "reject"
        req, name, rid = self._req, d.approver.strip(), self._request_id
        if req is None:
            raise _refused(f"nothing to {verb}: no approval is pending (query pending_approval)")
        if not name:
            raise _refused(f"cannot {verb} {rid}: pass your user name as approver")
        if not self.allowed(name):
            theirs = sorted(self._policy.roles.get(name, [])) or "none"
            raise _refused(
                f"{name!r} may not {verb} {rid}: allowed approvers "
                f"{req.approvers or 'none'}, roles {req.roles or 'none'}; {name!r} has roles "
                f"{theirs} (setting approval.roles). Ask an allowed approver."
            )
        problem = signature_problem(
            self._policy,
            d.model_copy(update={"approver": name}),
            workflow_id=workflow.info().workflow_id,
            run_id=workflow.info().run_id,
            request_id=rid,
            approved=approved,
            now=workflow.now(),
        )
        if problem is not None:
            raise _refused(f"{name!r} may not {verb} {rid}: {problem}")

    def decide(self, d: ApprovalSignal, *, approved: bool) -> ApprovalDecision:
        """Record a human decision on the pending request and wake :meth:`request`.

        Args:
            d: the decision (approver, comment, optional signature fields).
            approved: True approves, False rejects.

        Returns:
            The recorded decision (the approver's roles, workflow time, whether it was signed).

        Raises:
            ApplicationError: ``ApprovalRefused``, see :meth:`check`.
        """
        self.check(d, approved=approved)
        name, comment = d.approver.strip(), d.comment
        signed = bool(self._policy.public_keys)
        outcome: ApprovalOutcome = "approved" if approved else "rejected"
        how = " (signed)" if signed else ""
        self._record("decided", name, outcome + how + (f": {comment}" if comment else ""))
        return self._resolve(outcome, approved, comment, approver=name, signed=signed)

    def cancel(self, reason: str) -> bool:
        """End a pending wait with outcome ``cancelled`` (``approved=False``), e.g. on abort.

        Args:
            reason: why; kept as the decision's comment.

        Returns:
            Whether a request was pending.
        """
        if self._req is None:
            return False
        self._record("cancelled", None, reason)
        self._resolve("cancelled", False, reason)
        return True

    def refuse(self, actor: str | None, detail: str) -> None:
        """Audit a refused signal (a signal cannot be answered with an error)."""
        workflow.logger.warning("approval signal refused: %s", detail)
        self._record("refused", actor, detail)

    # --- waiting ---------------------------------------------------------------------------

    async def _wait(self, req: ApprovalRequest) -> ApprovalDecision:
        if await self._wait_until_deadline(req):
            return self._decided()
        if req.timeout_outcome != "escalate":
            return self._time_out(req.timeout_outcome == "proceed")
        p = self._pending
        assert p is not None
        # From the original deadline, not from now: the timer fires a little late.
        deadline = p.deadline + timedelta(seconds=req.escalation_wait_seconds)
        self._pending = p.model_copy(update={"escalated": True, "deadline": deadline})
        self._record("escalated", None, f"no decision in time; rejecting at {deadline}")
        self._spawn("escalation", "*Approval escalated*", escalation=True)
        if req.reminder_interval_seconds is not None:  # the escalation replaces a due reminder
            waited = (workflow.now() - p.requested_at).total_seconds()
            self._slot = int(waited // req.reminder_interval_seconds)
        if await self._wait_until_deadline(req):
            return self._decided()
        return self._time_out(False)

    async def _wait_until_deadline(self, req: ApprovalRequest) -> bool:
        """Wait for a decision until the pending deadline, reminding on schedule."""
        interval = req.reminder_interval_seconds
        while (p := self._pending) is not None:
            now = workflow.now()
            if now >= p.deadline:
                return False
            wake = p.deadline
            if interval is not None:
                due = p.requested_at + timedelta(seconds=interval * (self._slot + 1))
                if due <= now:
                    self._slot += 1
                    sent = p.reminders_sent + 1
                    self._pending = p.model_copy(update={"reminders_sent": sent})
                    self._record("reminded", None, f"reminder {sent}")
                    self._spawn("reminder", f"*Reminder {sent}: approval pending*")
                    continue
                wake = min(wake, due)
            try:
                await workflow.wait_condition(
                    lambda: self._resolved is not None, timeout=max(wake - now, _MIN_WAIT)
                )
            except TimeoutError:
                continue
        return True

    def _decided(self) -> ApprovalDecision:
        assert self._resolved is not None
        return self._resolved

    def _time_out(self, approved: bool) -> ApprovalDecision:
        deadline = self._pending.deadline if self._pending else workflow.now()
        detail = f"no decision by {deadline}: " + ("proceeding" if approved else "rejected")
        self._record("timed_out", None, detail)
        return self._resolve("timed_out", approved, detail)

    def _resolve(
        self,
        outcome: ApprovalOutcome,
        approved: bool,
        comment: str,
        *,
        approver: str | None = None,
        signed: bool = False,
    ) -> ApprovalDecision:
        decision = ApprovalDecision(
            request_id=self._request_id,
            approved=approved,
            outcome=outcome,
            approver=approver,
            approver_roles=sorted(self._policy.roles.get(approver, [])) if approver else [],
            at=workflow.now(),
            comment=comment,
            escalated=self._pending.escalated if self._pending else False,
            signed=signed,
        )
        self._resolved, self._req, self._pending = decision, None, None
        self._decisions.append(decision)
        del self._decisions[:-MAX_DECISIONS]
        return decision

    # --- activities ------------------------------------------------------------------------

    def _notification(
        self, kind: NotificationKind, text: str, *, escalation: bool = False
    ) -> Notification:
        info = workflow.info()
        n = self._pending.reminders_sent if self._pending and kind == "reminder" else 0
        suffix = f"-{n}" if n else ""
        return Notification(
            kind=kind,
            workflow_id=info.workflow_id,
            text=text,
            dedupe_key=f"{info.workflow_id}/{info.run_id}/{self._request_id}/{kind}{suffix}",
            escalation=escalation,
        )

    def _spawn(self, kind: NotificationKind, title: str, *, escalation: bool = False) -> None:
        # Sent in the background so a slow webhook never delays the wait. In-flight sends are
        # not cancelled once decided: that would race the activity's completion for nothing.
        text = request_text(title, self._pending, workflow.info().workflow_id)
        task = asyncio.create_task(
            self._send(self._notification(kind, text, escalation=escalation))
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, n: Notification) -> None:
        failure = await send_notification(n)
        if failure is not None:
            workflow.logger.warning(failure)
            self._record(_AUDIT_KIND[n.kind], None, failure)

    def _record(self, kind: AuditKind, actor: str | None, detail: str) -> None:
        if len(detail) > MAX_DETAIL_CHARS:
            detail = detail[: MAX_DETAIL_CHARS - 3] + "..."
        self._audit.append(AuditEntry(at=workflow.now(), kind=kind, actor=actor, detail=detail))
        del self._audit[:-MAX_AUDIT_ENTRIES]


_M = TypeVar("_M", ApprovalSignal, DecisionRequest)


class ApprovalHandlers:
    """Mixin of the public approval messages; the workflow sets ``self._approval_gate``.

    Handlers defined on a base class are registered by ``@workflow.defn`` (it collects members
    with ``inspect.getmembers``, which includes inherited ones).
    """

    _approval_gate: ApprovalGate

    @workflow.signal(name="approve")
    def approve(self, raw: RawValue = None) -> None:  # type: ignore[assignment]
        """Approve: ``{"approver": str, "comment": str}`` plus, when keys are configured,
        ``request_id``, ``signed_at``, ``signature``. Refusals are audited, not raised."""
        _on_signal(self._approval_gate, raw, approved=True)

    @workflow.signal(name="reject")
    def reject(self, raw: RawValue = None) -> None:  # type: ignore[assignment]
        """Reject: the same payload as ``approve``. Refusals are audited, not raised."""
        _on_signal(self._approval_gate, raw, approved=False)

    @workflow.update(name="decide")
    async def decide(self, raw: RawValue = None) -> ApprovalDecision:  # type: ignore[assignment]
        """Decide the pending request and return the recorded decision.

        Payload: :class:`DecisionRequest` (``approve``'s payload plus ``"approved": bool``).

        Raises:
            ApplicationError: from the validator, before anything is written to history:
                ``InvalidInput`` (the payload is not a DecisionRequest object, e.g.
                ``binary/plain``, ``null``, an empty approver, ``"approved": "yes"``) or
                ``ApprovalRefused`` (see :meth:`ApprovalGate.check`).
        """
        d = _decode(raw, DecisionRequest)
        return self._approval_gate.decide(d, approved=d.approved)

    @decide.validator
    def _validate_decide(self, raw: RawValue = None) -> None:  # type: ignore[assignment]
        try:
            d = _decode(raw, DecisionRequest)
            self._approval_gate.check(d, approved=d.approved)
        except ApplicationError as err:
            workflow.logger.warning("decide refused (%s): %s", err.type, err.message)
            raise

    @workflow.query(name="pending_approval")
    def pending_approval(self) -> PendingApproval | None:
        """The request waiting for a decision, or null."""
        return self._approval_gate.pending


_EXAMPLE = '{"approver": "<you>", "comment": "..."}'


def _decode(raw: RawValue | None, model: type[_M]) -> _M:
    return decode_payload(raw, model, example=_EXAMPLE)


def _on_signal(gate: ApprovalGate, raw: RawValue | None, *, approved: bool) -> None:
    # Decoded here so a malformed payload is audited instead of failing the workflow task.
    verb = "approve" if approved else "reject"
    try:
        sig = _decode(raw, ApprovalSignal)
    except ApplicationError as err:
        gate.refuse(None, f"{verb} signal ignored: {err.message}")
        return
    try:
        gate.decide(sig, approved=approved)
    except ApplicationError as err:
        gate.refuse(sig.approver, f"{verb} signal refused: {err.message}")


def _refused(message: str) -> ApplicationError:
    return ApplicationError(message, type=APPROVAL_REFUSED, non_retryable=True)
