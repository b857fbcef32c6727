"""The Chat Completions response as ``llm_triage`` reads it, and waiting with heartbeats."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TypeVar

from pydantic import BaseModel, ConfigDict
from temporalio import activity

from fleetops.incidents import LlmUsage

T = TypeVar("T")

HEARTBEAT_SECONDS = 2.0
"""Seconds between heartbeats while a call is waiting for the model."""


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _Message(_Lenient):
    content: str | None = None


class _Choice(_Lenient):
    message: _Message
    finish_reason: str | None = None


class _Usage(_Lenient):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class ChatCompletion(_Lenient):
    """The fields of a chat completion we use (others ignored)."""

    model: str = ""
    choices: list[_Choice]
    usage: _Usage | None = None


@dataclass
class Reply:
    """One answer of the endpoint: content, finish reason, usage, and a note if any."""

    content: str
    finish_reason: str
    usage: LlmUsage
    note: str | None = None  # e.g. usage estimated


class BadResponse(Exception):
    """A 200 whose body is not a chat completion (``usage`` still records the call)."""

    def __init__(self, usage: LlmUsage, message: str) -> None:
        super().__init__(message)
        self.usage = usage


async def heartbeating(aw: Awaitable[T]) -> T:
    """Await ``aw``, heartbeating every :data:`HEARTBEAT_SECONDS` when inside an activity."""
    task = asyncio.ensure_future(aw)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=HEARTBEAT_SECONDS)
            if done:
                return task.result()
            if activity.in_activity():
                activity.heartbeat()
    finally:
        if not task.done():
            task.cancel()
