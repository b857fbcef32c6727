"""Put the real names back into an answer given on anonymised evidence."""

from __future__ import annotations

from fleetops.incidents import LikelyCause, ProposedAction, TriageAnswer
from fleetops.llm_guards import Anonymiser


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def restore_names(answer: TriageAnswer, anonymiser: Anonymiser) -> TriageAnswer:
    """``answer`` with every placeholder replaced by the real name (cut to the field limits:
    a real name can be longer than its placeholder).

    Args:
        answer: the validated answer, as the model wrote it.
        anonymiser: the mapping used for the prompt.

    Returns:
        A new answer; a proposal's ``target`` placeholder becomes the real agent id, so the
        workflow's screening compares real names.
    """
    r = anonymiser.restore
    return TriageAnswer(
        severity=answer.severity,
        category=_cut(r(answer.category), 64),
        summary=_cut(r(answer.summary), 600),
        likely_causes=[
            LikelyCause(
                cause=_cut(r(c.cause), 300),
                confidence=c.confidence,
                evidence_refs=list(c.evidence_refs),
            )
            for c in answer.likely_causes
        ],
        proposed_actions=[
            ProposedAction(
                action=p.action,
                target=_cut(r(p.target), 64),
                reasoning=_cut(r(p.reasoning), 500),
            )
            for p in answer.proposed_actions
        ],
    )
