"""Every number an operator types has an upper bound and a strict type (fleetops.limits).

Payloads are validated from JSON text, as the data converter does with what ``temporal
workflow start --input`` sends; each refusal must name the field.
"""

from __future__ import annotations

import json
from typing import Any

import pydantic
import pytest

from fleetops.analysis import Analysis
from fleetops.checks import SmokeTest
from fleetops.deploy import DeploymentRequest
from fleetops.limits import (
    MAX_DURATION_SECONDS,
    MAX_INTERVAL_SECONDS,
    MAX_MEASUREMENTS_PER_ANALYSIS,
    MAX_REPLICAS,
)
from fleetops.models import AgentSpec, ScaleRequest, TransitionRequest
from fleetops.settings import Settings

DAYS_30 = MAX_DURATION_SECONDS
METRIC = {"name": "m", "builtin": "error_rate", "success_condition": "result < 0.05"}


def agent(**fields: Any) -> dict[str, Any]:
    return {"agent_id": "a", **fields}


def deploy(**fields: Any) -> dict[str, Any]:
    return {"agent_id": "a", "version": "v2", **fields}


def metrics(*overrides: dict[str, Any]) -> dict[str, Any]:
    return {"metrics": [{**METRIC, "name": f"m{i}", **o} for i, o in enumerate(overrides)]}


A, D, AN = AgentSpec, DeploymentRequest, Analysis
T_MAX, I_MAX, R_MAX = DAYS_30, MAX_INTERVAL_SECONDS, MAX_REPLICAS

REFUSED: list[tuple[type[pydantic.BaseModel], Any, str]] = [
    (A, agent(health={"interval_seconds": I_MAX + 1}), "health.interval_seconds"),
    (A, agent(health={"interval_seconds": 1e15}), "health.interval_seconds"),
    (A, agent(health={"startup_timeout_seconds": 1e12}), "health.startup_timeout_seconds"),
    (A, agent(health={"recovery_timeout_seconds": T_MAX + 1}), "health.recovery_timeout_seconds"),
    (A, agent(health={"timeout_seconds": T_MAX + 1}), "health.timeout_seconds"),
    (A, agent(health={"failure_threshold": 101}), "health.failure_threshold"),
    (A, agent(health={"failure_threshold": True}), "health.failure_threshold"),
    (A, agent(health={"interval_seconds": "10"}), "health.interval_seconds"),
    (A, agent(replicas=True), "replicas"),
    (A, agent(replicas="3"), "replicas"),
    (A, agent(replicas=2.5), "replicas"),
    (A, agent(replicas=R_MAX + 1, max_replicas=R_MAX + 1), "replicas"),
    (A, agent(max_replicas=R_MAX + 1), "max_replicas"),
    (A, agent(min_replicas=False), "min_replicas"),
    (A, agent(resources={"cpu_limit_millicores": 256_001}), "resources.cpu_limit_millicores"),
    (A, agent(resources={"memory_limit_mib": 1024**2 + 1}), "resources.memory_limit_mib"),
    (A, agent(health_rounds_per_run=1001), "health_rounds_per_run"),
    (ScaleRequest, {"replicas": True}, "replicas"),
    (ScaleRequest, {"replicas": R_MAX + 1}, "replicas"),
    (TransitionRequest, {"action": "scale", "replicas": True}, "replicas"),
    (D, deploy(replicas=True), "replicas"),
    (D, deploy(preview_replicas=R_MAX + 1), "preview_replicas"),
    (D, deploy(promotion={"approval_timeout_seconds": 1e12}), "promotion.approval_timeout_seconds"),
    (D, deploy(promotion={"approvers": [""]}), "promotion.approvers.0"),
    (D, deploy(promotion={"roles": ["  "]}), "promotion.roles.0"),
    (D, deploy(promotion={"approvers": [f"u{i}" for i in range(51)]}), "promotion.approvers"),
    (D, deploy(promotion={"reminder_interval_seconds": 59}), "promotion.reminder_interval_seconds"),
    (D, deploy(promotion={"reminder_interval_seconds": I_MAX + 1}),
     "promotion.reminder_interval_seconds"),
    (D, deploy(promotion={"approval_timeout_seconds": T_MAX, "reminder_interval_seconds": 3600}),
     "promotion"),  # 720 reminders
    (D, deploy(promotion={"mode": "auto", "auto_promote_after_seconds": 1e12}),
     "promotion.auto_promote_after_seconds"),
    (D, deploy(scale_down_delay_seconds=T_MAX + 1), "scale_down_delay_seconds"),
    (D, deploy(abort_scale_down_delay_seconds=1e12), "abort_scale_down_delay_seconds"),
    (D, deploy(ready_timeout_seconds=1e12), "ready_timeout_seconds"),
    (D, deploy(smoke_tests=[{"name": f"t{i}"} for i in range(21)]), "smoke_tests"),
    (D, deploy(smoke_tests=[{"name": "t", "timeout_seconds": 1e12}]),
     "smoke_tests.0.timeout_seconds"),
    (D, deploy(smoke_tests=[{"name": "t", "expect_status": True}]), "smoke_tests.0.expect_status"),
    (D, deploy(post_promotion_analysis=metrics({"interval_seconds": 1e15})),
     "post_promotion_analysis.metrics.0.interval_seconds"),
    (AN, metrics(*[{}] * 11), "metrics"),
    (AN, metrics({"count": 101}), "metrics.0.count"),
    (AN, metrics({"count": True}), "metrics.0.count"),
    (AN, metrics({"failure_limit": 101}), "metrics.0.failure_limit"),
    (AN, metrics({"inconclusive_limit": 101}), "metrics.0.inconclusive_limit"),
    (AN, metrics({"consecutive_error_limit": 11}), "metrics.0.consecutive_error_limit"),
    (AN, metrics({"window_seconds": I_MAX + 1}), "metrics.0.window_seconds"),
    (AN, metrics({"initial_delay_seconds": T_MAX + 1}), "metrics.0.initial_delay_seconds"),
    (AN, metrics({"count": 100}, {"count": 100}), "<root>"),  # 2 * 100 * 5 > 500
    (SmokeTest, {"name": "t", "timeout_seconds": T_MAX + 1}, "timeout_seconds"),
]  # fmt: skip
"""(model, JSON payload, the field the refusal must name)."""

ACCEPTED: list[tuple[type[pydantic.BaseModel], Any]] = [
    (A, agent(health={"interval_seconds": I_MAX, "timeout_seconds": 2})),
    (A, agent(health={"startup_timeout_seconds": T_MAX, "recovery_timeout_seconds": T_MAX})),
    (A, agent(replicas=R_MAX, max_replicas=R_MAX, health_rounds_per_run=1000)),
    (D, deploy(replicas=3, ready_timeout_seconds=T_MAX, scale_down_delay_seconds=0)),
    (D, deploy(promotion={"approval_timeout_seconds": T_MAX, "reminder_interval_seconds": 12960})),
    (D, deploy(promotion={"approvers": ["alice"], "reminder_interval_seconds": None})),
    (AN, metrics({"count": 100})),  # 100 * (4 + 1) == 500
    (AN, metrics(*[{"count": 10}] * 10)),  # 10 * 10 * 5 == 500
]  # fmt: skip
"""Payloads at the bounds, which must pass (no bound is off by one)."""


@pytest.mark.parametrize(
    ("model", "payload", "field"), REFUSED, ids=[f"{m.__name__}.{f}" for m, _, f in REFUSED]
)
def test_out_of_bounds_or_mistyped_is_refused_naming_the_field(
    model: type[pydantic.BaseModel], payload: Any, field: str
) -> None:
    with pytest.raises(pydantic.ValidationError) as info:
        model.model_validate_json(json.dumps(payload))
    locs = [".".join(str(p) for p in e["loc"]) or "<root>" for e in info.value.errors()]
    assert field in locs, locs


@pytest.mark.parametrize("text", ["NaN", "Infinity", "-Infinity", "1e400"])
def test_non_finite_seconds_are_refused(text: str) -> None:
    with pytest.raises(pydantic.ValidationError, match=r"health\.interval_seconds"):
        AgentSpec.model_validate_json(
            f'{{"agent_id": "a", "health": {{"interval_seconds": {text}}}}}'
        )


@pytest.mark.parametrize(("model", "payload"), ACCEPTED)
def test_values_at_the_bounds_are_accepted(model: type[pydantic.BaseModel], payload: Any) -> None:
    model.model_validate_json(json.dumps(payload))


def test_analysis_budget_counts_worst_case_measurements() -> None:
    analysis = Analysis.model_validate(metrics({"count": 20, "consecutive_error_limit": 4}))
    assert analysis.metrics[0].max_measurements == 100
    with pytest.raises(pydantic.ValidationError, match=f"at most {MAX_MEASUREMENTS_PER_ANALYSIS}"):
        Analysis.model_validate(metrics({"count": 50, "consecutive_error_limit": 10}))


def test_replica_quota_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().max_replicas_per_agent == 50
    monkeypatch.setenv("FLEETOPS_MAX_REPLICAS_PER_AGENT", "200")
    assert Settings().max_replicas_per_agent == 200
    monkeypatch.setenv("FLEETOPS_MAX_REPLICAS_PER_AGENT", str(MAX_REPLICAS + 1))
    with pytest.raises(pydantic.ValidationError, match="max_replicas_per_agent"):
        Settings()


@pytest.mark.parametrize("version", ["V 13", "../../etc", "-v1", "v1-", "a" * 64, ""])
def test_version_is_a_label(version: str) -> None:
    """A version labels replicas and names ``deploy/<agent>/<version>``: a label value only."""
    with pytest.raises(pydantic.ValidationError, match="version"):
        AgentSpec.model_validate({"agent_id": "a", "version": version})
    with pytest.raises(pydantic.ValidationError, match="version"):
        DeploymentRequest.model_validate({"agent_id": "a", "version": version})


@pytest.mark.parametrize("version", ["v1", "1.2.3", "release_2026-12-01", "a" * 63])
def test_label_versions_are_accepted(version: str) -> None:
    assert AgentSpec.model_validate({"agent_id": "a", "version": version}).version == version
