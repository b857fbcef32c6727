"""Upper bounds on every number an operator types, in one place.

Every bound exists so that no input can overflow a date or a timer (``workflow.now() +
timedelta(seconds=1e12)`` is past year 9999), start an unbounded number of replicas, or grow a
workflow's history without limit. Temporal's own limits set the history budget: a workflow
history is refused at 51,200 events (50K; the server warns from 10,240), see
https://docs.temporal.io/cloud/limits#per-workflow-execution-event-history-limits.

Numbers are strict (``"replicas": true`` or ``"replicas": "3"`` is refused; a whole number is
accepted for a float, as JSON has one number type), and floats refuse ``NaN`` and ``Infinity``.
The README's tables state each bound next to its field.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

DAY_SECONDS = 86400
"""One day, in seconds."""

MAX_DURATION_SECONDS = 30 * DAY_SECONDS
"""Upper bound of every timeout and delay (startup, recovery, approval, ready, scale-down,
probe and smoke-test timeouts, analysis initial delay): 30 days, in seconds."""

MAX_INTERVAL_SECONDS = DAY_SECONDS
"""Upper bound of every interval (health rounds, measurements, measurement window, approval
reminders): 1 day, in seconds."""

MIN_HEALTH_INTERVAL_SECONDS = 0.01
"""Lower bound of ``health.interval_seconds``: a shorter one is a busy loop on the worker."""

MAX_REPLICAS = 1000
"""Absolute bound of ``replicas``, ``min_replicas``, ``max_replicas`` and ``preview_replicas``
checked by the models (so by the workflow on its input). The per-agent quota a worker enforces
is the ``max_replicas_per_agent`` setting (default :data:`DEFAULT_MAX_REPLICAS_PER_AGENT`, at
most this), checked when replicas are provisioned: the workflow cannot read settings."""

DEFAULT_MAX_REPLICAS_PER_AGENT = 50
"""Default of the ``max_replicas_per_agent`` setting: replicas one colour of one agent may run."""

MAX_CPU_MILLICORES = 256_000
"""CPU request and limit of one replica: at most 256 cores, in millicores."""

MAX_MEMORY_MIB = 1024 * 1024
"""Memory request and limit of one replica: at most 1 TiB, in MiB."""

MAX_FAILURE_THRESHOLD = 100
"""``health.failure_threshold``: consecutive failed probes before a replica is unhealthy."""

MAX_HEALTH_ROUNDS_PER_RUN = 1000
"""``health_rounds_per_run``: about 11 events per round keeps one run under ~11K events."""

MAX_METRICS_PER_ANALYSIS = 10
"""Metrics of one analysis."""

MAX_MEASUREMENT_COUNT = 100
"""``count`` of a metric, and the bound of its ``failure_limit`` and ``inconclusive_limit`` (a
limit at or above ``count`` can never be exceeded)."""

MAX_CONSECUTIVE_ERROR_LIMIT = 10
"""``consecutive_error_limit`` of a metric."""

MAX_MEASUREMENTS_PER_ANALYSIS = 500
"""Worst-case measurements of one analysis, summed over its metrics. A metric ends after
``count`` non-error measurements, each preceded by at most ``consecutive_error_limit`` errors,
or after ``consecutive_error_limit + 1`` errors in a row, so it takes at most ``count *
(consecutive_error_limit + 1)`` measurements. One measurement is an activity and a timer, about
8 events with its workflow task: 500 measurements are ~4K events, and a deployment's two
analyses stay under the server's 10K warning."""

MAX_SMOKE_TESTS = 20
"""Smoke tests of one deployment."""

MAX_APPROVERS = 50
"""Entries of ``promotion.approvers`` and of ``promotion.roles``."""

MIN_REMINDER_INTERVAL_SECONDS = 60
"""Lower bound of ``promotion.reminder_interval_seconds``: one minute."""

MAX_REMINDERS = 200
"""Reminders one approval wait may send: ``approval_timeout_seconds /
reminder_interval_seconds`` (each is a notification activity in history; an escalated approval
waits once more, so at most twice this)."""

MAX_TEXT_LENGTH = 4000
"""Length of a free-text expression an operator types (a PromQL query, a condition)."""

Seconds = Annotated[float, Field(strict=True, allow_inf_nan=False)]
"""A finite number of seconds, strictly typed (a JSON number; not a string or a bool)."""

Count = Annotated[int, Field(strict=True)]
"""A whole number, strictly typed (``true``, ``"3"`` and ``3.5`` are refused)."""
