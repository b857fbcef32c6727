"""The FleetOps data converter: Temporal's pydantic converter that fails bad input cleanly.

With the stock pydantic converter, a payload that fails validation raises
``pydantic.ValidationError`` inside the workflow, which the SDK wraps as a *workflow task*
failure that Temporal retries forever. Here the error becomes a non-retryable
``ApplicationError(type="InvalidInput")`` naming each bad field, which fails the workflow (start
input), rejects the update (update payloads) or drops the signal with a logged reason.

The same holds for payloads that are not JSON at all. The SDK decodes ``binary/plain`` (bytes)
and ``binary/null`` (None) without looking at the type the handler expects, so a
``temporal workflow signal --input-meta encoding=binary/plain`` would hand a workflow ``bytes``
where it expects a model. Here such a value is checked against the expected type, and an
unknown encoding or an undecodable protobuf payload is ``InvalidInput`` too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import pydantic
import temporalio.api.common.v1
import temporalio.common
from temporalio.contrib.pydantic import PydanticPayloadConverter
from temporalio.converter import DataConverter, PayloadCodec
from temporalio.exceptions import ApplicationError

from fleetops.errors import INVALID_INPUT

__all__ = ["INVALID_INPUT", "FleetOpsPayloadConverter", "data_converter", "invalid_input"]


_UNTYPED_ENCODINGS = frozenset(
    {b"binary/null", b"binary/plain", b"json/protobuf", b"binary/protobuf"}
)
"""Encodings the SDK decodes without the type hint (to None, to bytes, to the protobuf message
the payload's ``messageType`` names)."""


def describe_validation_error(err: pydantic.ValidationError) -> str:
    """Render a pydantic error as ``field.path: message; ...`` for operators.

    Args:
        err: the validation error.

    Returns:
        One line naming every failing field (``<root>`` for model-level checks).
    """
    parts = [f"{_loc(e)}: {e['msg']}" for e in err.errors(include_url=False)]
    return f"invalid {err.title}: " + "; ".join(parts)


def _loc(error: Any) -> str:
    return ".".join(str(p) for p in error["loc"]) or "<root>"


def _invalid(err: pydantic.ValidationError) -> ApplicationError:
    errors = err.errors(include_url=False)
    return invalid_input(describe_validation_error(err), field=_loc(errors[0]) if errors else None)


def invalid_input(message: str, *, field: str | None = None) -> ApplicationError:
    """Build the non-retryable error FleetOps raises for bad input.

    Args:
        message: what is wrong and what to do.
        field: the offending field, added to the error details.

    Returns:
        ``ApplicationError(type="InvalidInput", non_retryable=True)``.
    """
    return ApplicationError(message, {"field": field}, type=INVALID_INPUT, non_retryable=True)


class FleetOpsPayloadConverter(PydanticPayloadConverter):
    """Pydantic payload converter whose validation errors are non-retryable ``InvalidInput``."""

    def from_payloads(
        self,
        payloads: Sequence[temporalio.api.common.v1.Payload],
        type_hints: list[type] | None = None,
    ) -> list[Any]:
        """Decode payloads, see base class.

        Raises:
            ApplicationError: a payload does not validate, has an unknown encoding, or is not
                of the expected type (``type="InvalidInput"``, non-retryable).
        """
        hints = [
            type_hints[i] if type_hints and i < len(type_hints) else None
            for i in range(len(payloads))
        ]
        for payload, hint in zip(payloads, hints, strict=True):
            encoding = payload.metadata.get("encoding", b"<unknown>")
            if hint is not temporalio.common.RawValue and encoding not in self.converters:
                raise invalid_input(f"unknown payload encoding {encoding!r}: send JSON")
        try:
            values = super().from_payloads(payloads, type_hints)
        except pydantic.ValidationError as err:
            raise _invalid(err) from None
        except RuntimeError as err:  # the SDK's "Payload at index ... could not be converted"
            cause = err.__cause__
            if isinstance(cause, pydantic.ValidationError):
                raise _invalid(cause) from None
            if cause is None:
                raise
            raise invalid_input(f"{err}: {cause}; send JSON") from None
        for payload, value, hint in zip(payloads, values, hints, strict=True):
            encoding = payload.metadata.get("encoding", b"")
            if hint is not None and encoding in _UNTYPED_ENCODINGS:
                self._check_untyped(value, hint, encoding.decode())
        return values

    @staticmethod
    def _check_untyped(value: Any, hint: type, encoding: str) -> None:
        """Refuse a value decoded without the hint (``binary/*``, ``*/protobuf``) that is not of
        the expected type (e.g. bytes, or a protobuf message, for a model)."""
        if hint is temporalio.common.RawValue:
            return
        try:
            pydantic.TypeAdapter(hint).validate_python(value, strict=True)
        except pydantic.ValidationError:
            name = getattr(hint, "__name__", str(hint))
            raise invalid_input(
                f"a {encoding} payload is not a valid {name}: send it as JSON "
                "(encoding json/plain)",
                field="<root>",
            ) from None


def data_converter(codec: PayloadCodec | None = None) -> DataConverter:
    """The data converter every FleetOps client and worker uses.

    Args:
        codec: optional payload codec (encryption).

    Returns:
        A :class:`DataConverter` with :class:`FleetOpsPayloadConverter`.
    """
    return dataclasses.replace(
        DataConverter.default,
        payload_converter_class=FleetOpsPayloadConverter,
        payload_codec=codec,
    )
