"""Pre-checks, post-checks and notifications of the ``Maintenance`` workflow (workflow code).

Pre-checks refuse a plan before anything changes: a named agent that is not open, a selector
that matches nothing or more than :data:`~fleetops.maintenance.MAX_TARGETS` agents, an open
``IncidentResponse`` about a target, a target with a deployment running or (unless
``pre_check_health`` is false) not healthy. Post-checks decide whether a changed target stays
changed: healthy within ``post_checks.health_timeout_seconds`` and, when
``post_checks.analysis`` is set, a successful metrics analysis.
"""

from __future__ import annotations

from temporalio import workflow
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from activities.agent_control import AgentControlActivities as Agents
    from activities.notify import NotifyActivities
    from fleetops.agent_control import IncidentQuery, TargetQuery
    from fleetops.approvals import Notification
    from fleetops.maintenance import MAX_TARGETS, MaintenancePlan
    from workflows.activity_options import call
    from workflows.analysis_run import run_analysis
    from workflows.lifecycle_calls import cause
    from workflows.maintenance_calls import health, wait_healthy


async def pre_checks(plan: MaintenancePlan) -> tuple[list[str], list[str]]:
    """Resolve the targets and check them; a check that cannot run is a problem too.

    Returns:
        ``(targets, problems)``: the agents the plan would change, and why it must not (empty:
        go ahead).
    """
    try:
        return await _pre_checks(plan)
    except ActivityError as err:
        return [], [f"pre-check {err.activity_type} failed: {cause(err)}"]


async def _pre_checks(plan: MaintenancePlan) -> tuple[list[str], list[str]]:
    found = await call(
        Agents.find_agents,
        TargetQuery(agents=plan.targets.agents, selector=plan.targets.selector),
        summary="resolve the plan's targets",
    )
    targets, problems = found.agents, []
    if found.missing:
        problems.append(f"not running: {', '.join(found.missing)}")
    if not targets:
        problems.append("no target: the selector matched no running agent")
    if len(targets) > MAX_TARGETS:
        problems.append(f"{len(targets)} targets; at most {MAX_TARGETS} per plan")
        return targets[:MAX_TARGETS], problems
    incidents = await call(
        Agents.open_incidents, IncidentQuery(agents=targets), summary="open incidents on targets"
    )
    if incidents:
        problems.append(f"incident open: {', '.join(incidents[:10])}")
    for agent_id in targets:
        h = await health(agent_id)
        if not h.found or h.deployment_id is not None or (plan.pre_check_health and not h.healthy):
            problems.append(h.problem() or f"{agent_id} not healthy")
    return targets, problems


async def post_check(plan: MaintenancePlan, agent_id: str, *, wait: bool) -> str | None:
    """Check one target.

    Args:
        plan: the plan (its ``post_checks``).
        agent_id: the target.
        wait: True after a change (wait up to ``health_timeout_seconds``, then run the
            analysis); False before one (health now; with ``pre_check_health`` false only
            that it is open with no deployment running).

    Returns:
        The problem, in words, or None when the target passes.
    """
    if not wait:
        h = await health(agent_id)
        if not plan.pre_check_health and h.found and h.deployment_id is None:
            return None
        return h.problem()
    h = await wait_healthy(agent_id, plan.post_checks.health_timeout_seconds)
    if not h.healthy:
        return h.problem()
    analysis = plan.analysis()
    if analysis is None:
        return None
    result = await run_analysis(
        analysis,
        agent_id=agent_id,
        color=h.active_color,
        version=h.version,
        endpoints=h.endpoints,
    )
    if result.phase != "Successful":
        return f"analysis {result.phase}: {result.message}"
    return None


async def notify(plan: MaintenancePlan, workflow_id: str, text: str, seq: int) -> list[str]:
    """Post ``text`` to each of ``plan.notify`` (approvals and/or escalation webhook).

    Args:
        plan: the plan.
        workflow_id: this run (in the dedupe key).
        text: Slack mrkdwn.
        seq: a number unique within the run (deduplicates retries, not distinct messages).

    Returns:
        Errors, in words (a failed notification never fails the plan).
    """
    errors = []
    for target in plan.notify:
        n = Notification(
            kind="maintenance",
            workflow_id=workflow_id,
            text=text,
            dedupe_key=f"{workflow_id}/{seq}/{target}",
            escalation=target == "escalation",
        )
        try:
            await call(NotifyActivities.send_notification, n, summary=f"notify {target}")
        except ActivityError as err:
            errors.append(f"notification to {target} failed: {cause(err)}")
    return errors
