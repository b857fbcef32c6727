"""Analysis semantics (Argo Rollouts') as pure functions, and ``run_analysis`` in a workflow.

The workflow tests run ``AnalysisProbe`` on the time-skipping server with a stand-in
``measure_metric`` that returns scripted, *unclassified* values (phase always "Successful"), so
they also show that the workflow classifies measurements itself. The probe runs unsandboxed for
speed; one history is replayed in the sandbox (determinism and sandbox-safety).
"""

from __future__ import annotations

import asyncio
import math
import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from temporalio import activity, workflow

with workflow.unsafe.imports_passed_through():
    import pytest
    from pydantic import ValidationError
    from temporalio.api.enums.v1 import EventType, WorkflowTaskFailedCause
    from temporalio.client import WorkflowFailureError, WorkflowHistory
    from temporalio.exceptions import ActivityError, ApplicationError
    from temporalio.testing import WorkflowEnvironment
    from temporalio.worker import Replayer, UnsandboxedWorkflowRunner, Worker

    from fleetops.analysis import (
        Analysis,
        AnalysisResult,
        Measurement,
        MeasureRequest,
        Metric,
        MetricResult,
        MetricRun,
        classify,
        prometheus_duration,
        summarize,
    )
    from fleetops.conditions import ConditionError, parse_condition
    from fleetops.converter import data_converter
    from fleetops.models import FrozenModel
    from tests.conftest import assert_eventually, new_worker
    from tests.helpers import result_within
    from workflows.analysis_run import run_analysis

OK, BAD, INC, ERR = "Successful", "Failed", "Inconclusive", "Error"


@pytest.fixture(autouse=True)
def _parse_afresh() -> None:
    """``parse_condition`` is memoised: start each test with an empty cache, so every test runs
    the parser itself (and mutation testing sees what each test parses)."""
    parse_condition.cache_clear()


# --- conditions -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value", "expected"),
    [
        ("result < 0.05", 0.01, True),
        ("result < 0.05", 0.05, False),
        ("result <= 0.05", 0.05, True),
        ("result[0] >= 0.95", 0.97, True),  # Argo's Prometheus examples index the vector
        ("result > 2", 2.0, False),
        ("result == 0", 0.0, True),
        ("result != 0", 0.0, False),
        ("0.5 > result", 0.4, True),
        ("result >= -1e-3", -0.0005, True),
        ("result < .5", 0.25, True),
        ("result > 0.9 and result < 1.1", 1.0, True),
        ("result > 0.9 && result < 1.1", 1.2, False),
        ("result > 0.9 and result < 1.1", 0.5, False),  # the left side counts too
        ("result < 1 or result > 5", 6.0, True),
        ("result < 1 || result > 5", 3.0, False),
        # and binds tighter than or: 0.5 < 1 holds, whatever the right-hand 'and' says
        ("result < 1 or result > 5 and result < 3", 0.5, True),
        ("result < 1 or result > 5 and result < 3", 6.0, False),
        ("(result < 1 or result > 5) and result < 3", 6.0, False),
        ("(result < 1 or result > 5) and result < 3", 0.5, True),
        ("((result >= 0))", 0.0, True),
        ("result < 1", math.nan, False),  # NaN compares false, as in Go
        ("result != 1", math.nan, True),
    ],
)
def test_condition_evaluates(text: str, value: float, expected: bool) -> None:
    assert parse_condition(text).evaluate(value) is expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "a condition cannot be empty; omit it instead"),
        ("result", "expected a comparison (< <= > >= == !=), found the end at column 7"),
        ("result <", "expected 'result' or a number, found the end at column 9"),
        ("result < 1 and", "expected 'result' or a number, found the end at column 15"),
        ("result < 1 &&", "expected 'result' or a number, found the end at column 14"),
        ("result < 1 ||", "expected 'result' or a number, found the end at column 14"),
        ("(result < 1", "expected ')', found the end at column 12"),
        ("(result < 1 or result > 2", "expected ')', found the end at column 26"),
        ("result < 1)", "expected 'and', 'or' or the end, found ) at column 11"),
        ("result < 1 < 2", "expected 'and', 'or' or the end, found < at column 12"),
        ("result < (1)", "expected 'result' or a number, found ( at column 10"),
        ("result = 1", "unexpected '= 1' at column 8"),
        ("result[1] > 0", "only result[0] exists (a measurement is one value) at column 1"),
        ("1 < 2", "a comparison needs 'result' on one side at column 3"),
        ("results < 1", "unexpected 'results < 1' at column 1"),
        ("len(result) > 0", "unexpected 'len(result) ' at column 1"),  # 12 characters shown
        ("__import__('os').system('true')", 'unexpected "__import__(\'" at column 1'),
        ("not result < 1", "unexpected 'not result <' at column 1"),
        ("result <= 0.5 and result > 0.1 extra", "unexpected 'extra' at column 32"),
    ],
    ids=lambda v: "".join(c if c.isalnum() else "_" for c in v)[:40],
)
def test_invalid_condition_rejected(text: str, message: str) -> None:
    with pytest.raises(ConditionError) as exc:
        parse_condition(text)
    if text:
        message += (
            f" of {text!r}; write conditions like 'result < 0.05' or "
            "'result >= 0.9 and result[0] < 2'"
        )
    assert str(exc.value) == message


# --- models -----------------------------------------------------------------------------------


def test_bad_condition_fails_validation_naming_the_field() -> None:
    with pytest.raises(ValidationError, match=r"failure_condition") as exc:
        Analysis.model_validate(
            {"metrics": [{"name": "e", "builtin": "error_rate", "failure_condition": "result >"}]}
        )
    [error] = exc.value.errors()
    assert error["loc"] == ("metrics", 0, "failure_condition")
    assert "expected 'result' or a number" in error["msg"]


def test_bad_condition_fails_a_deployment_request() -> None:
    from fleetops.deploy import DeploymentRequest

    with pytest.raises(ValidationError, match=r"pre_promotion_analysis") as exc:
        DeploymentRequest.model_validate(
            {
                "agent_id": "a",
                "version": "v2",
                "pre_promotion_analysis": {
                    "metrics": [{"name": "e", "builtin": "error_rate", "success_condition": "x"}]
                },
            }
        )
    locs = [e["loc"] for e in exc.value.errors()]
    assert ("pre_promotion_analysis", "metrics", 0, "success_condition") in locs


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"name": "m"}, "set exactly one of query or builtin"),
        ({"name": "m", "builtin": "error_rate", "query": "up"}, "set exactly one"),
        ({"name": "m", "query": "up{a='$agent'}"}, "unknown placeholder(s) ['agent']"),
        ({"name": "m", "query": "up $"}, "unknown placeholder"),
        ({"name": "m", "builtin": "latency"}, "Input should be"),
        ({"name": "m", "builtin": "error_rate", "interval_seconds": 0}, "greater than 0"),
        ({"name": "m", "builtin": "error_rate", "count": 0}, "greater than or equal to 1"),
        ({"name": "m", "builtin": "error_rate", "failure_limit": -1}, "greater than or equal"),
    ],
)
def test_invalid_metric(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)):
        Metric.model_validate(spec)


def test_analysis_needs_unique_names_and_a_metric() -> None:
    m = {"name": "m", "builtin": "error_rate"}
    with pytest.raises(ValidationError, match="repeated: m"):
        Analysis.model_validate({"metrics": [m, m]})
    with pytest.raises(ValidationError, match="at least 1 item"):
        Analysis.model_validate({"metrics": []})


def test_metric_defaults_are_argos() -> None:
    m = Metric(name="m", builtin="request_rate", success_condition="  ")
    assert (m.failure_limit, m.inconclusive_limit, m.consecutive_error_limit) == (0, 0, 4)
    assert (m.interval_seconds, m.count, m.initial_delay_seconds) == (10.0, 3, 0.0)
    assert m.success_condition is None  # empty means unset, as in Argo
    assert m.window == 10.0


def test_query_placeholders_substituted() -> None:
    m = Metric(
        name="q",
        query='sum(rate(x{a="$agent_id",c="${color}",v="$version"}[$window])) > $$5',
        window_seconds=30,
    )
    rendered = m.render_query(agent_id="bot", color="green", version="v2", window=m.window)
    assert rendered == 'sum(rate(x{a="bot",c="green",v="v2"}[30s])) > $5'
    assert [prometheus_duration(s) for s in (30, 2.5, 0.0001, 600)] == [
        "30s",
        "2500ms",
        "1ms",
        "600s",
    ]


def test_measurement_infinity_survives_json() -> None:
    result = AnalysisResult(
        phase="Failed",
        metrics=[MetricResult(name="p95", measurements=[Measurement(value=math.inf, phase=BAD)])],
        message="",
    )
    converter = data_converter().payload_converter
    [back] = converter.from_payloads(converter.to_payloads([result]), [AnalysisResult])
    assert back.metrics[0].measurements[0].value == math.inf


# --- classification (Argo's EvaluateResult) ---------------------------------------------------


@pytest.mark.parametrize(
    ("success", "failure", "value", "phase"),
    [
        (None, None, 123.0, "Successful"),  # no conditions: always successful
        ("result < 0.05", None, 0.01, "Successful"),
        ("result < 0.05", None, 0.5, "Failed"),  # only success: not success is failure
        (None, "result > 0.2", 0.1, "Successful"),  # only failure: not failure is success
        (None, "result > 0.2", 0.3, "Failed"),
        ("result >= 0.9", "result < 0.5", 0.95, "Successful"),
        ("result >= 0.9", "result < 0.5", 0.3, "Failed"),
        ("result >= 0.9", "result < 0.5", 0.7, "Inconclusive"),  # neither holds
        ("result >= 0", "result >= 0", 1.0, "Failed"),  # both hold: failure wins
    ],
)
def test_classify(success: str | None, failure: str | None, value: float, phase: str) -> None:
    metric = Metric(
        name="m", builtin="error_rate", success_condition=success, failure_condition=failure
    )
    m = classify(metric, value, None)
    assert (m.phase, m.value, m.error) == (phase, value, None)


def test_classify_error() -> None:
    metric = Metric(name="m", builtin="error_rate", success_condition="result < 1")
    assert classify(metric, None, "no data") == Measurement(error="no data", phase="Error")
    assert classify(metric, None, None).error == "no value"


# --- limits (Argo's assessMetricStatus) -------------------------------------------------------


def fold(metric: Metric, phases: list[str]) -> tuple[MetricRun, int]:
    """Feed measurements until the metric is done; returns the run and how many it took."""
    run = MetricRun(metric)
    for taken, phase in enumerate(phases, 1):
        error = "x" if phase == ERR else None
        run.add(Measurement(value=None if error else 1.0, error=error, phase=phase))  # type: ignore[arg-type]
        if run.done:
            return run, taken
    return run, len(phases)


@pytest.mark.parametrize(
    ("limits", "phases", "expected", "taken", "reason"),
    [
        ({"count": 3}, [OK, OK, OK], OK, 3, "count (3) reached"),
        ({"count": 3}, [OK, BAD, OK], BAD, 2, "failed (1) > failure_limit (0)"),
        # Argo docs' total-errors example: failureLimit 3 fails on the 4th failed measurement
        ({"count": 10, "failure_limit": 3}, [BAD, BAD, BAD, OK, BAD], BAD, 5, "failed (4) > fail"),
        ({"count": 3, "failure_limit": 1}, [BAD, OK, OK], OK, 3, "count (3) reached"),
        ({"count": 3}, [INC], INC, 1, "inconclusive (1) > inconclusive_limit (0)"),
        ({"count": 3, "inconclusive_limit": 1}, [INC, OK, OK], OK, 3, "count (3) reached"),
        ({"count": 3, "inconclusive_limit": 1}, [OK, INC, INC], INC, 3, "inconclusive (2)"),
        ({"count": 3}, [ERR] * 5, ERR, 5, "consecutive_errors (5) > consecutive_error_limit (4)"),
        # errors do not count toward count; a non-error measurement resets the streak
        ({"count": 3}, [ERR, ERR, ERR, ERR, OK, ERR, OK, OK], OK, 8, "count (3) reached"),
        ({"count": 5}, [ERR, ERR, OK, ERR, ERR, ERR, ERR, ERR], ERR, 8, "consecutive_errors (5)"),
        ({"count": 3, "consecutive_error_limit": 0}, [ERR], ERR, 1, "consecutive_errors (1) > "),
        ({"count": 2, "failure_limit": 5}, [BAD, BAD], OK, 2, "count (2) reached"),  # tolerated
    ],
)  # fmt: skip
def test_limits(
    limits: dict[str, int], phases: list[str], expected: str, taken: int, reason: str
) -> None:
    run, n = fold(Metric(name="m", builtin="error_rate", **limits), phases)
    assert (run.phase, n) == (expected, taken)
    assert run.message.startswith(reason)
    result = run.result()
    assert result.successful + result.failed + result.inconclusive + result.errors == n


def test_run_bookkeeping() -> None:
    run = MetricRun(Metric(name="m", builtin="error_rate", count=25, interval_seconds=3))
    run.add(Measurement(error="boom", phase="Error"))
    assert run.next_delay_seconds() == 10.0  # Argo's DefaultErrorRetryInterval
    for _ in range(24):
        run.add(Measurement(value=0.0, phase="Successful"))
    assert run.next_delay_seconds() == 3
    assert not run.done and len(run.result().measurements) == 20  # history is bounded
    run.terminate("metric 'x' is Failed")
    assert (run.phase, run.message) == ("Successful", "run terminated: metric 'x' is Failed")
    with pytest.raises(ValueError, match="already Successful"):
        run.add(Measurement(value=0.0, phase="Successful"))


# --- summarize (worst phase wins; Error counts as Failed) ------------------------------------


def finished(name: str, phase: str, message: str = "why") -> MetricResult:
    return MetricResult(name=name, phase=phase, message=message)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("phases", "expected", "named"),
    [
        ([OK, OK], OK, None),
        ([OK, INC], INC, "b"),
        ([INC, ERR], BAD, "b"),  # Error is worse than Inconclusive, and fails the run
        ([ERR, BAD, INC], BAD, "b"),  # Failed is the worst
        ([BAD, BAD], BAD, "a"),  # ties: the first metric is named
    ],
)
def test_summarize(phases: list[str], expected: str, named: str | None) -> None:
    results = [finished(n, p) for n, p in zip("abc", phases, strict=False)]
    summary = summarize(results)
    assert summary.phase == expected and summary.metrics == results
    if named is None:
        assert summary.message == f"{len(phases)} metric(s) successful"
    else:
        worst = phases["abc".index(named)]
        assert summary.message == f"metric {named!r} assessed {worst} due to why"


def test_summarize_needs_finished_metrics() -> None:
    with pytest.raises(ValueError, match=r"still running: \['b'\]"):
        summarize([finished("a", OK), finished("b", "Running")])
    with pytest.raises(ValueError, match=r"summarize needs finished metrics; still running: \[\]"):
        summarize([])


# --- run_analysis in a workflow ------------------------------------------------------------------


class ProbeInput(FrozenModel):
    analysis: Analysis


@workflow.defn(name="AnalysisProbe")
class AnalysisProbe:
    """Runs one analysis; the ``abort`` signal cancels it (the workflow then returns None)."""

    def __init__(self) -> None:
        self.updates: list[list[MetricResult]] = []
        self.aborted = False

    @workflow.run
    async def run(self, inp: ProbeInput) -> AnalysisResult | None:
        task = asyncio.ensure_future(
            run_analysis(
                inp.analysis, agent_id="bot", color="green", version="v2",
                endpoints=["http://127.0.0.1:1"], on_update=self.updates.append,
            )
        )  # fmt: skip
        await workflow.wait_condition(lambda: task.done() or self.aborted)
        if task.done():
            return task.result()
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            return None
        raise AssertionError("run_analysis swallowed the cancellation")

    @workflow.signal
    def abort(self) -> None:
        self.aborted = True

    @workflow.query
    def update_count(self) -> int:
        return len(self.updates)


@dataclass
class Scripted:
    """Stand-in ``measure_metric``: values per metric (str: error; Exception: raised;
    ``"hang"``: until cancelled; ``"block"``: 1.0 once ``release`` is set)."""

    script: dict[str, list[Any]]
    calls: list[tuple[str, datetime]] = field(default_factory=list)
    requests: list[MeasureRequest] = field(default_factory=list)
    started: asyncio.Event = field(default_factory=asyncio.Event)
    blocked: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    @activity.defn(name="measure_metric")
    async def measure(self, req: MeasureRequest) -> Measurement:
        self.calls.append((req.metric.name, activity.info().current_attempt_scheduled_time))
        self.requests.append(req)
        values = self.script[req.metric.name]
        item = values.pop(0) if len(values) > 1 else values[0]
        if item == "hang":
            self.started.set()
            while True:  # until cancelled (heartbeats deliver the cancellation)
                activity.heartbeat()
                await asyncio.sleep(0.05)
        if item == "block":
            self.blocked.set()
            await self.release.wait()
            item = 1.0
        if isinstance(item, Exception):
            raise item
        if isinstance(item, str):
            return Measurement(error=item, phase="Error")
        return Measurement(value=item, phase="Successful")  # unclassified on purpose

    def times(self, name: str) -> list[float]:
        ts = [t for n, t in self.calls if n == name]
        return [(t - ts[0]).total_seconds() for t in ts]


def probe_worker(env: WorkflowEnvironment, fake: Scripted) -> Worker:
    """A worker for ``AnalysisProbe``, unsandboxed to keep these tests fast (the sandbox costs
    seconds per run on a loaded machine); the replay test runs it in the sandbox."""
    return new_worker(
        env.client,
        workflows=[AnalysisProbe],
        activities=[fake.measure],
        workflow_runner=UnsandboxedWorkflowRunner(),
    )


async def run_probe(
    env: WorkflowEnvironment, script: dict[str, list[Any]], metrics: list[dict[str, Any]]
) -> tuple[AnalysisResult | None, Scripted, str]:
    fake = Scripted(script)
    inp = ProbeInput(analysis=Analysis.model_validate({"metrics": metrics}))
    async with probe_worker(env, fake) as w:
        handle = await env.client.start_workflow(
            AnalysisProbe.run, inp, id=f"analysis-{uuid.uuid4()}", task_queue=w.task_queue
        )
        result = await result_within(handle.result())
        assert await handle.query(AnalysisProbe.update_count) >= 2
    return result, fake, handle.id


ERRORS = {"name": "errors", "builtin": "error_rate", "success_condition": "result < 0.05"}


async def test_successful_analysis(env: WorkflowEnvironment) -> None:
    latency = {"name": "latency", "builtin": "p95_latency_seconds",
               "success_condition": "result < 0.5", "failure_condition": "result > 2",
               "interval_seconds": 30, "count": 2, "initial_delay_seconds": 60}  # fmt: skip
    result, fake, _ = await run_probe(
        env, {"errors": [0.01, 0.0, 0.02], "latency": [0.1]}, [ERRORS, latency]
    )
    assert result is not None and result.phase == "Successful", result
    assert [(m.name, m.phase, m.successful) for m in result.metrics] == [
        ("errors", "Successful", 3), ("latency", "Successful", 2)
    ]  # fmt: skip
    assert fake.times("errors") == pytest.approx([0, 10, 20], abs=1)
    assert fake.times("latency") == pytest.approx([0, 30], abs=1)
    first = {n: t for n, t in reversed(fake.calls)}
    assert (first["latency"] - first["errors"]).total_seconds() == pytest.approx(60, abs=1)
    req = fake.requests[0]
    assert (req.agent_id, req.color, req.version, req.window_seconds) == ("bot", "green", "v2", 10)


async def test_failed_early_at_failure_limit_plus_one(env: WorkflowEnvironment) -> None:
    slow = {"name": "rate", "builtin": "request_rate", "interval_seconds": 3600, "count": 5}
    metric = {**ERRORS, "failure_limit": 1, "count": 10}
    result, fake, wf_id = await run_probe(
        env, {"errors": [0.5, 0.0, 0.3, 0.0], "rate": [5.0]}, [metric, slow]
    )
    assert result is not None and result.phase == "Failed"
    errors, rate = result.metrics
    assert (errors.phase, errors.failed, errors.successful) == ("Failed", 2, 1)
    assert [m.phase for m in errors.measurements] == ["Failed", "Successful", "Failed"]
    assert result.message == "metric 'errors' assessed Failed due to failed (2) > failure_limit (1)"
    assert (rate.phase, rate.message) == ("Successful", "run terminated: metric 'errors' is Failed")
    assert len(fake.calls) == 4  # 3 x errors, 1 x rate; the hour-long timer was cancelled
    history = await env.client.get_workflow_handle(wf_id).fetch_history()
    await Replayer(workflows=[AnalysisProbe], data_converter=data_converter()).replay_workflow(
        history
    )


async def test_inconclusive_analysis(env: WorkflowEnvironment) -> None:
    metric = {**ERRORS, "failure_condition": "result > 0.2", "inconclusive_limit": 1}
    result, fake, _ = await run_probe(env, {"errors": [0.01, 0.1, 0.1]}, [metric])
    assert result is not None and result.phase == "Inconclusive"
    assert result.metrics[0].inconclusive == 2 and len(fake.calls) == 3
    assert "inconclusive (2) > inconclusive_limit (1)" in result.message


async def test_consecutive_errors_fail_the_analysis(env: WorkflowEnvironment) -> None:
    metric = {**ERRORS, "interval_seconds": 60, "consecutive_error_limit": 2}
    script = {"errors": [0.0, "no data", "no data", "no data"]}
    result, fake, _ = await run_probe(env, script, [metric])
    assert result is not None and result.phase == "Failed"
    assert result.metrics[0].phase == "Error" and result.metrics[0].errors == 3
    assert result.message == (
        "metric 'errors' assessed Error due to "
        "consecutive_errors (3) > consecutive_error_limit (2): no data"
    )
    # after an error the next measurement comes after Argo's 10 s, not the 60 s interval
    assert fake.times("errors") == pytest.approx([0, 60, 70, 80], abs=1)


async def test_activity_failure_is_an_error_measurement(env: WorkflowEnvironment) -> None:
    metric = {**ERRORS, "consecutive_error_limit": 0}
    result, fake, _ = await run_probe(env, {"errors": [RuntimeError("prometheus down")]}, [metric])
    assert result is not None and result.phase == "Failed"
    assert len(fake.calls) == 2  # maximum_attempts=2
    assert "measure_metric failed: prometheus down" in result.message


async def test_configuration_error_fails_the_workflow(env: WorkflowEnvironment) -> None:
    bad = ApplicationError("no prometheus", type="AnalysisConfigError", non_retryable=True)
    with pytest.raises(WorkflowFailureError, match="execution failed") as exc:
        await run_probe(env, {"errors": [bad]}, [ERRORS])
    cause = exc.value.cause
    assert isinstance(cause, ActivityError) and isinstance(cause.cause, ApplicationError)
    assert cause.cause.type == "AnalysisConfigError"


async def test_cancellation_stops_measurements(isolated_env: WorkflowEnvironment) -> None:
    env = isolated_env  # a cancelled activity on a shared test server can stall other tests
    fake = Scripted({"errors": ["hang"], "rate": [1.0]})
    rate = {"name": "rate", "builtin": "request_rate", "interval_seconds": 600, "count": 80}
    inp = ProbeInput(analysis=Analysis.model_validate({"metrics": [ERRORS, rate]}))
    async with probe_worker(env, fake) as w:
        handle = await env.client.start_workflow(
            AnalysisProbe.run, inp, id=f"analysis-{uuid.uuid4()}", task_queue=w.task_queue
        )
        await asyncio.wait_for(fake.started.wait(), timeout=10)
        await handle.signal(AnalysisProbe.abort)
        assert await result_within(handle.result()) is None
        history = await handle.fetch_history()
    events = [e.event_type for e in history.events]
    # UNHANDLED_COMMAND is the server asking for another task because an event (a measurement
    # completing) arrived while the workflow task ran; any other cause is a bug.
    failed = [
        e.workflow_task_failed_event_attributes
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED
        and e.workflow_task_failed_event_attributes.cause
        != WorkflowTaskFailedCause.WORKFLOW_TASK_FAILED_CAUSE_UNHANDLED_COMMAND
    ]
    assert not failed, failed
    signalled = events.index(EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED)
    after = events[signalled:]
    assert EventType.EVENT_TYPE_ACTIVITY_TASK_CANCEL_REQUESTED in after  # the hanging measurement
    assert EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED not in after  # and nothing new
    assert after[-1] == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED


async def test_a_measurement_racing_the_cancellation_does_not_resume_the_analysis(
    isolated_env: WorkflowEnvironment,
) -> None:
    # The abort signal and a measurement's completion reach the workflow in one workflow task:
    # the workflow worker is away while both happen. The metric loop must stop, not sleep and
    # measure again (which would go on for 1000 rounds of 10 minutes).
    env = isolated_env
    fake = Scripted({"errors": ["hang"], "rate": ["block", 1.0]})
    rate = {"name": "rate", "builtin": "request_rate", "interval_seconds": 600, "count": 80}
    inp = ProbeInput(analysis=Analysis.model_validate({"metrics": [ERRORS, rate]}))
    queue = f"tq-{uuid.uuid4()}"

    def workflow_worker() -> Worker:
        return new_worker(
            env.client,
            workflows=[AnalysisProbe],
            task_queue=queue,
            workflow_runner=UnsandboxedWorkflowRunner(),
            max_cached_workflows=0,  # no sticky queue: the next task goes to the next worker
        )

    async with new_worker(env.client, activities=[fake.measure], task_queue=queue):
        async with workflow_worker():
            handle = await env.client.start_workflow(
                AnalysisProbe.run, inp, id=f"analysis-{uuid.uuid4()}", task_queue=queue
            )
            await asyncio.wait_for(fake.started.wait(), timeout=10)
            await asyncio.wait_for(fake.blocked.wait(), timeout=10)
        await handle.signal(AnalysisProbe.abort)
        fake.release.set()

        async def measured() -> None:
            events = [e.event_type async for e in handle.fetch_history_events()]
            assert EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED in events

        await assert_eventually(measured)
        async with workflow_worker():
            # Measuring on would take 1000 time-skipped rounds: minutes of real time.
            assert await asyncio.wait_for(handle.result(), timeout=20) is None
        history = await handle.fetch_history()
    events = [e.event_type for e in history.events]
    after = events[events.index(EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED) :]
    assert EventType.EVENT_TYPE_TIMER_STARTED not in after
    assert EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED not in after
    assert sorted(n for n, _ in fake.calls) == ["errors", "rate"]  # one measurement each


async def test_histories_recorded_before_the_cancel_race_fix_still_replay() -> None:
    # Recorded by the race test above before CANCEL_RACE_PATCH (count 3): the loop measured on
    # after the abort. Running executions like it must replay unchanged.
    history_file = Path(__file__).parent / "histories" / "analysis_probe" / "cancel_race.json"
    history = WorkflowHistory.from_json("analysis-cancel-race", history_file.read_text())
    events = [e.event_type for e in history.events]
    after = events[events.index(EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED) :]
    assert EventType.EVENT_TYPE_TIMER_STARTED in after  # the old behaviour is in the history
    await Replayer(workflows=[AnalysisProbe], data_converter=data_converter()).replay_workflow(
        history
    )


def test_render_query_needs_a_query_metric() -> None:
    metric = Metric(name="e", builtin="error_rate")
    with pytest.raises(AssertionError, match=r"^render_query\(\) needs a query metric$"):
        metric.render_query(agent_id="a", color="blue", version="v1", window=10)
