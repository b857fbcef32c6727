"""``fleetops agent ...``: start and steer agents from a shell, built on :mod:`starters.agents`.

Exit codes: 0 done, 1 Temporal or the agent said no (not running, action not allowed, server
unreachable; ``start --wait``: ERROR, or not serving in time), 2 bad input (spec, settings)
caught before anything is sent, 130 interrupted.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.markup import escape
from rich.table import Table
from temporalio.client import Client

from fleetops.constants import agent_workflow_id
from fleetops.converter import describe_validation_error
from fleetops.models import AgentReport, AgentSpec, AgentState, ConfigureAgentRequest
from starters import agent_ops, agents, cli_live
from starters.cli_common import current_user, fail, load_settings, out, read_mapping, run
from starters.cli_views import agent_view

agent_app = typer.Typer(
    help="Start and steer agents (AgentLifecycle workflows).", no_args_is_help=True
)


def _valid_agent_id(agent_id: str) -> str:
    try:
        agent_workflow_id(agent_id)
    except ValueError as err:
        raise typer.BadParameter(str(err)) from None
    return agent_id


AgentId = Annotated[
    str, typer.Argument(help="The agent's id (a DNS label).", callback=_valid_agent_id)
]
Reason = Annotated[str, typer.Option(help="Why; kept in the agent's transition record.")]
RequestedBy = Annotated[
    str, typer.Option("--as", help="Who asks (default: your OS user name).", show_default=False)
]


def _build_spec(
    agent_id: str,
    *,
    spec_file: Path | None = None,
    overrides: dict[str, Any] | None = None,
    env: list[str] | None = None,
    health_interval: float | None = None,
    secrets: list[str] | None = None,
) -> AgentSpec:
    """Merge a YAML or JSON spec file with command-line values (which win); exit 2 if invalid."""
    data: dict[str, Any] = {}
    if spec_file is not None:
        data = read_mapping(spec_file, "AgentSpec")
    data["agent_id"] = agent_id
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    if env:
        pairs = _dict(data.get("env"))
        for item in env:
            key, sep, value = item.partition("=")
            if not sep or not key:
                fail(f"--env {item!r} must be KEY=VALUE", 2)
            pairs[key] = value
        data["env"] = pairs
    for item in secrets or []:
        name, sep, ref = item.partition("=")
        path, colon, key = ref.rpartition(":")
        if not (sep and colon and name and path and key):
            fail(
                f"--secret {item!r} must be ENV=PATH:KEY, e.g. OPENAI_API_KEY=agents/demo:openai", 2
            )
        refs = [
            r for r in data.get("secrets") or [] if isinstance(r, dict) and r.get("env") != name
        ]
        data["secrets"] = [*refs, {"env": name, "path": path, "key": key}]
    if health_interval is not None:
        data["health"] = {**_dict(data.get("health")), "interval_seconds": health_interval}
    try:
        return AgentSpec.model_validate(data)
    except ValidationError as err:
        fail(describe_validation_error(err), 2)


def _dict(value: Any) -> dict[str, Any]:
    # A non-object in the spec file is replaced by the flags, which win anyway.
    return dict(value) if isinstance(value, dict) else {}


def _split(command: str) -> list[str]:
    try:
        return shlex.split(command)
    except ValueError as err:  # e.g. an unclosed quote
        fail(f"--command {command!r}: {err}", 2)


START_HELP = (
    "Start an agent: its replicas come up and are kept healthy until `stop`.\n\n"
    "With --wait, follow it and exit 0 once it is READY (or PROCESSING), 1 if it goes to "
    "ERROR, its workflow closes, or --timeout seconds pass first (the agent goes on), so a CI "
    "pipeline can gate on it. --file takes AgentSpec fields as YAML or JSON."
)
STATUS_HELP = (
    "Show an agent: state, replicas with health, counters, recent transitions.\n\n"
    "With --watch, redraw it live (about once a second) as state and replica health change, "
    "until the agent's workflow completes or Ctrl-C (exit 130)."
)


@agent_app.command(help=START_HELP)
def start(
    agent_id: AgentId,
    replicas: Annotated[int | None, typer.Option(help="Desired replicas (default 1).")] = None,
    min_replicas: Annotated[int | None, typer.Option(help="Lowest count `scale` accepts.")] = None,
    max_replicas: Annotated[int | None, typer.Option(help="Highest count `scale` accepts.")] = None,
    version: Annotated[str | None, typer.Option(help="Version label (default v1).")] = None,
    command: Annotated[
        str | None, typer.Option(help="argv of one replica, shell-quoted (local platform).")
    ] = None,
    image: Annotated[str | None, typer.Option(help="Container image (Kubernetes).")] = None,
    env: Annotated[
        list[str] | None, typer.Option(help="KEY=VALUE for each replica; repeatable.")
    ] = None,
    health_interval: Annotated[
        float | None, typer.Option(help="Seconds between health rounds.")
    ] = None,
    secret: Annotated[
        list[str] | None,
        typer.Option(help="ENV=PATH:KEY from the secret store (repeatable); not the value."),
    ] = None,
    spec: Annotated[
        Path | None,
        typer.Option(
            "--spec", "--file", "-f", help="YAML or JSON file of AgentSpec fields; flags win."
        ),
    ] = None,
    wait: Annotated[
        bool, typer.Option(help="Follow the agent until READY (exit 0) or ERROR (exit 1).")
    ] = False,
    timeout: Annotated[
        float | None, typer.Option(help="With --wait: exit 1 if not READY after this many s.")
    ] = None,
) -> None:
    """Start an agent; with ``wait``, exit with whether it came up (help: :data:`START_HELP`)."""
    overrides = {
        "replicas": replicas,
        "min_replicas": min_replicas,
        "max_replicas": max_replicas,
        "version": version,
        "command": _split(command) if command is not None else None,
        "image": image,
    }
    agent_spec = _build_spec(
        agent_id,
        spec_file=spec,
        overrides=overrides,
        env=env,
        health_interval=health_interval,
        secrets=secret,
    )
    settings = load_settings()

    async def go(client: Client) -> int:
        h = await agents.start_agent(client, agent_spec, task_queue=settings.temporal.task_queue)
        out.print(f"started agent [bold]{agent_id}[/bold]")
        out.print(f"  workflow id: {escape(h.id)}\n  run id:      {h.result_run_id}")
        if not wait:
            out.print(f"follow it with: fleetops agent status {agent_id}", highlight=False)
            return 0
        return await cli_live.wait_agent(client, agent_id, timeout)

    code = run(go, settings)
    if code:
        raise typer.Exit(code)


def _done(agent_id: str, state: AgentState, replicas: int, message: str) -> None:
    out.print(
        f"agent {agent_id}: {state}, {replicas} desired replicas ({escape(message)})",
        highlight=False,
    )


@agent_app.command()
def pause(agent_id: AgentId, reason: Reason = "", requested_by: RequestedBy = "") -> None:
    """Stop all replicas, keeping spec and state (PAUSED)."""
    who = requested_by or current_user()
    r = run(lambda c: agents.pause(c, agent_id, reason=reason, requested_by=who))
    _done(agent_id, r.state, r.replicas, r.message)


@agent_app.command()
def resume(agent_id: AgentId, reason: Reason = "", requested_by: RequestedBy = "") -> None:
    """Provision a PAUSED or ERROR agent again (INITIALIZING, then READY)."""
    who = requested_by or current_user()
    r = run(lambda c: agents.resume(c, agent_id, reason=reason, requested_by=who))
    _done(agent_id, r.state, r.replicas, r.message)


@agent_app.command()
def scale(
    agent_id: AgentId,
    replicas: Annotated[int, typer.Argument(min=1, help="New desired replica count.")],
    reason: Reason = "",
    requested_by: RequestedBy = "",
) -> None:
    """Set the desired replica count, between the agent's min_replicas and max_replicas."""
    who = requested_by or current_user()
    r = run(lambda c: agents.scale(c, agent_id, replicas, reason=reason, requested_by=who))
    _done(agent_id, r.state, r.replicas, r.message)


@agent_app.command()
def stop(
    agent_id: AgentId,
    reason: Reason = "",
    requested_by: RequestedBy = "",
    wait: Annotated[bool, typer.Option(help="Wait for the workflow to complete.")] = True,
) -> None:
    """Shut an agent down: stop every replica and complete its workflow."""
    who = requested_by or current_user()
    r = run(lambda c: agents.shutdown(c, agent_id, reason=reason, requested_by=who, wait=wait))
    if isinstance(r, AgentReport):
        out.print(
            f"agent {agent_id}: {r.final_state} after {r.ended_at - r.started_at} "
            f"({r.counters.transitions} transitions, {r.counters.replica_restarts} restarts)",
            highlight=False,
        )
        return
    _done(agent_id, r.state, r.replicas, r.message)
    if r.state == AgentState.ERROR:
        fail(f"agent {agent_id} could not be stopped; see `fleetops agent status {agent_id}`", 1)


@agent_app.command()
def restart(agent_id: AgentId, reason: Reason = "", requested_by: RequestedBy = "") -> None:
    """Rolling restart of the active replicas (each replaced once healthy; no failed request)."""
    who = requested_by or current_user()
    r = run(lambda c: agent_ops.restart_agent(c, agent_id, reason=reason, requested_by=who))
    out.print(f"agent {agent_id}: {r.restarted} {r.color} replicas restarted", highlight=False)


@agent_app.command()
def configure(
    agent_id: AgentId,
    file: Annotated[
        Path | None, typer.Option("--file", "-f", help="New config: a YAML or JSON object.")
    ] = None,
    restore: Annotated[
        int | None, typer.Option(min=1, help="Restore this kept config version instead.")
    ] = None,
    reason: Reason = "",
    requested_by: RequestedBy = "",
) -> None:
    """Apply a new config version (validated against the agent's config_schema) or restore one."""
    if (file is None) == (restore is None):
        fail("give exactly one of --file or --restore", 2)
    config = read_mapping(file, "config") if file is not None else None
    who = requested_by or current_user()
    try:  # bounds and types checked before anything is sent
        ConfigureAgentRequest(config=config, restore_version=restore, reason=reason)
    except ValidationError as err:
        fail(f"invalid config: {describe_validation_error(err)}", 2)
    r = run(
        lambda c: agent_ops.configure_agent(
            c, agent_id, config=config, restore_version=restore, reason=reason, requested_by=who
        )
    )
    out.print(
        f"agent {agent_id}: config v{r.config_version} applied (was v{r.previous_version})",
        highlight=False,
    )


@agent_app.command(help=STATUS_HELP)
def status(
    agent_id: AgentId,
    as_json: Annotated[bool, typer.Option("--json", help="Print the status as JSON.")] = False,
    watch: Annotated[
        bool, typer.Option("--watch", "-w", help="Redraw every second until the agent stops.")
    ] = False,
) -> None:
    """Show an agent, once or live (help: :data:`STATUS_HELP`)."""
    if watch:
        run(lambda c: cli_live.watch(cli_live.agent_fetch(c, agent_id)))
        return
    st = run(lambda c: agents.status(c, agent_id))
    if as_json:
        typer.echo(st.model_dump_json(indent=2))
        return
    out.print(agent_view(st))


@agent_app.command("list")
def list_(
    state: Annotated[
        AgentState | None, typer.Option(case_sensitive=False, help="Only agents in this state.")
    ] = None,
    all_: Annotated[bool, typer.Option("--all", help="Include completed agents too.")] = False,
) -> None:
    """List agents (from Temporal visibility, which may lag a second behind)."""
    rows = run(lambda c: agents.list_agents(c, state=state, include_closed=all_))
    table = Table("agent", "state", "status", "started", "workflow id", "run id")
    for a in rows:
        table.add_row(
            a.agent_id,
            str(a.state or "-"),
            a.status,
            a.start_time.isoformat(timespec="seconds"),
            escape(a.workflow_id),
            a.run_id,
        )
    out.print(table)
    if not rows:
        out.print("no agents" + (f" in state {state}" if state else ""), highlight=False)
