"""Public names operators type (see DESIGN.md): task queue, search attributes, workflow ids."""

from __future__ import annotations

import re

from temporalio.common import SearchAttributeKey

TASK_QUEUE = "fleetops"
"""The task queue every FleetOps workflow and activity runs on."""

AGENT_ID_KEY = SearchAttributeKey.for_keyword("FleetOpsAgentId")
STATE_KEY = SearchAttributeKey.for_keyword("FleetOpsState")
SEVERITY_KEY = SearchAttributeKey.for_keyword("FleetOpsSeverity")
AWAITING_APPROVAL_KEY = SearchAttributeKey.for_bool("FleetOpsAwaitingApproval")
LABELS_KEY = SearchAttributeKey.for_keyword_list("FleetOpsLabels")
"""An agent's labels as ``k=v`` keywords (``FleetOpsLabels = 'tier=prod'`` matches one)."""

PROBER_HOST_KEY = SearchAttributeKey.for_keyword("FleetOpsProberHost")
"""The prober host that probes an agent (``health.probing: data-plane``); a lost host's agents
are found by it."""

SEARCH_ATTRIBUTES: dict[str, str] = {
    AGENT_ID_KEY.name: "Keyword",
    STATE_KEY.name: "Keyword",
    SEVERITY_KEY.name: "Keyword",
    AWAITING_APPROVAL_KEY.name: "Bool",
    LABELS_KEY.name: "KeywordList",
    PROBER_HOST_KEY.name: "Keyword",
}
"""Custom search attributes FleetOps registers: name -> Temporal indexed value type."""

AGENT_ID_PATTERN = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
"""Agent ids are RFC 1123 DNS labels so they can name Kubernetes objects too."""

_AGENT_ID_RE = re.compile(AGENT_ID_PATTERN)


def is_agent_id(text: str) -> bool:
    """Whether ``text`` is a valid agent id (:data:`AGENT_ID_PATTERN`, a DNS label)."""
    return _AGENT_ID_RE.match(text) is not None


def agent_workflow_id(agent_id: str) -> str:
    """Workflow id of an agent's ``AgentLifecycle``.

    Args:
        agent_id: the agent's id (a DNS label).

    Returns:
        ``agent/<agent_id>``.

    Raises:
        ValueError: ``agent_id`` is not a DNS label.
    """
    if not is_agent_id(agent_id):
        raise ValueError(
            f"agent_id {agent_id!r} must be a DNS label: lowercase letters, digits and '-', "
            "at most 63 characters, starting and ending with a letter or digit"
        )
    return f"agent/{agent_id}"


def deployment_workflow_id(agent_id: str, version: str) -> str:
    """Workflow id of a ``BlueGreenDeployment``.

    Args:
        agent_id: the agent's id (a DNS label).
        version: the version being deployed (1-63 characters).

    Returns:
        ``deploy/<agent_id>/<version>``.

    Raises:
        ValueError: ``agent_id`` is not a DNS label.
    """
    agent_workflow_id(agent_id)  # validates the id
    return f"deploy/{agent_id}/{version}"


def maintenance_workflow_id(name: str, run: str) -> str:
    """Workflow id of a ``Maintenance`` run: ``maintenance/<name>/<run>``.

    Args:
        name: the plan's name (a DNS label).
        run: what tells runs apart: a UTC timestamp (``fleetops maintenance run``), or what a
            Temporal Schedule appends to ``maintenance/<name>/scheduled`` (``-<time>``).

    Raises:
        ValueError: ``name`` is not a DNS label or ``run`` is empty or contains ``/``.
    """
    if not is_agent_id(name):
        raise ValueError(f"plan name {name!r} must be a DNS label")
    if not run or "/" in run:
        raise ValueError(f"run {run!r} must be non-empty and contain no '/'")
    return f"maintenance/{name}/{run}"
