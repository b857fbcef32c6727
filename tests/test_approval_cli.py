"""``fleetops keys generate`` and ``fleetops approve|reject --key`` end to end.

The real CLI (and the ``temporal`` CLI) in subprocesses against a dev server; the worker runs
``ApprovalProbe`` with the real ``NotifyActivities`` in the test's event loop, configured with the
public keys the CLI generated.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from activities.notify import NotifyActivities
from fleetops.approvals import ApprovalDecision, ApprovalRequest
from fleetops.settings import ApprovalSettings
from fleetops.signing import load_private_key, public_key_base64, public_key_of
from tests.conftest import BIN, assert_eventually, new_worker
from tests.test_approval import ROLES, ApprovalProbe, pending


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str


Cli = Callable[..., Awaitable[Run]]


@pytest.fixture
def cli(dev_env: WorkflowEnvironment, tmp_path: Path) -> Cli:
    """Run ``fleetops <args>`` (or another binary of the venv) against the dev server."""
    env = {
        **os.environ,
        "FLEETOPS_TEMPORAL__ADDRESS": dev_env.client.service_client.config.target_host,
        "FLEETOPS_TELEMETRY__METRICS_BIND_ADDRESS": "",
        "COLUMNS": "200",
    }

    async def run(*args: str, binary: str = "fleetops") -> Run:
        proc = await asyncio.create_subprocess_exec(
            str(BIN / binary),
            *args,
            cwd=tmp_path,  # keys land here; no stray .env from the working tree
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
        assert proc.returncode is not None
        return Run(proc.returncode, out.decode(), err.decode())

    return run


@asynccontextmanager
async def probe(
    dev_env: WorkflowEnvironment, settings: ApprovalSettings, **req: Any
) -> AsyncIterator[WorkflowHandle[Any, ApprovalDecision]]:
    async with httpx.AsyncClient(timeout=5) as http:
        notify = NotifyActivities(http, settings)
        worker = new_worker(
            dev_env.client,
            workflows=[ApprovalProbe],
            activities=[notify.send_notification, notify.approval_policy, notify.approver_roles],
        )
        async with worker:
            handle = await dev_env.client.start_workflow(
                ApprovalProbe.run,
                ApprovalRequest(question="Promote v2?", **req),
                id=f"deploy/cli-{uuid.uuid4().hex[:8]}/v2",
                task_queue=worker.task_queue,
                result_type=ApprovalDecision,
            )
            await pending(handle)
            yield handle


async def test_keys_generate(cli: Cli, tmp_path: Path) -> None:
    r = await cli("keys", "generate", "alice", "--dir", "keys")
    assert r.code == 0, r.stderr
    key_file, pub_file = tmp_path / "keys/alice.key", tmp_path / "keys/alice.pub"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key = load_private_key(key_file.read_bytes())
    assert public_key_base64(pub_file.read_text()) == public_key_of(key)
    line = next(x for x in r.stdout.splitlines() if x.startswith("FLEETOPS_APPROVAL__PUBLIC_KEYS="))
    assert json.loads(line.split("=", 1)[1].strip("'")) == {"alice": public_key_of(key)}

    again = await cli("keys", "generate", "alice", "--dir", "keys")
    assert again.code == 2 and "--force" in again.stderr
    assert load_private_key(key_file.read_bytes()) is not None
    assert public_key_base64(pub_file.read_text()) == public_key_of(key)  # not replaced
    forced = await cli("keys", "generate", "alice", "--dir", "keys", "--force")
    assert forced.code == 0, forced.stderr
    assert public_key_base64(pub_file.read_text()) != public_key_of(key)
    for bad in ("../evil", "", ".hidden"):
        r = await cli("keys", "generate", bad)
        assert r.code == 2, bad


async def test_approve_with_key(cli: Cli, dev_env: WorkflowEnvironment, tmp_path: Path) -> None:
    for name in ("alice", "bob"):
        assert (await cli("keys", "generate", name)).code == 0
    keys = {n: (tmp_path / f"{n}.pub").read_text() for n in ("alice", "bob")}
    settings = ApprovalSettings(roles=ROLES, public_keys=keys)
    async with probe(dev_env, settings, roles=["sre"]) as handle:
        wid = handle.id
        r = await cli("approve", wid, "--as", "alice")
        assert r.code == 1 and "unsigned decision" in r.stderr, r.stderr
        r = await cli("approve", wid, "--as", "alice", "--key", "bob.key")
        assert r.code == 1 and "bad signature" in r.stderr, r.stderr
        r = await cli("approve", wid, "--as", "", "--key", "alice.key")
        assert r.code == 2 and "--as" in r.stderr, r.stderr
        r = await cli("approve", wid, "--as", "alice", "--key", "nosuch.key")
        assert r.code == 2 and "nosuch.key" in r.stderr, r.stderr
        assert (await pending(handle)).request_id == "approval-1"

        async def listed() -> None:
            r = await cli("approvals")
            assert r.code == 0, r.stderr
            assert wid in r.stdout and "approval-1 (signed)" in r.stdout

        await assert_eventually(listed, timeout=30)

        r = await cli("approve", wid, "--as", "alice", "--key", "alice.key", "--comment", "ok")
        assert r.code == 0, r.stderr
        assert f"{wid}: approved by alice (sre), signed" in r.stdout
        d = await handle.result()
        assert (d.approved, d.approver, d.comment, d.signed) == (True, "alice", "ok", True)


async def test_temporal_cli_with_signed_input(
    cli: Cli, dev_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    assert (await cli("keys", "generate", "alice")).code == 0
    settings = ApprovalSettings(public_keys={"alice": (tmp_path / "alice.pub").read_text()})
    async with probe(dev_env, settings) as handle:
        r = await cli("reject", handle.id, "--as", "alice", "--key", "alice.key", "--print-input")
        assert r.code == 0, r.stderr
        payload = json.loads(r.stdout)
        assert payload["request_id"] == "approval-1" and payload["approved"] is False
        address = dev_env.client.service_client.config.target_host
        r = await cli(
            "workflow", "update", "execute", "--address", address, "--workflow-id", handle.id,
            "--name", "decide", "--input", json.dumps(payload), binary="temporal",
        )  # fmt: skip
        assert r.code == 0, r.stderr
        d = await handle.result()
        assert (d.approved, d.outcome, d.approver, d.signed) == (False, "rejected", "alice", True)
