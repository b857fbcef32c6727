"""Payloads of the agent-control activities (``activities/agent_control.py``).

Workflow code cannot send updates to other workflows, so the ``Maintenance`` workflow steers
agents through activities that call each agent's ``AgentLifecycle`` with the client. These are
their inputs and results; none carries a secret value.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from fleetops.agent_config import ConfigValue
from fleetops.deploy import DeploymentRequest
from fleetops.maintenance import Labels
from fleetops.models import AgentState, Color, FrozenModel

SERVING_STATES = frozenset({AgentState.READY, AgentState.PROCESSING})
"""States in which an agent serves traffic."""
MAX_QUERY_AGENTS = 1000
"""Most agents one visibility query returns."""


class AgentHealth(FrozenModel):
    """An agent as its ``status`` query shows it, summarised for pre- and post-checks."""

    agent_id: str
    found: bool = Field(description="Whether agent/<id> is open.")
    state: str = ""
    version: str = ""
    desired_replicas: int = 0
    healthy_replicas: int = 0
    deployment_id: str | None = None
    active_color: Color = "blue"
    endpoints: list[str] = Field(default_factory=list, description="Active replicas' base URLs.")

    @property
    def healthy(self) -> bool:
        """Serving, every desired replica healthy, no deployment running."""
        return (
            self.found
            and self.state in SERVING_STATES
            and self.healthy_replicas >= self.desired_replicas
            and self.deployment_id is None
        )

    def problem(self) -> str | None:
        """Why the agent is not healthy, in words (None when it is)."""
        if not self.found:
            return f"agent {self.agent_id} is not running (no open agent/{self.agent_id})"
        if self.deployment_id is not None:
            return f"agent {self.agent_id} has deployment {self.deployment_id} running"
        if self.state not in SERVING_STATES:
            return f"agent {self.agent_id} is {self.state}, not serving"
        if self.healthy_replicas < self.desired_replicas:
            return (
                f"agent {self.agent_id}: {self.healthy_replicas} of {self.desired_replicas} "
                "replicas healthy"
            )
        return None


class TargetQuery(FrozenModel):
    """Input of ``find_agents``: ids to check and a label selector to resolve."""

    agents: list[str] = Field(default_factory=list)
    selector: Labels = Field(default_factory=dict)


class FoundAgents(FrozenModel):
    """Result of ``find_agents``: the open agents (ids first, then selector matches, sorted)
    and the ids named that have no open ``AgentLifecycle``."""

    agents: list[str]
    missing: list[str] = Field(default_factory=list)


class AgentAction(FrozenModel):
    """Input of ``agent_transition``: pause or resume one agent (idempotent)."""

    agent_id: str
    action: Literal["pause", "resume"]
    reason: str = Field("", max_length=500)
    requested_by: str = Field("", max_length=200)


class AgentRestart(FrozenModel):
    """Input of ``agent_restart``: a rolling restart (update ``restart``); the result is
    :class:`~fleetops.models.RestartAgentResult`."""

    agent_id: str
    reason: str = Field("", max_length=500)
    requested_by: str = Field("", max_length=200)


class AgentConfigure(FrozenModel):
    """Input of ``agent_configure``: a new config, or ``restore_version`` of an earlier one; the
    result is :class:`~fleetops.models.ConfigureAgentResult`."""

    agent_id: str
    config: dict[str, ConfigValue] | None = None
    restore_version: int | None = Field(None, ge=1)
    reason: str = Field("", max_length=500)
    requested_by: str = Field("", max_length=200)


class AgentDeploy(FrozenModel):
    """Input of ``agent_deploy``: the deployment to ask the agent for, then follow to its end."""

    request: DeploymentRequest
    poll_seconds: float = Field(1.0, gt=0, le=60, description="Status poll interval, seconds.")


class DeployOutcome(FrozenModel):
    """Result of ``agent_deploy``: how the deployment ended and what the agent now runs."""

    deployment_id: str
    closed_as: str
    outcome: str | None = None
    version: str = Field(description="The agent's version after it reconciled.")
    message: str = ""
    previous_version: str | None = Field(None, description="What the agent ran before.")
    previous_command: list[str] | None = None
    previous_image: str | None = None

    @property
    def promoted(self) -> bool:
        """Whether the agent now runs the requested version."""
        return self.outcome == "promoted"


class AbortDeployment(FrozenModel):
    """Input of ``agent_abort_deployment``: abort the agent's running deployment, wait for it."""

    agent_id: str
    reason: str = Field("", max_length=500)
    requested_by: str = Field("", max_length=200)


class WaitAgentHealthy(FrozenModel):
    """Input of ``agent_wait_healthy``: poll the agent until :attr:`AgentHealth.healthy`."""

    agent_id: str
    timeout_seconds: float = Field(gt=0, le=3600, description="Seconds (<= 1 hour).")
    poll_seconds: float = Field(0.5, gt=0, le=60)


class IncidentQuery(FrozenModel):
    """Input of ``open_incidents``: which agents to look for."""

    agents: list[str]
