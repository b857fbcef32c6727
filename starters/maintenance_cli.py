"""``fleetops maintenance run|status|schedule|list|pause|trigger|delete|confirm``.

Built on :mod:`starters.maintenance`; exit codes as in :mod:`starters.cli_common`
(``run --wait``: 0 when the outcome is ``completed``, 1 for any other outcome). Approve a run
with ``fleetops approve <workflow id> --as <you>`` like any FleetOps approval.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Group
from rich.table import Table
from temporalio.client import Client

from fleetops.converter import describe_validation_error
from fleetops.maintenance import MaintenancePlan, MaintenanceStatus, StepConfirmation
from starters import maintenance as m
from starters.cli_common import current_user, fail, load_settings, out, read_mapping, run

app = typer.Typer(help="Maintenance plans: run one now, follow it, schedule recurring ones.")
PlanFile = Annotated[Path, typer.Argument(help="Plan file (YAML or JSON MaintenancePlan).")]
Name = Annotated[str, typer.Argument(help="Plan name (the schedule is maintenance-<name>).")]
RunId = Annotated[str, typer.Argument(help="Run id, e.g. maintenance/rotate/20261201T030000Z.")]


def register(root: typer.Typer) -> None:
    """Add the ``maintenance`` group to the root ``fleetops`` app."""
    root.add_typer(app, name="maintenance")


def _plan(path: Path) -> MaintenancePlan:
    data = read_mapping(path, "MaintenancePlan")
    try:
        return MaintenancePlan.model_validate(data)
    except ValidationError as err:
        fail(f"{path}: {describe_validation_error(err)}", 2)


@app.command("run")
def run_cmd(
    plan_file: PlanFile,
    run_id: Annotated[
        str | None, typer.Option("--run", help="Run suffix (default: UTC now).")
    ] = None,
    wait: Annotated[bool, typer.Option(help="Wait for the end: exit 0 if completed.")] = False,
) -> None:
    """Start the plan now as Maintenance maintenance/<name>/<run> (it waits for its window)."""
    plan = _plan(plan_file)
    settings = load_settings()

    async def go(client: Client) -> int:
        h = await m.run_plan(client, plan, task_queue=settings.temporal.task_queue, run=run_id)
        out.print(f"started {h.id}")
        out.print(f"follow it: fleetops maintenance status {h.id}")
        if plan.approval.required != "never":
            out.print(f"if it asks for approval: fleetops approve {h.id} --as <you>")
        if not wait:
            return 0
        st = await h.result()
        out.print(status_view(st))
        return 0 if st.outcome == "completed" else 1

    code = run(go, settings)
    if code:
        raise typer.Exit(code)


@app.command("status")
def status_cmd(
    run_id: RunId,
    as_json: Annotated[bool, typer.Option("--json", help="Print the status as JSON.")] = False,
) -> None:
    """Show a run: phase, outcome, each target and the audit trail."""
    st = run(lambda c: m.plan_status(c, run_id))
    if as_json:
        out.print_json(st.model_dump_json())
    else:
        out.print(status_view(st))


@app.command("schedule")
def schedule_cmd(
    plan_file: PlanFile,
    cron: Annotated[str, typer.Option(help="Cron expression, UTC (e.g. '0 3 * * 1').")],
    catchup_window: Annotated[
        float, typer.Option(help="Seconds a missed run may still start (<= 7 days).")
    ] = m.DEFAULT_CATCHUP_SECONDS,
    paused: Annotated[bool, typer.Option(help="Create it paused.")] = False,
) -> None:
    """Create the Temporal Schedule maintenance-<name> (overlap policy SKIP)."""
    plan = _plan(plan_file)
    settings = load_settings()

    async def go(client: Client) -> str:
        return await m.create_schedule(
            client,
            plan,
            cron=cron,
            task_queue=settings.temporal.task_queue,
            catchup_window_seconds=catchup_window,
            paused=paused,
        )

    sid = run(go, settings)
    out.print(f"schedule {sid} created ({cron}, overlap SKIP, catch-up {catchup_window:g} s)")
    out.print(f"run it now: fleetops maintenance trigger {plan.name}")


@app.command("list")
def list_cmd() -> None:
    """List maintenance schedules with their next and most recent runs."""

    async def go(client: Client) -> Table:
        t = Table("schedule", "state", "note", "next run (UTC)", "recent runs")
        for s in await m.list_schedules(client):
            if s.schedule is None or s.info is None:  # listed before it was fully created
                t.add_row(s.id, "?", "-", "-", "-")
                continue
            spec, info = s.schedule.spec, s.info
            nxt = info.next_action_times[:1]
            recent = [getattr(a.action, "workflow_id", "") for a in info.recent_actions[-3:]]
            t.add_row(
                s.id,
                "paused" if s.schedule.state.paused else "active",
                s.schedule.state.note or ", ".join(spec.cron_expressions) or "-",
                nxt[0].isoformat(timespec="seconds") if nxt else "-",
                ", ".join(r for r in recent if r) or "-",
            )
        return t

    out.print(run(go))


@app.command("pause")
def pause_cmd(
    name: Name,
    unpause: Annotated[bool, typer.Option("--unpause", help="Resume the schedule.")] = False,
    note: Annotated[str, typer.Option(help="Why (shown by describe).")] = "",
) -> None:
    """Pause (or --unpause) the schedule of a plan."""
    run(lambda c: m.pause_schedule(c, name, unpause=unpause, note=note))
    out.print(f"{m.schedule_id(name)} {'unpaused' if unpause else 'paused'}")


@app.command("trigger")
def trigger_cmd(name: Name) -> None:
    """Run the schedule of a plan now (skipped while its previous run is still open)."""
    run(lambda c: m.trigger_schedule(c, name))
    out.print(
        f"{m.schedule_id(name)} triggered; runs: temporal workflow list --query "
        f"\"WorkflowType='Maintenance' AND WorkflowId STARTS_WITH 'maintenance/{name}/'\""
    )


@app.command("delete")
def delete_cmd(name: Name) -> None:
    """Delete the schedule of a plan (runs already started go on)."""
    run(lambda c: m.delete_schedule(c, name))
    out.print(f"{m.schedule_id(name)} deleted")


@app.command("confirm")
def confirm_cmd(
    run_id: RunId,
    agent_id: Annotated[str, typer.Argument(help="The target.")],
    step: Annotated[int, typer.Argument(help="0-based step of a custom plan.")],
    failed: Annotated[bool, typer.Option("--failed", help="The step failed: roll back.")] = False,
    note: Annotated[str, typer.Option(help="What was done.")] = "",
    as_: Annotated[str, typer.Option("--as", help="Who (default: OS user).")] = "",
) -> None:
    """Confirm a manual step of a custom plan (signal confirm_step)."""
    c = StepConfirmation(
        agent_id=agent_id, step=step, done=not failed, by=as_ or current_user() or "?", note=note
    )
    run(lambda client: client.get_workflow_handle(run_id).signal("confirm_step", c))
    out.print(f"step {step} of {agent_id} {'failed' if failed else 'confirmed'} on {run_id}")


def status_view(st: MaintenanceStatus) -> Group:
    """Rich view of a run: phase and outcome, one row per target, then the audit tail."""
    title = f"{st.maintenance_id} ({st.kind}, risk {st.risk or '?'}): {st.phase}"
    targets = Table(
        "target",
        "state",
        "batch",
        "detail",
        title=title + (f", {st.outcome}" if st.outcome else ""),
    )
    for r in st.targets:
        facts = ", ".join(f"{k}={v}" for k, v in r.facts.items())
        detail = "; ".join(x for x in (r.detail, facts) if x)
        targets.add_row(r.agent_id, r.state, str(r.batch or "-"), detail[:200])
    audit = Table("at (UTC)", "step", "target", "detail", title="audit (most recent)")
    for e in st.audit[-10:]:
        audit.add_row(
            f"{e.at:%H:%M:%S}",
            e.step,
            e.target or "",
            ("FAILED " if not e.ok else "") + e.detail[:150],
        )
    parts: list[object] = [targets]
    if st.pending_approval is not None:
        parts.append(f"approval pending: fleetops approve {st.maintenance_id} --as <you>")
    if st.message:
        parts.append(st.message)
    parts.append(audit)
    return Group(*parts)  # type: ignore[arg-type]
