"""Compose one triage request into chat messages within the guards, and price a call.

Pure: :func:`compose` redacts, anonymises (when asked), fences the evidence, bounds the prompt to
the model's context and to the incident's remaining budget, and says what it did in notes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fleetops.incidents import TriageRequest
from fleetops.llm_guards import Anonymiser, Redactor
from fleetops.llm_prompt import (
    MESSAGE_OVERHEAD_TOKENS,
    answer_schema,
    estimate_tokens,
    evidence_block,
    facts_message,
    fit_evidence,
    system_prompt,
)
from fleetops.settings import LlmSettings


class PromptRefused(Exception):
    """The request cannot be sent; ``failure`` is the LlmOutcome failure name."""

    def __init__(self, failure: str, message: str) -> None:
        super().__init__(message)
        self.failure = failure


@dataclass
class Composed:
    """Messages ready to send, and what the guards did.

    Attributes:
        messages: the chat messages (system, user).
        max_tokens: the output cap of the call.
        estimated_input_tokens: the prompt's token estimate (an upper bound).
        notes: what was redacted, anonymised, cut or dropped (never the values).
        anonymiser: set when names were anonymised (to restore them in the answer).
        agent: the agent name as the model sees it.
        schema: the answer's JSON schema for structured output (catalogue, the one target).
    """

    messages: list[dict[str, str]]
    max_tokens: int
    estimated_input_tokens: int
    notes: list[str] = field(default_factory=list)
    anonymiser: Anonymiser | None = None
    agent: str = ""
    schema: dict[str, Any] = field(default_factory=dict)


def usd(settings: LlmSettings, model: str, input_tokens: int, output_tokens: int) -> float:
    """Price of a call from ``llm.prices`` (USD per million tokens; unknown model: 0).

    Args:
        settings: the LLM settings (price table).
        model: the model name (the requested one, or the one the provider answered with).
        input_tokens: prompt tokens.
        output_tokens: completion tokens.
    """
    price = settings.prices.get(model)
    if price is None:
        return 0.0
    return (
        input_tokens * price.input_usd_per_million + output_tokens * price.output_usd_per_million
    ) / 1_000_000


def compose(request: TriageRequest, settings: LlmSettings, fence: str) -> Composed:
    """Build the guarded messages of one triage call.

    Args:
        request: the triage request (evidence is untrusted).
        settings: model, context table, margins, anonymisation, prices.
        fence: the random token of this call's evidence block.

    Returns:
        The messages and notes.

    Raises:
        PromptRefused: ``prompt_too_large`` when even the prompt without evidence does not fit
            the context; ``over_budget`` when the call could spend more than the incident's
            remaining tokens or USD.
    """
    bpt = settings.letters_per_token
    max_tokens = min(request.max_output_tokens, settings.max_output_tokens)
    redact = Redactor(list(request.redact_values))
    title = redact(request.title)
    items = [
        e.model_copy(update={"text": redact(e.text), "source": redact(e.source)})
        for e in request.evidence
    ]
    notes = [f"redacted {redact.count} secret(s)"] if redact.count else []
    agent = request.agent_id
    anonymiser = None
    if settings.anonymise_names:
        texts = [title, *(i.text for i in items), *(i.source for i in items)]
        anonymiser = Anonymiser(request.agent_id, list(request.names), texts)
        agent = anonymiser.agent_placeholder
        title = anonymiser(title)
        items = [
            i.model_copy(update={"text": anonymiser(i.text), "source": anonymiser(i.source)})
            for i in items
        ]
        notes.append(f"anonymised {len(anonymiser.mapping)} name(s)")
    system = system_prompt(fence, agent, list(request.catalogue))
    facts = facts_message(title, agent, request.rule_severity, request.rule_category)
    fixed = (
        estimate_tokens(system, bpt)
        + estimate_tokens(facts + evidence_block(fence, []), bpt)
        + 2 * MESSAGE_OVERHEAD_TOKENS
    )
    limit = settings.context_for(settings.model) - max_tokens - settings.context_margin_tokens
    if fixed > limit:
        raise PromptRefused(
            "prompt_too_large",
            f"the prompt without evidence needs ~{fixed} tokens; the context of "
            f"{settings.model!r} leaves {limit} (context - max output - margin)",
        )
    fitted = fit_evidence(items, limit - fixed, fence, bpt)
    notes.extend(fitted.notes)
    user = facts + evidence_block(fence, fitted.items)
    estimate = (
        estimate_tokens(system, bpt) + estimate_tokens(user, bpt) + 2 * MESSAGE_OVERHEAD_TOKENS
    )
    _check_budget(request, settings, estimate, max_tokens)
    return Composed(
        messages=[{"role": "system", "content": system}, {"role": "user", "content": user}],
        max_tokens=max_tokens,
        estimated_input_tokens=estimate,
        notes=notes,
        anonymiser=anonymiser,
        agent=agent,
        schema=answer_schema(list(request.catalogue), agent),
    )


def _check_budget(
    request: TriageRequest, settings: LlmSettings, input_tokens: int, max_tokens: int
) -> None:
    worst = input_tokens + max_tokens
    left = request.budget_tokens_remaining
    if left is not None and worst > left:
        raise PromptRefused(
            "over_budget",
            f"the call could spend {worst} tokens; the incident has {left} left",
        )
    money = request.budget_usd_remaining
    cost = usd(settings, settings.model, input_tokens, max_tokens)
    if money is not None and cost > money:
        raise PromptRefused(
            "over_budget",
            f"the call could cost {cost:.6f} USD; the incident has {money:.6f} left",
        )
