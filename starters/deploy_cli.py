"""``fleetops deploy | deploy-status | abort`` (approvals: :mod:`starters.approval_cli`).

Built on :mod:`starters.deployments`; exit codes as in :mod:`starters.cli_common`
(``deploy --wait``: 0 promoted, 1 any other end or time ran out).
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from temporalio.client import Client

from fleetops.converter import describe_validation_error
from fleetops.deploy import DeploymentRequest, DeploymentStatus
from starters import cli_live, deployments
from starters.cli_common import current_user, fail, out, read_mapping, run
from starters.cli_views import deployment_view

WorkflowId = Annotated[str, typer.Argument(help="Workflow id, e.g. deploy/support-bot/v2.")]
As = Annotated[str, typer.Option("--as", help="Approver identity (default: OS user).")]


DEPLOY_HELP = (
    "Start a blue-green deployment of AGENT_ID (BlueGreenDeployment deploy/<agent>/<version>)."
    "\n\nWith --wait, print each phase as it starts and exit 0 when the deployment is promoted, "
    "1 when it is rolled back, aborted, rejected or cancelled, closes any other way, or is "
    "still running after --timeout seconds (it goes on), so a CI pipeline can gate on it. "
    "--file takes a DeploymentRequest as YAML or JSON."
)
STATUS_HELP = (
    "Show a deployment's phase, colours, analyses (with measurements) and approvals."
    "\n\nWith --watch, redraw it live (about once a second) as phases, measurements and "
    "approvals change, until the deployment closes or Ctrl-C (exit 130)."
)


def register(app: typer.Typer) -> None:
    """Add the deployment and approval commands to the root ``fleetops`` app."""
    app.command("deploy", help=DEPLOY_HELP)(deploy)
    app.command("deploy-status", help=STATUS_HELP)(deploy_status)
    app.command("abort")(abort)


def _request(
    agent_id: str, version: str, file: Path | None, flags: dict[str, Any]
) -> DeploymentRequest:
    data: dict[str, Any] = {}
    if file is not None:
        data = read_mapping(file, "DeploymentRequest")
    data.update({k: v for k, v in flags.items() if v is not None})
    data.update(agent_id=agent_id, version=version)
    try:
        return DeploymentRequest.model_validate(data)
    except ValidationError as err:
        fail(describe_validation_error(err), 2)


def deploy(
    agent_id: Annotated[str, typer.Argument(help="The agent to deploy.")],
    version: Annotated[str, typer.Option(help="New version label.")],
    command: Annotated[str | None, typer.Option(help="New command (shell-quoted).")] = None,
    image: Annotated[str | None, typer.Option(help="New image (Kubernetes).")] = None,
    replicas: Annotated[int | None, typer.Option(help="Replicas of the new version.")] = None,
    preview_replicas: Annotated[int | None, typer.Option(help="Replicas before promotion.")] = None,
    auto: Annotated[bool, typer.Option("--auto", help="Promote without approval.")] = False,
    auto_after: Annotated[
        float | None, typer.Option(help="With --auto: seconds before promotion.")
    ] = None,
    approver: Annotated[list[str] | None, typer.Option(help="Allowed approver (repeat).")] = None,
    role: Annotated[list[str] | None, typer.Option(help="Allowed approver role (repeat).")] = None,
    file: Annotated[
        Path | None,
        typer.Option("--file", "-f", help="DeploymentRequest as YAML or JSON; flags override."),
    ] = None,
    wait: Annotated[
        bool, typer.Option(help="Follow it to the end: exit 0 if promoted, 1 otherwise.")
    ] = False,
    timeout: Annotated[
        float | None, typer.Option(help="With --wait: exit 1 if still running after this many s.")
    ] = None,
) -> None:
    """Start a deployment; with ``wait``, exit with its outcome (help: :data:`DEPLOY_HELP`)."""
    promotion: dict[str, Any] | None = None
    if auto or auto_after is not None or approver or role:
        promotion = {"mode": "auto" if auto else "manual"}
        if auto_after is not None:
            promotion["auto_promote_after_seconds"] = auto_after
        if approver:
            promotion["approvers"] = approver
        if role:
            promotion["roles"] = role
    flags = {
        "command": shlex.split(command) if command else None,
        "image": image,
        "replicas": replicas,
        "preview_replicas": preview_replicas,
        "promotion": promotion,
    }
    req = _request(agent_id, version, file, flags)

    async def go(client: Client) -> int:
        handle = await deployments.deploy(client, req)
        wid = handle.id
        out.print(f"started {wid}")
        if req.promotion.mode == "manual":
            out.print(f"promote it: fleetops approve {wid} --as <you>")
        if not wait:
            out.print(f"follow it: fleetops deploy-status {wid} --watch")
            return 0
        return await cli_live.wait_deployment(client, handle, timeout)

    code = run(go)
    if code:
        raise typer.Exit(code)


def deploy_status(
    workflow_id: WorkflowId,
    as_json: Annotated[bool, typer.Option("--json", help="Print the status as JSON.")] = False,
    watch: Annotated[
        bool, typer.Option("--watch", "-w", help="Redraw every second until it closes.")
    ] = False,
) -> None:
    """Show a deployment, once or live (help: :data:`STATUS_HELP`)."""
    if watch:
        run(lambda c: cli_live.watch(cli_live.deployment_fetch(c, workflow_id)))
        return

    async def go(client: Client) -> DeploymentStatus:
        return await deployments.deployment_status(client, workflow_id)

    st = run(go)
    if as_json:
        out.print_json(st.model_dump_json())
        return
    out.print(deployment_view(st))


def abort(
    workflow_id: WorkflowId,
    reason: Annotated[str, typer.Option(help="Why; kept in the report.")] = "",
    as_: As = "",
) -> None:
    """Abort a deployment: traffic stays on (or returns to) the stable colour."""

    async def go(client: Client) -> None:
        await deployments.abort(
            client, workflow_id, reason=reason, requested_by=as_ or current_user()
        )

    run(go)
    out.print(f"abort sent to {workflow_id}; follow it: fleetops deploy-status {workflow_id}")
