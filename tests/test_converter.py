"""The FleetOps data converter: bad payloads become one clear, non-retryable InvalidInput."""

from __future__ import annotations

import pytest
import temporalio.api.common.v1
from pydantic import BaseModel, ValidationError, model_validator
from pydantic_core import ValidationError as CoreValidationError
from temporalio.common import RawValue
from temporalio.exceptions import ApplicationError

from fleetops.codec import EncryptionCodec
from fleetops.converter import (
    INVALID_INPUT,
    FleetOpsPayloadConverter,
    data_converter,
    describe_validation_error,
    invalid_input,
)
from fleetops.models import AgentSpec, OperatorRequest, ScaleRequest


class Pair(BaseModel):
    low: int
    high: int

    @model_validator(mode="after")
    def _ordered(self) -> Pair:
        if self.low > self.high:
            raise ValueError("low must be <= high")
        return self


def errors_of(model: type[BaseModel], data: object) -> ValidationError:
    with pytest.raises(ValidationError, match=model.__name__) as info:
        model.model_validate(data)
    return info.value


def test_describe_names_every_field_with_its_path() -> None:
    err = errors_of(AgentSpec, {"agent_id": "a", "health": {"interval_seconds": 0}, "x": 1})
    assert describe_validation_error(err) == (
        "invalid AgentSpec: health.interval_seconds: Input should be greater than or equal to "
        "0.01; x: Extra inputs are not permitted"
    )


def test_describe_model_level_error_as_root() -> None:
    err = errors_of(Pair, {"low": 2, "high": 1})
    assert (
        describe_validation_error(err) == "invalid Pair: <root>: Value error, low must be <= high"
    )


def test_invalid_input_is_non_retryable_and_names_the_field() -> None:
    err = invalid_input("replicas must be positive", field="replicas")
    assert isinstance(err, ApplicationError)
    assert (err.message, err.type, err.non_retryable) == (
        "replicas must be positive",
        INVALID_INPUT,
        True,
    )
    assert err.details == ({"field": "replicas"},)
    assert INVALID_INPUT == "InvalidInput"
    assert invalid_input("bad").details == ({"field": None},)


def test_bad_payload_is_invalid_input() -> None:
    conv = FleetOpsPayloadConverter()
    [payload] = conv.to_payloads([{"replicas": "many"}])
    with pytest.raises(
        ApplicationError, match=r"invalid ScaleRequest: replicas: Input should be a valid integer"
    ) as info:
        conv.from_payloads([payload], [ScaleRequest])
    assert info.value.type == INVALID_INPUT and info.value.non_retryable


def test_good_payload_round_trips() -> None:
    conv = FleetOpsPayloadConverter()
    payloads = conv.to_payloads([ScaleRequest(replicas=3)])
    assert conv.from_payloads(payloads, [ScaleRequest]) == [ScaleRequest(replicas=3)]


def test_malformed_json_is_invalid_input() -> None:
    conv = FleetOpsPayloadConverter()
    [payload] = conv.to_payloads([1])
    payload.data = b"{not json"
    with pytest.raises(ApplicationError, match=r"invalid ScaleRequest: <root>: Invalid JSON") as e:
        conv.from_payloads([payload], [ScaleRequest])
    assert e.value.type == INVALID_INPUT and e.value.non_retryable


def test_unknown_encoding_is_invalid_input() -> None:
    """A payload no converter knows is bad input, never a workflow-task failure."""
    conv = FleetOpsPayloadConverter()
    [payload] = conv.to_payloads([1])
    payload.metadata["encoding"] = b"made/up"
    with pytest.raises(ApplicationError, match=r"unknown payload encoding b'made/up'") as info:
        conv.from_payloads([payload], [ScaleRequest])
    assert info.value.type == "InvalidInput" and info.value.non_retryable


def test_data_converter_uses_the_codec() -> None:
    plain = data_converter()
    assert plain.payload_converter_class is FleetOpsPayloadConverter
    assert plain.payload_codec is None
    codec = EncryptionCodec({"k": b"k" * 32}, active_key_id="k")
    assert data_converter(codec).payload_codec is codec


def refusal(payload: temporalio.api.common.v1.Payload, hint: object) -> ApplicationError:
    """The InvalidInput error decoding ``payload`` as ``hint`` raises (checked non-retryable)."""
    with pytest.raises(ApplicationError) as info:
        FleetOpsPayloadConverter().from_payloads([payload], [hint])  # type: ignore[list-item]
    assert (info.value.type, info.value.non_retryable) == (INVALID_INPUT, True)
    return info.value


def json_payload(data: bytes) -> temporalio.api.common.v1.Payload:
    return temporalio.api.common.v1.Payload(metadata={"encoding": b"json/plain"}, data=data)


SEND_JSON = "send it as JSON (encoding json/plain)"


@pytest.mark.parametrize(
    ("value", "hint", "message"),
    [
        (b"hi", ScaleRequest, f"a binary/plain payload is not a valid ScaleRequest: {SEND_JSON}"),
        (None, ScaleRequest, f"a binary/null payload is not a valid ScaleRequest: {SEND_JSON}"),
        # strict: lax pydantic would turn b"3" into 3 and b"hello" into "hello"
        (b"3", int, f"a binary/plain payload is not a valid int: {SEND_JSON}"),
        (b"hello", str, f"a binary/plain payload is not a valid str: {SEND_JSON}"),
        # a hint without __name__ (a union) is named as Python prints it
        (
            b"hello",
            ScaleRequest | None,
            "a binary/plain payload is not a valid fleetops.models.ScaleRequest | None: "
            + SEND_JSON,
        ),
    ],
)
def test_binary_payload_of_the_wrong_type_is_invalid_input(
    value: object, hint: object, message: str
) -> None:
    """``--input-meta encoding=binary/plain`` (or a null) never hands a handler bytes/None."""
    [payload] = FleetOpsPayloadConverter().to_payloads([value])
    err = refusal(payload, hint)
    assert err.message == message
    assert err.details == ({"field": "<root>"},)


@pytest.mark.parametrize("encoding", [b"json/protobuf", b"binary/protobuf"])
def test_protobuf_payload_for_a_model_is_invalid_input(encoding: bytes) -> None:
    """``--input-meta encoding=json/protobuf --input-meta messageType=...`` decodes to a protobuf
    message whatever the hint; for a model it is refused, never handed to the handler."""
    message = temporalio.api.common.v1.Payloads()
    data = b"{}" if encoding == b"json/protobuf" else message.SerializeToString()
    payload = temporalio.api.common.v1.Payload(
        metadata={"encoding": encoding, "messageType": b"temporal.api.common.v1.Payloads"},
        data=data,
    )
    err = refusal(payload, OperatorRequest)
    assert err.message == (
        f"a {encoding.decode()} payload is not a valid OperatorRequest: {SEND_JSON}"
    )


def test_binary_payload_of_the_expected_type_is_accepted() -> None:
    conv = FleetOpsPayloadConverter()
    payloads = conv.to_payloads([b"hello", None, b"raw"])
    assert [p.metadata["encoding"] for p in payloads] == [
        b"binary/plain",
        b"binary/null",
        b"binary/plain",
    ]
    values = conv.from_payloads(payloads, [bytes, ScaleRequest | None, RawValue])  # type: ignore[list-item]
    assert values[:2] == [b"hello", None]
    assert isinstance(values[2], RawValue) and values[2].payload == payloads[2]


@pytest.mark.parametrize("data", [b"null", b"[1, 2]", b'"replicas"', b"3"])
def test_json_that_is_not_an_object_is_invalid_input_at_the_root(data: bytes) -> None:
    err = refusal(json_payload(data), ScaleRequest)
    assert err.message == "invalid ScaleRequest: <root>: Input should be an object"
    assert err.details == ({"field": "<root>"},)


@pytest.mark.parametrize(
    ("data", "message", "field"),
    [
        (b'{"replicas": "3"}', "replicas: Input should be a valid integer", "replicas"),
        (b'{"replicas": 0}', "replicas: Input should be greater than or equal to 1", "replicas"),
        (
            b'{"replicas": 2, "colour": "blue"}',
            "colour: Extra inputs are not permitted",
            "colour",
        ),
    ],
)
def test_json_field_error_names_the_field(data: bytes, message: str, field: str) -> None:
    """Counts are strict (``"3"`` is refused) and the error detail names the first bad field."""
    err = refusal(json_payload(data), ScaleRequest)
    assert err.message == f"invalid ScaleRequest: {message}"
    assert err.details == ({"field": field},)


def test_first_failing_field_is_the_detail() -> None:
    err = refusal(json_payload(b'{"agent_id": "", "replicas": "x"}'), AgentSpec)
    assert err.message.startswith("invalid AgentSpec: agent_id: ")
    assert "; replicas: Input should be a valid integer" in err.message
    assert err.details == ({"field": "agent_id"},)


class Opaque(BaseModel):
    """A model whose validator re-raises a pydantic error that lists no failing field."""

    a: int

    @model_validator(mode="after")
    def _refuse(self) -> Opaque:
        raise CoreValidationError.from_exception_data("Opaque", [])


def test_validation_error_without_fields_is_still_invalid_input() -> None:
    """Even an error naming no field fails the input cleanly, never the workflow task."""
    err = refusal(json_payload(b'{"a": 1}'), Opaque)
    assert err.message == "invalid Opaque: "
    assert err.details == ({"field": None},)
