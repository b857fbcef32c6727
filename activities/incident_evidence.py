"""Evidence about an incident's agent (activity ``gather_evidence``): read-only, bounded, noted.

What is gathered, in this order, each as :class:`~fleetops.incidents.EvidenceItem`:

1. ``status``: the agent's state, replicas and recent transitions (``status`` query of
   ``agent/<id>``);
2. ``deployment``: the deployment in progress and how the last one ended (same query);
3. ``metrics``: with ``metrics.prometheus_url``, range queries of the error rate, p95 latency and
   request rate over ``[since, until]``; without it, one direct scrape of every replica's
   ``/metrics`` (counters since each replica started);
4. ``logs``: the last lines of each replica's log (the platform's ``replica_logs``), the
   agent's secret values and what looks like a secret masked (left out, with a note, when the
   values cannot be read).

Each text is cut to ``max_chars_per_item`` characters (logs and series keep their end, the most
recent part) and says so in ``truncated``. A source that fails becomes a ``note`` item saying
what could not be read and why; the activity itself fails only on bad input.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Literal

import httpx
from temporalio import activity
from temporalio.client import Client

from activities.agent_metrics import (
    MetricsUnavailable,
    PrometheusReader,
    agent_queries,
    scrape_all,
    summarize,
)
from activities.agent_secrets import SecretValues
from activities.platform.base import IncidentOps, Platform, PlatformError
from fleetops.constants import agent_workflow_id
from fleetops.converter import invalid_input
from fleetops.incidents import MAX_EVIDENCE_WINDOW_SECONDS, EvidenceItem, EvidenceRequest
from fleetops.llm_guards import Redactor
from fleetops.models import AgentStatus
from fleetops.settings import MetricsSettings

MAX_TRANSITIONS_SHOWN = 20
"""Most recent transitions in the status item."""


def bounded(text: str, limit: int, *, keep: str = "start") -> tuple[str, str | None]:
    """``text`` cut to ``limit`` characters, and the note saying so (None when not cut).

    Args:
        text: the evidence.
        limit: most characters kept (a marker ``…`` counts as one).
        keep: ``start`` or ``end`` (the most recent part of a log or series).
    """
    if len(text) <= limit:
        return text, None
    kept = limit - 1
    out = (text[:kept] + "…") if keep == "start" else ("…" + text[-kept:])
    where = "first" if keep == "start" else "last"
    return out, f"cut {len(text) - kept} of {len(text)} characters; kept the {where} {kept}"


def _ts(t: datetime | float) -> str:
    at = t if isinstance(t, datetime) else datetime.fromtimestamp(t, UTC)
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def status_text(st: AgentStatus) -> str:
    """The ``status`` item: state, replicas with health, recent transitions."""
    healthy = sum(1 for r in st.replicas if r.healthy)
    lines = [
        f"agent {st.agent_id} {st.version}: state {st.state}, {healthy} of {len(st.replicas)} "
        f"replicas healthy (desired {st.desired_replicas}, min {st.min_replicas}, max "
        f"{st.max_replicas}), active colour {st.active_color}",
        "replicas:",
    ]
    for r in st.replicas:
        health = "healthy" if r.healthy else "UNHEALTHY"
        err = f", last error: {r.last_error}" if r.last_error else ""
        lines.append(
            f"  {r.color}-{r.index} {r.version} {r.endpoint}: {health}, "
            f"{r.consecutive_failures} consecutive failed probes{err}"
        )
    lines.append("recent transitions (oldest first):")
    for t in st.transitions[-MAX_TRANSITIONS_SHOWN:]:
        lines.append(f"  {_ts(t.at)} {t.from_state} -> {t.to_state}: {t.reason}")
    c = st.counters
    lines.append(
        f"counters: {c.transitions} transitions, {c.replica_restarts} replica restarts, "
        f"{c.failed_probes} failed probes, {c.deployments} deployments"
    )
    return "\n".join(lines)


def deployment_text(st: AgentStatus) -> str:
    """The ``deployment`` item: the deployment in progress and how the last one ended."""
    lines = []
    if (d := st.deployment) is not None:
        who = f" by {d.requested_by}" if d.requested_by else ""
        lines.append(
            f"deployment in progress: {d.deployment_id} ({d.stable_version} on {d.stable_color} "
            f"-> {d.version} on {d.new_color}), started {_ts(d.started_at)}{who}"
        )
    else:
        lines.append("no deployment in progress")
    if (e := st.last_deployment) is not None:
        how = e.closed_as + (f" ({e.outcome})" if e.outcome else "")
        prev = f"; before it: {e.previous_spec.version}" if e.previous_spec else ""
        lines.append(
            f"last deployment: {e.deployment_id} {how} at {_ts(e.at)}, serving {e.version} on "
            f"{e.active_color}{prev}: {e.message}"
        )
    else:
        lines.append("no deployment has ended yet")
    return "\n".join(lines)


Kind = Literal["alert", "metrics", "status", "deployment", "logs", "note"]


class _Items:
    """The items gathered so far, numbered from ``req.first_ref`` and bounded in size."""

    def __init__(self, req: EvidenceRequest) -> None:
        self._req = req
        self.items: list[EvidenceItem] = []

    def add(
        self, kind: Kind, source: str, text: str, keep: str = "start", cut: str | None = None
    ) -> None:
        """Append one item, cut to ``max_chars_per_item`` (``cut``: a cut made earlier)."""
        body, note = bounded(text, self._req.max_chars_per_item, keep=keep)
        notes = "; ".join(n for n in (cut, note) if n)
        self.items.append(
            EvidenceItem(
                ref=f"E{self._req.first_ref + len(self.items)}",
                kind=kind,
                source=source[:500],
                text=body,
                truncated=notes or None,
                collected_at=datetime.now(UTC),
            )
        )


class EvidenceActivities:
    """Gathers evidence (activity ``gather_evidence``); read-only.

    Args:
        client: a connected client (the agent's ``status`` query).
        platform: the platform (replica logs need :class:`IncidentOps`).
        http: a client without retries for Prometheus and scrapes.
        settings: ``metrics`` settings (Prometheus URL, query timeout in seconds).
        secret_values: the agent's secret values (:class:`activities.agent_secrets.
            AgentSecretValues` in the worker), masked in its replica logs before they are
            recorded, with whatever looks like a secret (:class:`fleetops.llm_guards.Redactor`
            patterns: a deleted version's value cannot be read, so only they catch it).
    """

    def __init__(
        self,
        client: Client,
        platform: Platform,
        http: httpx.AsyncClient,
        settings: MetricsSettings,
        *,
        secret_values: SecretValues | None = None,
    ) -> None:
        self._client = client
        self._platform = platform
        self._http = http
        self._settings = settings
        self._secret_values = secret_values

    @activity.defn(name="gather_evidence")
    async def gather_evidence(self, req: EvidenceRequest) -> list[EvidenceItem]:
        """Collect the evidence the module docstring lists.

        Returns:
            Items numbered ``E<first_ref>``...; a source that failed is a ``note`` item.

        Raises:
            ApplicationError: ``InvalidInput`` (non-retryable): ``since``/``until`` without a
                timezone, ``until`` not after ``since``, or a window longer than one day.
        """
        _check_window(req)
        items = _Items(req)
        add = items.add
        wid = agent_workflow_id(req.agent_id)
        st: AgentStatus | None = None
        try:
            st = await self._client.get_workflow_handle(wid).query(
                "status", result_type=AgentStatus
            )
        except Exception as e:  # any failure (not found, a query error) is a note
            add("note", f"{wid} status query", f"the agent's status could not be read: {e}")
        if st is not None:
            add("status", f"{wid} status query", status_text(st))
            add("deployment", f"{wid} status query", deployment_text(st))
        activity.heartbeat("status read")
        for kind, source, text in await self._metrics(req, st):
            add(kind, source, text, keep="end")
        activity.heartbeat("metrics read")
        await self._logs(req, add)
        return items.items

    async def _metrics(
        self, req: EvidenceRequest, st: AgentStatus | None
    ) -> list[tuple[Kind, str, str]]:
        around = f" (alerts: {', '.join(req.alert_names)})" if req.alert_names else ""
        if self._settings.prometheus_url:
            reader = PrometheusReader(self._http, self._settings)
            out: list[tuple[Kind, str, str]] = []
            window = max(req.step_seconds * 4, 60.0)  # rate() needs several scrapes
            for name, promql in agent_queries(req.agent_id, window).items():
                if name == "requests":
                    continue
                try:
                    points, step = await reader.series(
                        promql, req.since, req.until, req.step_seconds
                    )
                except MetricsUnavailable as e:
                    out.append(("note", f"prometheus: {promql}", f"{name} not read: {e}"))
                    continue
                head = f"{name}{around} from {_ts(req.since)} to {_ts(req.until)}, step {step:g}s"
                rows = [f"  {_ts(t)} {v:.6g}" for t, v in points] or ["  (no data)"]
                out.append(("metrics", f"prometheus: {promql}", "\n".join([head, *rows])))
            return out
        if st is None or not st.replicas:
            return [("note", "scrape", "no replica endpoints to scrape (and no Prometheus set)")]
        endpoints = [r.endpoint for r in st.replicas]
        results = await scrape_all(self._http, endpoints, self._settings.query_timeout_seconds)
        lines = [f"direct scrape of {len(endpoints)} replicas at {_ts(datetime.now(UTC))}{around}"
                 " (counters since each replica started; no Prometheus configured)"]  # fmt: skip
        for r, res in zip(st.replicas, results, strict=True):
            if isinstance(res, str):
                lines.append(f"  {r.color}-{r.index}: not read: {res}")
                continue
            v = summarize(res)
            parts = [f"{k} {val:.6g}" for k, val in v.items()]
            lines.append(f"  {r.color}-{r.index} {r.endpoint}: " + ", ".join(parts))
        return [("metrics", f"scrape of {', '.join(endpoints)}", "\n".join(lines))]

    async def _logs(self, req: EvidenceRequest, add: Callable[..., None]) -> None:
        if not isinstance(self._platform, IncidentOps):
            add("note", "logs", f"replica logs are not readable on {type(self._platform).__name__}")
            return
        mask = Redactor()  # what looks like a secret, even a value the store no longer has
        if self._secret_values is not None:
            try:
                mask = Redactor(await self._secret_values(req.agent_id))
            except Exception as e:  # never record logs that might hold unmasked secrets
                add("note", "logs", f"replica logs left out: the agent's secrets to mask in"
                                    f" them could not be read: {e}")  # fmt: skip
                return
        try:
            tails = await self._platform.replica_logs(
                req.agent_id, lines=req.log_lines, max_bytes=req.max_chars_per_item * 4
            )
        except PlatformError as e:
            add("note", "logs", f"replica logs could not be read: {e}")
            return
        if not tails:
            add("note", "logs", "no replica log files")
        for t in tails:
            cut = f"earlier output left out (last {req.log_lines} lines)" if t.cut else None
            add("logs", t.source, f"replica {t.replica}:\n{mask(t.text)}", keep="end", cut=cut)


def _check_window(req: EvidenceRequest) -> None:
    for name in ("since", "until"):
        if getattr(req, name).tzinfo is None:
            raise invalid_input(f"{name}: give a timezone (e.g. ...Z)", field=name)
    if req.until <= req.since:
        raise invalid_input("until: must be after since", field="until")
    if req.until - req.since > timedelta(seconds=MAX_EVIDENCE_WINDOW_SECONDS):
        raise invalid_input(
            f"until: the window is at most {MAX_EVIDENCE_WINDOW_SECONDS} s after since",
            field="until",
        )
