"""Payloads of the data-plane prober (``watch_replicas``): what it watches, what it reports.

The prober probes an agent's replicas at the agent's interval and completes only when the
verdict the workflow acts on would change (see :func:`verdict`), so a healthy agent costs its
workflow nothing between leases. The workflow keeps every decision; these models carry evidence.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Literal

from pydantic import Field

from fleetops.models import FrozenModel, ProbeResult

PROBER_QUEUE_SUFFIX = "-probers"
"""Every prober host polls ``<workflow task queue>-probers`` for assignments (``assign_prober``)
and releases (``release_host``, ``host_lost``); its watches run on its own queue
``<workflow task queue>-probers-<host_id>`` (:func:`host_queue`), the worker-specific task
queue pattern, so an agent's probes stay on the host that was given them."""
LEASE_ID_PREFIX = "prober-host/"
"""Workflow id of a host's ``ProberLease``: ``prober-host/<host_id>``."""


def host_queue(task_queue: str, host_id: str) -> str:
    """The task queue of one prober host: ``<task_queue>-probers-<host_id>``."""
    return f"{task_queue}{PROBER_QUEUE_SUFFIX}-{host_id}"


def lease_workflow_id(host_id: str) -> str:
    """Workflow id of the ``ProberLease`` of ``host_id``: ``prober-host/<host_id>``."""
    return LEASE_ID_PREFIX + host_id


class HostLease(FrozenModel):
    """What ``assign_prober`` returns: the host that probes the agent from now on."""

    host_id: str = Field(min_length=1, max_length=64)
    task_queue: str = Field(min_length=1, max_length=1000, description="Its watch queue.")


class LeaseInput(FrozenModel):
    """Input of ``ProberLease`` (and of its ``hold_host`` activity)."""

    host_id: str = Field(min_length=1, max_length=64)
    task_queue: str = Field(min_length=1, max_length=1000, description="The host's queue.")
    release_queue: str = Field(min_length=1, max_length=1000, description="Shared prober queue.")
    heartbeat_seconds: float = Field(gt=0, le=300, description="Heartbeat timeout, seconds.")
    hold_seconds: float = Field(3600.0, gt=0, description="One hold activity's length, seconds.")


class LeaseStatus(FrozenModel):
    """``ProberLease.status``: whether the host was lost (heartbeat timed out, or stopped)."""

    host_id: str
    lost: bool
    released: int = Field(0, ge=0, description="Agents told to find another prober.")


ReportReason = Literal[
    "failing",
    "recovered",
    "healthy",
    "busy",
    "idle",
    "probed",
    "startup_timeout",
    "lease",
    "empty",
]


class WatchedReplica(FrozenModel):
    """One replica the prober probes."""

    index: int = Field(ge=0)
    endpoint: str


class WatchRequest(FrozenModel):
    """Input of ``watch_replicas``: the replicas, the health rule and the workflow's baseline.

    The baseline (``failing``, ``serving``, ``busy``) is what the workflow currently believes;
    the prober reports as soon as its own probes give a different verdict.
    """

    agent_id: str
    replicas: list[WatchedReplica]
    path: str = "/health"
    interval_seconds: float = Field(gt=0, description="Seconds between rounds.")
    timeout_seconds: float = Field(gt=0, description="Seconds before one probe fails.")
    failure_threshold: int = Field(ge=1)
    failures: dict[int, int] = Field(
        default_factory=dict, description="Consecutive failures carried from earlier probers."
    )
    starting: dict[int, datetime] = Field(
        default_factory=dict,
        description="Replica index -> end of its startup grace (failures do not count before).",
    )
    failing: list[int] = Field(default_factory=list, description="Replicas the workflow failed.")
    unprobed: list[int] = Field(
        default_factory=list,
        description="Replicas the workflow has no result for (scaled up, a colour switch):"
        " reported after the first round, so ``status`` shows their health.",
    )
    serving: bool = Field(False, description="The workflow is READY or PROCESSING.")
    busy: bool = Field(False, description="The workflow is PROCESSING.")
    startup: bool = Field(
        False, description="Bring-up: report once all are healthy, or startup_timeout_seconds."
    )
    startup_timeout_seconds: float = Field(120.0, gt=0)
    bringup: str = Field(
        "",
        max_length=200,
        description="Which bring-up a startup watch serves (the agent run and the transition"
        " that began it): a newer startup watch of the same bring-up keeps its startup clock,"
        " one of another bring-up (after a pause and resume) starts its own.",
    )
    lease_seconds: float = Field(
        3600.0, gt=0, description="Report anyway after this long (status freshness, run bound)."
    )
    next_round_at: datetime | None = Field(
        None,
        description="When the first round is due (UTC): one interval after the round the"
        " workflow last recorded, so a new watch keeps the agent's probe phase (no round is"
        " skipped when a lease is renewed; a time already past is moved on by whole"
        " intervals). None: a random offset within one interval, which spreads the rounds of"
        " many agents. Either way the wait is at most one interval.",
    )


class WatchReport(FrozenModel):
    """Result of ``watch_replicas``: why it reported and the evidence of its last round."""

    reason: ReportReason
    results: list[ProbeResult] = Field(description="Last round, in the order of the request.")
    failures: dict[int, int] = Field(default_factory=dict)
    starting: dict[int, datetime] = Field(default_factory=dict)
    rounds: int = Field(0, ge=0, description="Probe rounds this prober ran.")
    failed_probes: int = Field(0, ge=0, description="Failed probes that counted.")
    probed_at: datetime | None = Field(None, description="When the last round ended (UTC).")
    first_probe_at: datetime | None = Field(None, description="When probing began (UTC).")


def verdict(
    req: WatchRequest,
    results: list[ProbeResult],
    failures: dict[int, int],
    starting: Mapping[int, datetime] | None = None,
) -> ReportReason | None:
    """What changed against the workflow's baseline after one round, or None (keep probing).

    Mirrors the decisions of ``AgentLifecycle._health_round``: the set of replicas at
    ``failure_threshold`` (self-heal, DEGRADED), all healthy while not serving (READY again),
    and, while serving, ``in_flight`` crossing zero (READY <-> PROCESSING). Last, ``probed``:
    the first results of replicas the workflow has none for (``req.unprobed``), evidence only,
    once none of them is still in its startup grace (a scaled-up replica still starting
    would otherwise show unhealthy in ``status`` until the next report, up to an hour).

    Args:
        req: the request with the baseline.
        results: this round's results, in the order of ``req.replicas``.
        failures: consecutive failures per replica index after this round.
        starting: replica index -> end of its startup grace, for those still in it after
            this round (neither healthy yet nor past it).
    """
    if not results:
        return "empty"
    failing = sorted(i for i, n in failures.items() if n >= req.failure_threshold)
    healthy = all(p.healthy for p in results)
    busy = any(p.in_flight > 0 for p in results)
    if req.startup:
        return "healthy" if healthy else None
    if failing != sorted(req.failing):
        return "failing" if set(failing) - set(req.failing) else "recovered"
    if healthy and not req.serving:
        return "healthy"
    if healthy and busy != req.busy:
        return "busy" if busy else "idle"
    if req.unprobed and not set(req.unprobed) & set(starting or ()):
        return "probed"
    return None
