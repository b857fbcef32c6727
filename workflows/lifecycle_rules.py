"""The AgentLifecycle state machine as data: allowed transitions and operator-action rules.

Pure functions, no Temporal calls, so they are shared by the workflow and its validators and are
trivially deterministic.
"""

from __future__ import annotations

from fleetops.models import Action, AgentSpec, AgentState

S = AgentState

TRANSITIONS: dict[AgentState, frozenset[AgentState]] = {
    S.INITIALIZING: frozenset({S.READY, S.PROCESSING, S.ERROR, S.PAUSED, S.SHUTTING_DOWN}),
    S.READY: frozenset({S.PROCESSING, S.DEGRADED, S.ERROR, S.PAUSED, S.SHUTTING_DOWN}),
    S.PROCESSING: frozenset({S.READY, S.DEGRADED, S.ERROR, S.PAUSED, S.SHUTTING_DOWN}),
    S.DEGRADED: frozenset({S.READY, S.PROCESSING, S.ERROR, S.PAUSED, S.SHUTTING_DOWN}),
    S.ERROR: frozenset({S.READY, S.PROCESSING, S.INITIALIZING, S.PAUSED, S.SHUTTING_DOWN}),
    S.PAUSED: frozenset({S.INITIALIZING, S.ERROR, S.SHUTTING_DOWN}),
    S.SHUTTING_DOWN: frozenset({S.TERMINATED, S.ERROR}),
    S.TERMINATED: frozenset(),
}
"""The one transition table: state -> states it may move to. ERROR -> INITIALIZING is `resume`."""

PROBED_STATES = frozenset({S.READY, S.PROCESSING, S.DEGRADED, S.ERROR})
"""States in which health rounds run (replicas are supposed to be up)."""

ACTION_TARGET: dict[Action, AgentState | None] = {
    "pause": S.PAUSED,
    "resume": S.INITIALIZING,
    "shutdown": S.SHUTTING_DOWN,
    "scale": None,
}
"""State each operator action moves to (``scale`` keeps the state)."""


class InvalidTransitionError(ValueError):
    """A state change not in :data:`TRANSITIONS`."""


def check_transition(current: AgentState, target: AgentState) -> None:
    """Check one state change against the table.

    Raises:
        InvalidTransitionError: ``current -> target`` is not allowed; the message lists what is.
    """
    allowed = TRANSITIONS[current]
    if target not in allowed:
        names = ", ".join(sorted(allowed)) or "nothing (final state)"
        raise InvalidTransitionError(
            f"invalid transition {current} -> {target}; from {current} the agent may go to {names}"
        )


def action_error(
    state: AgentState,
    spec: AgentSpec,
    action: Action,
    replicas: int | None,
    deployment_id: str | None = None,
) -> str | None:
    """Why an operator action cannot be taken now, or None when it can.

    Args:
        state: the agent's current state.
        spec: the agent's spec (for the scale bounds).
        action: ``pause`` | ``resume`` | ``scale`` | ``shutdown``.
        replicas: the requested count for ``scale``.
        deployment_id: the workflow id of a deployment in progress; actions other than
            ``shutdown`` (which cancels the deployment first) wait for it.

    Returns:
        A message that says what is wrong and what the operator can do, or None.
    """
    if state in (S.SHUTTING_DOWN, S.TERMINATED):
        return f"agent {spec.agent_id} is {state}; it accepts no further actions"
    if deployment_id is not None and action != "shutdown":  # shutdown cancels it first
        return (
            f"deployment {deployment_id} of agent {spec.agent_id} is in progress; wait for it "
            f"or abort it first (fleetops abort {deployment_id})"
        )
    if action == "scale":
        if replicas is None:
            return "scale needs replicas"
        if not spec.min_replicas <= replicas <= spec.max_replicas:
            return (
                f"replicas={replicas} is outside [min_replicas={spec.min_replicas}, "
                f"max_replicas={spec.max_replicas}] of agent {spec.agent_id}"
            )
        return None
    target = ACTION_TARGET[action]
    assert target is not None
    if target not in TRANSITIONS[state]:
        hint = " (use resume)" if state == S.PAUSED else ""
        return f"cannot {action} agent {spec.agent_id} while it is {state}{hint}"
    return None


DEPLOYABLE_STATES = PROBED_STATES
"""States in which a deployment may start: those in which replicas are supposed to be up."""


def deployment_error(
    state: AgentState, spec: AgentSpec, current: str | None, version: str
) -> str | None:
    """Why a deployment of ``version`` cannot start now, or None when it can.

    Args:
        state: the agent's state; a deployment needs one of :data:`DEPLOYABLE_STATES`.
        spec: the agent's running spec (its id and version).
        current: the deployment in progress, or None.
        version: the version asked for; deploying the running version is refused.

    Returns:
        A message naming the deployment in progress, the state or the version, or None.
    """
    agent_id = spec.agent_id
    if current is not None:
        return (
            f"deployment {current} of agent {agent_id} is in progress; two deployments of one "
            f"agent cannot run at once (abort it first: fleetops abort {current})"
        )
    if state not in DEPLOYABLE_STATES:
        return (
            f"agent {agent_id} is {state}; deployments start from "
            "READY, PROCESSING, DEGRADED or ERROR"
        )
    if version == spec.version:
        return f"agent {agent_id} already runs {version}; deploy another version"
    return None
