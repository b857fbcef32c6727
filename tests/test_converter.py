"""The FleetOps data converter: bad payloads become one clear, non-retryable InvalidInput."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ValidationError, model_validator
from temporalio.exceptions import ApplicationError

from fleetops.codec import EncryptionCodec
from fleetops.converter import (
    INVALID_INPUT,
    FleetOpsPayloadConverter,
    data_converter,
    describe_validation_error,
    invalid_input,
)
from fleetops.models import AgentSpec, ScaleRequest


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
        "invalid AgentSpec: health.interval_seconds: Input should be greater than 0; "
        "x: Extra inputs are not permitted"
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
