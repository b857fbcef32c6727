"""Recorded histories (``tests/histories/**/*.json``) replay against the current workflow code.

A failure here means a change to a workflow is not replay-safe: running executions would hit a
non-determinism error. Either make the change deterministic (``workflow.patched``) or, if the
change is intended and no execution of the old code is running anywhere, record the histories
again (``uv run python tests/histories/record.py``; the oldest one,
``agent_lifecycle_e2e.json``, comes from ``FLEETOPS_RECORD_HISTORIES=1 uv run pytest
tests/test_e2e_lifecycle.py`` and predates blue-green deployments, so keep it).

Every history of a workflow the FleetOps worker runs (``worker.WORKFLOWS``) is replayed here with
the worker's workflows and interceptors. Histories of test-only workflows are replayed by the
test module named in :data:`REPLAYED_ELSEWHERE`.
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
    return WorkflowHistory.from_json(f"replay/{rel}", path.read_text())


def workflow_type(history: WorkflowHistory) -> str:
    return history.events[0].workflow_execution_started_event_attributes.workflow_type.name


ALL = sorted(HISTORY_DIR.rglob("*.json"))
TYPES = {p: workflow_type(load(p)) for p in ALL}
HISTORIES = [p for p in ALL if TYPES[p] in WORKFLOWS]
IDS = [str(p.relative_to(HISTORY_DIR).with_suffix("")) for p in HISTORIES]


def test_every_workflow_has_recorded_histories() -> None:
    recorded = {TYPES[p] for p in HISTORIES}
    assert recorded == set(WORKFLOWS), f"no history of {set(WORKFLOWS) - recorded}; run record.py"


def test_every_history_is_replayed_somewhere() -> None:
    """A history of a type not run here is replayed by the module that defines that type."""
    for path, kind in TYPES.items():
        if kind in WORKFLOWS:
            continue
        assert kind in REPLAYED_ELSEWHERE, f"{path}: no replay test for workflow type {kind}"
        assert path.name in REPLAYED_ELSEWHERE[kind].read_text(), (
            f"{REPLAYED_ELSEWHERE[kind].name} does not replay {path}"
        )


@pytest.mark.parametrize("path", HISTORIES, ids=IDS)
async def test_history_replays(path: Path) -> None:
    replayer = Replayer(
        workflows=list(worker.WORKFLOWS),
        interceptors=list(worker.INTERCEPTORS),
        data_converter=data_converter(),
    )
    result = await replayer.replay_workflow(load(path), raise_on_replay_failure=False)
    assert result.replay_failure is None, result.replay_failure


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


CHANGED = {"AgentLifecycle": LifecycleReturnsAtOnce, "BlueGreenDeployment": DeploymentReturnsAtOnce}


@pytest.mark.parametrize("path", HISTORIES, ids=IDS)
async def test_changed_workflow_fails_replay(path: Path) -> None:
    """Negative control: the replay test does catch a workflow that diverges from history."""
    replayer = Replayer(workflows=[CHANGED[TYPES[path]]], data_converter=data_converter())
    with pytest.raises(workflow.NondeterminismError, match="Nondeterminism"):
        await replayer.replay_workflow(load(path))
