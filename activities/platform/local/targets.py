"""Prometheus ``file_sd`` targets of the local platform: one file per agent.

``<state_dir>/prometheus/targets/<agent_id>.json`` lists the agent's running replicas, one group
per replica with ``targets: ["host:port"]`` and labels ``fleetops_agent``, ``fleetops_color``,
``fleetops_version``, ``fleetops_replica``. Point Prometheus at the directory with a glob
(``file_sd_configs: [{files: ["<state_dir>/prometheus/targets/*.json"]}]``). One file per agent
means a change to one agent rewrites only that agent's file, from the records in hand.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from activities.platform.base import host_port
from activities.platform.local import process
from activities.platform.local.state import Key, ReplicaRecord, write_json_atomic

TARGETS_DIR = Path("prometheus") / "targets"
"""Directory, under the state directory, of the per-agent file_sd target files."""


def targets_file(state_dir: Path, agent_id: str) -> Path:
    """``<state_dir>/prometheus/targets/<agent_id>.json`` (``agent_id`` is already checked)."""
    return state_dir / TARGETS_DIR / f"{agent_id}.json"


def groups(agent_id: str, records: dict[Key, ReplicaRecord]) -> list[dict[str, Any]]:
    """The file_sd groups of the agent's live replicas, by colour then index."""
    return [
        {
            "targets": [host_port(r.host, r.port)],
            "labels": {
                "fleetops_agent": agent_id,
                "fleetops_color": r.color,
                "fleetops_version": r.version,
                "fleetops_replica": str(r.index),
            },
        }
        for _, r in sorted(records.items())
        if process.is_alive(r.pid, r.start_time)
    ]


def write_targets(state_dir: Path, agent_id: str, records: dict[Key, ReplicaRecord]) -> None:
    """Replace the agent's target file atomically (delete it when no replica runs). Blocking.

    Raises:
        OSError: the file cannot be written.
    """
    path = targets_file(state_dir, agent_id)
    found = groups(agent_id, records)
    if found:
        write_json_atomic(path, found)
    else:
        path.unlink(missing_ok=True)
