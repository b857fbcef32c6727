"""Run an :class:`~fleetops.analysis.Analysis` from workflow code (deterministic).

Every metric runs concurrently: its initial delay, then measurements via the ``measure_metric``
activity until :class:`~fleetops.analysis.MetricRun` says it is done. As in Argo Rollouts, the
first metric that completes Failed, Error or Inconclusive ends the run: the other metrics are
cancelled and count as Successful ("run terminated"), and the result is the worst phase.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError, FailureError

with workflow.unsafe.imports_passed_through():
    from activities.metrics import CONFIG_ERROR, MetricsActivities
    from fleetops.analysis import (
        Analysis,
        AnalysisResult,
        Measurement,
        MeasureRequest,
        MetricResult,
        MetricRun,
        classify,
        summarize,
    )
    from fleetops.models import Color
    from workflows.activity_options import call

MEASURE_SLACK = timedelta(seconds=30)
"""Added to a measurement's window for its start-to-close timeout."""
CANCEL_RACE_PATCH = "analysis-stops-when-a-result-races-its-cancel"
"""Patch id: a metric loop whose measurement completed in the same workflow task as its
cancellation stops instead of measuring on. Cancelling an asyncio task whose activity is being
cancelled only requests the activity's cancellation; if the activity's result arrives in that
same activation, the task resumes with the result and the cancellation is lost."""


async def run_analysis(
    analysis: Analysis,
    *,
    agent_id: str,
    color: Color,
    version: str,
    endpoints: list[str],
    on_update: Callable[[list[MetricResult]], None] | None = None,
) -> AnalysisResult:
    """Measure every metric of ``analysis`` until the run is decided.

    Cancel the task awaiting this to abort: pending measurements and timers are cancelled and
    ``asyncio.CancelledError`` propagates.

    Args:
        analysis: the metrics.
        agent_id: substituted for ``$agent_id``; selects the agent's series.
        color: substituted for ``$color``; selects the colour's series.
        version: substituted for ``$version``.
        endpoints: replica base URLs (for the scrape provider).
        on_update: called with a snapshot of every metric after each change (status queries).

    Returns:
        Successful, Failed (a Failed or Error metric) or Inconclusive.

    Raises:
        ActivityError: a metric cannot be measured as configured (``AnalysisConfigError``).
    """
    runs = [MetricRun(m) for m in analysis.metrics]
    stopping: list[bool] = []  # set before the metric tasks are cancelled

    def notify() -> None:
        if on_update is not None:
            on_update([r.result() for r in runs])

    async def run_metric(run: MetricRun) -> None:
        metric = run.metric
        if metric.initial_delay_seconds:
            await workflow.sleep(timedelta(seconds=metric.initial_delay_seconds))
        request = MeasureRequest(
            metric=metric, agent_id=agent_id, color=color, version=version,
            endpoints=endpoints, window_seconds=metric.window,
        )  # fmt: skip
        while True:
            measurement = await _measure(request)
            if stopping and workflow.patched(CANCEL_RACE_PATCH):
                raise asyncio.CancelledError()  # see CANCEL_RACE_PATCH
            run.add(measurement)
            notify()
            if run.done:
                return
            await workflow.sleep(timedelta(seconds=run.next_delay_seconds()))

    notify()
    tasks = {asyncio.ensure_future(run_metric(r)): r for r in runs}
    try:
        pending = list(tasks)
        while pending:
            await workflow.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            done = [t for t in pending if t.done()]  # in metric order: deterministic
            pending = [t for t in pending if not t.done()]
            for task in done:
                task.result()  # a configuration error ends the analysis
            ended = [tasks[t] for t in done if tasks[t].phase != "Successful"]
            if ended:  # Argo: a Failed/Error/Inconclusive metric terminates the run
                for run in runs:
                    run.terminate(f"metric {ended[0].metric.name!r} is {ended[0].phase}")
                break
    except GeneratorExit:  # the worker dropped this run from its cache: nothing may be awaited
        raise
    except BaseException:
        stopping.append(True)
        await _cancel(list(tasks))
        raise
    stopping.append(True)
    await _cancel(list(tasks))
    notify()
    return summarize([r.result() for r in runs])


async def _measure(request: MeasureRequest) -> Measurement:
    """One measurement, classified here; an activity that failed for good is an Error one."""
    try:
        m = await call(
            MetricsActivities.measure_metric,
            request,
            summary=f"measure {request.metric.name} of the {request.color} replicas",
            start_to_close=timedelta(seconds=request.window_seconds) + MEASURE_SLACK,
        )
    except ActivityError as err:
        cause = err.cause
        if isinstance(cause, CancelledError):
            raise asyncio.CancelledError() from err
        if isinstance(cause, ApplicationError) and cause.type == CONFIG_ERROR:
            raise
        why = cause.message if isinstance(cause, FailureError) else err.message
        return Measurement(error=f"measure_metric failed: {why}", phase="Error")
    return classify(request.metric, m.value, m.error)


async def _cancel(tasks: list[asyncio.Future[None]]) -> None:
    """Cancel unfinished tasks and wait for them to end (their activities and timers too)."""
    running = [t for t in tasks if not t.done()]
    for t in running:
        t.cancel()
    if running:
        await asyncio.gather(*running, return_exceptions=True)
