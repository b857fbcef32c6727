"""Serve a fake's Starlette app on a free loopback port, in a background uvicorn thread.

The fakes (Kubernetes API, Vault, LLM) speak real HTTP so the real client libraries run against
them; this is the one copy of how they are served and stopped.
"""

from __future__ import annotations

import socket
import threading
import time

import uvicorn
from starlette.applications import Starlette


class LoopbackServer:
    """Runs one Starlette app on ``127.0.0.1:<free port>`` until :meth:`stop`."""

    def __init__(self, name: str) -> None:
        """Args: name: what the server is, for the start-up timeout message."""
        self._name = name
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    def serve(self, app: Starlette, timeout_seconds: float = 10.0) -> int:
        """Start serving ``app``; returns the port once uvicorn is listening.

        Raises:
            TimeoutError: uvicorn did not start within ``timeout_seconds`` seconds.
        """
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # Without TCP_NODELAY, Nagle + delayed ACK add ~40 ms to every keep-alive request.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self._server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout_seconds
        while not self._server.started:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self._name} did not start within {timeout_seconds:g} s")
            time.sleep(0.01)
        return self.port

    def stop(self) -> None:
        """Stop serving and join the server thread (at most 10 s)."""
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)
