"""The model's answer: its JSON schema for constrained decoding, validation, repair, screening.

Pure functions. The answer is only data (kubectl-ai #510): :func:`screen_proposals` keeps only
catalogue actions on the incident's agent, and the workflow runs nothing else.
"""

from __future__ import annotations

import json
from typing import Any

from fleetops.incidents import ContainmentAction, ProposedAction, Severity, TriageAnswer

CONFIDENCES = [round(i / 10, 1) for i in range(11)]
"""Confidences the schema allows (0, 0.1 .. 1): a JSON number's digits are unbounded, an enum is
not."""


def _clamp(value: int, low: int, high: int) -> int:
    return max(low, min(high, value))


def answer_schema(
    catalogue: list[ContainmentAction], agent: str, max_tokens: int = 512
) -> dict[str, Any]:
    """JSON schema of :class:`TriageAnswer` for constrained decoding, sized to ``max_tokens``.

    Every object closed and all its properties required (OpenAI strict mode); ``action`` an enum
    of the catalogue, ``target`` the one allowed agent, ``confidence`` an enum of tenths. Every
    string has a ``maxLength`` and every list a ``maxItems`` chosen so that the longest answer
    the schema allows, counted at one token per character (the worst case: BPE never needs more
    for ASCII), fits in ``max_tokens``: a constrained decoder (llama.cpp's grammar) can then never
    be cut at the output limit (from about 512 tokens up; below, the minimum sizes win).
    Pydantic validation of the answer stays the authority: a provider
    that ignores the schema is still checked (and may still be truncated).

    Args:
        catalogue: actions the model may propose.
        agent: the only target allowed.
        max_tokens: the call's output cap.
    """
    items = _clamp((max_tokens - 300) // 300, 1, 5)
    category = 32
    per_cause = 74  # {"cause": "", "confidence": 0.0, "evidence_refs": ["E1", "E2"]}, keys
    per_action = 72 + len(agent)  # {"action": "rollback_deployment", "target": ..., ...}
    room = max_tokens - 100 - category - items * (per_cause + per_action)
    summary = _clamp(room * 2 // 5, 16, 600)
    cause_chars = _clamp(room * 3 // 10 // items, 8, 300)
    reasoning = _clamp(room * 3 // 10 // items, 8, 500)

    def text(n: int) -> dict[str, Any]:
        return {"type": "string", "maxLength": n}

    def obj(props: dict[str, Any]) -> dict[str, Any]:
        return {
            "type": "object",
            "properties": props,
            "required": list(props),
            "additionalProperties": False,
        }

    cause = obj(
        {
            "cause": text(cause_chars),
            "confidence": {"type": "number", "enum": CONFIDENCES},
            "evidence_refs": {"type": "array", "items": text(6), "maxItems": 2},
        }
    )
    action = obj(
        {
            "action": {"type": "string", "enum": [a.value for a in catalogue]},
            "target": {"type": "string", "enum": [agent]},
            "reasoning": text(reasoning),
        }
    )
    return obj(
        {
            "severity": {"type": "string", "enum": [s.value for s in Severity]},
            "category": text(category),
            "summary": text(summary),
            "likely_causes": {"type": "array", "items": cause, "maxItems": items},
            "proposed_actions": {"type": "array", "items": action, "maxItems": items},
        }
    )


def repair_message(error: str) -> str:
    """The user message of the one repair retry: what was wrong, and to answer again."""
    return (
        "Your answer was not valid JSON for the required fields: "
        f"{error[:800]}\nAnswer again with only the corrected JSON object."
    )


def parse_answer(content: str) -> TriageAnswer:
    """Validate the model's message content as a :class:`TriageAnswer`.

    Raises:
        ValueError: not JSON, or not the answer's shape (pydantic's ValidationError is one).
    """
    return TriageAnswer.model_validate(json.loads(content))


def screen_proposals(
    answer: TriageAnswer,
    agent_id: str,
    catalogue: list[ContainmentAction] | None = None,
) -> tuple[list[ProposedAction], list[tuple[ProposedAction, str]]]:
    """Split the model's proposals into those the workflow may consider and those it drops.

    Args:
        answer: a validated answer (names restored).
        agent_id: the incident's agent, the only allowed target.
        catalogue: allowed actions (default: the whole :class:`ContainmentAction` catalogue).

    Returns:
        ``(kept, dropped)``; each dropped proposal comes with the reason, for the audit trail.
    """
    allowed = {a.value for a in (catalogue or list(ContainmentAction))}
    kept: list[ProposedAction] = []
    dropped: list[tuple[ProposedAction, str]] = []
    for p in answer.proposed_actions:
        if p.action not in allowed:
            dropped.append((p, f"action {p.action!r} is not in the catalogue"))
        elif p.target != agent_id:
            dropped.append((p, f"target {p.target!r} is not the incident's agent {agent_id!r}"))
        else:
            kept.append(p)
    return kept, dropped
