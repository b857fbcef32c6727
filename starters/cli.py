"""The ``fleetops`` command: ``up``, ``worker``, ``codec-server`` and the ``agent`` commands."""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console

from fleetops.converter import describe_validation_error
from fleetops.settings import Settings, get_settings
from starters.agent_cli import agent_app

app = typer.Typer(
    name="fleetops",
    help="Durable operations for fleets of AI agents, on Temporal.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(agent_app, name="agent")
console = Console(stderr=True)


def load_settings() -> Settings:
    """Settings from ``FLEETOPS_*``; a bad value exits with code 2 and names the variable."""
    try:
        return get_settings()
    except ValidationError as err:
        console.print(f"[red]bad FLEETOPS_* setting[/red]: {describe_validation_error(err)}")
        raise typer.Exit(2) from None


def _logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )


@app.command()
def up(
    temporal_address: Annotated[
        str | None,
        typer.Option(help="Use this Temporal server (host:port) instead of starting a dev server."),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Start the Temporal dev server (state in FLEETOPS_STATE_DIR) and the worker; Ctrl-C stops."""
    from starters.devserver import run_up

    _logging(verbose)
    asyncio.run(run_up(load_settings(), temporal_address=temporal_address))


@app.command()
def worker(verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False) -> None:
    """Run only the worker against FLEETOPS_TEMPORAL__ADDRESS (any Temporal cluster)."""
    from worker import run_worker

    _logging(verbose)
    asyncio.run(run_worker(load_settings()))


@app.command("codec-server")
def codec_server() -> None:
    """Serve /encode and /decode so the Web UI and `temporal` CLI show decrypted payloads."""
    from starters.codec_server import serve_codec_server

    try:
        serve_codec_server(load_settings())
    except ValueError as err:
        console.print(f"[red]{err}[/red]")
        raise typer.Exit(2) from None


@app.command("gen-key")
def gen_key() -> None:
    """Print a new base64 AES-256 key for FLEETOPS_ENCRYPTION__KEYS."""
    from fleetops.codec import generate_key

    typer.echo(generate_key())


if __name__ == "__main__":
    app()
