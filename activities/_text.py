"""Text helpers shared by the activities."""

from __future__ import annotations


def shorten(text: str, limit: int) -> str:
    """``text`` on one line (whitespace runs collapsed to one space), cut to at most ``limit``
    characters with a trailing ``...``: for error bodies kept in results and histories."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
