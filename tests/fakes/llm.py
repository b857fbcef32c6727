"""A scripted loopback fake of an OpenAI-compatible Chat Completions endpoint.

For what a real model cannot be made to do on demand: malformed JSON, truncation
(``finish_reason: "length"``), 429 with ``Retry-After``, 5xx, a proposal outside the catalogue,
an answer that obeys injected text. Each request to ``POST /v1/chat/completions`` takes the next
scripted :class:`FakeReply` (a valid answer when the script is empty) and is recorded with its
headers, so tests assert what went over the wire (redaction, delimiting, the schema).
"""

from __future__ import annotations

import json
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from tests.fakes.loopback import LoopbackServer

FAKE_MODEL = "fake-model-2026"


def answer_json(**overrides: Any) -> str:
    """A valid TriageAnswer as JSON text (fields overridable)."""
    answer: dict[str, Any] = {
        "severity": "SEV3",
        "category": "errors",
        "summary": "error rate is up",
        "likely_causes": [{"cause": "bad deploy", "confidence": 0.6, "evidence_refs": ["E1"]}],
        "proposed_actions": [],
    }
    return json.dumps(answer | overrides)


@dataclass
class FakeReply:
    """One scripted answer.

    Attributes:
        status: HTTP status.
        content: the assistant message content (200 only).
        finish_reason: ``stop``, ``length`` ...
        usage: (prompt_tokens, completion_tokens), or None to send no ``usage``.
        headers: extra response headers (e.g. ``Retry-After``).
        raw: a raw body instead of a chat completion (e.g. an error page).
    """

    status: int = 200
    content: str | None = None
    finish_reason: str = "stop"
    usage: tuple[int, int] | None = (100, 20)
    headers: dict[str, str] = field(default_factory=dict)
    raw: str | None = None


@dataclass(frozen=True)
class Recorded:
    """One request the fake served."""

    headers: dict[str, str]
    body: dict[str, Any]

    @property
    def text(self) -> str:
        """All message contents, joined (what the provider would read)."""
        return "\n".join(str(m.get("content", "")) for m in self.body.get("messages", []))


class FakeLlm:
    """The fake endpoint; use as a context manager. ``base_url`` ends in ``/v1``."""

    def __init__(self) -> None:
        self.script: deque[FakeReply] = deque()
        self.requests: list[Recorded] = []
        self._lock = threading.Lock()
        self._loopback = LoopbackServer("fake LLM")
        self.port = 0

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>/v1``."""
        return f"http://127.0.0.1:{self.port}/v1"

    def push(self, *replies: FakeReply) -> None:
        """Queue replies, served in order."""
        with self._lock:
            self.script.extend(replies)

    def start(self) -> FakeLlm:
        """Serve on a free loopback port in a background thread; returns self once listening."""
        app = Starlette(
            routes=[
                Route("/v1/chat/completions", self._chat, methods=["POST"]),
                Route("/v1/models", self._models, methods=["GET"]),
            ]
        )
        self.port = self._loopback.serve(app)
        return self

    def stop(self) -> None:
        """Stop serving and join the server thread."""
        self._loopback.stop()

    def __enter__(self) -> FakeLlm:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def _models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": FAKE_MODEL, "object": "model"}]})

    async def _chat(self, request: Request) -> Response:
        body = json.loads(await request.body())
        with self._lock:
            self.requests.append(Recorded(dict(request.headers), body))
            reply = self.script.popleft() if self.script else FakeReply(content=answer_json())
        if reply.raw is not None or reply.status != 200:
            return PlainTextResponse(
                reply.raw or f"error {reply.status}", reply.status, headers=reply.headers
            )
        completion: dict[str, Any] = {
            "id": f"chatcmpl-{len(self.requests)}",
            "object": "chat.completion",
            "model": FAKE_MODEL,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": reply.content},
                    "finish_reason": reply.finish_reason,
                }
            ],
        }
        if reply.usage is not None:
            prompt, completion_tokens = reply.usage
            completion["usage"] = {
                "prompt_tokens": prompt,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt + completion_tokens,
            }
        return JSONResponse(completion, headers=reply.headers)
