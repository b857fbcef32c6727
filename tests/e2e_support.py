"""Helpers for the end-to-end tests: real sample-agent replicas, found and cleaned up by tag.

Every replica an end-to-end test starts gets ``FLEETOPS_TEST_TAG=<uuid>`` in its environment, so
tests count "their" processes by scanning ``/proc`` and the ``tag`` fixture SIGKILLs whatever is
left at teardown, whatever the code under test did.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from temporalio.client import WorkflowHandle, WorkflowQueryFailedError
from temporalio.service import RPCError

from activities.platform.local import process as _process
from fleetops.models import AgentSpec, AgentState, AgentStatus
from fleetops.settings import Settings
from workflows.agent_lifecycle import AgentLifecycle

TAG_VAR = "FLEETOPS_TEST_TAG"
T = TypeVar("T")


def tagged_pids(tag: str) -> set[int]:
    """Live (non-zombie) processes whose environment holds ``FLEETOPS_TEST_TAG=<tag>``."""
    needle = f"{TAG_VAR}={tag}".encode()
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0") and alive(int(entry.name)):
            found.add(int(entry.name))
    return found


def alive(pid: int | None) -> bool:
    """Whether ``pid`` runs (zombies count as gone)."""
    return pid is not None and _process.is_alive(pid, None)


def kill_tagged(tag: str) -> None:
    """SIGKILL every process with the tag and wait (10 s at most) until they are gone."""
    leftovers = tagged_pids(tag)
    for pid in leftovers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in leftovers) and time.monotonic() < deadline:
        time.sleep(0.05)


@pytest.fixture
def tag() -> Iterator[str]:
    """A unique tag for the test's replicas; kills every tagged process left at teardown."""
    tag = uuid.uuid4().hex
    yield tag
    kill_tagged(tag)


_PORTS_LOW, _PORTS_HIGH = 20000, 32000  # below the Linux ephemeral range (32768-60999)
_next_port: int | None = None


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def port_block(size: int = 20) -> tuple[int, int]:
    """A block of ``size`` ports below the Linux ephemeral range, for replicas and gateways.

    Each pytest-xdist worker (``PYTEST_XDIST_WORKER=gwN``) hands out blocks from its own slice of
    20000-31999 in turn, so two tests running at once never share a port, and a block whose
    ports are not all free right now (a replica of an earlier test still exiting) is skipped.
    Returns ``(first, last)``, inclusive.
    """
    global _next_port
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    index = int(worker) if worker.isdigit() else 0
    width = (_PORTS_HIGH - _PORTS_LOW) // max(count, 1)
    low = _PORTS_LOW + index * width
    high = low + width
    if _next_port is None or not low <= _next_port < high:
        _next_port = low + random.randrange(0, width // 2)  # not the same ports every run
    for _ in range(width // size + 1):
        start = _next_port if _next_port + size <= high else low
        _next_port = start + size
        if all(_bindable(port) for port in range(start, start + size)):
            return start, start + size - 1
    raise RuntimeError(f"no free block of {size} ports in {low}-{high - 1}")


def free_port() -> int:
    """A TCP port nothing listens on right now (for servers started by a test)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def local_settings(state_dir: Path) -> Settings:
    """Settings for an in-process worker: local platform on a private port block, no metrics."""
    start, end = port_block()
    return Settings.model_validate(
        {
            "state_dir": state_dir,
            "platform": {
                "local": {
                    "port_range_start": start,
                    "port_range_end": end,
                    "stop_grace_seconds": 5.0,
                }
            },
            "telemetry": {"metrics_bind_address": ""},
        }
    )


def agent_spec(tag: str, prefix: str, **kwargs: Any) -> AgentSpec:
    """A sample-agent spec (default ``command``) tagged for cleanup, probed every second."""
    return AgentSpec.model_validate(
        {
            "agent_id": f"{prefix}-{tag[:10]}",
            "env": {TAG_VAR: tag},
            "health": {
                "interval_seconds": 1,
                "timeout_seconds": 2,
                "failure_threshold": 2,
                "startup_timeout_seconds": 60,
            },
            **kwargs,
        }
    )


async def eventually(
    fn: Callable[[], Awaitable[T]], what: str, *, timeout: float = 20.0, interval: float = 0.1
) -> T:
    """Call ``fn`` until it returns without AssertionError (or a transient RPC/query error).

    Raises:
        pytest.fail: after ``timeout`` seconds, with ``what`` and the last error.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await fn()
        except (AssertionError, RPCError, WorkflowQueryFailedError) as err:
            if time.monotonic() >= deadline:
                pytest.fail(f"timed out after {timeout}s waiting for {what}: {err!r}")
        await asyncio.sleep(interval)


async def status(handle: WorkflowHandle[Any, Any]) -> AgentStatus:
    return await handle.query(AgentLifecycle.status)


async def wait_ready(
    handle: WorkflowHandle[Any, Any], replicas: int, *, timeout: float = 45.0
) -> AgentStatus:
    """Wait until the agent is READY with ``replicas`` healthy replicas whose pids run."""

    async def check() -> AgentStatus:
        st = await status(handle)
        assert st.state == AgentState.READY, f"state {st.state}"
        assert len(st.replicas) == replicas, f"{len(st.replicas)} replicas"
        assert all(r.healthy for r in st.replicas), f"unhealthy: {st.replicas}"
        assert all(alive(r.pid) for r in st.replicas), f"dead pids: {st.replicas}"
        return st

    return await eventually(check, f"{handle.id} READY with {replicas} replicas", timeout=timeout)
