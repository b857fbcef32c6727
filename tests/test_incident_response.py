"""IncidentResponse on the time-skipping server: phases, severity, containment by risk and
severity, paging and escalation, storms, LLM failures and budget, injected text, resolution,
the review.

The real workflow, approval gate, intake (signal-with-start), notification activity (over an
in-memory webhook) and incident activities run; the LLM, evidence, containment and recovery
activities are the scripted stand-ins of tests/incident_standins.py.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from temporalio.client import WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment

from activities.incident_intake import signal_incident
from fleetops.constants import SEVERITY_KEY, STATE_KEY
from fleetops.incident_report import ReviewReport
from fleetops.incidents import AlertBatch
from tests.incident_helpers import (
    E,
    decide,
    finish,
    kinds,
    open_incident,
    pending,
    resolve,
    status,
    until,
    world,
)
from tests.incident_standins import ESCALATION_WEBHOOK, Standins, alert, start_and_batch


@pytest.fixture
def env(isolated_env: WorkflowEnvironment) -> WorkflowEnvironment:
    return isolated_env


# --- the whole procedure --------------------------------------------------------------------


async def test_phases_automatic_low_risk_then_approved_medium_risk_and_review(
    env: WorkflowEnvironment, tmp_path: Path
) -> None:
    s = Standins()
    async with world(env, tmp_path, s, auto_contain_low_risk=True, resolve_window_seconds=120) as w:
        h = await open_incident(env, w, alert("AgentHighLatencyP95", severity="warning"))
        p = await pending(h)
        assert p["context"]["action"] == "rate_limit" and p["context"]["risk"] == "medium"
        assert p["context"]["evidence"] and "E1" in p["context"]["evidence"]
        st = await status(h)
        assert st.phase == "CONTAINMENT" and st.severity == "SEV3" and st.category == "latency"
        assert s.actions() == ["scale_up"]  # low risk at SEV3 with the setting: automatic
        assert s.containment_calls[0].requested_by == "incident-automation"
        await decide(h, "bob", True)
        await until(h, lambda st: st.phase == "RESOLUTION")
        assert s.actions() == ["scale_up", "rate_limit"]
        assert s.containment_calls[1].requested_by == "bob"
        s.healthy = True
        report = await finish(env, h)
    assert report.resolved_by == "metrics" and report.mttr_seconds is not None
    at = {e.kind: e.at for e in report.timeline}
    assert (at["resolved"] - at["recovery"]).total_seconds() >= 120  # the resolve window
    assert kinds(report) == [
        "DETECTED", "TRIAGE", "ASSESSMENT", "CONTAINMENT", "ROOT_CAUSE", "RESOLUTION", "REVIEW",
    ]  # fmt: skip
    acts = {a.action.value: a for a in report.actions}
    assert acts["scale_up"].mode == "automatic" and acts["scale_up"].approver is None
    assert acts["rate_limit"].mode == "approval" and acts["rate_limit"].approver == "bob"
    assert [c.lift for c in s.containment_calls] == [False, False, True]  # lifted at the end
    assert not report.llm.configured and "No LLM configured" in report.markdown
    assert report.path is not None and Path(report.path).read_text() == report.markdown
    assert Path(report.path).parent == tmp_path / "incidents" / report.agent_id
    assert "`rate_limit` (medium risk, proposed by rules, approval): ran, approver bob" in (
        report.markdown
    )
    desc = await h.describe()
    assert desc.typed_search_attributes.get(STATE_KEY) == "CLOSED"
    assert desc.typed_search_attributes.get(SEVERITY_KEY) == "SEV3"
    assert "Stable" in [e.detail for e in report.timeline if e.kind == "status"]


async def test_low_risk_waits_for_approval_without_the_setting_or_at_sev2(
    env: WorkflowEnvironment, tmp_path: Path
) -> None:
    s = Standins()
    async with world(env, tmp_path, s) as w:  # auto_contain_low_risk off (default)
        h = await open_incident(env, w, alert("AgentHighLatencyP95", severity="warning"))
        p = await pending(h)
        assert p["context"]["action"] == "scale_up"
        assert s.actions() == []
        await h.terminate("test finished")
    s2 = Standins()
    async with world(env, tmp_path, s2, auto_contain_low_risk=True) as w:
        h = await open_incident(env, w, alert("AgentHighLatencyP95", severity="critical"))
        p = await pending(h)
        assert p["context"]["action"] == "scale_up" and p["context"]["severity"] == "SEV2"
        assert s2.actions() == []
        await h.terminate("test finished")


async def test_rejected_high_risk_actions_do_not_run(
    env: WorkflowEnvironment, tmp_path: Path
) -> None:
    s = Standins()
    async with world(env, tmp_path, s, auto_contain_low_risk=True) as w:
        h = await open_incident(env, w, alert("AgentHighErrorRate", severity="error"))
        p = await pending(h)
        assert p["context"]["action"] == "rollback_deployment" and p["context"]["risk"] == "high"
        await decide(h, "bob", False)
        p = await pending(h)
        assert p["context"]["action"] == "restart_replicas"
        await decide(h, "bob", False)
        await until(h, lambda st: st.phase == "RESOLUTION")
        assert s.containment_calls == []
        await resolve(h)
        report = await finish(env, h)
    assert [(a.action.value, a.outcome, a.approver) for a in report.actions] == [
        ("rollback_deployment", "rejected", "bob"),
        ("restart_replicas", "rejected", "bob"),
    ]
    assert report.resolved_by == "operator carol"
    assert any("rollback_deployment was rejected" in f for f in report.follow_ups)


# --- paging ---------------------------------------------------------------------------------


async def test_sev2_pages_escalates_until_acknowledged_and_measures_mtta(
    env: WorkflowEnvironment, tmp_path: Path
) -> None:
    s = Standins()
    async with world(env, tmp_path, s, ack_timeout_seconds=60, max_escalations=3) as w:
        h = await open_incident(env, w, alert("AgentHighErrorRate", severity="critical"))
        await pending(h)
        st = await until(h, lambda st: len(st.pages) == 1)
        assert st.severity == "SEV2" and st.pages[0].level == 0
        await env.sleep(61)
        st = await until(h, lambda st: len(st.pages) == 2)
        assert st.pages[1].level == 1
        assert any(host == "pager.invalid" for host, _ in s.posts), ESCALATION_WEBHOOK
        await h.execute_update("ack", {"requested_by": "dave", "reason": "on it"})
        await env.sleep(600)
        st = await status(h)
        assert len(st.pages) == 2 and st.acknowledged_by == "dave"
        with pytest.raises(WorkflowUpdateFailedError) as refused:
            await h.execute_update("ack", {"requested_by": "erin"})
        assert isinstance(refused.value.cause, ApplicationError)
        assert "acknowledged by dave" in refused.value.cause.message
        await resolve(h)
        report = await finish(env, h)
    assert report.mtta_seconds is not None and 61 <= report.mtta_seconds < 120
    assert [p.level for p in report.pages] == [0, 1]
    assert sum(1 for e in report.timeline if e.kind == "page") == 2


async def test_sev3_does_not_page(env: WorkflowEnvironment, tmp_path: Path) -> None:
    s = Standins()
    async with world(env, tmp_path, s, ack_timeout_seconds=60) as w:
        h = await open_incident(env, w, alert("AgentHighLatencyP95", severity="warning"))
        await pending(h)
        await env.sleep(300)
        assert (await status(h)).pages == []
        await h.terminate("test finished")


# --- severity override ------------------------------------------------------------------------


async def test_severity_override_by_signal_and_update_with_validation(
    env: WorkflowEnvironment, tmp_path: Path
) -> None:
    s = Standins()
    async with world(env, tmp_path, s) as w:
        h = await open_incident(env, w, alert("AgentHighLatencyP95", severity="warning"))
        await pending(h)
        for bad in (
            {"severity": "SEV5", "requested_by": "x", "reason": "y"},
            {"severity": "SEV1", "requested_by": "x"},  # no reason
            {"severity": "SEV1", "requested_by": " ", "reason": "y"},
        ):
            with pytest.raises(WorkflowUpdateFailedError) as err:
                await h.execute_update("set_severity", bad)
            assert isinstance(err.value.cause, ApplicationError)
            assert err.value.cause.type == "InvalidInput"
        history = [e.event_type async for e in h.fetch_history_events()]
        assert E.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED not in history
        assert (await status(h)).severity == "SEV3"
        await h.signal(
            "set_severity", {"severity": "SEV4", "requested_by": "ann", "reason": "noise"}
        )
        st = await until(h, lambda st: st.severity == "SEV4")
        assert st.severity_source == "operator ann"
        out = await h.execute_update(
            "set_severity", {"severity": "SEV1", "requested_by": "bob", "reason": "customers"}
        )
        assert out == "severity SEV4 -> SEV1"
        st = await status(h)
        assert st.severity == "SEV1" and st.severity_source == "operator bob"
        trail = [(e.actor, e.detail) for e in st.audit if e.kind == "severity"]
        assert ("ann", "SEV3 -> SEV4 (noise)") in trail and (
            "bob",
            "SEV4 -> SEV1 (customers)",
        ) in trail
        # A stricter new alert does not beat the operator.
        _, batch = start_and_batch("x", alert("AgentDown", severity="emergency", fingerprint="d"))
        await h.signal("alerts", batch)
        await h.signal("set_severity", {"severity": "SEV3", "requested_by": "bob", "reason": "ok"})
        st = await until(h, lambda st: st.severity == "SEV3" and len(st.alerts) == 2)
        st = await until(h, lambda st: len(st.pages) == 1)  # paged while it was SEV1
        assert st.pages[0].severity == "SEV1"
        await env.sleep(3600)  # no escalation: the severity fell below SEV2
        st = await status(h)
        assert len(st.pages) == 1
        assert "escalation stopped: severity is now SEV3" in [e.detail for e in st.audit]
        desc = await h.describe()
        assert desc.typed_search_attributes.get(SEVERITY_KEY) == "SEV3"
        await h.terminate("test finished")


# --- alerts: duplicates, storms, resolution by Alertmanager ---------------------------------


async def test_duplicate_and_storm_alerts_join_one_bounded_incident(
    env: WorkflowEnvironment, tmp_path: Path
) -> None:
    s = Standins()
    async with world(env, tmp_path, s) as w:
        agent = f"st-{uuid.uuid4().hex[:8]}"
        huge = {f"k{i:03}": "x" * 10_000 for i in range(100)}
        first = alert("AgentHighErrorRate", severity="warning", fingerprint="same", **huge)
        start, batch = start_and_batch(agent, first)
        wids = {await signal_incident(env.client, start, batch, task_queue=w.task_queue)}
        wids.add(await signal_incident(env.client, start, batch, task_queue=w.task_queue))
        for n in range(10):  # 10 notifications x 200 alerts: 150 distinct + the repeats
            alerts = [alert("Storm", fingerprint=f"s{(n * 200 + i) % 150}") for i in range(199)]
            storm = AlertBatch(alerts=[first, *alerts], truncated_alerts=5,
                               received_at=datetime.now(UTC))  # fmt: skip
            wids.add(await signal_incident(env.client, start, storm, task_queue=w.task_queue))
        assert len(wids) == 1
        h = env.client.get_workflow_handle(wids.pop(), result_type=ReviewReport)
        st = await until(h, lambda st: st.notifications == 12)
        assert st.alerts_received == 2 + 10 * 205
        assert len(st.alerts) == 100  # bounded, the rest counted
        assert st.alerts_not_kept >= 51 + 10 * 5
        same = next(a for a in st.alerts if a.fingerprint == "same")
        assert same.count == 12
        assert len(same.annotations) == 16 and {len(v) for v in same.annotations.values()} == {512}
        assert len(st.model_dump_json()) < 1_000_000  # the query's answer stays bounded
        history = [e async for e in h.fetch_history_events()]
        assert (
            sum(1 for e in history if e.event_type == E.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED) == 1
        )
        await h.terminate("test finished")


async def test_resolved_by_alertmanager_when_every_alert_resolved(
    env: WorkflowEnvironment, tmp_path: Path
) -> None:
    s = Standins()
    async with world(env, tmp_path, s, auto_contain_low_risk=True) as w:
        a = alert("Noise1", severity="info", fingerprint="a")
        b = alert("Noise2", severity="info", fingerprint="b")
        h = await open_incident(env, w, a, b)
        # page_oncall proposed by the rules ("other"), low risk at SEV4: automatic
        await until(h, lambda st: st.phase == "RESOLUTION")
        assert s.actions() == ["page_oncall"]
        one = a.model_copy(update={"status": "resolved"})
        await h.signal("alerts", AlertBatch(alerts=[one], received_at=datetime.now(UTC)))
        await until(h, lambda st: st.alerts[0].status == "resolved")
        assert (await status(h)).phase == "RESOLUTION"  # b still fires
        two = b.model_copy(update={"status": "resolved"})
        await h.signal("alerts", AlertBatch(alerts=[two], received_at=datetime.now(UTC)))
        report = await finish(env, h)
    assert report.resolved_by == "alertmanager"


async def test_a_signal_flood_continues_as_new_and_keeps_the_record(
    env: WorkflowEnvironment, tmp_path: Path
) -> None:
    s = Standins()
    async with world(env, tmp_path, s, auto_contain_low_risk=True, continue_after_events=100) as w:
        h = await open_incident(env, w, alert("AgentHighLatencyP95", severity="warning"))
        await decide(h, "bob", True)
        st = await until(h, lambda st: st.phase == "RESOLUTION")
        first_run = (await h.describe()).run_id
        agent = st.agent_id
        start, _ = start_and_batch(agent, alert("X"))
        for i in range(80):
            flood = AlertBatch(alerts=[alert("Flood", fingerprint=f"f{i % 7}")],
                               received_at=datetime.now(UTC))  # fmt: skip
            await signal_incident(env.client, start, flood, task_queue=w.task_queue)
        st = await until(h, lambda st: st.notifications == 81)
        assert (await h.describe()).run_id != first_run  # continued as new, same workflow id
        assert st.phase == "RESOLUTION" and len(st.alerts) == 8
        assert [a.action.value for a in st.actions] == ["scale_up", "rate_limit"]
        assert any(e.kind == "continued" for e in st.audit)
        assert any(e.kind == "decided" and e.actor == "bob" for e in st.audit)  # gate's, carried
        await resolve(h)
        report = await finish(env, h)
    assert report.resolved_by == "operator carol"
    assert [(a.action.value, a.approver) for a in report.actions] == [
        ("scale_up", None), ("rate_limit", "bob"),
    ]  # fmt: skip
    assert report.run_id != first_run
    assert [c.lift for c in s.containment_calls] == [False, False, True]
