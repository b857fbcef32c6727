"""Signed approvals and bad payloads at the approval gate, on the time-skipping server.

Reuses ``ApprovalProbe`` and the helpers of ``tests/test_approval.py``; the real
``NotifyActivities`` reads the policy (roles, public keys) from ``ApprovalSettings``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    import pytest
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from pydantic import ValidationError
    from temporalio import activity
    from temporalio.api.common.v1 import Payload
    from temporalio.api.enums.v1 import EventType
    from temporalio.client import (
        WorkflowFailureError,
        WorkflowHandle,
        WorkflowHistory,
        WorkflowUpdateFailedError,
    )
    from temporalio.common import RawValue
    from temporalio.exceptions import ApplicationError
    from temporalio.testing import WorkflowEnvironment
    from temporalio.worker import Replayer

    from fleetops.approvals import (
        ApprovalDecision,
        ApprovalPolicy,
        ApprovalRequest,
        ApprovalSignal,
        DecisionRequest,
    )
    from fleetops.converter import data_converter
    from fleetops.settings import ApprovalSettings
    from fleetops.signing import (
        decision_message,
        generate_key_pair,
        load_private_key,
        public_key_base64,
        public_key_of,
        sign_decision,
        signature_problem,
        verify,
    )
    from tests.conftest import assert_eventually, new_worker
    from tests.test_approval import (
        ROLES,
        ApprovalProbe,
        audit,
        pending,
        refused,
        started,
        update_accepted_events,
    )

ALICE = Ed25519PrivateKey.generate()
BOB = Ed25519PrivateKey.generate()
MALLORY = Ed25519PrivateKey.generate()
KEYS = {"alice": public_key_of(ALICE), "bob": public_key_of(BOB)}


def signed_settings(**kw: Any) -> ApprovalSettings:
    return ApprovalSettings(roles=ROLES, public_keys=KEYS, **kw)


async def sign(
    handle: WorkflowHandle[Any, Any],
    key: Ed25519PrivateKey,
    *,
    approver: str = "alice",
    approved: bool = True,
    comment: str = "lgtm",
    request_id: str = "approval-1",
    run_id: str | None = None,
    age: timedelta = timedelta(seconds=5),
    decide: bool = True,
) -> dict[str, Any]:
    """A signed payload as JSON: for ``decide`` (with ``approved``) or for the signals.

    Signed ``age`` before the request's workflow time: the time-skipping server's clock runs
    ahead of the wall clock once a test has skipped time.
    """
    p = await pending(handle)
    now = p.requested_at
    base = ApprovalSignal(approver=approver, comment=comment)
    signed = sign_decision(
        key,
        base,
        workflow_id=handle.id,
        run_id=p.run_id if run_id is None else run_id,
        request_id=request_id,
        approved=approved,
        signed_at=now - age,
    )
    doc: dict[str, Any] = signed.model_dump(mode="json")
    if decide:
        doc["approved"] = approved
    return doc


async def forgeries(handle: WorkflowHandle[Any, Any], *, decide: bool) -> dict[str, dict[str, Any]]:
    """Decisions the gate must refuse, by name (each claims to be alice's approval)."""
    good = await sign(handle, ALICE, decide=decide)
    approved = {"approved": True} if decide else {}
    return {
        "unsigned": {"approver": "alice", "comment": "lgtm", **approved},
        "garbage signature": {**good, "signature": base64.b64encode(b"x" * 64).decode()},
        "not base64": {**good, "signature": "%%%"},
        "mallory's key": await sign(handle, MALLORY, decide=decide),
        "bob's key as alice": await sign(handle, BOB, decide=decide),
        "other request": await sign(handle, ALICE, request_id="approval-0", decide=decide),
        "other run": await sign(handle, ALICE, run_id="an-earlier-run", decide=decide),
        "stale": await sign(handle, ALICE, age=timedelta(minutes=11), decide=decide),
        "future": await sign(handle, ALICE, age=-timedelta(minutes=5), decide=decide),
        "comment changed": {**good, "comment": "ship it, and also drop the database"},
        "signed a reject": await sign(handle, ALICE, approved=False, decide=False) | approved,
    }


async def task_failures(handle: WorkflowHandle[Any, Any]) -> int:
    history = await handle.fetch_history()
    failed = EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED
    return sum(1 for e in history.events if e.event_type == failed)


# --- the signing module ----------------------------------------------------------------------


def test_sign_and_verify_cover_every_field() -> None:
    at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    fields: dict[str, Any] = {
        "workflow_id": "deploy/a/v2",
        "run_id": "r1",
        "request_id": "approval-1",
        "approved": True,
        "approver": "alice",
        "signed_at": at,
        "comment": "ok",
    }
    message = decision_message(**fields)
    signature = base64.b64encode(ALICE.sign(message)).decode()
    assert verify(KEYS["alice"], signature, message)
    assert not verify(KEYS["bob"], signature, message)
    changed = {
        "workflow_id": "deploy/a/v3",
        "run_id": "r2",
        "request_id": "approval-2",
        "approved": False,
        "approver": "bob",
        "signed_at": at + timedelta(microseconds=1),
        "comment": "ok!",
    }
    for name, value in changed.items():
        assert not verify(KEYS["alice"], signature, decision_message(**{**fields, name: value}))
    # The same instant in another zone is the same message.
    other_zone = at.astimezone(datetime.now().astimezone().tzinfo)
    assert decision_message(**{**fields, "signed_at": other_zone}) == message


def test_public_key_forms() -> None:
    private_pem, public_pem = generate_key_pair()
    key = load_private_key(private_pem)
    assert public_key_base64(public_pem.decode()) == public_key_of(key)
    assert public_key_base64(public_key_of(key)) == public_key_of(key)
    for bad in ("", "abc", base64.b64encode(b"x" * 31).decode(), "-----BEGIN PUBLIC KEY-----"):
        with pytest.raises(ValueError):
            public_key_base64(bad)
    settings = ApprovalSettings(public_keys={" alice ": public_pem.decode()})
    assert settings.public_keys == {"alice": public_key_of(key)}
    with pytest.raises(ValidationError, match="bob"):
        ApprovalSettings(public_keys={"bob": "not a key"})


def test_no_keys_no_signature_needed_but_request_id_is_checked() -> None:
    now = datetime.now(UTC)
    common: dict[str, Any] = {
        "workflow_id": "w", "run_id": "r", "request_id": "approval-2", "approved": True,
    }  # fmt: skip
    assert (
        signature_problem(ApprovalPolicy(), ApprovalSignal(approver="a"), now=now, **common) is None
    )
    other = ApprovalSignal(approver="a", request_id="approval-1")
    problem = signature_problem(ApprovalPolicy(), other, now=now, **common)
    assert problem is not None and "approval-1" in problem


# --- bounds ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        {"approvers": [""]},
        {"roles": ["  "]},
        {"approvers": ["x" * 201]},
        {"approvers": [f"u{i}" for i in range(101)]},
        {"timeout_seconds": 1e12},
        {"timeout_seconds": float("inf")},
        {"timeout_seconds": 0},
        {"escalation_timeout_seconds": 31 * 86400},
        {"reminder_interval_seconds": 1e9},
        {"reminder_interval_seconds": 0.001},
    ],
)
def test_request_bounds(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        ApprovalRequest(question="q", **bad)


@pytest.mark.parametrize(
    "bad",
    [
        {"approver": "alice", "approved": "yes"},
        {"approver": "alice", "approved": 1},
        {"approver": "", "approved": True},
        {"approver": 7, "approved": True},
        {"approver": "alice", "approved": True, "signed_at": "2026-01-01T00:00:00"},
        {"approver": "alice", "approved": True, "comment": "x" * 2001},
    ],
)
def test_decision_strict_types(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        DecisionRequest.model_validate_json(json.dumps(bad))


async def test_unbounded_timeout_fails_the_workflow_at_once(env: WorkflowEnvironment) -> None:
    worker = new_worker(env.client, workflows=[ApprovalProbe], activities=[])
    async with worker:
        handle = await env.client.start_workflow(
            "ApprovalProbe",
            {"question": "q", "timeout_seconds": 1e12},
            id=f"approval-bounds-{worker.task_queue}",
            task_queue=worker.task_queue,
        )
        with pytest.raises(WorkflowFailureError) as info:
            await handle.result()
    cause = info.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == "InvalidInput"
    assert "timeout_seconds" in cause.message


# --- signed decisions at the gate ------------------------------------------------------------


async def test_signed_decide_is_accepted_and_replays(env: WorkflowEnvironment) -> None:
    async with started(env, signed_settings(), roles=["sre"]) as handle:
        assert (await pending(handle)).signatures_required
        d = await handle.execute_update(
            "decide", await sign(handle, ALICE), result_type=ApprovalDecision
        )
        assert (d.approved, d.approver, d.approver_roles, d.signed) == (
            True,
            "alice",
            ["sre"],
            True,
        )
        assert await handle.result() == d
        assert [(e.kind, e.detail) for e in await audit(handle)][-1] == (
            "decided", "approved (signed): lgtm",
        )  # fmt: skip
        await Replayer(
            workflows=[ApprovalProbe], data_converter=env.client.data_converter
        ).replay_workflow(await handle.fetch_history())


async def test_forged_decide_is_refused_before_history(env: WorkflowEnvironment) -> None:
    async with started(env, signed_settings(), roles=["sre"]) as handle:
        for name, forged in (await forgeries(handle, decide=True)).items():
            assert await refused(handle, forged) == "ApprovalRefused", name
        # bob holds a key, but not the role: the signature does not make him an approver.
        assert await refused(handle, await sign(handle, BOB, approver="bob")) == "ApprovalRefused"
        assert await update_accepted_events(handle) == 0
        assert [e.kind for e in await audit(handle)] == ["requested"]
        assert (await pending(handle)).request_id == "approval-1"
        await handle.signal("approve", await sign(handle, ALICE, decide=False))
        assert (await handle.result()).signed


REPLAY_IN_FRESH_PROCESS = """
import asyncio, sys
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer
from fleetops.converter import data_converter
from tests.test_approval import ApprovalProbe

history = WorkflowHistory.from_json(sys.argv[2], open(sys.argv[1]).read())
replayer = Replayer(workflows=[ApprovalProbe], data_converter=data_converter())
asyncio.run(replayer.replay_workflow(history))
print("replayed")
"""


async def test_forged_signals_are_audited_as_refusals(
    env: WorkflowEnvironment, tmp_path: Path
) -> None:
    async with started(env, signed_settings(), roles=["sre"]) as handle:
        bad = await forgeries(handle, decide=False)
        for forged in bad.values():
            await handle.signal("approve", forged)

        async def all_refused() -> list[str]:
            details = [e.detail for e in await audit(handle) if e.kind == "refused"]
            assert len(details) == len(bad)
            return details

        details = await assert_eventually(all_refused)
        reasons = ["unsigned", "bad signature", "bad signature", "bad signature", "bad signature"]
        reasons += ["is for approval-0", "bad signature", "stale", "future", "bad signature"]
        reasons += ["bad signature"]
        for name, reason, detail in zip(bad, reasons, details, strict=True):
            assert reason in detail, (name, detail)
        assert await pending(handle)
        assert await task_failures(handle) == 0
        await handle.signal("reject", await sign(handle, ALICE, approved=False, decide=False))
        d = await handle.result()
        assert (d.approved, d.outcome, d.signed) == (False, "rejected", True)
        # The first bad signature a process sees, checked inside the workflow sandbox, must not
        # abort it (cryptography's Rust core once did): replay in a fresh interpreter.
        path = tmp_path / "history.json"
        path.write_text((await handle.fetch_history()).to_json())
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", REPLAY_IN_FRESH_PROCESS, str(path), handle.id,
        cwd=Path(__file__).parent.parent,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
    assert (proc.returncode, out.strip()) == (0, b"replayed"), err.decode()[-2000:]


async def test_approver_without_key_is_refused(env: WorkflowEnvironment) -> None:
    async with started(env, signed_settings(), roles=["release-manager"]) as handle:
        carol = await sign(handle, MALLORY, approver="carol")  # carol may decide, but has no key
        with pytest.raises(WorkflowUpdateFailedError) as info:
            await handle.execute_update("decide", carol, result_type=ApprovalDecision)
        assert "no public key" in str(info.value.cause)
        assert await update_accepted_events(handle) == 0


@activity.defn(name="approval_policy")
async def unreadable_policy() -> ApprovalPolicy:
    raise ApplicationError("settings unreadable", non_retryable=True)


async def test_policy_unavailable_fails_closed(env: WorkflowEnvironment) -> None:
    async with started(env, ApprovalSettings(), activities=[unreadable_policy]) as handle:

        async def audited() -> None:
            details = [e.detail for e in await audit(handle)]
            assert any("approval policy unavailable" in d for d in details), details

        await assert_eventually(audited)
        assert (await pending(handle)).signatures_required
        assert await refused(handle, {"approver": "zed", "approved": True}) == "ApprovalRefused"


async def test_approvers_only_request_refuses_an_outsider(env: WorkflowEnvironment) -> None:
    async with started(env, ApprovalSettings(roles=ROLES), approvers=["alice"]) as handle:
        # bob holds roles, carol holds others: neither is listed, so neither may decide.
        for outsider in ("bob", "carol", "mallory"):
            d = {"approver": outsider, "approved": True}
            assert await refused(handle, d) == "ApprovalRefused", outsider
            await handle.signal("approve", {"approver": outsider})

        async def refusals() -> None:
            entries = [e for e in await audit(handle) if e.kind == "refused"]
            assert [e.actor for e in entries] == ["bob", "carol", "mallory"]

        await assert_eventually(refusals)
        assert await update_accepted_events(handle) == 0
        await handle.signal("approve", {"approver": "alice"})
        assert (await handle.result()).approver == "alice"


# --- payloads that must not fail a workflow task ---------------------------------------------


def raw(encoding: bytes, data: bytes = b"") -> RawValue:
    return RawValue(Payload(metadata={"encoding": encoding}, data=data))


BAD_PAYLOADS: dict[str, Any] = {
    "binary/plain": raw(b"binary/plain", b"hello"),
    "binary/null": raw(b"binary/null"),
    "unknown encoding": raw(b"application/x-nope", b"{}"),
    "not json": raw(b"json/plain", b"{approver"),
    "null": raw(b"json/plain", b"null"),
    "array": ["alice"],
    "string": "alice",
    "number": 1e308,
    "wrong types": {"approver": ["alice"], "comment": 5},
    "unknown field": {"approver": "alice", "role": "admin"},
    "approved as a string": {"approver": "alice", "approved": "yes"},
    "empty approver": {"approver": "", "approved": True},
    "huge request id": {"approver": "alice", "approved": True, "request_id": "r" * 10_000},
}


async def test_bad_payloads_never_fail_a_workflow_task(env: WorkflowEnvironment) -> None:
    async with started(env, ApprovalSettings(roles=ROLES), context={"hold": True}) as handle:
        for name, payload in BAD_PAYLOADS.items():
            assert await refused(handle, payload) == "InvalidInput", name
            await handle.signal("approve", payload)
            await handle.signal("reject", payload)
        await handle.signal("approve")  # no payload at all

        async def all_refused() -> None:
            refusals = [e for e in await audit(handle) if e.kind == "refused"]
            assert len(refusals) == 2 * len(BAD_PAYLOADS) + 1

        await assert_eventually(all_refused)
        assert await task_failures(handle) == 0
        assert await update_accepted_events(handle) == 0
        p = await pending(handle)
        assert (p.request_id, p.reminders_sent) == ("approval-1", 0)
        details = [e.detail for e in await audit(handle) if e.kind == "refused"]
        assert all(len(d) <= 500 for d in details)
        assert "binary/plain payload is not a valid ApprovalSignal" in details[0]
        # Still decidable by a good message afterwards.
        d = await handle.execute_update(
            "decide", {"approver": "alice", "approved": True}, result_type=ApprovalDecision
        )
        assert d.approver == "alice"
        await handle.signal(ApprovalProbe.finish)
        assert (await handle.result()).approved


# --- replay of a history recorded before the approval policy ---------------------------------

BEFORE_POLICY = Path(__file__).parent / "histories/approval/before_policy.json"


async def test_history_from_before_the_policy_replays() -> None:
    """Recorded with the gate that read only roles (``approver_roles``), a refused signal and an
    approval by ``decide``: running executions of that code must replay (``POLICY_PATCH``)."""
    history = WorkflowHistory.from_json("approval-before-policy", BEFORE_POLICY.read_text())
    replayer = Replayer(workflows=[ApprovalProbe], data_converter=data_converter())
    result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
    assert result.replay_failure is None, result.replay_failure
