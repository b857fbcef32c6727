"""``fleetops llm-server``: the local small model (SmolLM2-135M on llama.cpp), in the foreground."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Annotated

import typer

from starters.cli_common import fail, load_settings


def register(app: typer.Typer) -> None:
    """Add the ``llm-server`` command to ``app``."""
    app.command("llm-server")(llm_server)


def llm_server(
    port: Annotated[int, typer.Option(help="Port to listen on (127.0.0.1).")] = 8088,
    threads: Annotated[int | None, typer.Option(help="CPU threads for inference.")] = None,
) -> None:
    """Serve the local model's OpenAI-compatible API until Ctrl-C; prints the settings to use."""
    from starters.local_llm import LocalLlmError, local_llm_server

    state_dir: Path = load_settings().state_dir
    state_dir.mkdir(parents=True, exist_ok=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        with local_llm_server(
            port=port, threads=threads, log_path=state_dir / "llm-server.log"
        ) as server:
            typer.echo(f"Local LLM {server.model} at {server.base_url}; for the worker:")
            for name, value in server.env().items():
                typer.echo(f"export {name}='{value}'")
            stop.wait()
    except LocalLlmError as err:
        fail(str(err), 1)
