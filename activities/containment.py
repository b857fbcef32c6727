"""Containment actions of an incident: the fixed catalogue, carried out on the incident's agent.

Every action goes through the agent's own ``AgentLifecycle`` (updates ``deploy``, ``restart``,
``transition``; signal ``abort`` of its deployment) or the platform (the gateway's rate limit),
never around it, so the agent's validators refuse what its state does not allow (a paused agent
is not scaled, a deployment in progress is not restarted). Such a refusal is an answer
(``ok=False`` with the agent's reason), not a failure: the incident records it and goes on.

Idempotency: an update's id is ``<incident_id>/<action>/<action_id>``. Before acting, the
activity asks the server for the outcome of an update with that id; a retry after a success (a
worker lost the answer) gets that outcome back instead of scaling up twice. The server also
deduplicates the update itself when two attempts race.
"""

from __future__ import annotations

from typing import Any

from temporalio import activity
from temporalio.client import Client, WorkflowHandle, WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from activities.notify import NotifyActivities
from activities.platform.activities import _heartbeating
from activities.platform.base import IncidentOps, Platform, PlatformError
from fleetops.approvals import Notification
from fleetops.constants import agent_workflow_id
from fleetops.deploy import AbortRequest, DeploymentRequest, DeploymentStarted, Promotion
from fleetops.incidents import ContainmentAction, ContainmentRequest, ContainmentResult
from fleetops.limits import DEFAULT_MAX_REPLICAS_PER_AGENT
from fleetops.models import AgentStatus, TransitionRequest, TransitionResult

A = ContainmentAction


def update_id(req: ContainmentRequest) -> str:
    """The stable id of the update (or notification) ``req`` makes: retries reuse it."""
    return f"{req.incident_id}/{req.action}/{req.action_id}"


class _Refused(Exception):
    """The agent (or platform) refused the action: an ``ok=False`` result, not a failure."""


class ContainmentActivities:
    """Runs containment actions (activity ``run_containment``).

    Args:
        client: a connected client (the agent's workflow is updated through it).
        platform: the platform (rate limits need :class:`IncidentOps`; others answer
            "not supported").
        notify: the approval notifications, whose escalation webhook pages on-call.
        max_replicas_per_agent: the worker's quota; ``scale_up`` never asks for more.
    """

    def __init__(
        self,
        client: Client,
        platform: Platform,
        notify: NotifyActivities | None = None,
        *,
        max_replicas_per_agent: int = DEFAULT_MAX_REPLICAS_PER_AGENT,
    ) -> None:
        self._client = client
        self._platform = platform
        self._notify = notify
        self._quota = max_replicas_per_agent

    @activity.defn(name="run_containment")
    async def run_containment(self, req: ContainmentRequest) -> ContainmentResult:
        """Carry out ``req.action`` on ``req.agent_id`` (idempotent, see the module docstring).

        Actions: ``rollback_deployment`` aborts the deployment in progress (it rolls back), or
        deploys again the spec the agent ran before its last completed deployment (automatic
        promotion); ``restart_replicas`` is the agent's ``restart`` update; ``scale_up`` the
        ``transition`` scale to ``req.replicas`` (default one more), capped at the agent's
        ``max_replicas`` and the worker's quota; ``pause_agent`` the ``transition`` pause;
        ``rate_limit`` sets (or, with ``lift``, removes) the gateway's limit; ``page_oncall``
        posts to the escalation webhook (once per id).

        Returns:
            ``ok=True`` with what was done, or ``ok=False`` with why not (the agent refused, no
            running agent, nothing to roll back, not supported on this platform, no webhook).

        Raises:
            ApplicationError: retryable when Temporal or the webhook is unreachable; the
                webhook's own non-retryable errors (``WebhookRejected``) pass through. Bad
                input never gets here: the request model refuses it (``InvalidInput``).
        """
        handle = self._client.get_workflow_handle(agent_workflow_id(req.agent_id))
        try:
            async with _heartbeating():
                detail, wid = await self._run(req, handle)
        except _Refused as e:
            activity.logger.info("%s refused: %s", req.action, e)
            return ContainmentResult(action=req.action, ok=False, detail=str(e)[:2000])
        except RPCError as e:
            if e.status == RPCStatusCode.NOT_FOUND:
                return ContainmentResult(
                    action=req.action, ok=False, detail=f"no running agent {handle.id}"
                )
            raise ApplicationError(f"Temporal call failed: {e.message}", type="Unavailable") from e
        return ContainmentResult(action=req.action, ok=True, detail=detail[:2000], workflow_id=wid)

    async def _run(self, req: ContainmentRequest, handle: WorkflowHandle) -> tuple[str, str | None]:
        """Dispatch; returns (detail, workflow acted on)."""
        who = f"{req.requested_by} (incident {req.incident_id})"
        if req.action == A.PAGE_ONCALL:
            return await self._page(req), None
        if req.action == A.RATE_LIMIT:
            return await self._rate_limit(req), None
        if req.action == A.ROLLBACK_DEPLOYMENT:
            return await self._rollback(req, handle, who)
        if req.action == A.RESTART_REPLICAS:
            payload = {"requested_by": who[:200], "reason": req.reason[:500]}
            out = await self._update(req, handle, "restart", payload, dict)
            return f"restarted {out.get('restarted')} {out.get('color')} replicas", handle.id
        if req.action == A.PAUSE_AGENT:
            t = TransitionRequest(action="pause", reason=req.reason[:500], requested_by=who[:200])
            res = await self._update(req, handle, "transition", t, TransitionResult)
            return f"agent {res.state}", handle.id
        return await self._scale_up(req, handle, who), handle.id

    async def _update(
        self, req: ContainmentRequest, handle: WorkflowHandle, name: str, arg: Any, rtype: type
    ) -> Any:
        """The outcome of update ``name`` with the request's stable id: the earlier one if an
        attempt already ran it, else a new one.

        Raises:
            _Refused: the agent refused (validator) or failed the update.
        """
        uid = update_id(req)
        try:
            try:
                return await handle.get_update_handle(uid, result_type=rtype).result()
            except RPCError as e:
                if e.status != RPCStatusCode.NOT_FOUND:
                    raise
            return await handle.execute_update(name, arg, id=uid, result_type=rtype)
        except WorkflowUpdateFailedError as e:
            cause = e.cause
            msg = cause.message if isinstance(cause, ApplicationError) else str(cause or e)
            raise _Refused(f"{handle.id} refused {name}: {msg}") from None

    async def _status(self, handle: WorkflowHandle) -> AgentStatus:
        result: AgentStatus = await handle.query("status", result_type=AgentStatus)
        return result

    async def _scale_up(self, req: ContainmentRequest, handle: WorkflowHandle, who: str) -> str:
        st = await self._status(handle)
        cap = min(st.max_replicas, self._quota)
        target = min(req.replicas or st.desired_replicas + 1, cap)
        if target <= st.desired_replicas:
            try:  # an earlier attempt may have scaled already: its outcome is the answer
                prior = await handle.get_update_handle(
                    update_id(req), result_type=TransitionResult
                ).result()
                return f"scaled to {prior.replicas} replicas"
            except RPCError as e:
                if e.status != RPCStatusCode.NOT_FOUND:
                    raise
            raise _Refused(
                f"{req.agent_id} runs {st.desired_replicas} replicas; scale_up to {target} "
                f"would not add any (max_replicas {st.max_replicas}, quota {self._quota})"
            )
        t = TransitionRequest(
            action="scale", replicas=target, reason=req.reason[:500], requested_by=who[:200]
        )
        res: TransitionResult = await self._update(req, handle, "transition", t, TransitionResult)
        return f"scaled to {res.replicas} replicas"

    async def _rollback(
        self, req: ContainmentRequest, handle: WorkflowHandle, who: str
    ) -> tuple[str, str | None]:
        st = await self._status(handle)
        if st.deployment is not None:
            dep = st.deployment
            abort = AbortRequest(reason=req.reason[:500], requested_by=who[:200])
            await self._client.get_workflow_handle(dep.deployment_id).signal("abort", abort)
            return (
                f"abort asked of {dep.deployment_id}: back to {dep.stable_version} on "
                f"{dep.stable_color}",
                dep.deployment_id,
            )
        last = st.last_deployment
        prev = last.previous_spec if last is not None else None
        if last is None or prev is None or st.version != last.version:
            raise _Refused(
                f"nothing to roll back: {req.agent_id} has no deployment in progress and its "
                "last deployment did not switch it to the version it runs"
            )
        deploy = DeploymentRequest(
            agent_id=req.agent_id,
            version=prev.version,
            command=prev.command,
            image=prev.image,
            env=prev.env,
            promotion=Promotion(mode="auto"),
            requested_by=who[:200],
        )
        started: DeploymentStarted = await self._update(
            req, handle, "deploy", deploy, DeploymentStarted
        )
        return (
            f"rollback deployment {started.deployment_id} started: {started.stable_version} -> "
            f"{started.version}",
            started.deployment_id,
        )

    async def _rate_limit(self, req: ContainmentRequest) -> str:
        if not isinstance(self._platform, IncidentOps):
            raise _Refused(
                f"rate limiting is not supported on this platform "
                f"({type(self._platform).__name__}); on kubernetes limit at the ingress"
            )
        rps = None if req.lift else req.rate_limit_rps
        try:
            now = await self._platform.set_rate_limit(
                req.agent_id, rps, set_by=req.incident_id[:200]
            )
        except PlatformError as e:
            raise _Refused(str(e)) from None
        return "rate limit lifted" if now is None else f"rate limited to {now:g} requests/s"

    async def _page(self, req: ContainmentRequest) -> str:
        if self._notify is None:
            raise _Refused("no notifier on this worker; the incident pages itself")
        text = (
            f"*Page*: incident `{req.incident_id}` on agent `{req.agent_id}`"
            + (f": {req.reason}" if req.reason else "")
            + f" (asked by {req.requested_by})"
        )
        sent = await self._notify.send_notification(
            Notification(
                kind="escalation",
                workflow_id=req.incident_id,
                text=text[:3000],
                dedupe_key=update_id(req),
                escalation=True,
            )
        )
        if not sent:
            raise _Refused(
                "no webhook configured: set FLEETOPS_APPROVAL__ESCALATION_WEBHOOK_URL or "
                "FLEETOPS_APPROVAL__WEBHOOK_URL"
            )
        return "on-call paged"
