"""``fleetops up --with-prometheus``: Debian's Prometheus and Alertmanager on ``infra/prometheus/``.

The files of ``infra/prometheus/`` are rendered into ``<state_dir>/monitoring/`` with absolute
paths (the platform's file_sd targets, the rules), the ports of :class:`MonitoringPorts`, the
receiver's URL (``alerts.host:port``) and, when ``alerts.token`` is set, a ``credentials_file``
(mode 0600) holding it. Data lives in ``<state_dir>/monitoring/{prometheus,alertmanager}-data``;
logs in ``<state_dir>/monitoring/*.log``. Alertmanager's HA cluster port is turned off.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from fleetops.settings import Settings

INFRA = Path(__file__).resolve().parent.parent / "infra" / "prometheus"
"""The shipped configuration: prometheus.yml, alertmanager.yml, rules/*.yml."""
MONITORING_DIR = "monitoring"
"""Directory under the state directory holding rendered configs, data and logs."""
TARGETS_GLOB = Path("prometheus") / "targets" / "*.json"
"""The local platform's file_sd target files, under the state directory."""


class MonitoringError(RuntimeError):
    """Prometheus or Alertmanager is missing, or did not become ready."""


@dataclass(frozen=True)
class MonitoringPorts:
    """Where the two servers listen (loopback)."""

    prometheus: int = 9090
    alertmanager: int = 9093
    host: str = "127.0.0.1"


def binary(name: str, *alternatives: str) -> Path:
    """A program from ``/usr/bin`` or PATH (Debian: ``prometheus``, ``prometheus-alertmanager``).

    Raises:
        MonitoringError: none of the names is installed.
    """
    for candidate in (name, *alternatives):
        if (Path("/usr/bin") / candidate).exists():
            return Path("/usr/bin") / candidate
        found = shutil.which(candidate)
        if found:
            return Path(found)
    raise MonitoringError(f"{name} is not installed (apt-get install {name})")


def _load(name: str) -> Any:
    return yaml.safe_load((INFRA / name).read_text())


def render(
    settings: Settings,
    ports: MonitoringPorts,
    *,
    scrape_interval: str | None = None,
    rule_for: str | None = None,
) -> Path:
    """Write the configs for this state directory and return their directory.

    Args:
        settings: FleetOps settings (``state_dir``, ``alerts.*``).
        ports: where Prometheus and Alertmanager listen.
        scrape_interval: override of the scrape and evaluation interval (e.g. "1s" in tests).
        rule_for: override of every rule's ``for`` (e.g. "2s" in tests).

    Returns:
        ``<state_dir>/monitoring`` holding ``prometheus.yml``, ``rules/`` and ``alertmanager.yml``.
    """
    state = settings.state_dir.resolve()
    out = state / MONITORING_DIR
    (out / "rules").mkdir(parents=True, exist_ok=True)
    (state / TARGETS_GLOB).parent.mkdir(parents=True, exist_ok=True)
    for rules_file in sorted((INFRA / "rules").glob("*.yml")):
        rules = yaml.safe_load(rules_file.read_text())
        for group in rules["groups"]:
            for rule in group["rules"]:
                if rule_for is not None and "for" in rule:
                    rule["for"] = rule_for
        (out / "rules" / rules_file.name).write_text(yaml.safe_dump(rules, sort_keys=False))

    prom = _load("prometheus.yml")
    if scrape_interval is not None:
        prom["global"].update(
            scrape_interval=scrape_interval,
            evaluation_interval=scrape_interval,
            scrape_timeout=scrape_interval,
        )
    prom["rule_files"] = [str(out / "rules" / "*.yml")]
    am_target = f"{ports.host}:{ports.alertmanager}"
    prom["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] = [am_target]
    for job in prom["scrape_configs"]:
        for sd in job.get("file_sd_configs", []):
            sd["files"] = [str(state / TARGETS_GLOB)]
            if scrape_interval is not None:
                sd["refresh_interval"] = scrape_interval
    (out / "prometheus.yml").write_text(yaml.safe_dump(prom, sort_keys=False))

    am = _load("alertmanager.yml")
    hook = am["receivers"][0]["webhook_configs"][0]
    hook["url"] = f"http://{settings.alerts.host}:{settings.alerts.port}/alerts"
    token_file = out / "alerts.token"
    if settings.alerts.token is None:
        hook.pop("http_config", None)
        token_file.unlink(missing_ok=True)
    else:
        fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(settings.alerts.token.get_secret_value())
        hook["http_config"]["authorization"]["credentials_file"] = str(token_file)
    (out / "alertmanager.yml").write_text(yaml.safe_dump(am, sort_keys=False))
    return out


def commands(out: Path, ports: MonitoringPorts) -> dict[str, list[str]]:
    """argv of both servers over the rendered directory ``out``.

    Raises:
        MonitoringError: a binary is missing.
    """
    return {
        "prometheus": [
            str(binary("prometheus")),
            f"--config.file={out / 'prometheus.yml'}",
            f"--storage.tsdb.path={out / 'prometheus-data'}",
            f"--web.listen-address={ports.host}:{ports.prometheus}",
            f"--web.external-url=http://{ports.host}:{ports.prometheus}",
            "--log.level=warn",
        ],
        "alertmanager": [
            str(binary("prometheus-alertmanager", "alertmanager")),
            f"--config.file={out / 'alertmanager.yml'}",
            f"--storage.path={out / 'alertmanager-data'}",
            f"--web.listen-address={ports.host}:{ports.alertmanager}",
            f"--web.external-url=http://{ports.host}:{ports.alertmanager}",
            "--cluster.listen-address=",
            "--log.level=warn",
        ],
    }


def start(
    out: Path, ports: MonitoringPorts, *, timeout: float = 60.0
) -> dict[str, subprocess.Popen[bytes]]:
    """Start both servers (logs in ``out/<name>.log``) and wait until ``/-/ready`` answers 200.

    Args:
        out: directory from :func:`render`.
        ports: where they listen.
        timeout: seconds to wait for both to be ready.

    Returns:
        The processes by name; stop them with :func:`stop`.

    Raises:
        MonitoringError: a binary is missing, a server exited, or it was not ready in time
            (both are stopped again).
    """
    from starters.devserver import _die_with_parent

    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for name, argv in commands(out, ports).items():
            with (out / f"{name}.log").open("ab") as log:
                procs[name] = subprocess.Popen(
                    argv, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent
                )
        urls = {
            "prometheus": f"http://{ports.host}:{ports.prometheus}/-/ready",
            "alertmanager": f"http://{ports.host}:{ports.alertmanager}/-/ready",
        }
        deadline = time.monotonic() + timeout
        for name, url in urls.items():
            while not _ready(url):
                if procs[name].poll() is not None:
                    raise MonitoringError(f"{name} exited; see {out / (name + '.log')}")
                if time.monotonic() > deadline:
                    raise MonitoringError(f"{name} not ready after {timeout} s at {url}")
                time.sleep(0.2)
    except BaseException:
        stop(procs)
        raise
    return procs


def _ready(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


def stop(procs: dict[str, subprocess.Popen[bytes]], grace_seconds: float = 10.0) -> None:
    """SIGTERM each process, SIGKILL after ``grace_seconds`` seconds."""
    from starters.devserver import stop_process

    for proc in procs.values():
        stop_process(proc, grace_seconds)
