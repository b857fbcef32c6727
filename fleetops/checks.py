"""Models of the HTTP checks run against replicas: wait-until-healthy and smoke tests."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from fleetops.limits import MAX_DURATION_SECONDS, Count, Seconds
from fleetops.models import FrozenModel, StrictModel


class WaitHealthyRequest(FrozenModel):
    """Probe ``endpoints`` every ``interval_seconds`` until all are healthy, for at most
    ``timeout_seconds`` (seconds)."""

    endpoints: list[str]
    path: str = "/health"
    timeout_seconds: float = Field(300.0, gt=0)
    interval_seconds: float = Field(1.0, gt=0)
    probe_timeout_seconds: float = Field(2.0, gt=0)


class SmokeTest(StrictModel):
    """One HTTP check run against every preview replica before analysis."""

    name: str = Field(min_length=1, max_length=100)
    method: Literal["GET", "POST"] = "GET"
    path: str = Field("/health", pattern=r"^/", max_length=2048)
    body: dict[str, Any] | None = Field(None, description="JSON body (POST).")
    expect_status: Count = Field(200, ge=100, le=599, description="HTTP status that passes.")
    timeout_seconds: Seconds = Field(
        5.0, gt=0, le=MAX_DURATION_SECONDS, description="Seconds per request (<= 30 days)."
    )


class SmokeRequest(FrozenModel):
    """Run every smoke test against every endpoint."""

    endpoints: list[str]
    tests: list[SmokeTest]


class SmokeResult(FrozenModel):
    """One smoke test against one endpoint."""

    test: str
    endpoint: str
    passed: bool
    status_code: int | None = None
    error: str | None = None
