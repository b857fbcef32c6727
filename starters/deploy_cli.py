"""``fleetops deploy | deploy-status | abort`` (approvals: :mod:`starters.approval_cli`).

Built on :mod:`starters.deployments`; exit codes as in :mod:`starters.cli_common`.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.table import Table
from temporalio.client import Client

from fleetops.converter import describe_validation_error
from fleetops.deploy import DeploymentRequest, DeploymentStatus
from starters import deployments
from starters.cli_common import current_user, fail, out, run

WorkflowId = Annotated[str, typer.Argument(help="Workflow id, e.g. deploy/support-bot/v2.")]
As = Annotated[str, typer.Option("--as", help="Approver identity (default: OS user).")]


def register(app: typer.Typer) -> None:
    """Add the deployment and approval commands to the root ``fleetops`` app."""
    app.command("deploy")(deploy)
    app.command("deploy-status")(deploy_status)
    app.command("abort")(abort)


def _request(
    agent_id: str, version: str, file: Path | None, flags: dict[str, Any]
) -> DeploymentRequest:
    data: dict[str, Any] = {}
    if file is not None:
        try:
            data = json.loads(file.read_text())
        except (OSError, ValueError) as err:
            fail(f"cannot read {file}: {err}", 2)
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
        Path | None, typer.Option("--file", "-f", help="DeploymentRequest JSON; flags override.")
    ] = None,
) -> None:
    """Start a blue-green deployment of AGENT_ID (BlueGreenDeployment deploy/<agent>/<version>)."""
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

    async def go(client: Client) -> str:
        return (await deployments.deploy(client, req)).id

    wid = run(go)
    out.print(f"started {wid}")
    out.print(f"follow it: fleetops deploy-status {wid}")
    if req.promotion.mode == "manual":
        out.print(f"promote it: fleetops approve {wid} --as <you>")


def deploy_status(
    workflow_id: WorkflowId,
    as_json: Annotated[bool, typer.Option("--json", help="Print the status as JSON.")] = False,
) -> None:
    """Show a deployment's phase, colours, analyses and approvals."""

    async def go(client: Client) -> DeploymentStatus:
        return await deployments.deployment_status(client, workflow_id)

    st = run(go)
    if as_json:
        out.print_json(st.model_dump_json())
        return
    out.print(f"{st.deployment_id}: {st.phase} (outcome: {st.outcome or 'running'})")
    out.print(
        f"stable {st.stable_version} on {st.stable_color}, new {st.version} on {st.new_color}"
    )
    if st.service:
        out.print(f"active {st.service.active_color} at {st.service.active_url}")
    table = Table("phase", "started", "ended", "detail")
    for p in st.phases:
        ended = p.ended_at.isoformat(timespec="seconds") if p.ended_at else ""
        table.add_row(p.phase, p.started_at.isoformat(timespec="seconds"), ended, p.detail)
    out.print(table)
    for name, result in st.analyses.items():
        out.print(f"{name} analysis: {result.phase} {result.message}")
    if st.pending_approval:
        out.print(f"waiting for approval: {st.pending_approval.question}")
    if st.message:
        out.print(st.message)


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
