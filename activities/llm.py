"""LLM triage over the OpenAI-compatible Chat Completions API (OpenAI, vLLM, Ollama, llama.cpp).

One provider, plain httpx (the worker's client makes one attempt per call; Temporal retries):
``POST <llm.base_url>/chat/completions`` with the answer's JSON schema as structured output
(``json_schema`` as OpenAI documents it, or ``json_object`` + ``schema`` as llama-cpp-python's
server takes it). The answer is validated with pydantic; an invalid one gets one repair retry
that sends the validation error back; ``finish_reason == "length"`` is a failed answer
("truncated"), never a short one (HolmesGPT #2181).

Errors: connection errors, timeouts, 408 and 5xx are retryable ``LlmUnavailable``; 429 is
retryable ``LlmRateLimited`` delayed by its ``Retry-After``; any other 4xx is non-retryable
``LlmRejected``. Everything else (no LLM configured, prompt too large, over budget, truncated or
invalid output) is an :class:`LlmOutcome` with ``failure`` set, so the workflow goes on with its
rules and still accounts the tokens spent.

Sources:
    Chat Completions: https://platform.openai.com/docs/api-reference/chat/create
    Structured outputs: https://platform.openai.com/docs/guides/structured-outputs
    llama-cpp-python server JSON schema mode:
    https://llama-cpp-python.readthedocs.io/en/latest/server/#json-schema-mode
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import httpx
from opentelemetry import trace
from prometheus_client import REGISTRY, CollectorRegistry
from pydantic import ValidationError
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities._text import shorten
from activities.agent_secrets import SecretValues
from activities.llm_answer import restore_names
from activities.llm_telemetry import OPERATION, PROVIDER, llm_metrics, usage_attributes
from activities.llm_wire import BadResponse, ChatCompletion, Reply, heartbeating
from activities.notify import redact_url, retry_after_seconds
from fleetops.errors import LLM_RATE_LIMITED, LLM_REJECTED, LLM_UNAVAILABLE
from fleetops.incidents import LlmOutcome, LlmPolicy, LlmUsage, TriageAnswer, TriageRequest
from fleetops.llm_answers import parse_answer, repair_message
from fleetops.llm_compose import Composed, PromptRefused, compose, usd
from fleetops.llm_guards import redact
from fleetops.llm_prompt import estimate_tokens, new_fence
from fleetops.settings import LlmSettings

MAX_LLM_RETRY_AFTER_SECONDS = 300.0
"""Longest ``Retry-After`` honoured, in seconds (a longer one is capped)."""
_BODY_CHARS = 300


class LlmActivities:
    """The LLM activities: ``llm_triage`` and ``llm_policy``.

    Args:
        http: the client every call uses; build it without retries (Temporal owns retries).
        settings: the ``llm`` settings (endpoint, model, guards, prices, budgets).
        tracer: where GenAI spans go (default: the global tracer provider's).
        registry: the Prometheus registry of the counters (default: the process registry).
        secret_values: the agent's secret values to mask (default: only ``redact_values``).
    """

    def __init__(
        self,
        http: httpx.AsyncClient,
        settings: LlmSettings,
        *,
        tracer: trace.Tracer | None = None,
        registry: CollectorRegistry = REGISTRY,
        secret_values: SecretValues | None = None,
    ) -> None:
        self._http = http
        self._settings = settings
        self._secret_values = secret_values
        self._tracer = tracer or trace.get_tracer("fleetops.llm")
        self._metrics = llm_metrics(registry)

    @activity.defn(name="llm_policy")
    async def llm_policy(self) -> LlmPolicy:
        """Whether an LLM is configured, its model and the per-incident budgets (settings).

        Returns:
            The policy; ``activity_timeout_seconds`` covers a call and its repair retry.
        """
        s = self._settings
        return LlmPolicy(
            configured=s.base_url is not None,
            model=s.model,
            budget_tokens_per_incident=s.budget_tokens_per_incident,
            budget_usd_per_incident=s.budget_usd_per_incident,
            activity_timeout_seconds=2 * s.timeout_seconds + 30,
        )

    @activity.defn(name="llm_triage")
    async def llm_triage(self, request: TriageRequest) -> LlmOutcome:
        """Ask the model for a structured triage of one incident.

        Args:
            request: facts and untrusted evidence; ``redact_values``, and the agent's current
                secret values (``secret_values``, looked up in the activity so they never enter
                history), are masked before sending.

        Returns:
            The validated answer (names restored), or ``failure`` (``not_configured``,
            ``prompt_too_large``, ``over_budget``, ``truncated``, ``invalid_output``,
            ``invalid_response``); ``usage`` has one entry per HTTP call made.

        Raises:
            ApplicationError: ``LlmUnavailable`` / ``LlmRateLimited`` (retryable) or
                ``LlmRejected`` (non-retryable) when the first call fails over HTTP; the
                secret store's errors (``SecretStoreUnavailable``, ...) when the agent's secret
                values cannot be read: nothing is sent unmasked.
            RPCError: the agent's ``status`` could not be read (retryable).
        """
        s = self._settings
        if s.base_url is None:
            return LlmOutcome(failure="not_configured")
        if self._secret_values is not None:
            # Looked up here, so the values never enter workflow history.
            values = await self._secret_values(request.agent_id)
            if values:
                masked = [*request.redact_values, *values]
                request = request.model_copy(update={"redact_values": masked})
        try:
            composed = compose(request, s, new_fence())
        except PromptRefused as refused:
            self._metrics.refused(s.model, refused.failure)
            activity.logger.warning("LLM call refused: %s", refused)
            return LlmOutcome(failure=refused.failure, prompt_notes=[str(refused)])
        usage: list[LlmUsage] = []
        notes = list(composed.notes)
        try:
            reply = await self._chat(composed.messages, composed)
        except BadResponse as bad:
            return LlmOutcome(failure="invalid_response", usage=[bad.usage], prompt_notes=notes)
        usage.append(reply.usage)
        notes += [reply.note] if reply.note else []
        answer, error = self._judge(reply, composed)
        if answer is not None or error == "truncated":
            return LlmOutcome(answer=answer, failure=error, usage=usage, prompt_notes=notes)
        return await self._repair(request, composed, reply, error or "", usage, notes)

    async def _repair(
        self,
        request: TriageRequest,
        composed: Composed,
        reply: Reply,
        error: str,
        usage: list[LlmUsage],
        notes: list[str],
    ) -> LlmOutcome:
        s = self._settings
        messages = [
            *composed.messages,
            {"role": "assistant", "content": reply.content},
            {"role": "user", "content": repair_message(error)},
        ]
        extra = estimate_tokens(reply.content + repair_message(error), s.letters_per_token) + 16
        needed = composed.estimated_input_tokens + extra + composed.max_tokens
        spent = sum(u.input_tokens + u.output_tokens for u in usage)
        left = request.budget_tokens_remaining
        if needed + s.context_margin_tokens > s.context_for(s.model) or (
            left is not None and spent + needed > left
        ):
            notes.append("no repair retry: it would not fit the context or the budget")
            return LlmOutcome(failure="invalid_output", usage=usage, prompt_notes=notes)
        notes.append(f"repair retry after invalid output: {shorten(error, 200)}")
        try:
            second = await self._chat(messages, composed)
        except (BadResponse, ApplicationError) as err:
            if isinstance(err, BadResponse):
                usage.append(err.usage)
            notes.append(f"repair call failed: {shorten(str(err), 200)}")
            return LlmOutcome(failure="invalid_output", usage=usage, prompt_notes=notes)
        usage.append(second.usage)
        answer, failure = self._judge(second, composed)
        if failure not in (None, "truncated"):
            failure = "invalid_output"
        return LlmOutcome(answer=answer, failure=failure, usage=usage, prompt_notes=notes)

    def _judge(self, reply: Reply, composed: Composed) -> tuple[TriageAnswer | None, str | None]:
        """(answer, None), (None, "truncated") or (None, <validation error text>)."""
        if reply.finish_reason == "length":
            self._metrics.record(reply.usage, "truncated")
            return None, "truncated"
        try:
            answer = parse_answer(reply.content)
        except (ValueError, ValidationError) as err:
            self._metrics.record(reply.usage, "invalid_output")
            return None, shorten(str(err), 800)
        self._metrics.record(reply.usage, "ok")
        if composed.anonymiser is not None:
            answer = restore_names(answer, composed.anonymiser)
        return answer, None

    async def _chat(self, messages: list[dict[str, str]], composed: Composed) -> Reply:
        s = self._settings
        max_tokens = composed.max_tokens
        assert s.base_url is not None
        body = {
            "model": s.model,
            "messages": messages,
            "max_tokens": max_tokens,
            "temperature": 0,
            "stream": False,
            "response_format": self._response_format(composed.schema),
        }
        headers = {"Authorization": f"Bearer {s.api_key.get_secret_value()}"} if s.api_key else {}
        url = f"{s.base_url}/chat/completions"
        where = redact_url(url)
        attrs: dict[str, str | int] = {
            "gen_ai.operation.name": OPERATION,
            "gen_ai.provider.name": PROVIDER,
            "gen_ai.system": PROVIDER,
            "gen_ai.request.model": s.model,
            "gen_ai.request.max_tokens": max_tokens,
            "server.address": httpx.URL(url).host,
        }
        with self._tracer.start_as_current_span(
            f"{OPERATION} {s.model}", kind=trace.SpanKind.CLIENT, attributes=attrs
        ) as span:
            started = time.monotonic()
            try:
                response = await heartbeating(
                    self._http.post(url, json=body, headers=headers, timeout=s.timeout_seconds)
                )
            except httpx.HTTPError as err:
                span.set_attribute("error.type", type(err).__name__)
                self._metrics.refused(s.model, "unavailable")
                raise ApplicationError(
                    f"LLM endpoint {where} unreachable or timed out: {type(err).__name__}",
                    type=LLM_UNAVAILABLE,
                ) from None
            latency = time.monotonic() - started
            if not response.is_success:
                span.set_attribute("error.type", str(response.status_code))
                self._raise_for_status(response, where)
            reply = self._reply(response, messages, latency)
            span.set_attributes(usage_attributes(reply.usage))
            span.set_attribute("gen_ai.response.finish_reasons", [reply.finish_reason])
            return reply

    def _response_format(self, schema: dict[str, Any]) -> dict[str, Any]:
        if self._settings.structured_output == "json_object":
            return {"type": "json_object", "schema": schema}
        return {
            "type": "json_schema",
            "json_schema": {"name": "triage_answer", "strict": True, "schema": schema},
        }

    def _reply(
        self, response: httpx.Response, messages: list[dict[str, str]], latency: float
    ) -> Reply:
        s = self._settings
        base = LlmUsage(request_model=s.model, latency_seconds=latency)
        try:
            parsed = ChatCompletion.model_validate(response.json())
            choice = parsed.choices[0]
        except (ValueError, ValidationError, IndexError):
            self._metrics.record(base, "invalid_response")
            raise BadResponse(
                base, f"not a chat completion: {shorten(redact(response.text), _BODY_CHARS)}"
            ) from None
        content = choice.message.content or ""
        note = None
        if parsed.usage is not None and parsed.usage.prompt_tokens > 0:
            tokens_in, tokens_out = parsed.usage.prompt_tokens, parsed.usage.completion_tokens
        else:  # a provider without usage: count our (pessimistic) estimate against the budget
            text = "".join(m["content"] for m in messages)
            tokens_in = estimate_tokens(text, s.letters_per_token)
            tokens_out = estimate_tokens(content, s.letters_per_token)
            note = "the provider reported no usage: tokens estimated"
        response_model = parsed.model or s.model
        usage = base.model_copy(
            update={
                "response_model": response_model,
                "input_tokens": tokens_in,
                "output_tokens": tokens_out,
                "usd": usd(
                    s, s.model if s.model in s.prices else response_model, tokens_in, tokens_out
                ),
            }
        )
        return Reply(content, choice.finish_reason or "", usage, note)

    def _raise_for_status(self, response: httpx.Response, where: str) -> None:
        status = response.status_code
        model = self._settings.model
        message = (
            f"LLM endpoint {where} answered HTTP {status}: "
            f"{shorten(redact(response.text), _BODY_CHARS)}"
        )
        delay = retry_after_seconds(response.headers.get("Retry-After"))
        next_delay = (
            timedelta(seconds=min(delay, MAX_LLM_RETRY_AFTER_SECONDS))
            if delay is not None
            else None
        )
        if status == 429:
            self._metrics.refused(model, "rate_limited")
            raise ApplicationError(message, type=LLM_RATE_LIMITED, next_retry_delay=next_delay)
        if status >= 500 or status == 408:
            self._metrics.refused(model, "unavailable")
            raise ApplicationError(message, type=LLM_UNAVAILABLE, next_retry_delay=next_delay)
        self._metrics.refused(model, "rejected")
        raise ApplicationError(
            message + " (check llm.base_url, llm.model and llm.api_key; not retried)",
            type=LLM_REJECTED,
            non_retryable=True,
        )
