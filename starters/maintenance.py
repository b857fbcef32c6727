"""Typed async helpers for maintenance plans: run one now, read its status, and schedules.

    client = await connect(get_settings())
    handle = await run_plan(client, load_plan(Path("rotate.yaml")), task_queue="fleetops")
    await approvals.approve(client, handle.id, approver="alice")
    status = await handle.result()

Recurring plans are Temporal Schedules (id ``maintenance-<name>``) whose action starts
``Maintenance`` with workflow id ``maintenance/<name>/scheduled``; Temporal appends the
scheduled time, so each run is ``maintenance/<name>/scheduled-<RFC 3339 time>``. Overlapping
runs are skipped (``ScheduleOverlapPolicy.SKIP``) and missed runs are caught up only within the
catch-up window.

Sources: https://docs.temporal.io/schedule (overlap policies, catch-up window).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleDescription,
    ScheduleListDescription,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
    ScheduleState,
    WorkflowHandle,
)
from temporalio.service import RPCError, RPCStatusCode

from fleetops.constants import maintenance_workflow_id
from fleetops.maintenance import MaintenancePlan, MaintenanceStatus
from starters.agents import FleetOpsClientError
from workflows.maintenance import Maintenance

SCHEDULE_PREFIX = "maintenance-"
"""Schedule ids are ``maintenance-<plan name>``."""
DEFAULT_CATCHUP_SECONDS = 3600.0
"""Catch-up window of a schedule: a run missed (server down) by at most 1 hour still runs."""
MAX_CATCHUP_SECONDS = 7 * 86400.0
"""Longest catch-up window accepted: 7 days."""


class MaintenanceError(FleetOpsClientError):
    """A plan or schedule request that cannot be carried out (not found, exists, bad plan)."""


def schedule_id(name: str) -> str:
    """The schedule id of plan ``name``."""
    return SCHEDULE_PREFIX + name


def run_suffix(now: datetime | None = None) -> str:
    """The ``<run>`` part of a run started now: a UTC timestamp, ``20261201T232500Z``."""
    return (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")


async def run_plan(
    client: Client, plan: MaintenancePlan, *, task_queue: str, run: str | None = None
) -> WorkflowHandle[Maintenance, MaintenanceStatus]:
    """Start ``Maintenance`` for ``plan`` now (it waits for its window itself).

    Args:
        client: a connected client.
        plan: the validated plan.
        task_queue: the workers' task queue (``settings.temporal.task_queue``).
        run: the run suffix (default :func:`run_suffix`).

    Returns:
        The handle of ``maintenance/<name>/<run>``.

    Raises:
        MaintenanceError: a workflow with that id is already running.
    """
    wid = maintenance_workflow_id(plan.name, run or run_suffix())
    try:
        return await client.start_workflow(Maintenance.run, plan, id=wid, task_queue=task_queue)
    except RPCError as err:
        if err.status == RPCStatusCode.ALREADY_EXISTS:
            raise MaintenanceError(f"{wid} is already running") from None
        raise


async def plan_status(client: Client, workflow_id: str) -> MaintenanceStatus:
    """The ``status`` query of a run (open or closed).

    Raises:
        MaintenanceError: no workflow ``workflow_id``.
    """
    try:
        return await client.get_workflow_handle(workflow_id).query(Maintenance.status)
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            raise MaintenanceError(f"no maintenance run {workflow_id}") from None
        raise


def check_schedulable(plan: MaintenancePlan) -> None:
    """Refuse a plan whose window is fixed in time (it would be missed from the second run on).

    Raises:
        MaintenanceError: ``window.start`` or ``window.end`` is set.
    """
    w = plan.window
    if w is not None and (w.start is not None or w.end is not None):
        raise MaintenanceError(
            "a scheduled plan needs a relative window: use window.duration_seconds (the window "
            "opens when the schedule fires), not window.start/end"
        )


async def create_schedule(
    client: Client,
    plan: MaintenancePlan,
    *,
    cron: str,
    task_queue: str,
    catchup_window_seconds: float = DEFAULT_CATCHUP_SECONDS,
    paused: bool = False,
    note: str = "",
) -> str:
    """Create the schedule ``maintenance-<name>`` running ``plan`` at ``cron`` (UTC).

    Args:
        client: a connected client.
        plan: the plan (relative window only, see :func:`check_schedulable`).
        cron: a cron expression (5 fields, e.g. ``0 3 * * 1``: Mondays 03:00 UTC).
        task_queue: the workers' task queue.
        catchup_window_seconds: how late a missed run may still start, seconds (<= 7 days).
        paused: create it paused.
        note: shown by ``temporal schedule describe``.

    Returns:
        The schedule id.

    Raises:
        MaintenanceError: bad window or catch-up window, or the schedule exists already.
    """
    check_schedulable(plan)
    if not 0 < catchup_window_seconds <= MAX_CATCHUP_SECONDS:
        raise MaintenanceError("catch-up window must be in (0, 7 days] seconds")
    sid = schedule_id(plan.name)
    schedule = Schedule(
        action=ScheduleActionStartWorkflow(
            Maintenance.run,
            plan,
            id=maintenance_workflow_id(plan.name, "scheduled"),
            task_queue=task_queue,
        ),
        spec=ScheduleSpec(cron_expressions=[cron]),
        policy=SchedulePolicy(
            overlap=ScheduleOverlapPolicy.SKIP,
            catchup_window=timedelta(seconds=catchup_window_seconds),
        ),
        state=ScheduleState(
            paused=paused, note=note or f"maintenance plan {plan.name} ({plan.kind}), cron {cron}"
        ),
    )
    try:
        await client.create_schedule(sid, schedule)
    except ScheduleAlreadyRunningError:
        raise MaintenanceError(
            f"schedule {sid} exists; delete it first: fleetops maintenance delete {plan.name}"
        ) from None
    except RPCError as err:
        if err.status == RPCStatusCode.INVALID_ARGUMENT:
            raise MaintenanceError(f"schedule refused: {err.message}") from None
        raise
    return sid


async def list_schedules(client: Client) -> list[ScheduleListDescription]:
    """Every maintenance schedule (id starting with ``maintenance-``)."""
    found = []
    async for s in await client.list_schedules():
        if s.id.startswith(SCHEDULE_PREFIX):
            found.append(s)
    return sorted(found, key=lambda s: s.id)


async def describe_schedule(client: Client, name: str) -> ScheduleDescription:
    """The schedule of plan ``name``. Raises MaintenanceError when there is none."""
    try:
        return await client.get_schedule_handle(schedule_id(name)).describe()
    except RPCError as err:
        raise _missing(name, err) from None


async def pause_schedule(
    client: Client, name: str, *, unpause: bool = False, note: str = ""
) -> None:
    """Pause (or unpause) the schedule of plan ``name``."""
    h = client.get_schedule_handle(schedule_id(name))
    try:
        if unpause:
            await h.unpause(note=note or None)
        else:
            await h.pause(note=note or None)
    except RPCError as err:
        raise _missing(name, err) from None


async def trigger_schedule(client: Client, name: str) -> None:
    """Run the schedule of plan ``name`` now (skipped if a run is still open: policy SKIP)."""
    try:
        await client.get_schedule_handle(schedule_id(name)).trigger()
    except RPCError as err:
        raise _missing(name, err) from None


async def delete_schedule(client: Client, name: str) -> None:
    """Delete the schedule of plan ``name`` (runs already started go on)."""
    try:
        await client.get_schedule_handle(schedule_id(name)).delete()
    except RPCError as err:
        raise _missing(name, err) from None


def _missing(name: str, err: RPCError) -> Exception:
    if err.status == RPCStatusCode.NOT_FOUND:
        return MaintenanceError(f"no schedule {schedule_id(name)} (fleetops maintenance list)")
    return err
