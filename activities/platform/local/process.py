"""OS process helpers for the local platform: pid-reuse-safe liveness, group signals, spawning.

A replica is identified by its pid *and* its start time (field 22 of ``/proc/<pid>/stat``, clock
ticks since boot), so a pid the kernel recycled for an unrelated process is never mistaken for
ours. Without ``/proc`` (macOS) the start-time check is skipped: liveness is ``kill(pid, 0)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

from activities.platform.base import PlatformError

_HAS_PROC = os.path.isdir("/proc/self")
_POLL_SECONDS = 0.05
_KILL_WAIT_SECONDS = 5.0

# Popen objects of replicas this worker process started, so they can be reaped (no zombies, no
# ResourceWarning) even by another LocalPlatform instance that adopted them. Module-level on
# purpose: replicas outlive the platform object that started them.
_children: dict[int, subprocess.Popen[bytes]] = {}


def _read_stat(pid: int) -> tuple[str, int] | None:
    """``(state, start_time)`` of ``pid`` from ``/proc/<pid>/stat``, or None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = text[text.rfind(")") + 2 :].split()
    try:
        return fields[0], int(fields[19])  # fields 3 (state) and 22 (starttime)
    except (IndexError, ValueError):
        return None


def start_time(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot; None without ``/proc`` or if it is gone."""
    stat = _read_stat(pid) if _HAS_PROC else None
    return stat[1] if stat else None


def reap(pid: int) -> None:
    """Collect the exit status of ``pid`` if it is a child of this process that has exited."""
    child = _children.get(pid)
    if child is not None:
        if child.poll() is not None:
            _children.pop(pid, None)  # is_alive also runs in worker threads
        return
    with contextlib.suppress(ChildProcessError):  # not our child: its parent (or init) reaps it
        os.waitpid(pid, os.WNOHANG)


def is_alive(pid: int, expected_start_time: int | None) -> bool:
    """Whether ``pid`` is running and is the process that was started at ``expected_start_time``.

    Zombies count as dead; ``expected_start_time=None`` skips the pid-reuse check.
    """
    reap(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False  # another user's process: our replicas run as this user, so a recycled pid
    if not _HAS_PROC:
        return True
    stat = _read_stat(pid)
    if stat is None or stat[0] in ("Z", "X"):
        return False
    return expected_start_time is None or stat[1] == expected_start_time


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _kill_leftovers(pid: int) -> None:
    """SIGKILL what is left of the process group led by ``pid`` once the leader is gone.

    The kernel does not hand out a pid that is still some group's id, so when no process has this
    pid any surviving member of group ``pid`` is a child our replica left behind.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        _signal_group(pid, signal.SIGKILL)
    except PermissionError:
        pass


async def _wait_exit(pid: int, expected_start_time: int | None, timeout: float) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while is_alive(pid, expected_start_time):
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(_POLL_SECONDS)
    return True


async def terminate(pid: int, expected_start_time: int | None, grace_seconds: float) -> bool:
    """Stop the process group of ``pid``: SIGTERM, up to ``grace_seconds`` seconds, then SIGKILL.

    Args:
        pid: the replica's pid (its process-group id: replicas start in their own session).
        expected_start_time: recorded start time; a recycled pid is left alone.
        grace_seconds: seconds between SIGTERM and SIGKILL.

    Returns:
        Whether the process was running.

    Raises:
        TimeoutError: it survived SIGKILL for 5 seconds (uninterruptible sleep); retry later.
    """
    if not is_alive(pid, expected_start_time):
        _kill_leftovers(pid)
        return False
    _signal_group(pid, signal.SIGTERM)
    if not await _wait_exit(pid, expected_start_time, grace_seconds):
        _signal_group(pid, signal.SIGKILL)
        if not await _wait_exit(pid, expected_start_time, _KILL_WAIT_SECONDS):
            raise TimeoutError(f"pid {pid} is still running {_KILL_WAIT_SECONDS}s after SIGKILL")
    _kill_leftovers(pid)
    return True


def resolve_executable(name: str) -> str:
    """Absolute path of ``name``, searching the venv's bin directory first, then ``PATH``.

    Raises:
        PlatformError: not found or not executable.
    """
    venv_bin = os.path.dirname(sys.executable)
    search = os.pathsep.join(p for p in (venv_bin, os.environ.get("PATH", os.defpath)) if p)
    found = shutil.which(name, path=search)
    if found is None:
        raise PlatformError(
            f"executable {name!r} not found in {venv_bin} or on PATH; install it or put an "
            "absolute path in the agent's `command`"
        )
    return os.path.abspath(found)


def spawn(argv: list[str], env: dict[str, str], log_path: Path, banner: str) -> int:
    """Start ``argv`` in a new session, stdout and stderr appended to ``log_path``.

    Returns:
        The pid (also the process-group id).

    Raises:
        PlatformError: the executable cannot be run (missing, not executable, bad format).
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        log.write(banner.encode() + b"\n")
        log.flush()
        try:
            child = subprocess.Popen(
                argv,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.EACCES, errno.ENOEXEC, errno.EISDIR):
                raise PlatformError(f"cannot run {argv[0]!r}: {e.strerror}") from e
            raise  # EAGAIN, ENOMEM...: transient, let the activity retry
    _children[child.pid] = child
    return child.pid


def port_bindable(host: str, port: int) -> bool:
    """Whether a listener could bind ``host:port`` right now (SO_REUSEADDR, like servers use)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True
