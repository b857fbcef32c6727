"""The per-agent replica quota, enforced where replicas are provisioned.

Workflows cannot read settings (their code must replay the same on any worker), so the models
bound replica counts statically at :data:`fleetops.limits.MAX_REPLICAS`, and the worker enforces
its ``max_replicas_per_agent`` setting here, in the activity every workflow provisions replicas
through (agent start, ``scale``, ``resume``, a deployment's new colour). This is how a Kubernetes
ResourceQuota works: the object is accepted, creating the pods is refused. A refused
provisioning is non-retryable, so the agent goes to ``ERROR`` (a deployment rolls back) at once,
with the quota in the message; nothing was started.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from temporalio import activity
from temporalio.exceptions import ApplicationError

from fleetops import errors
from fleetops.models import ProvisionRequest, Replica

QUOTA_EXCEEDED = errors.QUOTA_EXCEEDED
"""``ApplicationError.type`` of a provisioning refused by the replica quota."""

Provision = Callable[[ProvisionRequest], Awaitable[list[Replica]]]


class ReplicaQuota:
    """``provision_replicas`` with the quota checked first; registered instead of the platform's.

    Args:
        provision: the platform's ``provision_replicas`` (``PlatformActivities``).
        max_replicas_per_agent: the quota (setting ``max_replicas_per_agent``), replicas of one
            colour of one agent.
    """

    def __init__(self, provision: Provision, *, max_replicas_per_agent: int) -> None:
        self._provision = provision
        self._quota = max_replicas_per_agent

    @activity.defn(name="provision_replicas")
    async def provision_replicas(self, req: ProvisionRequest) -> list[Replica]:
        """Converge colour ``req.color`` of the agent to ``req.replicas`` replicas, within quota.

        Returns:
            The replicas, ordered by index (from the platform).

        Raises:
            ApplicationError: ``QuotaExceeded`` (non-retryable) when ``req.replicas`` is above
                the quota, before anything is started; otherwise what the platform raises.
        """
        if req.replicas > self._quota:
            raise ApplicationError(
                f"replicas={req.replicas} for agent {req.spec.agent_id} exceeds the per-agent "
                f"quota of {self._quota} replicas (worker setting "
                "FLEETOPS_MAX_REPLICAS_PER_AGENT); ask for fewer or raise the quota",
                {"field": "replicas", "quota": self._quota},
                type=QUOTA_EXCEEDED,
                non_retryable=True,
            )
        return await self._provision(req)
