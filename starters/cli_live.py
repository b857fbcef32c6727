"""``--watch`` and ``--wait``: follow a workflow from the CLI until it closes or reaches an outcome.

``--watch`` redraws a view in place with :class:`rich.live.Live` on a terminal, about once a
second (like ``kubectl argo rollouts get rollout --watch``); when the output is not a terminal
(a CI log, a pipe) it prints the view again only when it changed. ``--wait`` prints one line per
change and returns the exit code a pipeline gates on (like ``kubectl argo rollouts status``):
0 promoted / READY, 1 anything else or time ran out.
"""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Awaitable, Callable

from rich.console import Console, RenderableType
from rich.live import Live
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle
from temporalio.service import RPCError

from fleetops.constants import agent_workflow_id
from fleetops.deploy import DeploymentReport
from fleetops.models import AgentState
from starters import agents, deployments
from starters.cli_common import out
from starters.cli_views import agent_view, deployment_view

POLL_SECONDS = 1.0
"""Seconds between two reads of a followed workflow."""
SERVING = (AgentState.READY, AgentState.PROCESSING)
"""States ``agent start --wait`` succeeds on (PROCESSING: READY with requests in flight)."""

Fetch = Callable[[], Awaitable[tuple[RenderableType, bool]]]


async def watch(fetch: Fetch, *, console: Console = out, interval: float = POLL_SECONDS) -> None:
    """Draw ``fetch()``'s view every ``interval`` seconds until it says the workflow closed.

    Args:
        fetch: returns (the view now, whether the workflow has closed).
        console: where to draw.
        interval: seconds between fetches.
    """
    if console.is_terminal:
        with Live(console=console, auto_refresh=False) as live:
            while True:
                view, closed = await fetch()
                live.update(view, refresh=True)
                if closed:
                    return
                await asyncio.sleep(interval)
    last = None
    while True:
        view, closed = await fetch()
        text = _plain(view, console.width)
        if text != last:
            console.print(view)
            console.print()
            last = text
        if closed:
            return
        await asyncio.sleep(interval)


def _plain(view: RenderableType, width: int) -> str:
    buf = Console(file=io.StringIO(), width=width, color_system=None)
    buf.print(view)
    return buf.file.getvalue()  # type: ignore[attr-defined]


async def _closed(handle: WorkflowHandle) -> WorkflowExecutionStatus | None:
    """The close status of the workflow's latest run, or None while it runs."""
    status = (await handle.describe()).status
    return None if status == WorkflowExecutionStatus.RUNNING else status


def agent_fetch(client: Client, agent_id: str) -> Fetch:
    """``fetch`` for :func:`watch` of an agent (the latest run, so continue-as-new is followed).

    Raises (from the first call): AgentNotFoundError if the agent is not running.
    """
    handle = client.get_workflow_handle(agent_workflow_id(agent_id))
    first = True

    async def fetch() -> tuple[RenderableType, bool]:
        nonlocal first
        try:
            view = agent_view(await agents.status(client, agent_id))
        except agents.AgentNotFoundError:
            if first:
                raise
            status = await _closed(handle)
            name = status.name if status else "closed"
            return f"agent {agent_id}: workflow {name}; watch ended", True
        first = False
        return view, False

    return fetch


def deployment_fetch(client: Client, workflow_id: str) -> Fetch:
    """``fetch`` for :func:`watch` of a deployment; the last view includes how it closed."""
    handle = client.get_workflow_handle(workflow_id)

    async def fetch() -> tuple[RenderableType, bool]:
        try:
            status = await _closed(handle)
        except RPCError as err:
            raise deployments.WorkflowNotFoundError(
                f"no deployment {workflow_id} ({err.message})"
            ) from None
        view = deployment_view(await deployments.deployment_status(client, workflow_id))
        return view, status is not None

    return fetch


async def wait_deployment(
    client: Client, handle: WorkflowHandle[object, DeploymentReport], timeout: float | None
) -> int:
    """Follow a deployment until it closes; print each new phase; the exit code.

    Returns:
        0 if it completed with outcome ``promoted``; 1 if it ended any other way
        (rolled_back, aborted, rejected, cancelled, or closed as failed, terminated,
        cancelled, timed out) or is still running after ``timeout`` seconds (it goes on).
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    wid, shown = handle.id, 0
    while True:
        status = await _closed(handle)
        st = await deployments.deployment_status(client, wid)
        for p in st.phases[shown:]:
            at = p.started_at.isoformat(timespec="seconds")
            out.print(f"{at} {p.phase} {p.detail}".rstrip(), highlight=False, markup=False)
        shown = len(st.phases)
        if status is not None:
            break
        if deadline is not None and time.monotonic() >= deadline:
            out.print(f"{wid} still in {st.phase} after {timeout:g} s; it goes on", style="red")
            return 1
        await asyncio.sleep(POLL_SECONDS)
    if status != WorkflowExecutionStatus.COMPLETED:
        out.print(f"{wid} closed as {status.name}", style="red", highlight=False)
        return 1
    report = await handle.result()
    ok = report.outcome == "promoted"
    out.print(
        f"{wid}: {report.outcome}; {report.agent_id} serves {report.active_version} on "
        f"{report.active_color}" + (f" ({report.message})" if report.message else ""),
        style=None if ok else "red",
        highlight=False,
        markup=False,
    )
    return 0 if ok else 1


async def wait_agent(client: Client, agent_id: str, timeout: float | None) -> int:
    """Follow a starting agent; print each state it enters; the exit code.

    Returns:
        0 once it is READY (or PROCESSING); 1 if it goes to ERROR, its workflow closes, or it
        is not serving after ``timeout`` seconds (it goes on).
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    last = None
    while True:
        try:
            st = await agents.status(client, agent_id)
        except agents.AgentNotFoundError:
            out.print(f"agent {agent_id}: its workflow closed", style="red", highlight=False)
            return 1
        if st.state != last:
            why = f" ({st.transitions[-1].reason})" if st.transitions else ""
            out.print(f"agent {agent_id}: {st.state}{why}", highlight=False, markup=False)
            last = st.state
        if st.state in SERVING:
            return 0
        if st.state == AgentState.ERROR:
            return 1
        if deadline is not None and time.monotonic() >= deadline:
            out.print(
                f"agent {agent_id} still {st.state} after {timeout:g} s; it goes on",
                style="red",
                highlight=False,
            )
            return 1
        await asyncio.sleep(POLL_SECONDS)
