"""The maintenance plan model, plan files and the CLI's refusals (fast: no Temporal server)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from fleetops.maintenance import MaintenancePlan, MaintenanceWindow, load_plan
from starters.cli import app
from starters.maintenance import MaintenanceError, check_schedulable

REPO = Path(__file__).resolve().parent.parent


def plan(**kw: Any) -> MaintenancePlan:
    base: dict[str, Any] = {
        "name": "p",
        "kind": "config_change",
        "targets": {"agents": ["a"]},
        "parameters": {"config": {"x": 1}},
    }
    return MaintenancePlan.model_validate({**base, **kw})


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"name": "Bad_Name"}, "name"),
        ({"targets": {}}, "targets"),
        ({"targets": {"agents": ["a", "a"]}}, "listed twice"),
        ({"targets": {"agents": [f"a{i}" for i in range(201)]}}, "targets.agents"),
        ({"batch_size": 2, "max_unavailable": 3}, "max_unavailable must be <= batch_size"),
        ({"batch_size": 51}, "batch_size"),
        ({"batch_size": True}, "batch_size"),
        ({"window": {"duration_seconds": 8 * 86400}}, "window.duration_seconds"),
        ({"window": {"end": "2026-01-01T00:00:00Z"}}, "needs window.start"),
        ({"window": {"start": "2026-01-01T00:00:00", "end": "2026-01-01T01:00:00"}}, "timezone"),
        ({"window": {"start": "2026-01-02T00:00:00Z", "end": "2026-01-01T00:00:00Z"}}, "after"),
        ({"emergency": True, "approval": {"required": "never"}}, "always need approval"),
        ({"kind": "version_update", "parameters": {}}, "version"),
        ({"parameters": {"config": {"bad key!": 1}}}, "config key"),
        ({"kind": "custom", "parameters": {"description": "d", "steps": ["s"] * 21}}, "steps"),
        (
            {
                "kind": "secret_rotation",
                "targets": {"agents": ["a", "b"]},
                "parameters": {"secrets": [{"path": "shared/openai", "key": "k"}]},
            },
            "shared by every target",
        ),
        ({"post_checks": {"analysis": {"metrics": []}}}, "metrics"),
        ({"unknown": 1}, "unknown"),
        (
            {"kind": "version_update", "parameters": {"version": "v2"}, "pause_targets": True},
            "cannot be deployed",
        ),
    ],
)
def test_bad_plans_are_refused_naming_the_problem(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as info:
        plan(**fields)
    assert message in str(info.value)


def test_window_bounds_and_relative_windows() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert MaintenanceWindow(duration_seconds=60).bounds(now) == (now, now + timedelta(minutes=1))
    start = now + timedelta(hours=1)
    w = MaintenanceWindow(start=start, end=start + timedelta(hours=2))
    assert w.bounds(now) == (start, start + timedelta(hours=2))


def test_risk_decides_approval() -> None:
    assert plan().risk(1) == "low" and not plan().needs_approval(1)
    assert plan().risk(11) == "medium" and plan().needs_approval(11)  # many targets
    assert plan(kind="security_patch", parameters={}).risk(1) == "high"
    assert plan(emergency=True).needs_approval(1)
    assert plan(batch_size=2, max_unavailable=2).risk(1) == "medium"
    assert not plan(
        kind="security_patch", parameters={}, approval={"required": "never"}
    ).needs_approval(1)


def test_plan_files_yaml_and_json_use_the_same_model(tmp_path: Path) -> None:
    for f in sorted((REPO / "infra" / "maintenance").glob("*.yaml")):
        assert load_plan(f).name
    p = tmp_path / "plan.json"
    p.write_text(json.dumps(plan().model_dump(mode="json")))
    assert load_plan(p) == plan()
    p.write_text("[1, 2]")
    with pytest.raises(ValueError, match="an object"):
        load_plan(p)


def test_scheduled_plans_need_a_relative_window() -> None:
    check_schedulable(plan(window={"duration_seconds": 3600}))
    check_schedulable(plan())
    fixed = plan(window={"start": "2026-01-01T00:00:00Z", "end": "2026-01-01T01:00:00Z"})
    with pytest.raises(MaintenanceError, match="relative window"):
        check_schedulable(fixed)


def test_cli_refuses_a_bad_plan_file_with_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nkind: config_change\ntargets: {agents: [a]}\nbatch_size: 0\n")
    result = CliRunner().invoke(app, ["maintenance", "run", str(bad)])
    assert result.exit_code == 2
    assert "batch_size" in result.output
