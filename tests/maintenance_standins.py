"""In-memory stand-ins of the activities a ``Maintenance`` run calls, under their real names.

``Fleet`` holds agents (state, version, config versions, health), a versioned secret store and
nodes, and records every call in order, so tests assert what a plan did to the world. Knobs:
``breaks`` (agents that turn unhealthy after their change and healthy again after its undo),
``hang`` (activity names that block until cancelled or released), ``incidents``, ``nodes``.
The secret store keeps values only here; the workflow sees paths and versions.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets as pysecrets
from dataclasses import dataclass, field
from typing import Any

from temporalio import activity
from temporalio.exceptions import ApplicationError

from fleetops.agent_control import (
    AbortDeployment,
    AgentAction,
    AgentConfigure,
    AgentDeploy,
    AgentHealth,
    AgentRestart,
    DeployOutcome,
    FoundAgents,
    IncidentQuery,
    TargetQuery,
    WaitAgentHealthy,
)
from fleetops.drain import DrainRequest, DrainResult
from fleetops.models import ConfigureAgentResult, RestartAgentResult
from fleetops.secrets import SecretRestore, SecretRotation, SecretVersionRef


@dataclass
class Agent:
    agent_id: str
    labels: dict[str, str] = field(default_factory=dict)
    state: str = "READY"
    version: str = "v1"
    healthy: bool = True
    deployment_id: str | None = None
    configs: list[dict[str, Any]] = field(default_factory=list)
    restarts: int = 0


class Fleet:
    """Agents, secrets and nodes in memory; every call recorded as ``(name, detail)``."""

    def __init__(self, *agent_ids: str, labels: dict[str, str] | None = None) -> None:
        self.agents = {a: Agent(a, labels=dict(labels or {})) for a in agent_ids}
        self.secrets: dict[str, list[str]] = {}  # path -> values, version n at index n-1
        self.confirmed: list[tuple[str, int]] = []
        self.calls: list[tuple[str, Any]] = []
        self.breaks: set[str] = set()
        self.hang: set[str] = set()
        self.release = asyncio.Event()
        self.incidents: dict[str, str] = {}  # agent -> incident workflow id
        self.nodes: dict[str, list[str]] = {}
        self.cordoned: set[str] = set()
        self.changing: set[str] = set()
        self.max_changing = 0
        self.step_seconds = 0.2  # real seconds a change takes (lets batches overlap)

    def put_secret(self, path: str, value: str = "initial") -> None:
        self.secrets.setdefault(path, []).append(value)

    async def _hold(self, name: str) -> None:
        if name in self.hang:
            while not self.release.is_set():
                activity.heartbeat()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.release.wait(), timeout=0.2)

    async def _change(self, agent_id: str, *, undo: bool) -> None:
        """A change takes ``step_seconds``; ``breaks`` agents turn unhealthy (healthy on undo)."""
        self.changing.add(agent_id)
        self.max_changing = max(self.max_changing, len(self.changing))
        try:
            await asyncio.sleep(self.step_seconds)
        finally:
            self.changing.discard(agent_id)
        if agent_id in self.breaks:
            self.agents[agent_id].healthy = undo

    def _agent(self, agent_id: str) -> Agent:
        if agent_id not in self.agents:
            raise ApplicationError(
                f"agent {agent_id} is not running", type="AgentNotFound", non_retryable=True
            )
        return self.agents[agent_id]

    def _health(self, agent_id: str) -> AgentHealth:
        a = self.agents.get(agent_id)
        if a is None:
            return AgentHealth(agent_id=agent_id, found=False)
        return AgentHealth(
            agent_id=agent_id,
            found=True,
            state=a.state,
            version=a.version,
            desired_replicas=2,
            healthy_replicas=2 if a.healthy else 1,
            deployment_id=a.deployment_id,
            endpoints=[f"http://{agent_id}-0.invalid"],
        )

    @activity.defn(name="agent_health")
    async def agent_health(self, agent_id: str) -> AgentHealth:
        self.calls.append(("agent_health", agent_id))
        return self._health(agent_id)

    @activity.defn(name="agent_wait_healthy")
    async def agent_wait_healthy(self, req: WaitAgentHealthy) -> AgentHealth:
        self.calls.append(("agent_wait_healthy", req.agent_id))
        return self._health(req.agent_id)

    @activity.defn(name="find_agents")
    async def find_agents(self, q: TargetQuery) -> FoundAgents:
        self.calls.append(("find_agents", q))
        ids = [a for a in q.agents if a in self.agents]
        missing = [a for a in q.agents if a not in self.agents]
        if q.selector:
            match = sorted(
                a.agent_id
                for a in self.agents.values()
                if all(a.labels.get(k) == v for k, v in q.selector.items())
            )
            ids += [a for a in match if a not in ids]
        return FoundAgents(agents=ids, missing=missing)

    @activity.defn(name="open_incidents")
    async def open_incidents(self, q: IncidentQuery) -> list[str]:
        self.calls.append(("open_incidents", q.agents))
        return sorted(self.incidents[a] for a in q.agents if a in self.incidents)

    @activity.defn(name="agent_transition")
    async def agent_transition(self, req: AgentAction) -> str:
        self.calls.append(("agent_transition", (req.agent_id, req.action)))
        a = self._agent(req.agent_id)
        a.state = "PAUSED" if req.action == "pause" else "READY"
        return a.state

    @activity.defn(name="agent_restart")
    async def agent_restart(self, req: AgentRestart) -> RestartAgentResult:
        self.calls.append(("agent_restart", (req.agent_id, req.reason)))
        a = self._agent(req.agent_id)
        await self._hold("agent_restart")
        await self._change(req.agent_id, undo="rollback" in req.reason)
        a.restarts += 1
        return RestartAgentResult(restarted=2, color="blue")

    @activity.defn(name="agent_configure")
    async def agent_configure(self, req: AgentConfigure) -> ConfigureAgentResult:
        self.calls.append(("agent_configure", (req.agent_id, req.config, req.restore_version)))
        a = self._agent(req.agent_id)
        previous = len(a.configs) or None
        if req.restore_version is not None:
            a.configs.append(a.configs[req.restore_version - 1])
        else:
            assert req.config is not None
            a.configs.append(req.config)
        await self._change(req.agent_id, undo=req.restore_version is not None)
        return ConfigureAgentResult(config_version=len(a.configs), previous_version=previous)

    @activity.defn(name="agent_deploy")
    async def agent_deploy(self, req: AgentDeploy) -> DeployOutcome:
        r = req.request
        self.calls.append(("agent_deploy", (r.agent_id, r.version)))
        a = self._agent(r.agent_id)
        previous = a.version
        dep = f"deploy/{r.agent_id}/{r.version}"
        a.deployment_id = dep
        try:
            await self._hold("agent_deploy")
            await self._change(r.agent_id, undo=r.version == "v1")
        except asyncio.CancelledError:
            self.calls.append(("deploy_cancelled", r.agent_id))
            raise
        a.version, a.deployment_id = r.version, None
        return DeployOutcome(
            deployment_id=dep,
            closed_as="completed",
            outcome="promoted",
            version=a.version,
            previous_version=previous,
        )

    @activity.defn(name="agent_abort_deployment")
    async def agent_abort_deployment(self, req: AbortDeployment) -> str | None:
        self.calls.append(("agent_abort_deployment", req.agent_id))
        a = self._agent(req.agent_id)
        dep, a.deployment_id = a.deployment_id, None
        return dep

    # --- the secrets engineer's activities (same names and payloads) ---------------------------

    @activity.defn(name="rotate_secret")
    async def rotate_secret(self, req: SecretRotation) -> SecretVersionRef:
        self.calls.append(("rotate_secret", req.path))
        versions = self.secrets.setdefault(req.path, [])
        versions.append(pysecrets.token_urlsafe(req.value_bytes))
        n = len(versions)
        return SecretVersionRef(path=req.path, version=n, previous_version=(n - 1) or None)

    @activity.defn(name="restore_secret")
    async def restore_secret(self, req: SecretRestore) -> SecretVersionRef:
        self.calls.append(("restore_secret", (req.path, req.version)))
        versions = self.secrets[req.path]
        versions.append(versions[req.version - 1])
        return SecretVersionRef(
            path=req.path, version=len(versions), previous_version=len(versions) - 1
        )

    @activity.defn(name="confirm_secret")
    async def confirm_secret(self, path: str, version: int) -> list[int]:
        self.calls.append(("confirm_secret", (path, version)))
        self.confirmed.append((path, version))
        return [version - 1] if version > 1 else []

    # --- the agent-ops engineer's node activities ------------------------------------------------

    @activity.defn(name="agent_nodes")
    async def agent_nodes(self, agent_id: str) -> list[str]:
        self.calls.append(("agent_nodes", agent_id))
        return self.nodes.get(agent_id, [])

    @activity.defn(name="cordon_node")
    async def cordon_node(self, name: str) -> None:
        self.calls.append(("cordon_node", name))
        self.cordoned.add(name)

    @activity.defn(name="drain_node")
    async def drain_node(self, req: DrainRequest) -> DrainResult:
        self.calls.append(("drain_node", req.node))
        await self._hold("drain_node")
        return DrainResult(node=req.node, evicted=[f"default/{req.node}-pod"])

    @activity.defn(name="uncordon_node")
    async def uncordon_node(self, name: str) -> None:
        self.calls.append(("uncordon_node", name))
        self.cordoned.discard(name)

    def activities(self) -> list[Any]:
        return [
            self.agent_health,
            self.agent_wait_healthy,
            self.find_agents,
            self.open_incidents,
            self.agent_transition,
            self.agent_restart,
            self.agent_configure,
            self.agent_deploy,
            self.agent_abort_deployment,
            self.rotate_secret,
            self.restore_secret,
            self.confirm_secret,
            self.agent_nodes,
            self.cordon_node,
            self.drain_node,
            self.uncordon_node,
        ]

    def names(self, call: str) -> list[Any]:
        """Details of every recorded ``call``, in order."""
        return [d for n, d in self.calls if n == call]
