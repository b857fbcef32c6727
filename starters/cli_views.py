"""What ``fleetops agent status`` and ``fleetops deploy-status`` draw (rich renderables).

The same view is printed once, or redrawn by ``--watch`` (:mod:`starters.cli_live`).
"""

from __future__ import annotations

from datetime import UTC, datetime

from rich.console import Group, RenderableType
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from fleetops.deploy import DeploymentStatus
from fleetops.models import AgentStatus

MEASUREMENTS_SHOWN = 5
"""Most recent measurements shown per analysis metric."""


def agent_view(st: AgentStatus) -> RenderableType:
    """An agent: state, replicas with health, counters, the last 10 transitions."""
    healthy = sum(1 for r in st.replicas if r.healthy)
    parts: list[RenderableType] = [
        f"[bold]{st.agent_id}[/bold] {escape(st.version)}: [bold]{st.state}[/bold] on "
        f"{st.active_color}, {healthy}/{len(st.replicas)} replicas healthy, "
        f"{st.desired_replicas} desired (min {st.min_replicas}, max {st.max_replicas})"
    ]
    if st.deployment is not None:
        d = st.deployment
        parts.append(
            f"deployment in progress: {escape(d.deployment_id)} ({escape(d.stable_version)} on "
            f"{d.stable_color} -> {escape(d.version)} on {d.new_color})"
        )
    if st.last_rejection:
        parts.append(Text(f"last rejected request: {st.last_rejection}", style="yellow"))
    table = Table("index", "endpoint", "pid", "healthy", "failures", "in-flight", "last error")
    for r in st.replicas:
        table.add_row(
            str(r.index),
            escape(r.endpoint),
            str(r.pid) if r.pid is not None else "-",
            "[green]yes[/green]" if r.healthy else "[red]no[/red]",
            str(r.consecutive_failures),
            str(r.in_flight),
            escape(r.last_error or ""),
        )
    parts.append(table)
    probed = [r.probed_at for r in st.replicas if r.probed_at is not None]
    if probed:  # health.probing: data-plane reports results only on changes (and hourly)
        last = max(probed)
        age = (datetime.now(UTC) - last).total_seconds()
        note = f"health as last reported by the prober: {last:%H:%M:%S} ({age:.0f} s ago)"
        parts.append(Text(note))
    counters = ", ".join(f"{k}={v}" for k, v in st.counters.model_dump().items())
    parts.append(Text(f"counters: {counters}"))
    transitions = Table("at", "from", "to", "reason", title="last transitions")
    for t in st.transitions[-10:]:
        at = t.at.isoformat(timespec="seconds")
        transitions.add_row(at, str(t.from_state), str(t.to_state), escape(t.reason))
    parts.append(transitions)
    return Group(*parts)


def deployment_view(st: DeploymentStatus) -> RenderableType:
    """A deployment: phase, colours, phase history, analyses with recent measurements."""
    parts: list[RenderableType] = [
        Text(f"{st.deployment_id}: {st.phase} (outcome: {st.outcome or 'running'})"),
        Text(
            f"stable {st.stable_version} on {st.stable_color}, new {st.version} on {st.new_color}"
        ),
    ]
    if st.service:
        preview = f", preview {st.service.preview_color}" if st.service.preview_color else ""
        parts.append(Text(f"active {st.service.active_color} at {st.service.active_url}{preview}"))
    phases = Table("phase", "started", "ended", "detail")
    for p in st.phases:
        ended = p.ended_at.isoformat(timespec="seconds") if p.ended_at else ""
        phases.add_row(p.phase, p.started_at.isoformat(timespec="seconds"), ended, escape(p.detail))
    parts.append(phases)
    if st.analyses:
        metrics = Table("analysis", "metric", "phase", "ok/failed/inconclusive/errors", "recent")
        for name, result in st.analyses.items():
            for m in result.metrics:
                recent = " ".join(
                    "err" if x.value is None else f"{x.value:g}"
                    for x in m.measurements[-MEASUREMENTS_SHOWN:]
                )
                counts = f"{m.successful}/{m.failed}/{m.inconclusive}/{m.errors}"
                metrics.add_row(f"{name} ({result.phase})", m.name, m.phase, counts, recent)
        parts.append(metrics)
    if st.pending_approval:
        parts.append(Text(f"waiting for approval: {st.pending_approval.question}"))
    if st.message:
        parts.append(Text(st.message))
    return Group(*parts)
