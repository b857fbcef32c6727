"""``fleetops incident list | show | ack | resolve | review``.

Built on :mod:`starters.incidents`; exit codes as in :mod:`starters.cli_common` (1: no such
incident, refused, closed; 2: bad input).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich.console import Group, RenderableType
from rich.markdown import Markdown
from rich.markup import escape
from rich.table import Table
from temporalio.client import Client

from fleetops.incidents import IncidentPhase, Severity
from starters import incidents
from starters.cli_common import current_user, err_console, fail, load_settings, out, run

incident_app = typer.Typer(
    help="Incidents (IncidentResponse incident/<agent>/<key>): list, show, ack, resolve, review.",
    no_args_is_help=True,
)
IncidentId = Annotated[str, typer.Argument(help="incident/<agent_id>/<key> (or <agent_id>/<key>).")]
As = Annotated[str, typer.Option("--as", help="Your identity (default: OS user).")]
LIST_FIELDS = ("title", "agent_id", "severity", "phase", "status", "category", "opened_at")
"""Fields of the status document shown first by ``show`` (others follow in a table)."""
AUDIT_SHOWN = 15
"""Most recent audit entries shown by ``show``."""


def register(app: typer.Typer) -> None:
    """Add ``fleetops incident ...`` to the root app."""
    app.add_typer(incident_app, name="incident")


def _who(as_: str) -> str:
    who = (as_ or current_user()).strip()
    if not who:
        fail("who are you? give --as <name> (no OS user name here)", 2)
    return who


def _wid(name: str) -> str:
    try:
        return incidents.incident_id(name)
    except ValueError as err:
        fail(str(err), 2)


@incident_app.command("list")
def list_(
    agent: Annotated[str | None, typer.Option(help="Only this agent's incidents.")] = None,
    phase: Annotated[IncidentPhase | None, typer.Option(help="Only in this phase.")] = None,
    severity: Annotated[Severity | None, typer.Option(help="Only of this severity.")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Closed incidents too.")] = False,
    limit: Annotated[int, typer.Option(min=1, max=incidents.MAX_LISTED)] = 100,
) -> None:
    """List open incidents (--all: closed ones too), newest first."""
    try:
        query = incidents.list_query(
            agent_id=agent, phase=phase, severity=severity, include_closed=all_
        )
    except ValueError as err:
        fail(str(err), 2)
    rows = run(lambda c: incidents.list_incidents(c, query, limit))
    if not rows:
        out.print("no incidents" + ("" if all_ else " open (--all shows closed ones)"))
        return
    table = Table("incident", "agent", "severity", "phase", "open", "started")
    for r in rows:
        started = r.started_at.strftime("%Y-%m-%d %H:%M:%S") if r.started_at else ""
        table.add_row(
            escape(r.workflow_id),
            escape(r.agent_id or ""),
            r.severity or "",
            r.phase or "",
            "yes" if r.running else "closed",
            started,
        )
    out.print(table)


def status_view(st: dict[str, Any]) -> RenderableType:
    """An incident's ``status`` document: headline fields, the rest, the latest audit entries."""
    head = Table.grid(padding=(0, 2))
    for key in LIST_FIELDS:
        if key in st:
            head.add_row(f"[bold]{key}[/bold]", escape(str(st[key])))
    rest = Table("field", "value", show_lines=False)
    audit: list[Any] = []
    for key, value in st.items():
        if key in LIST_FIELDS:
            continue
        if key in ("audit", "timeline") and isinstance(value, list):
            audit = value
            continue
        text = str(value)
        rest.add_row(escape(key), escape(text if len(text) <= 300 else text[:299] + "…"))
    parts: list[RenderableType] = [head, rest]
    if audit:
        log = Table("audit (latest)", show_header=True)
        for entry in audit[-AUDIT_SHOWN:]:
            log.add_row(escape(str(entry)[:300]))
        parts.append(log)
    return Group(*parts)


@incident_app.command()
def show(
    incident: IncidentId,
    as_json: Annotated[bool, typer.Option("--json", help="Print the status as JSON.")] = False,
) -> None:
    """Show an incident: phase, severity, evidence, proposals, actions, audit."""
    wid = _wid(incident)
    st = run(lambda c: incidents.incident_status(c, wid))
    if as_json:
        import json

        out.print_json(json.dumps(st, default=str))
        return
    out.print(f"[bold]{escape(wid)}[/bold]")
    out.print(status_view(st))


DONE = {"ack": "acknowledged", "resolve": "resolved"}
"""What the CLI prints for each answer it sends."""


def _answer(incident: str, action: Literal["ack", "resolve"], as_: str, note: str) -> str:
    """Send ``action`` (with ``note``, as ``as_``) to the incident's update and print what it
    answered; return the workflow id. Exits non-zero (via ``run``) when it is refused."""
    wid = _wid(incident)
    who = _who(as_)
    result = run(lambda c: incidents.update(c, wid, action, who, note))
    out.print(f"{DONE[action]} {escape(wid)}" + (f": {escape(str(result))}" if result else ""))
    return wid


@incident_app.command()
def ack(
    incident: IncidentId,
    comment: Annotated[str, typer.Option(help="Kept in the audit trail.")] = "",
    as_: As = "",
) -> None:
    """Acknowledge an incident (stops escalation of its page)."""
    _answer(incident, "ack", as_, comment)


@incident_app.command()
def resolve(
    incident: IncidentId,
    reason: Annotated[str, typer.Option(help="Why it is resolved; kept in the review.")] = "",
    as_: As = "",
) -> None:
    """Resolve an incident by hand (it then writes its review and closes)."""
    wid = _answer(incident, "resolve", as_, reason)
    out.print(f"its review, once written: fleetops incident review {escape(wid)}")


@incident_app.command()
def review(
    incident: Annotated[
        str | None, typer.Argument(help="incident/<agent_id>/<key>; omit with --file.")
    ] = None,
    file: Annotated[
        Path | None, typer.Option("--file", "-f", help="Print this review file instead.")
    ] = None,
    raw: Annotated[bool, typer.Option("--raw", help="Print the Markdown source.")] = False,
) -> None:
    """Print the post-incident review (the closed incident's result, or a review file)."""
    if file is not None:
        try:
            text = file.read_text()
        except OSError as err:
            fail(f"cannot read {file}: {err}", 2)
    elif incident is None:
        fail("give an incident id or --file", 2)
    else:
        wid = _wid(incident)
        settings = load_settings()

        async def go(client: Client) -> str | None:
            try:
                return await incidents.review(client, wid)
            except incidents.IncidentNotFoundError:
                files = incidents.review_files(settings.state_dir, wid)
                if not files:  # no history left (retention) and no file either
                    raise
                err_console.print(f"{wid} has no history left; from {files[0]}", markup=False)
                return files[0].read_text()

        found = run(go, settings)
        if found is None:
            fail(f"{wid} is still open: its review is written when it closes", 1)
        text = found
    if raw:
        out.print(text, markup=False, highlight=False, soft_wrap=True)
    else:
        out.print(Markdown(text))
