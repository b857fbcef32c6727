"""Tails of the local replicas' log files (``<state_dir>/agents/<agent>/*replica-<i>.log``)."""

from __future__ import annotations

import os
from pathlib import Path

from activities.platform.base import LogTail

MAX_LOG_FILES = 20
"""Log files read per agent (newest first): both colours of a large agent are cut here."""


def tail(path: Path, *, lines: int, max_bytes: int) -> tuple[str, bool]:
    """The last ``lines`` lines of ``path``, reading at most its last ``max_bytes`` bytes.

    Returns:
        (text, cut): ``cut`` is True when earlier lines or bytes were left out.

    Raises:
        OSError: the file cannot be read.
    """
    with path.open("rb") as f:
        size = f.seek(0, os.SEEK_END)
        start = max(0, size - max_bytes)
        f.seek(start)
        data = f.read(max_bytes)
    kept = data.splitlines()
    cut = start > 0
    if start > 0 and kept:
        kept = kept[1:]  # the first line is probably partial
    if len(kept) > lines:
        kept, cut = kept[-lines:], True
    return b"\n".join(kept).decode("utf-8", errors="replace"), cut


def replica_name(path: Path) -> str:
    """``blue-0`` for ``replica-0.log``, ``green-1`` for ``green-replica-1.log``."""
    stem = path.name.removesuffix(".log")
    color, _, index = stem.rpartition("replica-")
    return f"{color.rstrip('-') or 'blue'}-{index}"


def agent_logs(agent_dir: Path, *, lines: int, max_bytes: int) -> list[LogTail]:
    """Tails of the agent's replica logs, newest file first, at most :data:`MAX_LOG_FILES`.

    Blocking. A file that cannot be read is reported as a tail saying so (never raised).
    """
    if not agent_dir.is_dir():
        return []
    files = sorted(agent_dir.glob("*replica-*.log"), key=lambda p: p.stat().st_mtime, reverse=True)
    out = []
    for path in files[:MAX_LOG_FILES]:
        try:
            text, cut = tail(path, lines=lines, max_bytes=max_bytes)
        except OSError as e:
            text, cut = f"(unreadable: {e})", False
        out.append(LogTail(replica_name(path), str(path), text, cut))
    return out
