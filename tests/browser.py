"""Headless Chromium over the DevTools protocol (CDP): load a page, wait for text, screenshot.

``chromium --dump-dom --virtual-time-budget`` never returns on the Temporal Web UI's workflow
page (it keeps a long-poll open, which holds virtual time), so the test drives the browser
instead: ``Page.navigate``, then ``Runtime.evaluate`` of ``document.body.innerText`` until the
expected text is rendered, then ``Page.captureScreenshot``. Protocol:
https://chromedevtools.github.io/devtools-protocol/. Blocking (websocket-client): call it from
a thread (``asyncio.to_thread``) when a worker runs in the event loop.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import websocket

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1400,1000",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
]


_TEXT_JS = """
[document.body?.innerText ?? '',
 ...Array.from(document.querySelectorAll('iframe')).map(f =>
   f.contentDocument?.body?.innerText ??
   new DOMParser().parseFromString(f.srcdoc || '', 'text/html').body.innerText)
].join('\\n')
"""


class Page:
    """One browser tab over CDP (``send`` waits for the answer to its own command id)."""

    def __init__(self, ws: websocket.WebSocket) -> None:
        self._ws = ws
        self._ids = itertools.count(1)

    def send(self, method: str, timeout: float = 30.0, **params: Any) -> dict[str, Any]:
        """Run one CDP command; its ``result``. Raises RuntimeError on a protocol error."""
        cid = next(self._ids)
        self._ws.settimeout(timeout)
        self._ws.send(json.dumps({"id": cid, "method": method, "params": params}))
        while True:
            msg = json.loads(self._ws.recv())
            if msg.get("id") == cid:  # anything else is an event
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return dict(msg.get("result", {}))

    def text(self) -> str:
        """The rendered text of the page and of its iframes (the Web UI renders Markdown in
        sandboxed ``srcdoc`` iframes, which ``innerText`` of the page leaves out)."""
        r = self.send("Runtime.evaluate", expression=_TEXT_JS, returnByValue=True)
        return str(r.get("result", {}).get("value", ""))

    def wait_for_text(self, texts: list[str], timeout: float) -> str:
        """Poll the page's text until it holds all of ``texts``; AssertionError after timeout s."""
        deadline = time.monotonic() + timeout
        while True:
            body = self.text()
            missing = [t for t in texts if t not in body]
            if not missing:
                return body
            if time.monotonic() >= deadline:
                raise AssertionError(f"not on the page after {timeout} s: {missing}\n{body}")
            time.sleep(0.5)

    def screenshot(self, path: Path) -> None:
        """Save a PNG of the viewport to ``path``."""
        data = self.send("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))


@contextlib.contextmanager
def open_page(chromium: str, url: str, user_data_dir: Path) -> Iterator[Page]:
    """Start headless ``chromium``, open ``url`` in its tab; stop the browser on exit."""
    user_data_dir.mkdir(parents=True, exist_ok=True)
    (user_data_dir / "DevToolsActivePort").unlink(missing_ok=True)
    log = (user_data_dir / "chromium.log").open("w")
    proc = subprocess.Popen(
        [chromium, *FLAGS, f"--user-data-dir={user_data_dir}", "about:blank"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        port = _devtools_port(proc, user_data_dir)
        targets = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=10).json()
        page_url = next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
        ws = websocket.create_connection(page_url, timeout=30, suppress_origin=True)
        try:
            page = Page(ws)
            page.send("Page.enable")
            page.send("Page.navigate", url=url)
            yield page
        finally:
            ws.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _devtools_port(proc: subprocess.Popen[bytes], user_data_dir: Path, timeout: float = 30) -> int:
    """The port Chromium wrote to ``<user-data-dir>/DevToolsActivePort`` (first line)."""
    marker = user_data_dir / "DevToolsActivePort"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int(marker.read_text().splitlines()[0])
        time.sleep(0.1)
    log = (user_data_dir / "chromium.log").read_text(errors="replace")[-3000:]
    raise RuntimeError(f"chromium did not open its DevTools port (exit {proc.poll()}):\n{log}")
