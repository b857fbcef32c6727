"""Defensive decoding of message payloads in workflow code (deterministic).

A handler typed with a model lets the SDK decode its payload, and whatever the payload's encoding
gives reaches the handler: ``bytes`` for ``binary/plain``, ``None`` for ``binary/null``. A handler
that takes a ``RawValue`` and calls :func:`decode_payload` gets either a valid model or a
non-retryable ``InvalidInput`` error it can record, so no payload fails a workflow task.
"""

from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel
from temporalio import workflow
from temporalio.common import RawValue
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from fleetops.converter import INVALID_INPUT, invalid_input

M = TypeVar("M", bound=BaseModel)


def decode_payload(raw: RawValue | None, model: type[M], *, example: str) -> M:
    """Decode a message payload as ``model`` with the workflow's payload converter.

    Args:
        raw: the payload as received (None: the sender passed no argument).
        model: the pydantic model expected.
        example: the expected JSON, quoted in error messages, e.g. ``{"approver": "<you>"}``.

    Returns:
        The validated model.

    Raises:
        ApplicationError: ``InvalidInput`` (non-retryable) naming what is wrong: no payload, an
            undecodable one (unknown encoding, bad JSON), a value that is not a JSON object of
            ``model`` (``binary/plain`` bytes, ``null``, an array, a string), or failing fields.
    """
    if raw is None:
        raise invalid_input(f"payload required: {example}")
    encoding = raw.payload.metadata.get("encoding", b"").decode(errors="replace")
    try:
        value = workflow.payload_converter().from_payload(raw.payload, model)
    except ApplicationError as err:
        if err.type == INVALID_INPUT:
            raise
        raise invalid_input(f"cannot decode the {encoding} payload: {err.message}") from None
    except Exception as err:  # unknown encoding, bad JSON, ...
        raise invalid_input(f"cannot decode the {encoding} payload: {err}") from None
    if not isinstance(value, model):
        raise invalid_input(
            f"expected a JSON object {example}, got {type(value).__name__} ({encoding})"
        )
    return value
