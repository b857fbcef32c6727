"""Recorded histories (``tests/histories/**/*.json``) replay against the current workflow code.

A failure here means a change to a workflow is not replay-safe: running executions would hit a
non-determinism error. Either make the change deterministic (``workflow.patched``) or, if the
change is intended and no execution of the old code is running anywhere, record the histories
again (``uv run python tests/histories/record.py``; the oldest one,
``agent_lifecycle_e2e.json``, comes from ``FLEETOPS_RECORD_HISTORIES=1 uv run pytest
tests/test_e2e_lifecycle.py`` and predates blue-green deployments, so keep it).

Every history of a workflow the FleetOps worker runs (``worker.WORKFLOWS``) is replayed here with
the worker's workflows and interceptors. Histories of test-only workflows are replayed by the
test module named in :data:`REPLAYED_ELSEWHERE`. ``before_blue_green/`` holds a history recorded
with the code before 85c1238 (``before_blue_green/record_old.py``) that the current code does not
replay; :data:`KNOWN_BREAKS` says why and checks it fails exactly there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from temporalio import workflow
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer
from temporalio.workflow import _Definition  # as tests/test_malformed_payloads.py

from fleetops.converter import data_converter

with workflow.unsafe.imports_passed_through():  # the sandbox re-imports this module (stand-ins)
    import worker

TESTS = Path(__file__).parent
HISTORY_DIR = TESTS / "histories"
REPLAYED_ELSEWHERE = {
    "AnalysisProbe": TESTS / "test_analysis.py",
    "ApprovalProbe": TESTS / "test_approval_signing.py",
}
"""Workflow types that only tests define -> the test module that replays their histories."""
WORKFLOWS = {_Definition.must_from_class(c).name: c for c in worker.WORKFLOWS}
"""Workflow type -> class, for every workflow the FleetOps worker runs."""


def load(path: Path) -> WorkflowHistory:
    """A history file as written by ``WorkflowHistory.to_json()``."""
    rel = path.relative_to(HISTORY_DIR).with_suffix("")
    history = WorkflowHistory.from_json(f"replay/{rel}", path.read_text())
    if workflow_type(history) == "Maintenance":  # its id must be maintenance/<plan>/<run>
        return WorkflowHistory.from_json(str(rel), path.read_text())
    return history


def workflow_type(history: WorkflowHistory) -> str:
    return history.events[0].workflow_execution_started_event_attributes.workflow_type.name


ALL = sorted(HISTORY_DIR.rglob("*.json"))
TYPES = {p: workflow_type(load(p)) for p in ALL}
HISTORIES = [p for p in ALL if TYPES[p] in WORKFLOWS]
IDS = [str(p.relative_to(HISTORY_DIR).with_suffix("")) for p in HISTORIES]
KNOWN_BREAKS: dict[str, tuple[str, str]] = {}
"""Histories the current code is known not to replay -> (the error expected, why).

Each still replays up to exactly that error; once the change is patched it replays, and this
test tells you to drop it from here.
"""


def test_known_breaks_are_recorded() -> None:
    assert set(KNOWN_BREAKS) <= set(IDS), set(KNOWN_BREAKS) - set(IDS)


@pytest.mark.parametrize("path", HISTORIES, ids=IDS)
async def test_history_replays(path: Path) -> None:
    replayer = Replayer(
        workflows=list(worker.WORKFLOWS),
        interceptors=list(worker.INTERCEPTORS),
        data_converter=data_converter(),
    )
    result = await replayer.replay_workflow(load(path), raise_on_replay_failure=False)
    known = KNOWN_BREAKS.get(str(path.relative_to(HISTORY_DIR).with_suffix("")))
    if known is None:
        assert result.replay_failure is None, result.replay_failure
    else:
        expected, why = known
        assert result.replay_failure is not None, f"replays now, drop it from KNOWN_BREAKS: {why}"
        assert isinstance(result.replay_failure, workflow.NondeterminismError)
        assert expected in str(result.replay_failure), result.replay_failure


@workflow.defn(name="AgentLifecycle")
class LifecycleReturnsAtOnce:
    """Stand-in for a non-replay-safe change: same workflow type, different commands."""

    @workflow.run
    async def run(self, input: Any) -> None:
        return None


@workflow.defn(name="BlueGreenDeployment")
class DeploymentReturnsAtOnce:
    """Stand-in for a non-replay-safe change: same workflow type, different commands."""

    @workflow.run
    async def run(self, input: Any) -> None:
        return None


@workflow.defn(name="Maintenance")
class MaintenanceReturnsAtOnce:
    """Stand-in for a non-replay-safe change: same workflow type, different commands."""

    @workflow.run
    async def run(self, input: Any) -> None:
        return None


@workflow.defn(name="IncidentResponse")
class IncidentReturnsAtOnce:
    """Stand-in for a non-replay-safe change: same workflow type, different commands."""

    @workflow.run
    async def run(self, input: Any) -> None:
        return None


CHANGED = {
    "AgentLifecycle": LifecycleReturnsAtOnce,
    "BlueGreenDeployment": DeploymentReturnsAtOnce,
    "Maintenance": MaintenanceReturnsAtOnce,
    "IncidentResponse": IncidentReturnsAtOnce,
}


@pytest.mark.parametrize("path", HISTORIES, ids=IDS)
async def test_changed_workflow_fails_replay(path: Path) -> None:
    """Negative control: the replay test does catch a workflow that diverges from history."""
    replayer = Replayer(workflows=[CHANGED[TYPES[path]]], data_converter=data_converter())
    with pytest.raises(workflow.NondeterminismError, match="Nondeterminism"):
        await replayer.replay_workflow(load(path))
