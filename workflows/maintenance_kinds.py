"""What each maintenance kind does to one target (deterministic workflow code).

A :class:`Change` has three steps the ``Maintenance`` workflow calls in order: ``apply`` (the
change), ``confirm`` (after the post-checks passed) and ``undo`` (after a failure or a
cancellation, as a compensation: its activities retry until they succeed). Each records what it
did in ``facts`` (versions and ids, never values), so ``undo`` reverts exactly that and the
``status`` query shows it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from fleetops.agent_control import AgentConfigure, AgentDeploy, DeployOutcome
    from fleetops.deploy import DeploymentRequest, Promotion
    from fleetops.drain import DrainRequest
    from fleetops.maintenance import (
        ConfigChangeParams,
        CustomParams,
        MaintenancePlan,
        SecretRotationParams,
        SecurityPatchParams,
        StepConfirmation,
        VersionUpdateParams,
    )
    from fleetops.models import ConfigureAgentResult
    from fleetops.secrets import SecretRestore, SecretRotation, SecretVersionRef
    from workflows import maintenance_calls as calls

Confirmations = Callable[[str, int, float], Awaitable[StepConfirmation | None]]
"""``(agent_id, step, timeout_seconds) -> confirmation or None`` (timed out): the workflow's
wait for a ``confirm_step`` signal."""


class StepFailed(Exception):
    """A step of one target failed; the target is undone."""


class Change:
    """One target's change; subclasses implement the kinds."""

    def __init__(self, plan: MaintenancePlan, agent_id: str, by: str) -> None:
        """Remember the plan, the target and who asks (the workflow id)."""
        self.plan, self.agent_id, self.by = plan, agent_id, by
        self.facts: dict[str, str | int | bool | None] = {}
        # Set by the workflow: the target is paused now, so a restart is refused and not needed
        # (resume provisions replicas anew: they read secrets and config again).
        self.paused = False

    async def _restart(self, reason: str, *, compensation: bool = False) -> str:
        if self.paused:
            return "on resume"
        r = await calls.restart(self.agent_id, self.by, reason, compensation=compensation)
        return str(r.restarted)

    async def apply(self) -> None:
        """Make the change. Raises StepFailed or ActivityError."""

    async def confirm(self) -> None:
        """Make the verified change permanent (e.g. end a secret's rollback protection)."""

    async def undo(self) -> str:
        """Revert what ``apply`` did (compensation); returns what was done, in words."""
        return "nothing to revert"


class SecretRotationChange(Change):
    """Rotate each secret, restart so replicas read it; undo restores and restarts again."""

    def __init__(self, plan: MaintenancePlan, agent_id: str, by: str) -> None:
        super().__init__(plan, agent_id, by)
        self.params: SecretRotationParams = plan.params()
        self.refs: list[SecretVersionRef] = []
        self.restarted = False

    async def apply(self) -> None:
        for item in self.params.secrets:
            path = item.for_agent(self.agent_id)
            ref = await calls.rotate_secret(
                SecretRotation(path=path, key=item.key, value_bytes=item.value_bytes)
            )
            self.refs.append(ref)
            self.facts[f"{path}:{item.key}"] = f"v{ref.previous_version}->v{ref.version}"
        self.restarted = True  # from here on, replicas may read the new versions
        self.facts["restarted"] = await self._restart("secret rotation")

    async def confirm(self) -> None:
        for ref in self.refs:
            await calls.confirm_secret(ref.path, ref.version)

    async def undo(self) -> str:
        done = []
        for ref in reversed(self.refs):
            if ref.previous_version is None:
                done.append(f"{ref.path} had no previous version (kept v{ref.version})")
                continue
            back = await calls.restore_secret(
                SecretRestore(
                    path=ref.path, version=ref.previous_version, expected_version=ref.version
                )
            )
            done.append(f"{ref.path} restored v{ref.previous_version} as v{back.version}")
        if self.restarted:
            done.append("restarted " + await self._restart("secret rollback", compensation=True))
        return "; ".join(done) or "nothing rotated"


class VersionUpdateChange(Change):
    """One blue-green deployment owned by the target; undo aborts a running one, or deploys the
    previous version back when the new one failed its post-checks."""

    def __init__(self, plan: MaintenancePlan, agent_id: str, by: str) -> None:
        super().__init__(plan, agent_id, by)
        self.params: VersionUpdateParams = plan.params()
        self.outcome: DeployOutcome | None = None

    def _request(self, version: str, command: list[str] | None, image: str | None) -> AgentDeploy:
        p = self.params
        return AgentDeploy(
            request=DeploymentRequest(
                agent_id=self.agent_id,
                version=version,
                command=command,
                image=image,
                promotion=Promotion(
                    mode="auto", auto_promote_after_seconds=p.auto_promote_after_seconds
                ),
                ready_timeout_seconds=p.ready_timeout_seconds,
                scale_down_delay_seconds=p.scale_down_delay_seconds,
                abort_scale_down_delay_seconds=p.abort_scale_down_delay_seconds,
                requested_by=self.by,
            )
        )

    async def apply(self) -> None:
        p = self.params
        out = await calls.deploy(self._request(p.version, p.command, p.image))
        self.outcome = out
        self.facts.update(
            deployment=out.deployment_id or None, version=out.version, previous=out.previous_version
        )
        if not out.promoted:
            raise StepFailed(
                f"deployment {out.deployment_id} ended {out.closed_as}/{out.outcome}: "
                f"{out.message}; {self.agent_id} runs {out.version}"
            )

    async def undo(self) -> str:
        out = self.outcome
        if out is None:  # cancelled or failed before the deployment ended
            aborted = await calls.abort_deployment(self.agent_id, self.by)
            return f"aborted {aborted}" if aborted else "no deployment was running"
        if not out.promoted or out.previous_version is None:
            return f"the deployment rolled itself back; {self.agent_id} runs {out.version}"
        back = await calls.deploy(
            self._request(out.previous_version, out.previous_command, out.previous_image),
            compensation=True,
        )
        return f"deployed {out.previous_version} back ({back.closed_as}/{back.outcome})"


class ConfigChangeChange(Change):
    """``configure`` the new config; undo restores the previous version."""

    def __init__(self, plan: MaintenancePlan, agent_id: str, by: str) -> None:
        super().__init__(plan, agent_id, by)
        self.params: ConfigChangeParams = plan.params()
        self.result: ConfigureAgentResult | None = None
        self.started = False

    async def apply(self) -> None:
        self.started = True
        self.result = r = await calls.configure(
            AgentConfigure(
                agent_id=self.agent_id,
                config=self.params.config,
                reason=f"maintenance {self.plan.name}",
                requested_by=self.by,
            )
        )
        self.facts.update(config_version=r.config_version, previous_version=r.previous_version)

    async def undo(self) -> str:
        r = self.result
        if r is None:
            return "the config was not applied"
        if r.previous_version is None:
            return f"config v{r.config_version} kept: the agent had no previous config"
        back = await calls.configure(
            AgentConfigure(
                agent_id=self.agent_id,
                restore_version=r.previous_version,
                reason=f"rollback of maintenance {self.plan.name}",
                requested_by=self.by,
            ),
            compensation=True,
        )
        return f"restored config v{r.previous_version} (now v{back.config_version})"


class SecurityPatchChange(Change):
    """Kubernetes: cordon and drain each node hosting the target, wait for its replicas, and
    uncordon. Local platform (``agent_nodes`` is empty): a rolling restart."""

    def __init__(self, plan: MaintenancePlan, agent_id: str, by: str) -> None:
        super().__init__(plan, agent_id, by)
        self.params: SecurityPatchParams = plan.params()
        self.cordoned: list[str] = []

    async def apply(self) -> None:
        nodes = await calls.agent_nodes(self.agent_id)
        self.facts["nodes"] = ",".join(nodes) or None
        if not nodes:
            self.facts["restarted"] = await self._restart("security patch")
            return
        timeout = self.params.drain_timeout_seconds
        for node in nodes:
            await calls.cordon(node)
            self.cordoned.append(node)
            result = await calls.drain_node(DrainRequest(node=node, timeout_seconds=timeout))
            self.facts[f"drained:{node}"] = (
                f"{len(result.evicted)} evicted, {result.retries} retries"
            )
        health = await calls.wait_healthy(
            self.agent_id, self.plan.post_checks.health_timeout_seconds
        )
        if not health.healthy:
            raise StepFailed(f"replicas not ready after the drain: {health.problem()}")
        await self._uncordon()

    async def _uncordon(self) -> None:
        while self.cordoned:
            node = self.cordoned[-1]
            await calls.uncordon(node)
            self.cordoned.pop()

    async def undo(self) -> str:
        nodes = list(self.cordoned)
        await self._uncordon()
        return f"uncordoned {', '.join(nodes)}" if nodes else "no node left cordoned"


class CustomChange(Change):
    """Each step waits for a person's ``confirm_step`` signal (done, or failed)."""

    def __init__(
        self, plan: MaintenancePlan, agent_id: str, by: str, confirmations: Confirmations
    ) -> None:
        super().__init__(plan, agent_id, by)
        self.params: CustomParams = plan.params()
        self._confirm = confirmations

    async def apply(self) -> None:
        for i, step in enumerate(self.params.steps):
            c = await self._confirm(self.agent_id, i, self.params.step_timeout_seconds)
            if c is None:
                raise StepFailed(f"step {i} ({step!r}) not confirmed in time")
            self.facts[f"step{i}"] = f"{'done' if c.done else 'failed'} by {c.by}"
            if not c.done:
                raise StepFailed(f"step {i} ({step!r}) failed, says {c.by}: {c.note}")


def make_change(
    plan: MaintenancePlan, agent_id: str, by: str, confirmations: Confirmations
) -> Change:
    """The :class:`Change` of ``plan.kind`` for one target."""
    if plan.kind == "secret_rotation":
        return SecretRotationChange(plan, agent_id, by)
    if plan.kind == "version_update":
        return VersionUpdateChange(plan, agent_id, by)
    if plan.kind == "config_change":
        return ConfigChangeChange(plan, agent_id, by)
    if plan.kind == "security_patch":
        return SecurityPatchChange(plan, agent_id, by)
    return CustomChange(plan, agent_id, by, confirmations)
