"""The incident rules (severity table, thresholds, category, screening, who decides), the review's
Markdown, and the review file (pure Python and ActivityEnvironment; no server)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from temporalio.testing import ActivityEnvironment

from activities.incident_review import IncidentActivities
from fleetops import incident_rules as rules
from fleetops.incident_markdown import build_review, render_review
from fleetops.incident_report import AuditRecord, IncidentStatus, WriteReviewRequest
from fleetops.incidents import ContainmentAction as A
from fleetops.incidents import ProposedAction, Severity
from fleetops.settings import IncidentSettings, LlmSettings
from tests.incident_standins import alert


@pytest.mark.parametrize(
    ("label", "severity"),
    [
        ("emergency", "SEV1"),
        ("critical", "SEV2"),
        ("page", "SEV2"),
        ("error", "SEV2"),
        ("warning", "SEV3"),
        ("info", "SEV4"),
        ("", "SEV3"),
        ("bogus", "SEV3"),
        ("CRITICAL", "SEV2"),
    ],
)
def test_severity_label_table(label: str, severity: str) -> None:
    assert rules.classify([alert("Something", severity=label)]).severity == severity


@pytest.mark.parametrize(
    ("annotations", "severity"),
    [
        ({"error_rate": "0.6"}, "SEV1"),
        ({"error_rate": "0.1"}, "SEV2"),
        ({"error_rate": "0.01"}, "SEV4"),
        ({"value": "55%"}, "SEV1"),
        ({"error_rate": "nan"}, "SEV4"),
        ({"error_rate": "1e400"}, "SEV4"),
        ({"p95_latency_seconds": "12"}, "SEV2"),
    ],
)
def test_thresholds_raise_but_never_lower(annotations: dict[str, str], severity: str) -> None:
    found = rules.classify([alert("AgentHighErrorRate", severity="info", **annotations)])
    assert found.severity == severity and found.category == "errors"


def test_strictest_alert_wins_and_names_its_category() -> None:
    found = rules.classify([alert("AgentTokenBurn"), alert("AgentHighErrorRate", severity="error")])
    assert (found.severity, found.category) == (Severity.SEV2, "errors")
    assert any("AgentHighErrorRate: severity label error -> SEV2" in r for r in found.reasons)


def test_agent_down_critical_is_sev1_and_lifecycle_at_least_sev2() -> None:
    assert rules.classify([alert("AgentDown", severity="critical")]).severity == "SEV1"
    assert rules.classify([alert("X", severity="info")], source="lifecycle").severity == "SEV2"
    assert rules.classify([], source="lifecycle").category == "lifecycle"


@pytest.mark.parametrize(
    ("name", "category"),
    [
        ("AgentHighErrorRate", "errors"),
        ("AgentHighLatencyP95", "latency"),
        ("AgentDown", "availability"),
        ("AgentTokenBurn", "cost"),
        ("DiskFull", "other"),
    ],
)
def test_category_from_the_alert_name(name: str, category: str) -> None:
    assert rules.category_of(alert(name)) == category


def test_screening_keeps_catalogue_actions_on_the_agent_only() -> None:
    ps = [
        ProposedAction(action="rm -rf /", target="a1"),
        ProposedAction(action="pause_agent", target="other"),
        ProposedAction(action=" Scale_Up ", target="a1"),
        ProposedAction(action="scale_up", target="a1"),
        *[ProposedAction(action=a.value, target="a1") for a in A],
    ]
    out = rules.screen_proposals(ps, "a1")
    assert [a for a, _ in out.kept] == [A.SCALE_UP, A.ROLLBACK_DEPLOYMENT, A.RESTART_REPLICAS,
                                        A.PAUSE_AGENT, A.RATE_LIMIT]  # fmt: skip
    assert out.dropped[:3] == [
        "'rm -rf /' is not in the catalogue",
        "pause_agent targets 'other', not the incident's agent",
        "scale_up proposed twice",
    ]
    assert out.dropped[-1] == "page_oncall: more than 5 proposals"


@pytest.mark.parametrize("severity", list(Severity))
@pytest.mark.parametrize("action", list(A))
@pytest.mark.parametrize("auto", [True, False])
def test_only_low_risk_at_sev3_sev4_with_the_setting_runs_alone(
    severity: Severity, action: A, auto: bool
) -> None:
    alone = auto and action in (A.SCALE_UP, A.PAGE_ONCALL) and severity in ("SEV3", "SEV4")
    assert rules.needs_approval(action, severity, auto_low_risk=auto) is not alone


def test_rules_propose_by_category() -> None:
    assert [p.action for p in rules.rule_proposals("errors", "a1")] == [
        "rollback_deployment", "restart_replicas",
    ]  # fmt: skip
    assert {p.target for p in rules.rule_proposals("latency", "a1")} == {"a1"}


def _status(**kw: object) -> IncidentStatus:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    base: dict[str, object] = dict(
        incident_id="incident/a1/k", agent_id="a1", title="boom `x` | *y*", source="alertmanager",
        opened_by="alertmanager", opened_at=t0, phase="REVIEW", status="Stable", severity="SEV2",
        severity_source="rules", category="errors", acknowledged_at=t0 + timedelta(seconds=42),
        resolved_at=t0 + timedelta(seconds=300), resolved_by="metrics",
        audit=[AuditRecord(at=t0, kind="phase", detail="DETECTED: # heading <b>")],
    )  # fmt: skip
    return IncidentStatus.model_validate({**base, **kw})


def test_review_measures_and_escapes_untrusted_text() -> None:
    st = _status()
    r = build_review(st, run_id="r1", closed_at=st.opened_at + timedelta(seconds=400), evidence=[])
    assert (r.mtta_seconds, r.mttr_seconds) == (42.0, 300.0)
    assert "MTTA: 42 s; MTTR: 300 s" in r.markdown
    assert "boom \\`x\\` \\| \\*y\\*" in r.markdown and "\\# heading \\<b\\>" in r.markdown
    assert "confirm the root cause" in " ".join(r.follow_ups)
    assert render_review(r) == r.markdown
    unresolved = build_review(
        _status(resolved_at=None, resolved_by=None),
        run_id="r1",
        closed_at=st.opened_at,
        evidence=[],
    )
    assert unresolved.mttr_seconds is None and "closed unresolved" in unresolved.markdown


async def test_write_review_is_idempotent_and_stays_in_its_directory(tmp_path: Path) -> None:
    acts = IncidentActivities(IncidentSettings(), LlmSettings(), tmp_path)
    req = WriteReviewRequest(agent_id="a1", key="abc", run_id="run-1", markdown="# r\n")
    env = ActivityEnvironment()
    first = await env.run(acts.write_review, req)
    again = await env.run(acts.write_review, req)
    assert first == again == str(tmp_path / "incidents" / "a1" / "abc-run-1.md")
    assert Path(first).read_text() == "# r\n"
    assert [p.name for p in (tmp_path / "incidents" / "a1").iterdir()] == ["abc-run-1.md"]
    with pytest.raises(ValueError):
        WriteReviewRequest(agent_id="../x", key="abc", run_id="r", markdown="x")


async def test_policy_carries_settings_and_llm_budget(tmp_path: Path) -> None:
    llm = LlmSettings(base_url="http://x.invalid/v1", budget_tokens_per_incident=7)
    acts = IncidentActivities(IncidentSettings(ack_timeout_seconds=5), llm, tmp_path)
    p = await ActivityEnvironment().run(acts.incident_policy)
    assert p.llm_configured and p.budget_tokens_per_incident == 7 and p.ack_timeout_seconds == 5
    assert not (await ActivityEnvironment().run(
        IncidentActivities(IncidentSettings(), LlmSettings(), tmp_path).incident_policy
    )).llm_configured  # fmt: skip
