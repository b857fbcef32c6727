"""The AgentLifecycle state machine, table-driven: every (from, to) state pair and every
(state, action) pair, against the README's state diagram written out here by hand.

If a state is dropped from (or added to) a row of ``TRANSITIONS``, one of these cases fails and
names the pair. These are pure-Python tests (no server), part of the mutation-testing subset.
"""

from __future__ import annotations

import itertools
from typing import get_args

import pytest

from fleetops.models import Action, AgentSpec, AgentState
from workflows.lifecycle_rules import (
    ACTION_TARGET,
    DEPLOYABLE_STATES,
    PROBED_STATES,
    TRANSITIONS,
    InvalidTransitionError,
    action_error,
    check_transition,
    deployment_error,
)

S = AgentState

# README "States": INITIALIZING -> READY <-> PROCESSING; READY/PROCESSING -> DEGRADED on failing
# probes, DEGRADED -> READY/PROCESSING when healed, DEGRADED -> ERROR after the recovery timeout,
# ERROR -> READY/PROCESSING when probes pass again; pause from anything serving or starting,
# resume (-> INITIALIZING) from PAUSED or ERROR; shutdown from anything until it is under way.
ALLOWED: dict[AgentState, set[AgentState]] = {
    S.INITIALIZING: {S.READY, S.PROCESSING, S.ERROR, S.PAUSED, S.SHUTTING_DOWN},
    S.READY: {S.PROCESSING, S.DEGRADED, S.ERROR, S.PAUSED, S.SHUTTING_DOWN},
    S.PROCESSING: {S.READY, S.DEGRADED, S.ERROR, S.PAUSED, S.SHUTTING_DOWN},
    S.DEGRADED: {S.READY, S.PROCESSING, S.ERROR, S.PAUSED, S.SHUTTING_DOWN},
    S.ERROR: {S.READY, S.PROCESSING, S.INITIALIZING, S.PAUSED, S.SHUTTING_DOWN},
    S.PAUSED: {S.INITIALIZING, S.ERROR, S.SHUTTING_DOWN},
    S.SHUTTING_DOWN: {S.TERMINATED, S.ERROR},
    S.TERMINATED: set(),
}

PAIRS = list(itertools.product(S, S))
ACTIONS: tuple[Action, ...] = get_args(Action)

# Which operator actions each state accepts (scale with a count inside the bounds).
ACCEPTS: dict[AgentState, set[str]] = {
    S.INITIALIZING: {"pause", "scale", "shutdown"},
    S.READY: {"pause", "scale", "shutdown"},
    S.PROCESSING: {"pause", "scale", "shutdown"},
    S.DEGRADED: {"pause", "scale", "shutdown"},
    S.ERROR: {"pause", "resume", "scale", "shutdown"},
    S.PAUSED: {"resume", "scale", "shutdown"},
    S.SHUTTING_DOWN: set(),
    S.TERMINATED: set(),
}

SPEC = AgentSpec(agent_id="rules", command=["agent"], replicas=2, min_replicas=1, max_replicas=4)


def test_the_table_has_a_row_for_every_state() -> None:
    assert set(TRANSITIONS) == set(S)
    assert set(ALLOWED) == set(S)


@pytest.mark.parametrize(("current", "target"), PAIRS, ids=[f"{a}->{b}" for a, b in PAIRS])
def test_transition(current: AgentState, target: AgentState) -> None:
    if target in ALLOWED[current]:
        check_transition(current, target)
        return
    with pytest.raises(InvalidTransitionError, match=rf"invalid transition {current} -> {target}"):
        check_transition(current, target)


def test_refused_transition_lists_what_is_allowed() -> None:
    with pytest.raises(
        InvalidTransitionError,
        match=r"from PAUSED the agent may go to ERROR, INITIALIZING, SHUTTING_DOWN$",
    ):
        check_transition(S.PAUSED, S.READY)
    with pytest.raises(InvalidTransitionError, match=r"may go to nothing \(final state\)$"):
        check_transition(S.TERMINATED, S.INITIALIZING)


def test_probed_and_deployable_states() -> None:
    assert {S.READY, S.PROCESSING, S.DEGRADED, S.ERROR} == PROBED_STATES
    assert DEPLOYABLE_STATES == PROBED_STATES


def test_action_targets() -> None:
    assert ACTION_TARGET == {
        "pause": S.PAUSED,
        "resume": S.INITIALIZING,
        "shutdown": S.SHUTTING_DOWN,
        "scale": None,
    }


CASES = list(itertools.product(S, ACTIONS))


@pytest.mark.parametrize(("state", "action"), CASES, ids=[f"{s}-{a}" for s, a in CASES])
def test_action(state: AgentState, action: Action) -> None:
    replicas = 3 if action == "scale" else None
    error = action_error(state, SPEC, action, replicas)
    if action in ACCEPTS[state]:
        assert error is None
    elif state in (S.SHUTTING_DOWN, S.TERMINATED):
        assert error == f"agent rules is {state}; it accepts no further actions"
    else:
        hint = " (use resume)" if state == S.PAUSED else ""
        assert error == f"cannot {action} agent rules while it is {state}{hint}"


@pytest.mark.parametrize(("state", "action"), CASES, ids=[f"{s}-{a}" for s, a in CASES])
def test_action_waits_for_a_deployment(state: AgentState, action: Action) -> None:
    replicas = 3 if action == "scale" else None
    error = action_error(state, SPEC, action, replicas, "deploy/rules/v2")
    if state in (S.SHUTTING_DOWN, S.TERMINATED):
        assert error == f"agent rules is {state}; it accepts no further actions"
    elif action == "shutdown":  # shutdown cancels the deployment first
        assert error == action_error(state, SPEC, action, replicas)
    else:
        assert error == (
            "deployment deploy/rules/v2 of agent rules is in progress; wait for it "
            "or abort it first (fleetops abort deploy/rules/v2)"
        )


@pytest.mark.parametrize(
    ("replicas", "error"),
    [
        (None, "scale needs replicas"),
        (0, "replicas=0 is outside [min_replicas=1, max_replicas=4] of agent rules"),
        (1, None),
        (4, None),
        (5, "replicas=5 is outside [min_replicas=1, max_replicas=4] of agent rules"),
    ],
    ids=["none", "below", "min", "max", "above"],
)
def test_scale_bounds(replicas: int | None, error: str | None) -> None:
    assert action_error(S.READY, SPEC, "scale", replicas) == error
    assert action_error(S.PAUSED, SPEC, "scale", replicas) == error


@pytest.mark.parametrize("state", list(S))
def test_deployment_may_start(state: AgentState) -> None:
    error = deployment_error(state, SPEC, None, "v2")
    if state in {S.READY, S.PROCESSING, S.DEGRADED, S.ERROR}:
        assert error is None
    else:
        assert error == (
            f"agent rules is {state}; deployments start from READY, PROCESSING, DEGRADED or ERROR"
        )


def test_second_deployment_is_refused() -> None:
    assert deployment_error(S.READY, SPEC, "deploy/rules/v2", "v3") == (
        "deployment deploy/rules/v2 of agent rules is in progress; two deployments of one "
        "agent cannot run at once (abort it first: fleetops abort deploy/rules/v2)"
    )


def test_deploying_the_running_version_is_refused() -> None:
    assert deployment_error(S.READY, SPEC, None, SPEC.version) == (
        f"agent rules already runs {SPEC.version}; deploy another version"
    )
