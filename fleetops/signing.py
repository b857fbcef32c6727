"""Signed approval decisions: Ed25519 over one canonical message per decision.

An approver holds an Ed25519 private key; ``approval.public_keys`` maps each approver to the
public half. A decision is signed over the canonical bytes of :func:`decision_message` (workflow
id and run id, request id, decision, approver, time, comment). The gate verifies the signature in
the ``decide`` update validator (nothing is written to history for a bad one) and in the
``approve``/``reject`` signal handlers (a bad one is audited as a refusal). The run id and
request id bind a signature to one request of one run, so it cannot be replayed on the next
request or on a new run under the same workflow id; the time bounds it to a few
minutes around the workflow's clock (``signature_max_age_seconds`` in the past,
:data:`MAX_CLOCK_SKEW_SECONDS` in the future).

Everything here is pure CPU and deterministic, so workflows may call it.

Sources:
    Ed25519: RFC 8032, https://www.rfc-editor.org/rfc/rfc8032
    Keys and signatures: https://cryptography.io/en/latest/hazmat/primitives/asymmetric/ed25519/
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
from datetime import UTC, datetime, timedelta

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fleetops.approvals import ApprovalPolicy, ApprovalSignal

MESSAGE_VERSION = "fleetops-approval-v1"
"""Domain separator inside every signed message (a signature made for something else never
verifies as a decision)."""
MAX_CLOCK_SKEW_SECONDS = 60.0
"""How far in the future (workflow time) a signature's ``signed_at`` may be, in seconds."""


class SigningError(ValueError):
    """A key or signature cannot be read (wrong format, wrong algorithm)."""


def _load_exception_types() -> None:
    # cryptography's Rust core imports cryptography.exceptions the first time it raises
    # InvalidSignature. Inside Temporal's workflow sandbox that import fails and pyo3 aborts the
    # whole worker process, so a forged signature would kill the worker. The first failure
    # therefore happens here, when this module is imported, outside any sandbox.
    with contextlib.suppress(InvalidSignature):
        Ed25519PrivateKey.generate().public_key().verify(b"\0" * 64, b"")


_load_exception_types()


def decision_message(
    *,
    workflow_id: str,
    run_id: str,
    request_id: str,
    approved: bool,
    approver: str,
    signed_at: datetime,
    comment: str,
) -> bytes:
    """The canonical bytes an approver signs for one decision.

    A JSON object with sorted keys and no whitespace (UTF-8): ``v`` (:data:`MESSAGE_VERSION`),
    ``workflow_id``, ``run_id``, ``request_id``, ``decision`` (``approve``/``reject``),
    ``approver``, ``signed_at`` (UTC, ``YYYY-MM-DDTHH:MM:SS.ffffffZ``) and ``comment``.

    Args:
        workflow_id: the waiting workflow, e.g. ``deploy/demo/v2``.
        run_id: its run (``run_id`` of the ``pending_approval`` query).
        request_id: the pending request (``pending_approval`` query), e.g. ``approval-1``.
        approved: True approves, False rejects.
        approver: who decides (as in ``approval.public_keys``).
        signed_at: when the approver signed (timezone-aware).
        comment: the decision's comment.

    Returns:
        The message bytes.
    """
    doc = {
        "v": MESSAGE_VERSION,
        "workflow_id": workflow_id,
        "run_id": run_id,
        "request_id": request_id,
        "decision": "approve" if approved else "reject",
        "approver": approver,
        "signed_at": signed_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "comment": comment,
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def generate_key_pair() -> tuple[bytes, bytes]:
    """A new Ed25519 key pair.

    Returns:
        ``(private PEM (PKCS#8, unencrypted), public PEM (SubjectPublicKeyInfo))``.
    """
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, public


def load_private_key(data: bytes) -> Ed25519PrivateKey:
    """Read an unencrypted PEM Ed25519 private key (as ``fleetops keys generate`` writes it).

    Raises:
        SigningError: not a PEM private key, encrypted, or not Ed25519.
    """
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as err:
        raise SigningError(f"not an unencrypted PEM private key: {err}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningError(f"not an Ed25519 key but {type(key).__name__}")
    return key


def public_key_base64(text: str) -> str:
    """Normalise a public key to base64 of its 32 raw bytes.

    Args:
        text: a PEM ``PUBLIC KEY`` block, or base64 of the 32 raw bytes.

    Returns:
        Base64 (standard alphabet, padded) of the raw public key.

    Raises:
        SigningError: neither form, or not an Ed25519 key.
    """
    text = text.strip()
    if text.startswith("-----BEGIN"):
        try:
            key = serialization.load_pem_public_key(text.encode())
        except ValueError as err:
            raise SigningError(f"not a PEM public key: {err}") from None
        if not isinstance(key, Ed25519PublicKey):
            raise SigningError(f"not an Ed25519 key but {type(key).__name__}")
        raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    else:
        raw = _b64(text, "public key")
        if len(raw) != 32:
            raise SigningError(f"an Ed25519 public key has 32 bytes, this one {len(raw)}")
    return base64.b64encode(raw).decode()


def public_key_of(key: Ed25519PrivateKey) -> str:
    """Base64 of the raw public key of ``key`` (the form ``approval.public_keys`` accepts)."""
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def sign_decision(
    key: Ed25519PrivateKey,
    decision: ApprovalSignal,
    *,
    workflow_id: str,
    run_id: str,
    request_id: str,
    approved: bool,
    signed_at: datetime,
) -> ApprovalSignal:
    """A copy of ``decision`` carrying ``request_id``, ``signed_at`` and its signature.

    Args:
        key: the approver's private key.
        decision: approver and comment (an ``ApprovalSignal`` or ``DecisionRequest``).
        workflow_id: the waiting workflow.
        run_id: its run.
        request_id: the pending request's id.
        approved: True approves, False rejects (must match the message sent).
        signed_at: now, timezone-aware.

    Returns:
        The same model type with the signature fields set.
    """
    message = decision_message(
        workflow_id=workflow_id,
        run_id=run_id,
        request_id=request_id,
        approved=approved,
        approver=decision.approver,
        signed_at=signed_at,
        comment=decision.comment,
    )
    signature = base64.b64encode(key.sign(message)).decode()
    return decision.model_copy(
        update={"request_id": request_id, "signed_at": signed_at, "signature": signature}
    )


def signature_problem(
    policy: ApprovalPolicy,
    decision: ApprovalSignal,
    *,
    workflow_id: str,
    run_id: str,
    request_id: str,
    approved: bool,
    now: datetime,
) -> str | None:
    """Why a decision's signature is not acceptable, or None when it is (or none is needed).

    Signatures are required when ``policy.public_keys`` is not empty. A ``request_id`` that is
    given is always checked, signed or not, so a decision aimed at an earlier request never
    decides the current one.

    Args:
        policy: keys and the maximum signature age, as recorded when the request started.
        decision: the decision as received.
        workflow_id: the workflow deciding (``workflow.info().workflow_id``).
        run_id: its run (``workflow.info().run_id``).
        request_id: the pending request's id.
        approved: the decision (from the signal name or ``approved``).
        now: workflow time.

    Returns:
        A sentence naming the problem and the fix; None when the decision may be taken.
    """
    d, name = decision, decision.approver
    if d.request_id is not None and d.request_id != request_id:
        return f"the decision is for {d.request_id}, but {request_id} is pending"
    if not policy.public_keys:
        return None
    key = policy.public_keys.get(name)
    if key is None:
        return (
            f"{name!r} has no public key in approval.public_keys, and signed decisions are "
            "required; ask an approver with a key"
        )
    if d.signature is None or d.signed_at is None or d.request_id is None:
        return (
            "unsigned decision: approval.public_keys is set, so decisions must carry request_id, "
            "signed_at and signature (fleetops approve|reject --key PATH)"
        )
    age = now - d.signed_at
    if age > timedelta(seconds=policy.signature_max_age_seconds):
        return (
            f"the signature is stale: signed at {d.signed_at.isoformat()}, more than "
            f"{policy.signature_max_age_seconds:g} s ago; sign again"
        )
    if -age > timedelta(seconds=MAX_CLOCK_SKEW_SECONDS):
        return f"the signature is from the future ({d.signed_at.isoformat()}); check the clock"
    message = decision_message(
        workflow_id=workflow_id,
        run_id=run_id,
        request_id=request_id,
        approved=approved,
        approver=name,
        signed_at=d.signed_at,
        comment=d.comment,
    )
    if not verify(key, d.signature, message):
        verb = "approve" if approved else "reject"
        return (
            f"bad signature: not {name}'s signature of this {verb} of {request_id} "
            "(of this workflow run)"
        )
    return None


def verify(public_key_b64: str, signature_b64: str, message: bytes) -> bool:
    """Whether ``signature_b64`` is a valid Ed25519 signature of ``message``.

    Args:
        public_key_b64: base64 of the 32 raw public-key bytes.
        signature_b64: base64 of the 64 signature bytes.
        message: the signed bytes.

    Returns:
        True if valid; False for a wrong signature or one that is not base64 of 64 bytes.
    """
    try:
        key = Ed25519PublicKey.from_public_bytes(_b64(public_key_b64, "public key"))
        key.verify(_b64(signature_b64, "signature"), message)
    except (SigningError, InvalidSignature, ValueError):
        return False
    return True


def _b64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise SigningError(f"the {what} is not base64") from None
