"""Recorded histories (``tests/histories/*.json``) replay against the current workflow code.

A failure here means a change to a workflow is not replay-safe: running executions would hit a
non-determinism error. Either make the change deterministic (``workflow.patched``) or, if the
change is intended and no execution of the old code is running anywhere, record the histories
again (``FLEETOPS_RECORD_HISTORIES=1 uv run pytest tests/test_e2e_lifecycle.py``).

Histories of other workflows live in subdirectories and are replayed by their own tests
(``analysis_probe/``: ``tests/test_analysis.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from temporalio import workflow
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer

from fleetops.converter import data_converter
from workflows.agent_lifecycle import AgentLifecycle

HISTORIES = sorted((Path(__file__).parent / "histories").glob("*.json"))


def load(path: Path) -> WorkflowHistory:
    return WorkflowHistory.from_json(f"replay/{path.stem}", path.read_text())


def test_histories_are_recorded() -> None:
    assert HISTORIES, "tests/histories/ holds no recorded history; see this module's docstring"


@pytest.mark.parametrize("path", HISTORIES, ids=[p.stem for p in HISTORIES])
async def test_history_replays(path: Path) -> None:
    replayer = Replayer(workflows=[AgentLifecycle], data_converter=data_converter())
    result = await replayer.replay_workflow(load(path), raise_on_replay_failure=False)
    assert result.replay_failure is None, result.replay_failure


@workflow.defn(name="AgentLifecycle")
class ReturnsAtOnce:
    """Stand-in for a non-replay-safe change: same workflow type, different commands."""

    @workflow.run
    async def run(self, input: Any) -> None:
        return None


@pytest.mark.parametrize("path", HISTORIES, ids=[p.stem for p in HISTORIES])
async def test_changed_workflow_fails_replay(path: Path) -> None:
    """Negative control: the replay test does catch a workflow that diverges from history."""
    replayer = Replayer(workflows=[ReturnsAtOnce], data_converter=data_converter())
    with pytest.raises(workflow.NondeterminismError, match="Nondeterminism"):
        await replayer.replay_workflow(load(path))
