"""``fleetops approve | reject | approvals`` and ``fleetops keys generate``.

Built on :mod:`starters.approvals`; exit codes as in :mod:`starters.cli_common` (0 done, 1 the
workflow or Temporal said no, 2 bad input caught before anything is sent).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Annotated

import typer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import ValidationError
from rich.table import Table
from temporalio.client import Client

from fleetops.approvals import ApprovalDecision, DecisionRequest
from fleetops.converter import describe_validation_error
from fleetops.signing import SigningError, generate_key_pair, load_private_key, public_key_of
from starters import approvals as api
from starters.cli_common import current_user, fail, out, run

WorkflowId = Annotated[str, typer.Argument(help="Workflow id, e.g. deploy/support-bot/v2.")]
As = Annotated[str | None, typer.Option("--as", help="Approver identity (default: the OS user).")]
Comment = Annotated[str, typer.Option(help="Kept in the decision record.")]
Key = Annotated[
    Path | None,
    typer.Option(
        "--key", help="Ed25519 private key (PEM, from `fleetops keys generate`) to sign with."
    ),
]
PrintInput = Annotated[
    bool,
    typer.Option(
        "--print-input",
        help="Print the (signed) decide payload as JSON for `temporal workflow update` "
        "instead of sending it.",
    ),
]

keys_app = typer.Typer(help="Approver signing keys (Ed25519).", no_args_is_help=True)
_KEY_NAME = re.compile(r"^[A-Za-z0-9_@-][A-Za-z0-9._@-]{0,99}$")


def register(app: typer.Typer) -> None:
    """Add ``approve``, ``reject``, ``approvals`` and the ``keys`` group to ``fleetops``."""
    app.command("approve")(approve)
    app.command("reject")(reject)
    app.command("approvals")(approvals)
    app.add_typer(keys_app, name="keys")


def approve(
    workflow_id: WorkflowId,
    as_: As = None,
    comment: Comment = "",
    key: Key = None,
    print_input: PrintInput = False,
) -> None:
    """Approve what WORKFLOW_ID waits for (signed with --key)."""
    _decide(workflow_id, as_, comment, key, print_input, approved=True)


def reject(
    workflow_id: WorkflowId,
    as_: As = None,
    comment: Comment = "",
    key: Key = None,
    print_input: PrintInput = False,
) -> None:
    """Reject what WORKFLOW_ID waits for (a deployment then rolls back)."""
    _decide(workflow_id, as_, comment, key, print_input, approved=False)


def _decide(
    workflow_id: str,
    approver: str | None,
    comment: str,
    key_path: Path | None,
    print_input: bool,
    *,
    approved: bool,
) -> None:
    name = current_user() if approver is None else approver
    try:
        d = DecisionRequest(approver=name, comment=comment, approved=approved)
    except ValidationError as err:
        fail(f"say who decides with --as <user> ({describe_validation_error(err)})", 2)
    key = _read_key(key_path) if key_path is not None else None
    if print_input:
        if key is None:
            typer.echo(d.model_dump_json(exclude_none=True))
            return

        async def sign(client: Client) -> DecisionRequest:
            assert key is not None
            return await api.signed_decision(client, workflow_id, d, key)

        typer.echo(run(sign).model_dump_json(exclude_none=True))
        return

    async def go(client: Client) -> ApprovalDecision:
        return await api.decide(
            client, workflow_id, approver=d.approver, approved=approved, comment=comment, key=key
        )

    r = run(go)
    roles = ", ".join(r.approver_roles) or "no roles"
    signed = ", signed" if r.signed else ""
    out.print(f"{workflow_id}: {r.outcome} by {r.approver} ({roles}){signed}")


def _read_key(path: Path) -> Ed25519PrivateKey:
    try:
        return load_private_key(path.read_bytes())
    except OSError as err:
        fail(f"cannot read the key {path}: {err.strerror or err}", 2)
    except SigningError as err:
        fail(f"{path} is not a usable signing key: {err}", 2)


def approvals() -> None:
    """The approver's inbox: every workflow waiting for a human, and what it asks."""

    async def go(client: Client) -> list[api.InboxItem]:
        return await api.approvals_inbox(client)

    items = run(go)
    table = Table("workflow", "agent", "request", "question", "approvers", "roles", "deadline")
    for i in items:
        p = i.pending
        table.add_row(
            i.workflow_id,
            i.agent_id or "",
            p.request_id + (" (signed)" if p.signatures_required else ""),
            p.question,
            ", ".join(p.approvers) or "anyone",
            ", ".join(p.roles),
            p.deadline.isoformat(timespec="seconds"),
        )
    out.print(table if items else "nothing is waiting for approval")


@keys_app.command("generate")
def generate(
    name: Annotated[str, typer.Argument(help="Approver name; files NAME.key and NAME.pub.")],
    directory: Annotated[
        Path, typer.Option("--dir", help="Where to write the files.", file_okay=False)
    ] = Path("."),
    force: Annotated[bool, typer.Option(help="Overwrite existing files.")] = False,
) -> None:
    """Write an Ed25519 key pair: NAME.key (private PEM, mode 0600) and NAME.pub (public PEM)."""
    if not _KEY_NAME.match(name):
        fail(f"bad key name {name!r}: use letters, digits, '.', '_', '@', '-' (up to 100)", 2)
    private, public = generate_key_pair()
    key_file, pub_file = directory / f"{name}.key", directory / f"{name}.pub"
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(key_file, flags, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(private)
        os.chmod(key_file, 0o600)  # an overwritten file keeps its old mode otherwise
        pub_file.write_bytes(public)
    except FileExistsError:
        fail(f"{key_file} exists; pass --force to replace it", 2)
    except OSError as err:
        fail(f"cannot write {key_file}: {err.strerror or err}", 2)
    raw = public_key_of(load_private_key(private))
    out.print(f"wrote {key_file} (private: keep it secret) and {pub_file}", highlight=False)
    out.print("add the public key to the worker's settings:", highlight=False)
    out.print(
        f"FLEETOPS_APPROVAL__PUBLIC_KEYS='{json.dumps({name: raw})}'",
        highlight=False,
        markup=False,
        soft_wrap=True,
    )
