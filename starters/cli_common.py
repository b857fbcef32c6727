"""What every ``fleetops`` command shares: settings, connecting, user identity, exit codes.

Exit codes: 0 done, 1 Temporal or the workflow said no (not running, not allowed, server
unreachable; with ``--wait``: the outcome was not the one asked for, or time ran out), 2 bad
input (spec, settings) caught before anything is sent, 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import asyncio
import getpass
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import typer
import yaml
from pydantic import ValidationError
from rich.console import Console
from temporalio.client import Client
from temporalio.exceptions import TemporalError

from fleetops.client import connect
from fleetops.converter import describe_validation_error
from fleetops.settings import Settings, get_settings
from starters.agents import FleetOpsClientError

T = TypeVar("T")

out = Console()
err_console = Console(stderr=True)


def fail(message: str, code: int) -> NoReturn:
    """Print ``message`` in red to stderr (no markup) and exit with ``code``."""
    err_console.print(message, style="red", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def read_mapping(path: Path, what: str) -> dict[str, Any]:
    """The object in a YAML or JSON file (``.json``: JSON; anything else: YAML, which reads
    JSON too); exit 2 naming the file and the line if it cannot be read or holds no object.

    Args:
        path: the file.
        what: what the file should hold, for the error message (e.g. ``AgentSpec``).
    """
    try:
        text = path.read_text()
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as err:
        fail(f"cannot read {path}: {err}", 2)
    if not isinstance(data, dict):
        fail(f"{path} must hold a YAML or JSON object of {what} fields", 2)
    return data


def load_settings() -> Settings:
    """Settings from ``FLEETOPS_*``; a bad value exits with code 2 and names the variable."""
    try:
        return get_settings()
    except ValidationError as err:
        fail(f"bad FLEETOPS_* setting: {describe_validation_error(err)}", 2)


def current_user() -> str:
    """The OS user name (default approver/requester identity), or "" when there is none."""
    try:
        return getpass.getuser()
    except Exception:  # no user name in this environment (e.g. some containers)
        return ""


async def connect_or_exit(settings: Settings) -> Client:
    """Connect with :func:`fleetops.client.connect`, or exit 1 naming the address."""
    address = settings.temporal.address
    try:
        return await connect(settings)
    except RuntimeError as err:
        fail(
            f"cannot reach Temporal at {address} ({err}). Start a dev server and worker with "
            "`fleetops up`, or point FLEETOPS_TEMPORAL__ADDRESS at your cluster.",
            1,
        )
    except ValueError as err:
        fail(f"cannot build the Temporal client: {err}", 2)


def run(fn: Callable[[Client], Awaitable[T]], settings: Settings | None = None) -> T:
    """Connect, run ``fn(client)``, and turn client and Temporal errors into exit code 1."""
    settings = settings or load_settings()

    async def main() -> T:
        return await fn(await connect_or_exit(settings))

    try:
        return asyncio.run(main())
    except KeyboardInterrupt:
        fail("interrupted", 130)
    except FleetOpsClientError as err:
        fail(str(err), 1)
    except TemporalError as err:  # e.g. permission denied, server unavailable mid-call
        fail(f"Temporal error: {err}", 1)
