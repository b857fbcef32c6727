"""Analysis: metrics measured repeatedly and judged by conditions, with Argo Rollouts' semantics.

Pure and deterministic (workflows import it). The rules follow argoproj/argo-rollouts:

- A measurement is classified as in ``utils/evaluate/evaluate.go`` (``EvaluateResult``): with both
  conditions set, failure wins, then success, and *neither true is Inconclusive*; with only a
  success condition, "not success" is Failed; with only a failure condition, "not failure" is
  Successful; with neither, Successful. A provider error is an ``Error`` measurement.
- A metric is assessed after every measurement as in ``analysis/analysis.go``
  (``assessMetricStatus`` / ``assessMetricFailureInconclusiveOrError``): Failed when
  ``failed > failure_limit``, Inconclusive when ``inconclusive > inconclusive_limit``, Error when
  ``consecutive_errors > consecutive_error_limit`` (later checks win, as in Argo); otherwise
  Successful once ``count`` measurements were *taken* (errors do not count toward ``count``, they
  only reset on a non-error measurement). Defaults as in Argo: ``failureLimit`` 0,
  ``inconclusiveLimit`` 0, ``consecutiveErrorLimit`` 4 (``utils/defaults``). The Argo docs say
  "failed after three failed measurements" for ``failureLimit: 3``; the code says four (``>``),
  and so do we.
- After an Error measurement the next one comes after ``ERROR_RETRY_SECONDS`` (Argo's
  ``DefaultErrorRetryInterval``), otherwise after ``interval_seconds``.
- A run ends as soon as one metric completes Failed, Error or Inconclusive (``IsTerminating`` in
  ``utils/analysis/helpers.go``); metrics cut short are then Successful ("run terminated"). The
  run's phase is the worst of its metrics in Argo's order Successful < Inconclusive < Error <
  Failed, and an Error run is reported as Failed (an errored analysis aborts an Argo rollout).

Conditions are a small safe subset of Argo's ``expr`` language, see :mod:`fleetops.conditions`.
"""

from __future__ import annotations

from collections.abc import Sequence
from string import Template
from typing import Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from fleetops.conditions import parse_condition
from fleetops.limits import (
    MAX_CONSECUTIVE_ERROR_LIMIT,
    MAX_DURATION_SECONDS,
    MAX_INTERVAL_SECONDS,
    MAX_MEASUREMENT_COUNT,
    MAX_MEASUREMENTS_PER_ANALYSIS,
    MAX_METRICS_PER_ANALYSIS,
    MAX_TEXT_LENGTH,
    Count,
    Seconds,
)
from fleetops.models import Color, FrozenModel

Builtin = Literal["error_rate", "p95_latency_seconds", "request_rate"]
MeasurementPhase = Literal["Successful", "Failed", "Inconclusive", "Error"]
MetricPhase = Literal["Running", "Successful", "Failed", "Inconclusive", "Error"]
AnalysisPhase = Literal["Successful", "Failed", "Inconclusive"]

PLACEHOLDERS = frozenset({"agent_id", "color", "version", "window"})
"""``$names`` a PromQL ``query`` may use (``string.Template``; ``$$`` is a literal ``$``)."""
ERROR_RETRY_SECONDS = 10.0
"""Seconds before the measurement after an Error one (Argo's ``DefaultErrorRetryInterval``)."""
MEASUREMENT_HISTORY = 20
"""Measurements kept per metric (the counters keep counting)."""
_WORST_LAST = ("Successful", "Running", "Inconclusive", "Error", "Failed")


# --- models ---------------------------------------------------------------------------------


def prometheus_duration(seconds: float) -> str:
    """A Prometheus duration for ``seconds``: ``30s``, or ``1500ms`` when not whole seconds."""
    ms = max(1, round(seconds * 1000))
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


class Metric(FrozenModel):
    """One metric of an analysis (Argo's ``AnalysisTemplate.spec.metrics[]``). Times in seconds.

    Bounds (:mod:`fleetops.limits`): interval and window at most 1 day, initial delay at most 30
    days, ``count`` and the failure/inconclusive limits at most 100, ``consecutive_error_limit``
    at most 10; the worst case ``count * (consecutive_error_limit + 1)`` is what
    :class:`Analysis` sums against its budget.
    """

    name: str = Field(min_length=1, max_length=100)
    query: str | None = Field(
        None,
        min_length=1,
        max_length=MAX_TEXT_LENGTH,
        description="PromQL; $agent_id $color $version $window substituted.",
    )
    builtin: Builtin | None = Field(None, description="A measure FleetOps computes itself.")
    success_condition: str | None = Field(
        None, max_length=MAX_TEXT_LENGTH, description="e.g. 'result < 0.05'."
    )
    failure_condition: str | None = Field(
        None, max_length=MAX_TEXT_LENGTH, description="e.g. 'result >= 0.2'."
    )
    interval_seconds: Seconds = Field(
        10.0, gt=0, le=MAX_INTERVAL_SECONDS, description="Between measurements (<= 1 day)."
    )
    count: Count = Field(
        3,
        ge=1,
        le=MAX_MEASUREMENT_COUNT,
        description="Measurements (errors excluded) before Successful (<= 100).",
    )
    failure_limit: Count = Field(
        0, ge=0, le=MAX_MEASUREMENT_COUNT, description="Failed measurements tolerated (<= 100)."
    )
    inconclusive_limit: Count = Field(
        0,
        ge=0,
        le=MAX_MEASUREMENT_COUNT,
        description="Inconclusive measurements tolerated (<= 100).",
    )
    consecutive_error_limit: Count = Field(
        4, ge=0, le=MAX_CONSECUTIVE_ERROR_LIMIT, description="Errors in a row tolerated (<= 10)."
    )
    initial_delay_seconds: Seconds = Field(
        0.0, ge=0, le=MAX_DURATION_SECONDS, description="Before the first measurement (<= 30 d)."
    )
    window_seconds: Seconds | None = Field(
        None,
        gt=0,
        le=MAX_INTERVAL_SECONDS,
        description="Span one measurement covers ($window); unset: interval_seconds (<= 1 day).",
    )

    @field_validator("success_condition", "failure_condition")
    @classmethod
    def _parse(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None  # Argo treats an empty condition as unset
        parse_condition(value)
        return value

    @field_validator("query")
    @classmethod
    def _placeholders(cls, value: str | None) -> str | None:
        if value is not None:
            template = Template(value)
            unknown = set(template.get_identifiers()) - PLACEHOLDERS
            if not template.is_valid() or unknown:
                raise ValueError(
                    f"unknown placeholder(s) {sorted(unknown) or 'after $'}: use "
                    f"{', '.join('$' + p for p in sorted(PLACEHOLDERS))}, or $$ for a literal $"
                )
        return value

    @model_validator(mode="after")
    def _one_source(self) -> Metric:
        if (self.query is None) == (self.builtin is None):
            raise ValueError(f"metric {self.name!r}: set exactly one of query or builtin")
        return self

    @property
    def max_measurements(self) -> int:
        """Most measurements this metric can take: ``count * (consecutive_error_limit + 1)``.

        ``count`` non-error measurements end it, each preceded by at most
        ``consecutive_error_limit`` errors in a row; one more error in a row ends it too.
        """
        return self.count * (self.consecutive_error_limit + 1)

    @property
    def window(self) -> float:
        """Seconds one measurement covers: ``window_seconds``, else ``interval_seconds``."""
        return self.window_seconds or self.interval_seconds

    def render_query(self, *, agent_id: str, color: str, version: str, window: float) -> str:
        """The PromQL ``query`` with its placeholders substituted (``window`` in seconds)."""
        assert self.query is not None, "render_query() needs a query metric"
        return Template(self.query).substitute(
            agent_id=agent_id, color=color, version=version, window=prometheus_duration(window)
        )


class Analysis(FrozenModel):
    """What to measure before (or after) promotion: metrics run concurrently.

    At most :data:`~fleetops.limits.MAX_METRICS_PER_ANALYSIS` metrics, whose worst-case
    measurements (:attr:`Metric.max_measurements`) sum to at most
    :data:`~fleetops.limits.MAX_MEASUREMENTS_PER_ANALYSIS`, so a deployment's history stays
    bounded.
    """

    metrics: list[Metric] = Field(min_length=1, max_length=MAX_METRICS_PER_ANALYSIS)

    @model_validator(mode="after")
    def _unique_names(self) -> Analysis:
        names = [m.name for m in self.metrics]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"metric names must be unique; repeated: {', '.join(duplicates)}")
        worst = sum(m.max_measurements for m in self.metrics)
        if worst > MAX_MEASUREMENTS_PER_ANALYSIS:
            raise ValueError(
                f"the metrics may take up to {worst} measurements (count * "
                f"(consecutive_error_limit + 1), summed); at most "
                f"{MAX_MEASUREMENTS_PER_ANALYSIS} are allowed: lower count or "
                "consecutive_error_limit"
            )
        return self


class MeasureRequest(FrozenModel):
    """Input of the ``measure_metric`` activity: one measurement of one metric."""

    metric: Metric
    agent_id: str
    color: Color
    version: str
    endpoints: list[str] = Field(default_factory=list, description="Replica base URLs (scrape).")
    window_seconds: float = Field(10.0, gt=0, description="Span the measurement covers.")


class _Result(FrozenModel):
    # +Inf is a real answer (a p95 beyond the last bucket): keep it through JSON.
    model_config = ConfigDict(ser_json_inf_nan="strings")


class Measurement(_Result):
    """One measurement: a value (or an error) and its classification."""

    value: float | None = None
    error: str | None = None
    phase: MeasurementPhase


class MetricResult(_Result):
    """A metric so far (``phase`` Running) or finished, with its recent measurements."""

    name: str
    phase: MetricPhase = "Running"
    measurements: list[Measurement] = Field(default_factory=list)
    successful: int = 0
    failed: int = 0
    inconclusive: int = 0
    errors: int = 0
    consecutive_errors: int = 0
    message: str = ""


class AnalysisResult(_Result):
    """Outcome of an analysis; Inconclusive goes to a human (the approval gate)."""

    phase: AnalysisPhase
    metrics: list[MetricResult]
    message: str


# --- judging --------------------------------------------------------------------------------


def classify(metric: Metric, value: float | None, error: str | None) -> Measurement:
    """Classify one measured value as Argo's ``EvaluateResult`` does.

    Args:
        metric: whose ``success_condition``/``failure_condition`` judge the value.
        value: the measured value, or None when there is none.
        error: why there is no value; makes an ``Error`` measurement.

    Returns:
        The measurement with its phase.
    """
    if error is not None or value is None:
        return Measurement(value=value, error=error or "no value", phase="Error")
    success, failure = metric.success_condition, metric.failure_condition
    ok = success is not None and parse_condition(success).evaluate(value)
    bad = failure is not None and parse_condition(failure).evaluate(value)
    if success is None:
        ok = not bad
    elif failure is None:
        bad = not ok
    phase: MeasurementPhase = "Failed" if bad else "Successful" if ok else "Inconclusive"
    return Measurement(value=value, phase=phase)


class MetricRun:
    """Folds a metric's measurements and says when it is done (Argo's ``assessMetricStatus``)."""

    def __init__(self, metric: Metric) -> None:
        self.metric = metric
        self.phase: MetricPhase = "Running"
        self.message = ""
        self.measurements: list[Measurement] = []
        self.successful = self.failed = self.inconclusive = 0
        self.errors = self.consecutive_errors = 0

    @property
    def done(self) -> bool:
        """Whether the metric has completed (any phase but Running)."""
        return self.phase != "Running"

    def add(self, m: Measurement) -> MetricPhase:
        """Record a measurement and reassess; returns the metric's phase."""
        if self.done:
            raise ValueError(f"metric {self.metric.name!r} is already {self.phase}")
        if m.phase == "Error":
            self.errors += 1
            self.consecutive_errors += 1
        else:
            self.consecutive_errors = 0
            field = m.phase.lower()
            setattr(self, field, getattr(self, field) + 1)
        self.measurements = [*self.measurements, m][-MEASUREMENT_HISTORY:]
        self.phase, self.message = self._assess()
        if self.phase == "Error" and m.error:
            self.message += f": {m.error}"
        return self.phase

    def _assess(self) -> tuple[MetricPhase, str]:
        m = self.metric
        verdict: tuple[MetricPhase, str] = ("Running", "")
        checks: list[tuple[MetricPhase, str, int, str, int]] = [
            ("Failed", "failed", self.failed, "failure_limit", m.failure_limit),
            ("Inconclusive", "inconclusive", self.inconclusive, "inconclusive_limit",
             m.inconclusive_limit),
            ("Error", "consecutive_errors", self.consecutive_errors, "consecutive_error_limit",
             m.consecutive_error_limit),
        ]  # fmt: skip
        for phase, name, value, limit_name, limit in checks:  # later checks win, as in Argo
            if value > limit:
                verdict = (phase, f"{name} ({value}) > {limit_name} ({limit})")
        if verdict[0] == "Running" and self.successful + self.failed + self.inconclusive >= m.count:
            verdict = ("Successful", f"count ({m.count}) reached")
        return verdict

    def terminate(self, reason: str) -> None:
        """End a still-running metric because the run ends: Successful, as in Argo."""
        if not self.done:
            self.phase, self.message = "Successful", f"run terminated: {reason}"

    def next_delay_seconds(self) -> float:
        """Seconds until the next measurement: the interval, or the error retry interval."""
        if self.measurements and self.measurements[-1].phase == "Error":
            return ERROR_RETRY_SECONDS
        return self.metric.interval_seconds

    def result(self) -> MetricResult:
        """A snapshot for status queries and the final result."""
        return MetricResult(
            name=self.metric.name, phase=self.phase, measurements=list(self.measurements),
            successful=self.successful, failed=self.failed, inconclusive=self.inconclusive,
            errors=self.errors, consecutive_errors=self.consecutive_errors, message=self.message,
        )  # fmt: skip


def summarize(results: Sequence[MetricResult]) -> AnalysisResult:
    """The run's outcome: the worst metric phase, an Error metric counting as Failed.

    Raises:
        ValueError: no results, or a metric still Running (``MetricRun.terminate`` it first).
    """
    running = [r.name for r in results if r.phase == "Running"]
    if not results or running:
        raise ValueError(f"summarize needs finished metrics; still running: {running}")
    worst = max(results, key=lambda r: _WORST_LAST.index(r.phase))
    if worst.phase == "Successful":
        return AnalysisResult(
            phase="Successful", metrics=list(results),
            message=f"{len(results)} metric(s) successful",
        )  # fmt: skip
    phase: AnalysisPhase = "Inconclusive" if worst.phase == "Inconclusive" else "Failed"
    message = f"metric {worst.name!r} assessed {worst.phase} due to {worst.message}"
    return AnalysisResult(phase=phase, metrics=list(results), message=message)
