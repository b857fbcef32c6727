"""The incident's own activities: its policy from settings, and its review file.

``incident_policy`` reads ``incidents.*`` and the LLM settings once per incident, so the
workflow's decisions are recorded in history (replay never reads settings). ``write_review``
writes ``<state_dir>/incidents/<agent>/<key>-<run>.md`` atomically (temporary file + rename),
so a retried attempt leaves one complete file with the same content: idempotent.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path

from temporalio import activity

from fleetops.converter import invalid_input
from fleetops.incident_report import IncidentPolicy, WriteReviewRequest
from fleetops.settings import IncidentSettings, LlmSettings


class IncidentActivities:
    """Policy and review file of ``IncidentResponse``.

    Args:
        incidents: the ``incidents`` settings.
        llm: the ``llm`` settings (whether an LLM is configured, its per-incident budget).
        state_dir: the state directory; reviews go under ``<state_dir>/incidents/``.
    """

    def __init__(self, incidents: IncidentSettings, llm: LlmSettings, state_dir: Path) -> None:
        self._incidents = incidents
        self._llm = llm
        self._dir = state_dir / "incidents"

    @activity.defn(name="incident_policy")
    async def incident_policy(self) -> IncidentPolicy:
        """The incident policy: ``incidents.*`` plus ``llm.base_url`` set, model and budgets.

        Returns:
            :class:`IncidentPolicy`; its LLM timeout covers two calls of
            ``llm.timeout_seconds`` (answer and repair) and 30 s.
        """
        s, llm = self._incidents, self._llm
        return IncidentPolicy(
            **s.model_dump(),
            llm_configured=llm.base_url is not None,
            llm_model=llm.model,
            llm_timeout_seconds=min(2 * llm.timeout_seconds + 30, 3600),
            budget_tokens_per_incident=llm.budget_tokens_per_incident,
            budget_usd_per_incident=llm.budget_usd_per_incident,
        )

    @activity.defn(name="write_review")
    async def write_review(self, req: WriteReviewRequest) -> str:
        """Write the review's Markdown to ``<state_dir>/incidents/<agent>/<key>-<run>.md``.

        Args:
            req: agent, incident key, run id (each a safe file-name part), the Markdown.

        Returns:
            The file's path.

        Raises:
            ApplicationError: ``InvalidInput`` (non-retryable) when a name would leave the
                directory; ``OSError`` (retried) when the disk refuses.
        """
        path = self._dir / req.agent_id / f"{req.key}-{req.run_id}.md"
        if self._dir.resolve() not in path.resolve().parents:
            raise invalid_input(f"review path {path} leaves {self._dir}", field="agent_id")
        await asyncio.to_thread(_write_atomically, path, req.markdown)
        activity.logger.info("incident review written to %s", path)
        return str(path)


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
