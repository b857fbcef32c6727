"""Small helpers shared by tests: external binaries that must exist in CI, result deadlines.

``require_binary`` is how a test says it needs a program this repository does not ship
(Prometheus, Alertmanager, chromium). Locally a missing one skips the test with the install
hint; under ``CI=true`` it fails the test, so a CI machine that lost the package cannot pass by
skipping what it was meant to check.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Awaitable
from pathlib import Path
from typing import TypeVar

import pytest

T = TypeVar("T")

RESULT_TIMEOUT_SECONDS = 120.0
"""Default real-time bound, in seconds, on awaiting one workflow result in a test."""


def in_ci() -> bool:
    """Whether the tests run in CI (``CI=true``, as CI services set it)."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def require_binary(name: str, *alternatives: str, hint: str = "") -> str:
    """The path of program ``name`` (or of the first of ``alternatives`` found).

    Looks in ``/usr/bin`` first, then on ``PATH``.

    Args:
        name: program name, e.g. ``prometheus``.
        alternatives: other names of the same program, e.g. ``prometheus-alertmanager``.
        hint: how to install it, added to the message.

    Returns:
        The absolute path of the program.

    Raises:
        pytest.skip.Exception: locally, when no such program exists.
        pytest.fail.Exception: under ``CI=true``, when no such program exists.
    """
    for candidate in (name, *alternatives):
        fixed = Path("/usr/bin") / candidate
        if fixed.exists():
            return str(fixed)
        found = shutil.which(candidate)
        if found is not None:
            return found
    names = " or ".join((name, *alternatives))
    message = f"{names} is not installed" + (f" ({hint})" if hint else "")
    if in_ci():
        pytest.fail(f"{message}; CI must install it rather than skip this test", pytrace=False)
    pytest.skip(message)


async def result_within(awaitable: Awaitable[T], seconds: float = RESULT_TIMEOUT_SECONDS) -> T:
    """Await ``awaitable`` (typically ``handle.result()``) for at most ``seconds`` real seconds.

    Raises:
        TimeoutError: it did not finish in time (a hung workflow fails the test, clearly).
    """
    try:
        return await asyncio.wait_for(awaitable, seconds)
    except TimeoutError:
        raise TimeoutError(f"no result within {seconds:g} s (is the workflow stuck?)") from None
