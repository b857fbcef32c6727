"""``gather_evidence`` and ``check_recovery`` against a real agent: the FleetOps worker on a dev
server runs an AgentLifecycle of two sample-agent replicas on the local platform; traffic with
injected errors goes straight to the replicas. First without Prometheus (direct scrapes), then
with a Prometheus that is down, then with a real one (``/usr/bin/prometheus``) scraping them.
"""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment

from activities.incident_evidence import EvidenceActivities, bounded
from activities.platform import LocalPlatform
from activities.recovery import RecoveryActivities
from fleetops.incidents import EvidenceItem, EvidenceRequest, RecoveryCheck, RecoveryStatus
from fleetops.llm_guards import REDACTED
from fleetops.models import AgentLifecycleInput, AgentSpec, AgentStatus
from fleetops.settings import MetricsSettings
from tests.conftest import assert_eventually
from tests.e2e_support import TAG_VAR, free_port, kill_tagged
from tests.helpers import require_binary
from tests.test_gateway import make_settings, platform_for
from tests.test_metrics_providers import drive, set_faults, stop, wait_until
from worker import fleetops_worker


@dataclass
class Running:
    env: WorkflowEnvironment
    platform: LocalPlatform
    agent_id: str
    endpoints: list[str]


@pytest.fixture(scope="module")
async def running(
    dev_env: WorkflowEnvironment, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Running]:
    tag = uuid.uuid4().hex
    settings = make_settings(tmp_path_factory.mktemp("state"))
    platform = platform_for(settings)
    agent = f"ev-{tag[:8]}"
    spec = AgentSpec(agent_id=agent, replicas=2, env={TAG_VAR: tag}, health={"interval_seconds": 1})
    tq = f"tq-{uuid.uuid4()}"
    try:
        async with fleetops_worker(dev_env.client, settings, platform=platform, task_queue=tq):
            h = await dev_env.client.start_workflow(
                "AgentLifecycle", AgentLifecycleInput(**spec.model_dump()), id=f"agent/{agent}",
                task_queue=tq,
            )  # fmt: skip

            async def ready() -> AgentStatus:
                st: AgentStatus = await h.query("status", result_type=AgentStatus)
                assert st.state == "READY", st.state
                return st

            st = await assert_eventually(ready, timeout=60)
            yield Running(dev_env, platform, agent, [r.endpoint for r in st.replicas])
            await h.terminate("test finished")
    finally:
        await platform.stop_all(agent)
        kill_tagged(tag)


def evidence_request(r: Running, **kw: object) -> EvidenceRequest:
    now = datetime.now(UTC)
    return EvidenceRequest.model_validate(
        {"incident_id": f"incident/{r.agent_id}/k", "agent_id": r.agent_id,
         "since": now - timedelta(minutes=2), "until": now, "alert_names": ["HighErrorRate"],
         "step_seconds": 1, **kw}
    )  # fmt: skip


async def gather(r: Running, http: httpx.AsyncClient, settings: MetricsSettings,
                 req: EvidenceRequest) -> list[EvidenceItem]:  # fmt: skip
    acts = EvidenceActivities(r.env.client, r.platform, http, settings)
    items: list[EvidenceItem] = await ActivityEnvironment().run(acts.gather_evidence, req)
    return items


async def recovery(r: Running, http: httpx.AsyncClient, settings: MetricsSettings,
                   check: RecoveryCheck) -> RecoveryStatus:  # fmt: skip
    acts = RecoveryActivities(r.env.client, http, settings)
    status: RecoveryStatus = await ActivityEnvironment().run(acts.check_recovery, check)
    return status


def test_bounded_cuts_and_says_so() -> None:
    assert bounded("abc", 3) == ("abc", None)
    text, note = bounded("0123456789", 5, keep="end")
    assert text == "…6789" and note == "cut 6 of 10 characters; kept the last 4"
    assert bounded("0123456789", 5)[0] == "0123…"


async def test_evidence_and_recovery_without_prometheus(running: Running) -> None:
    r = running
    await set_faults(r.endpoints, 0.5)
    _, failed = await drive(r.endpoints, 200)
    assert failed > 0
    async with httpx.AsyncClient() as http:
        items = await gather(r, http, MetricsSettings(), evidence_request(r))
        kinds = [i.kind for i in items]
        assert kinds[:3] == ["status", "deployment", "metrics"] and kinds.count("logs") == 2
        assert [i.ref for i in items] == [f"E{n}" for n in range(1, len(items) + 1)]
        # READY, or PROCESSING when a probe saw the traffic just driven in flight: both serve.
        assert any(
            f"agent {r.agent_id} v1: state {state}, 2 of 2 replicas healthy" in items[0].text
            for state in ("READY", "PROCESSING")
        ), items[0].text
        assert "no deployment in progress" in items[1].text
        metrics = items[2].text
        assert "direct scrape of 2 replicas" in metrics and "HighErrorRate" in metrics
        assert metrics.count("error_rate 0.") == 2, metrics  # both replicas erred
        assert all(i.truncated is None for i in items[:3])
        logs = [i for i in items if i.kind == "logs"]
        assert {i.source.rsplit("/", 1)[1] for i in logs} == {"replica-0.log", "replica-1.log"}
        assert all("Uvicorn running" in i.text or "started" in i.text.lower() for i in logs)

        small = await gather(
            r, http, MetricsSettings(), evidence_request(r, max_chars_per_item=200, log_lines=1)
        )
        for item in small:
            assert len(item.text) <= 200
        cut = [i for i in small if i.kind == "logs"]
        assert all(i.truncated and "earlier output left out" in i.truncated for i in cut)
        assert small[0].truncated is not None and "kept the first 199" in small[0].truncated

        check = RecoveryCheck(agent_id=r.agent_id, window_seconds=2, error_rate_max=0.05)
        traffic = asyncio.create_task(drive(r.endpoints, 10_000, concurrency=4, seconds=2.5))
        sick = await recovery(r, http, MetricsSettings(), check)
        await traffic
        assert not sick.healthy and "error rate" in sick.detail, sick
        assert 0.2 < sick.values["error_rate"] < 0.8 and sick.values["requests"] > 0
        await set_faults(r.endpoints, 0.0)
        traffic = asyncio.create_task(drive(r.endpoints, 10_000, concurrency=4, seconds=2.5))
        well = await recovery(r, http, MetricsSettings(), check)
        await traffic
        assert well.healthy and well.values["error_rate"] == 0.0, well
        busy = check.model_copy(update={"min_requests": 10**6})
        assert not (await recovery(r, http, MetricsSettings(), busy)).healthy

        down = MetricsSettings(prometheus_url=f"http://127.0.0.1:{free_port()}")
        noted = await gather(r, http, down, evidence_request(r))
        assert [i.kind for i in noted].count("note") == 3  # the three series, each a note
        assert all("prometheus unreachable" in i.text for i in noted if i.kind == "note")
        unknown = await recovery(r, http, down, check)
        assert not unknown.healthy and "metrics not read" in unknown.detail
        ghost = await gather(r, http, MetricsSettings(), evidence_request(r, agent_id="nosuch"))
        assert ghost[0].kind == "note" and "could not be read" in ghost[0].text


async def test_the_agents_secret_values_are_masked_in_its_logs(running: Running) -> None:
    """Logs enter the incident's history: the agent's secret values (here the newest line of
    each replica's log, as if it printed a secret) are masked first; when they cannot be read,
    the logs are left out."""
    r = running
    async with httpx.AsyncClient() as http:
        plain = await gather(r, http, MetricsSettings(), evidence_request(r))
    secrets = [i.text.strip().splitlines()[-1] for i in plain if i.kind == "logs"]
    assert len(secrets) == 2 and all(len(s) > 10 for s in secrets)
    # A value the store no longer has (a deleted version) is caught by the secret patterns.
    key = "sk-" + uuid.uuid4().hex
    for log in r.platform._store.agent_dir(r.agent_id).glob("replica-*.log"):
        with log.open("a") as f:
            f.write(f"calling the model with api key {key}\n")
    asked: list[str] = []

    async def values(agent_id: str) -> list[str]:
        asked.append(agent_id)
        return secrets

    async def unreadable(agent_id: str) -> list[str]:
        raise ApplicationError("vault sealed", type="SecretStoreUnavailable")

    async with httpx.AsyncClient() as http:
        acts = EvidenceActivities(r.env.client, r.platform, http, MetricsSettings(),
                                  secret_values=values)  # fmt: skip
        items = await ActivityEnvironment().run(acts.gather_evidence, evidence_request(r))
        logs = [i for i in items if i.kind == "logs"]
        assert asked == [r.agent_id] and len(logs) == 2
        assert all(REDACTED in i.text and "calling the model" in i.text for i in logs)
        assert not [s for s in [*secrets, key] for i in logs if s in i.text]
        acts = EvidenceActivities(r.env.client, r.platform, http, MetricsSettings(),
                                  secret_values=unreadable)  # fmt: skip
        items = await ActivityEnvironment().run(acts.gather_evidence, evidence_request(r))
    assert not [i for i in items if i.kind == "logs"]
    [note] = [i for i in items if i.kind == "note" and i.source == "logs"]
    assert "left out" in note.text and "vault sealed" in note.text


async def test_bad_windows_are_refused(running: Running) -> None:
    now = datetime.now(UTC)
    async with httpx.AsyncClient() as http:
        for since, until, field in [
            (now, now - timedelta(seconds=1), "until: must be after since"),
            (now - timedelta(days=2), now, "until: the window is at most"),
            (now.replace(tzinfo=None), now, "since: give a timezone"),
        ]:
            req = evidence_request(running, since=since, until=until)
            with pytest.raises(ApplicationError, match=field) as exc:
                await gather(running, http, MetricsSettings(), req)
            assert exc.value.type == "InvalidInput" and exc.value.non_retryable


@pytest.fixture
async def prometheus(running: Running, tmp_path: Path) -> AsyncIterator[str]:
    """A real Prometheus scraping the agent's replicas every second (target label
    ``fleetops_agent``); its base URL."""
    binary = require_binary("prometheus", hint="apt-get install prometheus")
    targets = ", ".join(f'"{e.removeprefix("http://")}"' for e in running.endpoints)
    (tmp_path / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n  - job_name: agents\n"
        f"    static_configs: [{{targets: [{targets}], "
        f"labels: {{fleetops_agent: {running.agent_id}, fleetops_color: blue}}}}]\n"
    )
    address = f"127.0.0.1:{free_port()}"
    args = [binary, f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address={address}",
            "--log.level=warn"]  # fmt: skip
    with (tmp_path / "prometheus.log").open("wb") as log:
        process = subprocess.Popen(args, stdout=log, stderr=log)
    try:
        async with httpx.AsyncClient() as http:

            async def up() -> bool:
                assert process.poll() is None, (tmp_path / "prometheus.log").read_text()
                try:
                    r = await http.get(f"http://{address}/api/v1/targets")
                    active = r.json()["data"]["activeTargets"]
                except (httpx.HTTPError, ValueError, KeyError):
                    return False
                return len(active) == 2 and all(t["health"] == "up" for t in active)

            await wait_until(up, "prometheus targets up")
        yield f"http://{address}"
    finally:
        stop(process)


async def test_evidence_and_recovery_from_prometheus(running: Running, prometheus: str) -> None:
    r = running
    await set_faults(r.endpoints, 0.5)
    settings = MetricsSettings(prometheus_url=prometheus)
    check = RecoveryCheck(agent_id=r.agent_id, window_seconds=5, error_rate_max=0.05)
    async with httpx.AsyncClient() as http:

        async def sick() -> RecoveryStatus:
            await drive(r.endpoints, 10_000, concurrency=4, seconds=1)
            status = await recovery(r, http, settings, check)
            assert "error_rate" in status.values, status
            return status

        status = await assert_eventually(sick, timeout=30)
        assert not status.healthy and 0.2 < status.values["error_rate"] < 0.8, status
        assert status.values["requests"] > 0 and "p95_latency_seconds" in status.values
        items = await gather(r, http, settings, evidence_request(r))
        series = [i for i in items if i.kind == "metrics"]
        assert len(series) == 3 and all(i.source.startswith("prometheus: ") for i in series)
        error_rate = next(i for i in series if i.text.startswith("error_rate"))
        assert "(no data)" not in error_rate.text and "step 1s" in error_rate.text
        assert f'fleetops_agent="{r.agent_id}"' in error_rate.source
        await set_faults(r.endpoints, 0.0)

        async def recovered() -> RecoveryStatus:
            await drive(r.endpoints, 10_000, concurrency=4, seconds=1)
            status = await recovery(r, http, settings, check)
            assert status.healthy, status
            return status

        await assert_eventually(recovered, timeout=40)
