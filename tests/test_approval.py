"""The approval gate on the time-skipping server, notifying a real loopback webhook receiver.

``ApprovalProbe`` is a minimal workflow using the gate; the real ``NotifyActivities`` posts over
httpx to a Starlette app served by uvicorn, which records each request and answers with scripted
status codes. The notify error mapping is unit-tested with ``httpx.MockTransport``.
"""

from __future__ import annotations

import asyncio
import socket
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    import httpx
    import pytest
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route
    from temporalio.api.enums.v1 import EventType
    from temporalio.client import (
        WorkflowExecutionStatus,
        WorkflowFailureError,
        WorkflowHandle,
        WorkflowUpdateFailedError,
    )
    from temporalio.exceptions import ApplicationError, CancelledError
    from temporalio.testing import ActivityEnvironment, WorkflowEnvironment
    from temporalio.worker import Replayer

    from activities.notify import NotifyActivities, redact_url
    from fleetops.approvals import (
        ApprovalDecision,
        ApprovalRequest,
        AuditEntry,
        DecisionRequest,
        Notification,
        PendingApproval,
    )
    from fleetops.constants import AWAITING_APPROVAL_KEY
    from fleetops.settings import ApprovalSettings
    from tests.conftest import assert_eventually, new_worker
    from tests.helpers import result_within
    from workflows.approval import ApprovalGate, ApprovalHandlers

ROLES = {"alice": ["sre"], "bob": ["dev"], "carol": ["release-manager", "dev"]}


@workflow.defn(name="ApprovalProbe")
class ApprovalProbe(ApprovalHandlers):
    """Asks once and returns the decision; with ``context.hold`` it then waits for ``finish``."""

    @workflow.init
    def __init__(self, req: ApprovalRequest) -> None:
        self._approval_gate = ApprovalGate()
        self._finished = False

    @workflow.run
    async def run(self, req: ApprovalRequest) -> ApprovalDecision:
        decision = await self._approval_gate.request(req)
        if req.context.get("hold"):
            await workflow.wait_condition(lambda: self._finished)
        return decision

    @workflow.signal
    def abort(self, reason: str) -> None:
        self._approval_gate.cancel(reason)

    @workflow.signal
    def finish(self) -> None:
        self._finished = True

    @workflow.query
    def status(self) -> list[AuditEntry]:
        return self._approval_gate.audit


# --- the webhook receiver --------------------------------------------------------------------


@dataclass
class Receiver:
    """Records posts per hook name; ``script[name]`` holds status codes for the next posts."""

    base_url: str = ""
    posts: dict[str, list[tuple[dict[str, str], Any]]] = field(default_factory=dict)
    script: dict[str, deque[int]] = field(default_factory=dict)

    def url(self, name: str) -> str:
        return f"{self.base_url}/hooks/{name}/T000/SECRET"

    def texts(self, name: str) -> list[str]:
        return [body["text"] for _, body in self.posts.get(name, [])]

    async def handle(self, request: Request) -> Response:
        name = request.path_params["name"]
        self.posts.setdefault(name, []).append((dict(request.headers), await request.json()))
        queue = self.script.get(name)
        status = queue.popleft() if queue else 200
        if status == 200:
            return Response("ok")
        return JSONResponse({"error": f"scripted {status}"}, status_code=status)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()
    app = Starlette(routes=[Route("/hooks/{name}/{rest:path}", rec.handle, methods=["POST"])])
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    rec.base_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        assert not task.done(), "webhook receiver failed to start"
        await asyncio.sleep(0.01)
    yield rec
    server.should_exit = True
    await task
    sock.close()


def settings_for(rec: Receiver, **kw: Any) -> ApprovalSettings:
    base: dict[str, Any] = {"roles": ROLES, "webhook_url": rec.url("main")}
    return ApprovalSettings(**{**base, **kw})


@asynccontextmanager
async def started(
    env: WorkflowEnvironment,
    settings: ApprovalSettings,
    *,
    activities: list[Any] | None = None,
    **req: Any,
) -> AsyncIterator[WorkflowHandle[Any, ApprovalDecision]]:
    """A worker with the real notify activities, and a started ApprovalProbe that is pending.

    ``activities`` replaces the notify activities (e.g. with a broken ``approval_policy``).
    """
    async with httpx.AsyncClient(timeout=5) as http:
        notify = NotifyActivities(http, settings)
        worker = new_worker(
            env.client,
            workflows=[ApprovalProbe],
            activities=activities
            or [notify.send_notification, notify.approval_policy, notify.approver_roles],
        )
        async with worker:
            handle = await env.client.start_workflow(
                ApprovalProbe.run,
                ApprovalRequest(question="Promote v2 to active?", **req),
                id=f"approval-test-{worker.task_queue}",
                task_queue=worker.task_queue,
                result_type=ApprovalDecision,
            )
            await pending(handle)
            try:
                yield handle
            finally:
                # A workflow left running has timers nobody serves once the worker stops, and
                # they hold the session's time-skipping server back in later tests.
                if (await handle.describe()).status == WorkflowExecutionStatus.RUNNING:
                    await handle.terminate("test over")


async def pending(handle: WorkflowHandle[Any, Any]) -> PendingApproval:
    async def check() -> PendingApproval:
        p = await handle.query("pending_approval", result_type=PendingApproval | None)  # type: ignore[arg-type]
        assert p is not None
        return p

    return await assert_eventually(check)


async def audit(handle: WorkflowHandle[Any, Any]) -> list[AuditEntry]:
    return await handle.query(ApprovalProbe.status)


async def awaiting(handle: WorkflowHandle[Any, Any]) -> bool | None:
    return (await handle.describe()).typed_search_attributes.get(AWAITING_APPROVAL_KEY)


async def update_accepted_events(handle: WorkflowHandle[Any, Any]) -> int:
    history = await handle.fetch_history()
    accepted = EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED
    return sum(1 for e in history.events if e.event_type == accepted)


async def refused(handle: WorkflowHandle[Any, Any], d: DecisionRequest | dict[str, Any]) -> str:
    """Send ``decide`` and return the ApplicationError type it was refused with."""
    with pytest.raises(WorkflowUpdateFailedError, match="update failed") as info:
        await handle.execute_update("decide", d, result_type=ApprovalDecision)
    cause = info.value.cause
    assert isinstance(cause, ApplicationError), cause
    assert cause.type is not None
    return cause.type


# --- decisions -------------------------------------------------------------------------------


async def test_decide_by_named_approver(env: WorkflowEnvironment, receiver: Receiver) -> None:
    async with started(
        env, settings_for(receiver), approvers=["alice"], context={"version": "v2", "errors": 0.1}
    ) as handle:
        p = await pending(handle)
        assert (p.question, p.approvers, p.roles) == ("Promote v2 to active?", ["alice"], [])
        assert p.context == {"version": "v2", "errors": 0.1}
        assert p.deadline - p.requested_at == timedelta(days=3)
        assert (p.escalated, p.reminders_sent, p.timeout_outcome) == (False, 0, "reject")
        assert await awaiting(handle) is True
        # Approvers only, no roles: anyone else is refused, whatever roles they hold.
        for outsider in ("bob", "carol", "zed"):
            with pytest.raises(WorkflowUpdateFailedError, match="update failed") as info:
                await handle.execute_update(
                    ApprovalProbe.decide, DecisionRequest(approver=outsider, approved=True)
                )
            cause = info.value.cause
            assert isinstance(cause, ApplicationError) and cause.type == "ApprovalRefused"
            assert f"'{outsider}' may not approve approval-1: allowed approvers ['alice']" in str(
                cause
            )
        assert await update_accepted_events(handle) == 0

        d = await handle.execute_update(
            ApprovalProbe.decide, DecisionRequest(approver=" alice ", approved=True, comment="lgtm")
        )
        assert (d.approved, d.outcome, d.approver, d.approver_roles) == (
            True, "approved", "alice", ["sre"],
        )  # fmt: skip
        assert (d.comment, d.escalated, d.request_id) == ("lgtm", False, p.request_id)
        assert p.requested_at <= d.at < p.deadline
        assert await result_within(handle.result()) == d
        assert await awaiting(handle) is False
        assert await handle.query("pending_approval") is None
        kinds = [(e.kind, e.actor) for e in await audit(handle)]
        assert kinds == [("requested", None), ("decided", "alice")]
    texts = receiver.texts("main")
    assert len(texts) == 2, texts
    assert "Promote v2 to active?" in texts[0] and "version=v2" in texts[0]
    assert "approved by alice" in texts[1] and "lgtm" in texts[1]
    keys = [h["idempotency-key"] for h, _ in receiver.posts["main"]]
    assert keys[0].endswith("/approval-1/request") and keys[1].endswith("/approval-1/decision")


async def test_decide_by_role(env: WorkflowEnvironment, receiver: Receiver) -> None:
    async with started(env, settings_for(receiver), roles=["release-manager"]) as handle:
        d = await handle.execute_update(
            ApprovalProbe.decide, DecisionRequest(approver="carol", approved=False, comment="no")
        )
        assert (d.approved, d.outcome, d.approver) == (False, "rejected", "carol")
        assert d.approver_roles == ["dev", "release-manager"]
        assert await result_within(handle.result()) == d


async def test_validator_refuses_before_history(
    env: WorkflowEnvironment, receiver: Receiver
) -> None:
    async with started(
        env, settings_for(receiver), approvers=["alice"], roles=["sre"], context={"hold": True}
    ) as handle:
        assert await refused(handle, DecisionRequest(approver="bob", approved=True)) == (
            "ApprovalRefused"
        )
        assert await refused(handle, DecisionRequest(approver="mallory", approved=False)) == (
            "ApprovalRefused"
        )
        # An empty approver fails payload validation, also before anything is written.
        for empty in ("", "   "):
            assert await refused(handle, {"approver": empty, "approved": True}) == "InvalidInput"
        assert await update_accepted_events(handle) == 0
        assert (await pending(handle)).request_id == "approval-1"

        await handle.execute_update(
            ApprovalProbe.decide, DecisionRequest(approver="alice", approved=True)
        )
        assert await refused(handle, DecisionRequest(approver="alice", approved=True)) == (
            "ApprovalRefused"
        )
        assert await update_accepted_events(handle) == 1
        await handle.signal(ApprovalProbe.finish)
        assert (await result_within(handle.result())).approver == "alice"


async def test_signal_from_not_allowed_approver_is_audited(
    env: WorkflowEnvironment, receiver: Receiver
) -> None:
    async with started(env, settings_for(receiver), roles=["sre"]) as handle:
        await handle.signal("approve", {"approver": "bob", "comment": "me!"})
        await handle.signal("reject", {"who": "nobody"})
        await handle.signal("approve", {"approver": " "})

        async def two_refusals() -> list[AuditEntry]:
            entries = [e for e in await audit(handle) if e.kind == "refused"]
            assert len(entries) == 3
            return entries

        by_bob, bad, empty = await assert_eventually(two_refusals)
        assert by_bob.actor == "bob" and "may not approve" in by_bob.detail
        assert bad.actor is None and "who" in bad.detail
        assert empty.actor is None and "approver" in empty.detail
        assert await pending(handle)
        assert await awaiting(handle) is True

        await handle.signal("reject", {"approver": "alice", "comment": "metrics look bad"})
        d = await result_within(handle.result())
        assert (d.approved, d.outcome, d.approver, d.comment) == (
            False, "rejected", "alice", "metrics look bad",
        )  # fmt: skip


async def test_open_request_accepts_any_named_approver(
    env: WorkflowEnvironment, receiver: Receiver
) -> None:
    async with started(env, settings_for(receiver)) as handle:
        assert await refused(handle, {"approver": "", "approved": True}) == "InvalidInput"
        await handle.signal("approve", {"approver": "zed"})
        d = await result_within(handle.result())
        assert (d.approved, d.approver, d.approver_roles) == (True, "zed", [])


async def test_cancel_ends_the_wait(env: WorkflowEnvironment, receiver: Receiver) -> None:
    async with started(env, settings_for(receiver)) as handle:
        await handle.signal(ApprovalProbe.abort, "deployment aborted")
        d = await result_within(handle.result())
        assert (d.approved, d.outcome, d.approver, d.comment) == (
            False, "cancelled", None, "deployment aborted",
        )  # fmt: skip
        assert await awaiting(handle) is False


async def test_workflow_cancellation_clears_the_gate(
    env: WorkflowEnvironment, receiver: Receiver
) -> None:
    async with started(env, settings_for(receiver)) as handle:
        await handle.cancel()
        with pytest.raises(WorkflowFailureError, match="execution failed") as info:
            await result_within(handle.result())
        assert isinstance(info.value.cause, CancelledError)
        assert await awaiting(handle) is False
        assert [e.kind for e in await audit(handle)] == ["requested", "cancelled"]


# --- timeouts, reminders, escalation ----------------------------------------------------------

TIMING = {"timeout_seconds": 3600, "reminder_interval_seconds": 600}


@pytest.mark.parametrize(("outcome", "approved"), [("reject", False), ("proceed", True)])
async def test_timeout_outcome(
    isolated_env: WorkflowEnvironment, receiver: Receiver, outcome: str, approved: bool
) -> None:
    env = isolated_env  # skips days ahead: a fresh server, no leftovers holding its clock
    async with started(
        env, settings_for(receiver), approvers=["alice"], timeout_outcome=outcome, **TIMING
    ) as handle:
        await env.sleep(1300)
        assert (await pending(handle)).reminders_sent == 2
        d = await result_within(handle.result())
        assert (d.approved, d.outcome, d.approver, d.escalated) == (
            approved, "timed_out", None, False,
        )  # fmt: skip
        assert await awaiting(handle) is False
        kinds = [e.kind for e in await audit(handle)]
        assert kinds == ["requested"] + ["reminded"] * 5 + ["timed_out"]
    texts = receiver.texts("main")
    assert len(texts) == 7, texts  # request, 5 reminders (600 s .. 3000 s), decision
    assert all("Reminder" in t for t in texts[1:6])
    assert "timed_out" in texts[6]


async def test_timeout_escalates_then_rejects(
    isolated_env: WorkflowEnvironment, receiver: Receiver
) -> None:
    env = isolated_env  # skips days ahead: a fresh server, no leftovers holding its clock
    settings = settings_for(receiver, escalation_webhook_url=receiver.url("oncall"))
    async with started(
        env,
        settings,
        approvers=["alice"],
        timeout_outcome="escalate",
        escalation_timeout_seconds=1800,
        **TIMING,
    ) as handle:
        await env.sleep(3700)
        p = await pending(handle)
        assert p.escalated and p.deadline - p.requested_at == timedelta(seconds=5400)
        assert await awaiting(handle) is True
        d = await result_within(handle.result())
        assert (d.approved, d.outcome, d.escalated) == (False, "timed_out", True)
        # Deterministic: the recorded history replays without nondeterminism errors.
        await Replayer(
            workflows=[ApprovalProbe], data_converter=env.client.data_converter
        ).replay_workflow(await handle.fetch_history())
    assert len(receiver.texts("oncall")) == 1
    assert "escalated" in receiver.texts("oncall")[0]
    assert len(receiver.texts("main")) == 9  # request, 7 reminders (to 4800 s), decision


async def test_escalated_request_can_still_be_approved(
    isolated_env: WorkflowEnvironment, receiver: Receiver
) -> None:
    env = isolated_env  # skips days ahead: a fresh server, no leftovers holding its clock
    async with started(
        env, settings_for(receiver), roles=["sre"], timeout_outcome="escalate", **TIMING
    ) as handle:
        await env.sleep(3700)
        assert (await pending(handle)).escalated
        d = await handle.execute_update(
            ApprovalProbe.decide, DecisionRequest(approver="alice", approved=True)
        )
        assert (d.approved, d.outcome, d.escalated) == (True, "approved", True)
        assert await result_within(handle.result()) == d
    # No escalation webhook configured: the escalation went to the main webhook.
    assert any("escalated" in t for t in receiver.texts("main"))


# --- webhook failures ------------------------------------------------------------------------


async def test_webhook_500_is_retried(env: WorkflowEnvironment, receiver: Receiver) -> None:
    receiver.script["main"] = deque([500])
    async with started(env, settings_for(receiver)) as handle:

        async def posted_twice() -> None:
            assert len(receiver.posts.get("main", [])) == 2

        await assert_eventually(posted_twice)
        await handle.signal("approve", {"approver": "zed"})
        assert (await result_within(handle.result())).approved
        assert not any("failed" in e.detail for e in await audit(handle))
    (h1, b1), (h2, b2), _decision = receiver.posts["main"]
    assert b1 == b2 and h1["idempotency-key"] == h2["idempotency-key"]


async def test_webhook_400_does_not_fail_the_gate(
    env: WorkflowEnvironment, receiver: Receiver
) -> None:
    receiver.script["main"] = deque([400])
    async with started(env, settings_for(receiver)) as handle:

        async def failure_audited() -> None:
            details = [e.detail for e in await audit(handle) if e.kind == "requested"]
            assert any("request notification failed" in d for d in details), details

        await assert_eventually(failure_audited)
        await handle.signal("approve", {"approver": "zed"})
        assert (await result_within(handle.result())).approved
    assert len(receiver.posts["main"]) == 2  # the refused request (not retried), the decision


async def test_no_webhook_configured(env: WorkflowEnvironment, receiver: Receiver) -> None:
    async with started(env, ApprovalSettings(roles=ROLES), approvers=["alice"]) as handle:
        await handle.signal("approve", {"approver": "alice"})
        assert (await result_within(handle.result())).approver_roles == ["sre"]
    assert receiver.posts == {}


# --- notify error mapping (httpx.MockTransport) ----------------------------------------------

SECRET_URL = "https://hooks.example.com/services/T000/B000/SECRET"


def note(**kw: Any) -> Notification:
    base: dict[str, Any] = {"kind": "request", "workflow_id": "w", "text": "hi", "dedupe_key": "k"}
    return Notification(**{**base, **kw})


async def notify_with(
    handler: Any, n: Notification, settings: ApprovalSettings | None = None
) -> tuple[bool, NotifyActivities]:
    settings = settings or ApprovalSettings(webhook_url=SECRET_URL)
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        acts = NotifyActivities(http, settings)
        sent: bool = await ActivityEnvironment().run(acts.send_notification, n)
        return sent, acts


@pytest.mark.parametrize(
    ("status", "headers", "type_", "retryable", "delay"),
    [
        (429, {"Retry-After": "7"}, "WebhookRateLimited", True, timedelta(seconds=7)),
        (429, {}, "WebhookRateLimited", True, None),
        (429, {"Retry-After": "soon"}, "WebhookRateLimited", True, None),
        (408, {}, "WebhookUnavailable", True, None),
        (500, {}, "WebhookUnavailable", True, None),
        (502, {}, "WebhookUnavailable", True, None),
        (503, {}, "WebhookUnavailable", True, None),
        (504, {}, "WebhookUnavailable", True, None),
        (400, {}, "WebhookRejected", False, None),
        (401, {}, "WebhookRejected", False, None),
        (403, {}, "WebhookRejected", False, None),
        (404, {}, "WebhookRejected", False, None),
        (410, {}, "WebhookRejected", False, None),
        (499, {}, "WebhookRejected", False, None),
    ],
)
async def test_notify_error_mapping(
    status: int, headers: dict[str, str], type_: str, retryable: bool, delay: timedelta | None
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, headers=headers, text="x" * 1000 + SECRET_URL)

    with pytest.raises(ApplicationError, match=f"answered HTTP {status}: ") as info:
        await notify_with(handler, note())
    err = info.value
    assert (err.type, err.non_retryable, err.next_retry_delay) == (type_, not retryable, delay)
    assert "SECRET" not in str(err) and "https://hooks.example.com" in str(err)
    assert len(str(err)) < 400


async def test_notify_connect_error_is_retryable() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError(f"cannot connect to {request.url}", request=request)

    with pytest.raises(ApplicationError, match=r"unreachable: cannot connect to") as info:
        await notify_with(handler, note())
    assert (info.value.type, info.value.non_retryable) == ("WebhookUnavailable", False)
    assert "SECRET" not in str(info.value)


async def test_notify_posts_once_per_dedupe_key_and_picks_the_url() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, text="ok")

    settings = ApprovalSettings(webhook_url=SECRET_URL, escalation_webhook_url=SECRET_URL + "/esc")
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        acts = NotifyActivities(http, settings)
        run = ActivityEnvironment().run
        assert await run(acts.send_notification, note(dedupe_key="a"))
        assert await run(acts.send_notification, note(dedupe_key="a"))
        assert await run(acts.send_notification, note(dedupe_key="b", escalation=True))
        assert await run(acts.approver_roles) == {}
    assert [str(r.url) for r in seen] == [SECRET_URL, SECRET_URL + "/esc"]
    assert seen[0].headers["Idempotency-Key"] == "a"
    assert seen[0].read() == b'{"text":"hi"}'


async def test_notify_without_webhook_returns_false() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise AssertionError("must not post")

    sent, _ = await notify_with(handler, note(), ApprovalSettings())
    assert sent is False


def test_redact_url() -> None:
    assert redact_url(SECRET_URL) == "https://hooks.example.com"
    assert redact_url("http://u:p@127.0.0.1:8080/x?token=1") == "http://127.0.0.1:8080"
