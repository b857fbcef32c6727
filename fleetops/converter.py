"""The FleetOps data converter: Temporal's pydantic converter that fails bad input cleanly.

With the stock pydantic converter, a payload that fails validation raises
``pydantic.ValidationError`` inside the workflow, which the SDK wraps as a *workflow task*
failure that Temporal retries forever. Here the error becomes a non-retryable
``ApplicationError(type="InvalidInput")`` naming each bad field, which fails the workflow (start
input), rejects the update (update payloads) or drops the signal with a logged reason.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import pydantic
import temporalio.api.common.v1
from temporalio.contrib.pydantic import PydanticPayloadConverter
from temporalio.converter import DataConverter, PayloadCodec
from temporalio.exceptions import ApplicationError

INVALID_INPUT = "InvalidInput"
"""``ApplicationError.type`` of every validation failure FleetOps raises."""


def describe_validation_error(err: pydantic.ValidationError) -> str:
    """Render a pydantic error as ``field.path: message; ...`` for operators.

    Args:
        err: the validation error.

    Returns:
        One line naming every failing field (``<root>`` for model-level checks).
    """
    parts = []
    for e in err.errors(include_url=False):
        loc = ".".join(str(p) for p in e["loc"]) or "<root>"
        parts.append(f"{loc}: {e['msg']}")
    return f"invalid {err.title}: " + "; ".join(parts)


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
            ApplicationError: a payload does not validate (``type="InvalidInput"``, non-retryable).
        """
        try:
            return super().from_payloads(payloads, type_hints)
        except pydantic.ValidationError as err:
            raise invalid_input(describe_validation_error(err)) from None
        except Exception as err:
            cause = err.__cause__
            if isinstance(cause, pydantic.ValidationError):
                raise invalid_input(describe_validation_error(cause)) from None
            raise


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
