"""What each LLM call records: OpenTelemetry GenAI span attributes and Prometheus counters.

Span and attribute names follow the OpenTelemetry semantic conventions for generative AI
(https://opentelemetry.io/docs/specs/semconv/gen-ai/gen-ai-spans/): a CLIENT span named
``chat <model>`` with ``gen_ai.operation.name``, ``gen_ai.request.model``,
``gen_ai.response.model``, ``gen_ai.usage.input_tokens``, ``gen_ai.usage.output_tokens``,
``gen_ai.response.finish_reasons`` and ``error.type`` on failure.
"""

from __future__ import annotations

import weakref

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram

from fleetops.incidents import LlmUsage

OPERATION = "chat"
PROVIDER = "openai"  # the wire protocol (gen_ai.provider.name / gen_ai.system)


class LlmMetrics:
    """Prometheus counters of LLM calls, registered once per registry (see :func:`llm_metrics`).

    Series:
        ``fleetops_llm_calls_total{model, outcome}``: HTTP calls and refused calls by outcome
        (``ok``, ``truncated``, ``invalid_output``, ``invalid_response``, ``rate_limited``,
        ``unavailable``, ``rejected``, ``prompt_too_large``, ``over_budget``).
        ``fleetops_llm_tokens_total{model, direction}``: tokens, ``direction`` input|output.
        ``fleetops_llm_cost_usd_total{model}``: USD from the price table.
        ``fleetops_llm_latency_seconds{model}``: seconds per HTTP call.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.calls = Counter(
            "fleetops_llm_calls", "LLM calls by outcome", ["model", "outcome"], registry=registry
        )
        self.tokens = Counter(
            "fleetops_llm_tokens", "LLM tokens", ["model", "direction"], registry=registry
        )
        self.usd = Counter("fleetops_llm_cost_usd", "LLM cost in USD", ["model"], registry=registry)
        self.latency = Histogram(
            "fleetops_llm_latency_seconds",
            "Seconds per LLM HTTP call",
            ["model"],
            registry=registry,
            buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160),
        )

    def record(self, usage: LlmUsage, outcome: str) -> None:
        """Count one HTTP call with its usage and outcome."""
        model = usage.response_model or usage.request_model
        self.calls.labels(model, outcome).inc()
        self.tokens.labels(model, "input").inc(usage.input_tokens)
        self.tokens.labels(model, "output").inc(usage.output_tokens)
        self.usd.labels(model).inc(usage.usd)
        self.latency.labels(model).observe(usage.latency_seconds)

    def refused(self, model: str, outcome: str) -> None:
        """Count a call that was not made (prompt too large, over budget)."""
        self.calls.labels(model, outcome).inc()


_METRICS: weakref.WeakKeyDictionary[CollectorRegistry, LlmMetrics] = weakref.WeakKeyDictionary()


def llm_metrics(registry: CollectorRegistry = REGISTRY) -> LlmMetrics:
    """The :class:`LlmMetrics` of ``registry``, created on first use and kept for as long as the
    registry lives (a registry refuses the same series twice, so they are never made again)."""
    metrics = _METRICS.get(registry)
    if metrics is None:
        metrics = _METRICS[registry] = LlmMetrics(registry)
    return metrics


def usage_attributes(usage: LlmUsage) -> dict[str, str | int | float]:
    """The GenAI span attributes of a finished call."""
    return {
        "gen_ai.response.model": usage.response_model,
        "gen_ai.usage.input_tokens": usage.input_tokens,
        "gen_ai.usage.output_tokens": usage.output_tokens,
        "fleetops.llm.usd": usage.usd,
    }
